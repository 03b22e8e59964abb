"""RRsets as the answer builder holds them: owner, type, TTL and rdata in wire form.

One `RRset` knows two owners: `owner`, the name in the zone (lower case,
uncompressed wire; for a wildcard expansion the wildcard itself, which is
what an RRSIG covers, RFC 4035 5.3.2), and `wire_owner`, what goes on the
wire (usually a pointer to the question, so 0x20 case is echoed). Sections
are lists of RRsets, rendered to bytes once, when a table is built.
"""
from __future__ import annotations

from dataclasses import dataclass

from gslb.wire import POINTER_TO_QNAME, rr

WILDCARD_LABEL = b"\x01*"


def wire_labels(name: bytes) -> list[bytes]:
    """The labels of an uncompressed wire name, without the root."""
    out, i = [], 0
    while name[i]:
        out.append(name[i + 1:i + 1 + name[i]])
        i += name[i] + 1
    return out


def from_labels(labels: list[bytes]) -> bytes:
    """Uncompressed wire name from labels (root appended)."""
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def label_count(name: bytes) -> int:
    """The RRSIG Labels field for an owner: labels without the root or a leading '*'."""
    n = len(wire_labels(name))
    return n - 1 if name.startswith(WILDCARD_LABEL) else n


@dataclass(frozen=True, slots=True)
class RRset:
    owner: bytes                 # the zone's owner name, lower case, uncompressed wire
    rtype: int
    ttl: int
    rdatas: tuple[bytes, ...]
    wire_owner: bytes = POINTER_TO_QNAME

    def wire(self) -> list[bytes]:
        """One wire record per rdata."""
        return [rr(self.wire_owner, self.rtype, self.ttl, data) for data in self.rdatas]

    @property
    def wildcard(self) -> bool:
        return self.owner.startswith(WILDCARD_LABEL)
