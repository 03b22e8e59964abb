"""EDNS Cookies (RFC 7873) with server cookies laid out as RFC 9018 says.

Server cookie: version 1 | 3 reserved bytes | 32-bit timestamp | 8-byte hash of
(client cookie, version, reserved, timestamp, client address) under a secret
shared by every worker. RFC 9018 names SipHash-2-4 for the hash so that
servers of different vendors in one anycast set can check each other's
cookies; the standard library has no SipHash, so this uses keyed BLAKE2b.
Cookies it issues are checked by itself only (all our workers share the secret).
"""
from __future__ import annotations

import hashlib
import ipaddress
import struct

from gslb.wire import FormError

EDNS_COOKIE = 10
VERSION = b"\x01\x00\x00\x00"      # version 1, reserved
MAX_AGE = 3600                     # RFC 9018: valid for an hour ...
MAX_FUTURE = 300                   # ... and up to 5 minutes ahead of our clock


def split(option: bytes) -> tuple[bytes, bytes]:
    """(client cookie, server cookie) of a COOKIE option; FormError when malformed (RFC 7873 5.2.2)."""
    if len(option) == 8:
        return option, b""
    if 16 <= len(option) <= 40:
        return option[:8], option[8:]
    raise FormError(f"COOKIE option of {len(option)} bytes")


def _hash(secret: bytes, client_cookie: bytes, stamp: bytes, client: str) -> bytes:
    addr = ipaddress.ip_address(client.split("%", 1)[0]).packed
    return hashlib.blake2b(client_cookie + VERSION + stamp + addr, key=secret,
                           digest_size=8).digest()


def server_cookie(secret: bytes, client_cookie: bytes, client: str, now: int) -> bytes:
    stamp = struct.pack("!I", now & 0xFFFFFFFF)
    return VERSION + stamp + _hash(secret, client_cookie, stamp, client)


def valid(secret: bytes, client_cookie: bytes, cookie: bytes, client: str, now: int) -> bool:
    """Whether `cookie` is a server cookie we issued to this client within the last hour."""
    if len(cookie) != 16 or cookie[:4] != VERSION:
        return False
    stamp = cookie[4:8]
    age = (now - struct.unpack("!I", stamp)[0] + 2**31) % 2**32 - 2**31   # serial arithmetic
    if age > MAX_AGE or age < -MAX_FUTURE:
        return False
    return cookie[8:] == _hash(secret, client_cookie, stamp, client)


def option(client_cookie: bytes, server: bytes) -> bytes:
    data = client_cookie + server
    return struct.pack("!HH", EDNS_COOKIE, len(data)) + data
