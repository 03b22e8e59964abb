"""QUIC Retry tokens (RFC 9000 8.1.2): proof that a client owns its source address.

A token is `issued (8 bytes, ms) | len | original DCID | len | retry SCID | HMAC-SHA256`
over those bytes and the client's address and port, under a key of this worker
(a client's datagrams stay on one worker: the kernel's SO_REUSEPORT 4-tuple hash).
It is valid for `LIFETIME` seconds, only from the address it was issued to, and only
with the connection ID the Retry told the client to use. Nothing is stored per token:
Retry stays stateless however many Initials arrive.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time

LIFETIME = 10.0          # seconds a Retry token is accepted (a client answers in one RTT)
_MAC = 16                # bytes of the truncated HMAC


class TokenError(ValueError):
    """A token that is forged, expired, from another address or for another CID."""


class RetryTokens:
    """Issues and checks Retry tokens under a random per-process key."""

    def __init__(self, key: bytes | None = None, lifetime: float = LIFETIME):
        self._key = key or os.urandom(32)
        self.lifetime = lifetime

    def _mac(self, body: bytes, addr: tuple) -> bytes:
        where = f"{addr[0]}|{addr[1]}".encode()
        return hmac.new(self._key, where + b"|" + body, hashlib.sha256).digest()[:_MAC]

    def issue(self, addr: tuple, original_dcid: bytes, retry_scid: bytes,
              now: float | None = None) -> bytes:
        """A token for `addr` (ip, port, ...) naming the two connection IDs."""
        issued = int((time.time() if now is None else now) * 1000)
        body = (struct.pack("!QB", issued, len(original_dcid)) + original_dcid
                + bytes([len(retry_scid)]) + retry_scid)
        return body + self._mac(body, addr)

    def check(self, token: bytes, addr: tuple, dcid: bytes,
              now: float | None = None) -> bytes:
        """The original DCID a valid token names; TokenError otherwise. `dcid` is the
        Initial's destination CID, which must be the Retry's source CID."""
        if len(token) < 10 + _MAC:
            raise TokenError("short token")
        body, mac = token[:-_MAC], token[-_MAC:]
        if not hmac.compare_digest(mac, self._mac(body, addr)):
            raise TokenError("bad MAC (forged, or another address)")
        issued, n = struct.unpack_from("!QB", body)
        original = body[9:9 + n]
        rest = body[9 + n:]
        if len(original) != n or not rest or len(rest) != 1 + rest[0]:
            raise TokenError("malformed token")
        if rest[1:] != dcid:
            raise TokenError("token for another connection ID")
        age = (time.time() if now is None else now) - issued / 1000
        if not -1.0 <= age <= self.lifetime:
            raise TokenError("expired token")
        return original
