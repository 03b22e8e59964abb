"""Name compression (RFC 1035 4.1.4) for answers rendered ahead of any query.

A `Writer` knows where in the message it writes and which names (every
suffix, lower-cased) were written where before. Replies are rendered when a
table is built, after a question whose length is known (the lower-cased
question key has the length of every question that uses the reply), so the
offsets are those of the real response: the question's name starts at 12,
the body at 12 + its length + 4. Nothing here runs per query except when
answers.py renders a wildcard proof at a new offset for the first time.

What is compressed is what dnspython compresses, so our replies are never
longer than its re-encoding: owner names, and names inside NS, CNAME, PTR,
MX and SOA rdata. Names inside other rdata (RRSIG signer, NSEC next name,
SRV target: RFC 3597 4, RFC 4034 6.2) are written in full and, as in
dnspython, are not pointed at either.
"""
from __future__ import annotations

import struct

from gslb.wire import CLASS_IN, QTYPE_CNAME, QTYPE_NS, QTYPE_SOA

QTYPE_PTR, QTYPE_MX = 12, 15
NAME_RDATA = frozenset({QTYPE_NS, QTYPE_CNAME, QTYPE_PTR})
MAX_OFFSET = 0x3FFF            # a pointer has 14 bits
QUESTION_AT = 12


def pointer(offset: int) -> bytes:
    return bytes((0xC0 | offset >> 8, offset & 0xFF))


def _name_end(data: bytes, i: int) -> int:
    while data[i]:
        i += data[i] + 1
    return i + 1


class Writer:
    """Writes records at known offsets, compressing names against earlier ones."""

    __slots__ = ("pos", "names")

    def __init__(self, pos: int, names: dict[bytes, int] | None = None):
        self.pos = pos
        self.names = {} if names is None else names

    @classmethod
    def after_question(cls, qname: bytes, shared: bytes | None = None) -> "Writer":
        """The state right after the question `qname` (lower-case wire, uncompressed).

        `shared`: only this suffix of `qname` (and its own suffixes) may be pointed
        at, for a reply that questions of the same length but other leading labels
        share (a wildcard's answers).
        """
        names: dict[bytes, int] = {}
        i = 0
        start = len(qname) - len(shared) if shared is not None else 0
        while qname[i]:
            if i >= start:
                names[qname[i:]] = QUESTION_AT + i
            i += qname[i] + 1
        return cls(QUESTION_AT + len(qname) + 4, names)

    def copy(self) -> "Writer":
        return Writer(self.pos, dict(self.names))

    def skip(self, size: int) -> None:
        """`size` bytes without names were written (or will be) at this point."""
        self.pos += size

    def name(self, name: bytes) -> bytes:
        """`name` (uncompressed wire, any case; or a pointer, kept) as it goes here."""
        if name[0] & 0xC0 == 0xC0:
            self.pos += 2
            return name
        lower, names, pos, i = name.lower(), self.names, self.pos, 0
        out = name
        while lower[i]:
            target = names.get(lower[i:])
            if target is not None:
                out = name[:i] + pointer(target)
                break
            if pos + i <= MAX_OFFSET:
                names[lower[i:]] = pos + i
            i += lower[i] + 1
        self.pos += len(out)
        return out

    def rdata(self, rtype: int, data: bytes) -> bytes:
        """Rdata with the names dnspython would compress compressed, advancing."""
        if rtype in NAME_RDATA:
            return self.name(data)
        if rtype == QTYPE_MX:
            self.pos += 2
            return data[:2] + self.name(data[2:])
        if rtype == QTYPE_SOA:
            mid = _name_end(data, 0)
            end = _name_end(data, mid)
            out = self.name(data[:mid]) + self.name(data[mid:end])
            self.pos += len(data) - end
            return out + data[end:]
        self.pos += len(data)
        return data

    def rr(self, owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
        """One resource record written here."""
        head = self.name(owner)
        self.pos += 10
        body = self.rdata(rtype, rdata)
        return head + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(body)) + body
