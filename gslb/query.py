"""Strict parsing of DNS queries for the slow path.

The fast path in server.py accepts only the common shape (one question, at
most one OPT). Everything else comes here, where each defect maps to the
right answer: `FormError` -> FORMERR, an EDNS version other than 0 ->
BADVERS, an unusable header -> drop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from gslb.cookies import EDNS_COOKIE
from gslb.cookies import split as split_cookie
from gslb.wire import EDNS_ECS, QTYPE_OPT, FormError

EDNS_NSID = 3

MAX_POINTER_HOPS = 32


class Opt(NamedTuple):
    """The query's OPT record. A tuple: the fast path makes one per EDNS query."""

    payload: int
    do: bool
    ecs: bytes | None        # raw option data (family, source, scope, address)
    version: int = 0         # anything but 0 is answered BADVERS
    cookie: bytes | None = None  # raw COOKIE option data (RFC 7873)
    nsid: bool = False       # the client asked for our NSID (RFC 5001)
    co: bool = False         # Compact Answers OK (RFC 9824 5.1)


@dataclass(frozen=True, slots=True)
class Query:
    qid: bytes
    flags: bytes             # the two flag bytes as received
    opcode: int
    question: bytes          # name + type + class exactly as received (case kept)
    qtype: int
    qclass: int
    opt: Opt | None


def skip_name(data: bytes, i: int, allow_pointers: bool = True) -> int:
    """Offset just after the name at ``i``; FormError on loops, overruns, long names."""
    end = None
    hops = 0
    total = 0
    n = len(data)
    while True:
        if i >= n:
            raise FormError("name runs past the end of the message")
        length = data[i]
        if length == 0:
            return end if end is not None else i + 1
        if length & 0xC0 == 0xC0:
            if not allow_pointers:
                raise FormError("compression pointer in the question")
            if i + 1 >= n:
                raise FormError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[i + 1]
            if end is None:
                end = i + 2
            hops += 1
            if hops > MAX_POINTER_HOPS or target >= i:
                raise FormError("compression pointer loop or forward pointer")
            i = target
            continue
        if length & 0xC0:
            raise FormError("unsupported label type")
        total += length + 1
        if total > 255:
            raise FormError("name longer than 255 octets")
        i += length + 1


def validate_ecs(ecs: bytes) -> tuple[int, int, bytes]:
    """(family, source prefix, address bytes) of an ECS option; FormError if malformed (RFC 7871 6)."""
    if len(ecs) < 4:
        raise FormError("ECS option too short")
    family = int.from_bytes(ecs[0:2], "big")
    source = ecs[2]
    address = ecs[4:]
    bits = {1: 32, 2: 128}.get(family)
    if bits is None:
        raise FormError(f"ECS family {family} unknown")
    if source > bits:
        raise FormError("ECS source prefix longer than the address")
    if len(address) != (source + 7) // 8:
        raise FormError("ECS address length does not match its source prefix")
    if source % 8 and address[-1] & (0xFF >> (source % 8)):
        raise FormError("ECS address has bits set past its source prefix")
    return family, source, address


def _parse_opt(data: bytes, i: int, rdlen: int, klass: int, ttl: bytes) -> Opt:
    end = i + rdlen
    ecs = cookie = None
    nsid = False
    while i < end:
        if i + 4 > end:
            raise FormError("truncated EDNS option")
        code = int.from_bytes(data[i:i + 2], "big")
        olen = int.from_bytes(data[i + 2:i + 4], "big")
        if i + 4 + olen > end:
            raise FormError("EDNS option runs past OPT")
        if code == EDNS_ECS:
            if ecs is not None:
                raise FormError("two ECS options")
            ecs = data[i + 4:i + 4 + olen]
            validate_ecs(ecs)
        elif code == EDNS_COOKIE:
            if cookie is not None:
                raise FormError("two COOKIE options")
            cookie = data[i + 4:i + 4 + olen]
            split_cookie(cookie)
        elif code == EDNS_NSID:
            nsid = True
        i += 4 + olen
    return Opt(max(512, klass), bool(ttl[2] & 0x80), ecs, ttl[1], cookie, nsid,
               bool(ttl[2] & 0x40))


def _question_end(data: bytes) -> int:
    qend = skip_name(data, 12, allow_pointers=False) + 4
    if qend > len(data):
        raise FormError("truncated question")
    return qend


def parse_query(data: bytes) -> Query:
    """Parse a whole query strictly. Header must be at least 12 bytes (caller checks).

    A query without a question (QDCOUNT 0) parses, with an empty `question`
    and qtype -1: that is how a client asks for a server cookie (RFC 7873 5.4).
    """
    qdcount, ancount, nscount, arcount = (int.from_bytes(data[k:k + 2], "big")
                                          for k in (4, 6, 8, 10))
    opcode = (data[2] >> 3) & 0x0F
    if qdcount > 1:
        raise FormError(f"{qdcount} questions")
    qend = _question_end(data) if qdcount else 12
    question = data[12:qend]
    qtype = int.from_bytes(data[qend - 4:qend - 2], "big") if qdcount else -1
    qclass = int.from_bytes(data[qend - 2:qend], "big") if qdcount else -1
    i = qend
    opt = None
    for section, count in ((1, ancount), (2, nscount), (3, arcount)):
        for _ in range(count):
            owner = i
            i = skip_name(data, i)
            if i + 10 > len(data):
                raise FormError("truncated resource record")
            rtype = int.from_bytes(data[i:i + 2], "big")
            klass = int.from_bytes(data[i + 2:i + 4], "big")
            ttl = data[i + 4:i + 8]
            rdlen = int.from_bytes(data[i + 8:i + 10], "big")
            i += 10
            if i + rdlen > len(data):
                raise FormError("rdata runs past the end of the message")
            if rtype == QTYPE_OPT:
                if section != 3:
                    raise FormError("OPT outside the additional section")
                if opt is not None:
                    raise FormError("more than one OPT")
                if data[owner] != 0:
                    raise FormError("OPT owner is not the root")
                opt = _parse_opt(data, i, rdlen, klass, ttl)
            i += rdlen
    if i != len(data):
        raise FormError("trailing bytes after the last record")
    if qtype == QTYPE_OPT:
        raise FormError("OPT is not a question type")
    return Query(data[:2], data[2:4], opcode, question, qtype, qclass, opt)


def salvage(data: bytes) -> tuple[bytes, Opt | None]:
    """The question and OPT of a query that failed strict parsing, where they parse.

    An error response carries both when it can (RFC 6891 7: a FORMERR to an
    EDNS query has an OPT too); anything unreadable is simply left out.
    """
    question, opt = b"", None
    try:
        i = 12
        if int.from_bytes(data[4:6], "big") == 1:
            i = _question_end(data)
            question = data[12:i]
        for _ in range(sum(int.from_bytes(data[k:k + 2], "big") for k in (6, 8, 10))):
            owner = i
            i = skip_name(data, i)
            if i + 10 > len(data):
                break
            rdlen = int.from_bytes(data[i + 8:i + 10], "big")
            if data[i:i + 2] == b"\x00\x29" and data[owner] == 0 and opt is None:
                klass = int.from_bytes(data[i + 2:i + 4], "big")
                opt = Opt(max(512, klass), bool(data[i + 6] & 0x80), None, data[i + 5])
            i += 10 + rdlen
    except FormError:
        pass
    return question, opt
