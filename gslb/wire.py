"""DNS wire-format constants and the few encoders the answer builder needs.

Rdata of static records is encoded by dnslib at config load; this module only
glues owner names, types and TTLs around it, ahead of time.
"""
from __future__ import annotations

import ipaddress
import struct
from functools import lru_cache

QTYPE_A = 1
QTYPE_NS = 2
QTYPE_CNAME = 5
QTYPE_SOA = 6
QTYPE_HINFO = 13
QTYPE_AAAA = 28
QTYPE_OPT = 41
QTYPE_DS = 43
QTYPE_RRSIG = 46
QTYPE_NSEC = 47
QTYPE_DNSKEY = 48
QTYPE_NXNAME = 128          # RFC 9824 meta type: only in NSEC bitmaps of compact denials
QTYPE_IXFR = 251
QTYPE_AXFR = 252
QTYPE_ANY = 255
CLASS_IN = 1

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_BADVERS = 16          # extended: upper 8 bits go in the OPT TTL

EDNS_ECS = 8
POINTER_TO_QNAME = b"\xc0\x0c"   # the question's name always starts at offset 12


class FormError(ValueError):
    """The message is malformed: answer FORMERR (or drop if even the header is bad)."""


def encode_name(name: str) -> bytes:
    """Absolute name in uncompressed wire form (labels already validated)."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        if label:
            raw = label.encode("ascii")
            out.append(len(raw))
            out += raw
    out.append(0)
    return bytes(out)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    """One resource record in wire form."""
    return owner + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rdata)) + rdata


@lru_cache(maxsize=65536)
def address_rdata(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def soa_rdata(mname: str, rname: str, serial: int, refresh: int, retry: int, expire: int,
              minimum: int) -> bytes:
    return (encode_name(mname) + encode_name(rname)
            + struct.pack("!IIIII", serial, refresh, retry, expire, minimum))


def hinfo_rdata(cpu: str, os_: str) -> bytes:
    c, o = cpu.encode(), os_.encode()
    return bytes([len(c)]) + c + bytes([len(o)]) + o


def counts(qd: int, an: int, ns: int, ar: int) -> bytes:
    return struct.pack("!HHHH", qd, an, ns, ar)


def decode_qkey(qkey: bytes) -> tuple[str, int]:
    """Lower-cased wire question -> (text name, qtype). Dots inside labels are escaped."""
    labels, i = [], 0
    while qkey[i]:
        n = qkey[i]
        labels.append(qkey[i + 1:i + 1 + n].decode("latin-1").replace(".", "\\."))
        i += n + 1
    name = ".".join(labels) + "." if labels else "."
    return name, int.from_bytes(qkey[i + 1:i + 3], "big")
