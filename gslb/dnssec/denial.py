"""NSEC records that deny names and types without letting anyone walk the zone.

Two modes, chosen per zone (`denial:`):

* compact (RFC 9824): a name that does not exist is answered NODATA with an
  NSEC *at* the name, next name `\\000.name`, types RRSIG NSEC NXNAME (and
  NXDOMAIN again when the query sets the CO flag); a type that does not exist
  gets the same shape with the name's real types.
* white_lies (RFC 4470): NXDOMAIN with two minimally covering NSECs, one
  around the name, one around the wildcard `*.<closest encloser>`; NODATA as
  above.

Wildcard expansions (answers and wildcard NODATA) are signed as RFC 4035
requires in both modes: the RRSIG covers the wildcard owner (one signature
for every name below it) and one covering NSEC proves the next closer name
does not exist. That NSEC depends only on the next closer name, so the
customer names `www.shop.com.cdn.example.net` and `img.shop.com...` share it.

A covering NSEC spans `pred(label).ce` to `label\\000.ce`: from just below
the next closer name's first label to just past everything under it; both
ends are made-up names, so they reveal nothing. The range must not hide a
name that exists: the zone's sorted child labels are checked, and a covering
record that cannot be made (a label of one zero octet, or an existing child
in the way) is reported as None.
"""
from __future__ import annotations

import bisect
from functools import lru_cache

from gslb.records import RRset, wire_labels
from gslb.wire import QTYPE_NSEC, QTYPE_NXNAME, QTYPE_RRSIG

MAX_LABEL, MAX_NAME = 63, 255


@lru_cache(maxsize=1024)
def bitmap(types: frozenset[int]) -> bytes:
    """NSEC type bitmap (RFC 4034 4.1.2) of `types` plus RRSIG and NSEC."""
    from dns.rdtypes.util import Bitmap  # deferred: unsigned zones never load dnspython
    out = bytearray()

    class _Sink:
        def write(self, data: bytes) -> None:
            out.extend(data)
    Bitmap.from_rdtypes(sorted(types | {QTYPE_RRSIG, QTYPE_NSEC})).to_wire(_Sink())
    return bytes(out)


def nsec(owner: bytes, next_name: bytes, types: frozenset[int], ttl: int) -> RRset:
    """An NSEC RRset; its wire owner is written out in full (it rarely equals the qname)."""
    return RRset(owner, QTYPE_NSEC, ttl, (next_name + bitmap(types),), owner)


def at_name(owner: bytes, types: frozenset[int], ttl: int) -> RRset | None:
    """NODATA proof: an NSEC matching `owner` that lists its types (both modes)."""
    nxt = b"\x01\x00" + owner
    return nsec(owner, nxt, types, ttl) if len(nxt) <= MAX_NAME else None


def compact_nxname(qname: bytes, ttl: int) -> RRset | None:
    """RFC 9824 3.1: the name 'exists' with no data; NXNAME marks that it really does not."""
    return at_name(qname, frozenset({QTYPE_NXNAME}), ttl)


def _pred_label(label: bytes, long: bool) -> bytes | None:
    """A label sorting just before `label` (canonical order is plain byte order)."""
    if label[-1] == 0:
        return label[:-1] or None
    head = label[:-1] + bytes((label[-1] - 1,))
    room = MAX_LABEL - len(head)
    return head + b"\xff" * (room if long else min(room, 1))


def _past_label(label: bytes) -> bytes | None:
    """A label sorting just after `label` and every name below it."""
    if len(label) < MAX_LABEL:
        return label + b"\x00"
    stripped = label.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def cover(label: bytes, ce: bytes, children: list[bytes], ttl: int) -> RRset | None:
    """An NSEC covering `label`.`ce` and its whole subtree, or None (see module doc)."""
    past = _past_label(label)
    if past is None:
        return None
    for long in (False, True):
        pred = _pred_label(label, long)
        if pred is None:
            return None
        i = bisect.bisect_left(children, pred)
        if i < len(children) and children[i] < past:
            continue            # an existing name lies in the range: try a tighter start
        owner = bytes((len(pred),)) + pred + ce
        nxt = bytes((len(past),)) + past + ce
        if len(owner) > MAX_NAME or len(nxt) > MAX_NAME:
            return None
        return nsec(owner, nxt, frozenset(), ttl)
    return None


def next_closer(qname: bytes, ce: bytes) -> bytes:
    """The first label of `qname` below its closest encloser `ce` (RFC 5155 1.3)."""
    labels = wire_labels(qname)
    return labels[len(labels) - len(wire_labels(ce)) - 1]


def expansion_proof(qname: bytes, ce: bytes, children: list[bytes], ttl: int) -> RRset | None:
    """For an answer synthesised from `*.ce`: no closer match exists (RFC 4035 3.1.3.3)."""
    return cover(next_closer(qname, ce), ce, children, ttl)


def white_lies_nxdomain(qname: bytes, ce: bytes, children: list[bytes],
                        ttl: int) -> list[RRset] | None:
    """RFC 4470 NXDOMAIN proof: the next closer name is covered, and so is `*.ce`."""
    name = expansion_proof(qname, ce, children, ttl)
    wild = cover(b"*", ce, children, ttl)
    if name is None or wild is None:
        return None
    return [name] if name.owner == wild.owner else [name, wild]
