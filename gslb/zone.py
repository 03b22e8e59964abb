"""Authoritative data: which zone a name is in and what exists there.

Exact and wildcard matching (RFC 1034 4.3.3, RFC 4592) live here and nowhere
else. A lookup returns a `Match`; answers.py turns it into wire bytes.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping

from gslb.model import Config, RecordSet, Service, ZoneConfig
from gslb.wire import (
    QTYPE_ANY,
    QTYPE_CNAME,
    QTYPE_DNSKEY,
    QTYPE_NS,
    QTYPE_SOA,
)


class Kind(enum.Enum):
    REFUSED = "refused"      # not a zone of ours
    RECORDS = "records"      # a static RRset answers
    CNAME = "cname"          # the name is an alias; answer the CNAME
    SERVICE = "service"      # A/AAAA computed by selection
    NODATA = "nodata"        # the name exists, not with this type
    NXDOMAIN = "nxdomain"
    ANY = "any"              # RFC 8482 minimal answer


@dataclass(frozen=True, slots=True)
class Match:
    kind: Kind
    zone: ZoneConfig | None = None
    records: RecordSet | None = None
    service: Service | None = None
    wildcard: str | None = None      # the wildcard owner that matched, if any


def _parent(name: str) -> str | None:
    if name == ".":
        return None
    head, _, rest = name.partition(".")
    return rest or "."


class ZoneIndex:
    """All names of all zones, indexed for lookups. Immutable once built."""

    def __init__(self, config: Config):
        self.zones = sorted(config.zones, key=lambda z: len(z.origin), reverse=True)
        self.nodes: dict[str, dict[int, RecordSet]] = {}
        self.services: dict[str, Service] = {s.name: s for s in config.services}
        self.existing: set[str] = set()
        for zone in self.zones:
            self._add(zone, zone.origin)
            for rs in zone.records:
                self.nodes.setdefault(rs.name, {})[rs.rtype] = rs
                self._add(zone, rs.name)
        for svc in config.services:
            zone = self.zone_of(svc.name)
            if zone is not None:
                self._add(zone, svc.name)
        # Child labels (wire bytes, sorted canonically) of every existing name:
        # what a minimally covering NSEC must not hide (dnssec/denial.py).
        self.children: dict[str, list[bytes]] = {}
        for name in self.existing:
            parent = _parent(name)
            if parent in self.existing and name != parent:
                self.children.setdefault(parent, []).append(
                    name.partition(".")[0].encode("latin-1"))
        for labels in self.children.values():
            labels.sort()

    def _add(self, zone: ZoneConfig, name: str) -> None:
        # A name and all its ancestors up to the apex exist (empty non-terminals
        # answer NODATA, not NXDOMAIN: RFC 8020).
        while name is not None and name not in self.existing:
            self.existing.add(name)
            if name == zone.origin:
                break
            name = _parent(name)

    def zone_of(self, name: str) -> ZoneConfig | None:
        """The most specific zone containing ``name`` (normalised), or None."""
        for zone in self.zones:
            if name == zone.origin or name.endswith("." + zone.origin):
                return zone
        return None

    def glue(self, names: tuple[str, ...]) -> list[RecordSet]:
        """A/AAAA records we hold for the given names (for the additional section)."""
        out = []
        for name in names:
            node = self.nodes.get(name, {})
            out += [node[t] for t in (1, 28) if t in node]
        return out

    def lookup(self, name: str, qtype: int) -> Match:
        """Resolve a normalised name and type within our zones."""
        zone = self.zone_of(name)
        if zone is None:
            return Match(Kind.REFUSED)
        owner, wildcard = name, None
        if name not in self.existing:
            owner = self._wildcard_owner(name, zone)
            if owner is None:
                return Match(Kind.NXDOMAIN, zone)
            wildcard = owner
        return self._at(zone, owner, qtype, wildcard)

    def closest_encloser(self, name: str) -> str | None:
        """The nearest existing ancestor of a name that does not exist (RFC 4592 3.3.1)."""
        parent = _parent(name)
        while parent is not None and parent not in self.existing:
            parent = _parent(parent)
        return parent

    def _wildcard_owner(self, name: str, zone: ZoneConfig) -> str | None:
        # Only "*." + the closest encloser may synthesise (RFC 4592 3.3.1).
        parent = self.closest_encloser(name)
        if parent is None:
            return None
        candidate = "*." + parent
        if candidate in self.existing:
            return candidate
        return None

    def types_at(self, owner: str, zone: ZoneConfig, signed: bool) -> set[int]:
        """The RR types held at an existing owner name (NSEC bitmaps add RRSIG and NSEC)."""
        types = set(self.nodes.get(owner, {}))
        if owner in self.services:
            types |= {1, 28}
        if owner == zone.origin:
            types |= {QTYPE_SOA, QTYPE_NS} | ({QTYPE_DNSKEY} if signed else set())
        return types

    def _at(self, zone: ZoneConfig, owner: str, qtype: int, wildcard: str | None) -> Match:
        node: Mapping[int, RecordSet] = self.nodes.get(owner, {})
        service = self.services.get(owner)
        if qtype == QTYPE_ANY:
            return Match(Kind.ANY, zone, wildcard=wildcard)
        if owner == zone.origin and qtype in (QTYPE_SOA, QTYPE_NS):
            return Match(Kind.RECORDS, zone, wildcard=wildcard)
        if qtype in node:
            return Match(Kind.RECORDS, zone, records=node[qtype], wildcard=wildcard)
        if QTYPE_CNAME in node:
            return Match(Kind.CNAME, zone, records=node[QTYPE_CNAME], wildcard=wildcard)
        if service is not None and qtype in (1, 28):
            return Match(Kind.SERVICE, zone, service=service, wildcard=wildcard)
        return Match(Kind.NODATA, zone, wildcard=wildcard)

