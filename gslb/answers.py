"""Precomputed wire answers, rebuilt when health or config changes.

The server asks an `AnswerTable` for the reply to a question key (the query's
name + type + class, lower-cased, exactly as on the wire). Static answers come
back as a `Reply`; service names come back as a `Dynamic` that the server
completes with the client's `Decision`, again from a cache. Each table is built
for one (config, health view) and never changes afterwards except by filling
its memo; a change builds a new table and the server swaps one reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import select
from .gate import OPEN, Gate, restrict
from .geo import Decision
from .health import HealthView
from .model import Config, RecordSet, Service, ZoneConfig
from .wire import (
    POINTER_TO_QNAME,
    QTYPE_A,
    QTYPE_HINFO,
    QTYPE_NS,
    QTYPE_SOA,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    address_rdata,
    counts,
    encode_name,
    hinfo_rdata,
    rr,
    soa_rdata,
)
from .zone import Kind, Match, ZoneIndex

MEMO_LIMIT = 100_000   # distinct question keys kept; a random-name flood only clears it


@dataclass(frozen=True, slots=True)
class Variant:
    """Everything after the question, plus the header counts with and without OPT."""

    body: bytes
    counts: bytes
    counts_opt: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    rcode: int
    aa: bool
    variants: tuple[Variant, ...]
    client_dependent: bool = False      # ECS scope = decision network, else 0
    service: str | None = None
    selection: select.Selection | None = None


@dataclass(frozen=True, slots=True)
class Dynamic:
    """A service name: the answer depends on where the client is."""

    service: Service
    qtype: int
    zone: ZoneConfig
    allowed: frozenset[str] | None = None     # a customer name: only these edges (gate.py)


def _variant(answer: list[bytes], authority: list[bytes] = (), additional: list[bytes] = ()) -> Variant:
    body = b"".join(answer) + b"".join(authority) + b"".join(additional)
    an, ns, ar = len(answer), len(authority), len(additional)
    return Variant(body, counts(1, an, ns, ar), counts(1, an, ns, ar + 1))


def _soa_rr(zone: ZoneConfig, ttl: int) -> bytes:
    s = zone.soa
    return rr(encode_name(zone.origin), QTYPE_SOA, ttl,
              soa_rdata(s.mname, s.rname, s.serial, s.refresh, s.retry, s.expire, s.minimum))


def _rrset(rs: RecordSet) -> list[bytes]:
    return [rr(POINTER_TO_QNAME, rs.rtype, rs.ttl, data) for data in rs.rdata]


def _glue(zones: ZoneIndex, names: tuple[str, ...]) -> list[bytes]:
    out: list[bytes] = []
    for rs in zones.glue(names):
        owner = encode_name(rs.name)
        out += [rr(owner, rs.rtype, rs.ttl, data) for data in rs.rdata]
    return out


def negative(zone: ZoneConfig, rcode: int, ttl: int | None = None) -> Reply:
    """NXDOMAIN or NODATA with the zone's SOA in authority.

    RFC 2308: the negative TTL is the smaller of the SOA's TTL and MINIMUM; a
    computed NODATA (serve_none, policy) may ask for a shorter one still.
    """
    neg_ttl = min(zone.soa.ttl, zone.soa.minimum, ttl if ttl is not None else zone.soa.ttl)
    return Reply(rcode, True, (_variant([], [_soa_rr(zone, neg_ttl)]),))


REFUSED = Reply(RCODE_REFUSED, False, (_variant([]),))


def static_reply(zones: ZoneIndex, match: Match, qtype: int) -> Reply:
    """The reply for any match that does not depend on the client."""
    zone = match.zone
    if match.kind is Kind.REFUSED or zone is None:
        return REFUSED
    if match.kind is Kind.NXDOMAIN:
        return negative(zone, RCODE_NXDOMAIN)
    if match.kind is Kind.ANY:
        # RFC 8482: answer ANY with one small synthesised RRset.
        return Reply(RCODE_NOERROR, True, (_variant([rr(POINTER_TO_QNAME, QTYPE_HINFO, zone.ttl,
                                                          hinfo_rdata("RFC8482", ""))]),))
    if match.records is not None:
        return Reply(RCODE_NOERROR, True, (_variant(_rrset(match.records)),))
    if match.kind is Kind.RECORDS and qtype == QTYPE_SOA:
        soa = _soa_rr(zone, zone.soa.ttl)
        owner_len = len(encode_name(zone.origin))
        return Reply(RCODE_NOERROR, True, (_variant([POINTER_TO_QNAME + soa[owner_len:]]),))
    if match.kind is Kind.RECORDS and qtype == QTYPE_NS:
        ns = [rr(POINTER_TO_QNAME, QTYPE_NS, zone.soa.ttl, encode_name(n)) for n in zone.ns]
        return Reply(RCODE_NOERROR, True, (_variant(ns, [], _glue(zones, zone.ns)),))
    return negative(zone, RCODE_NOERROR)


def service_reply(dyn: Dynamic, sel: select.Selection, dependent: bool) -> Reply:
    """Wire reply for a selection (NODATA when it has no addresses)."""
    if not sel.variants:
        zone = dyn.zone
        neg = negative(zone, RCODE_NOERROR, sel.ttl)
        return Reply(neg.rcode, True, neg.variants, dependent, dyn.service.name, sel)
    variants = tuple(
        _variant([rr(POINTER_TO_QNAME, dyn.qtype, sel.ttl, address_rdata(ip)) for ip in addrs])
        for addrs in sel.variants)
    return Reply(RCODE_NOERROR, True, variants, dependent, dyn.service.name, sel)


class AnswerTable:
    """Replies for one (config, health view). Filled lazily, never mutated otherwise."""

    def __init__(self, config: Config, zones: ZoneIndex, health: HealthView,
                 previous: "AnswerTable | None" = None, gate: Gate = OPEN):
        self.config = config
        self.zones = zones
        self.health = health
        self.gate = gate
        self._gated_sites: dict[frozenset[str], dict] = {}
        self.entries: dict[bytes, Reply | Dynamic] = {}
        self.dynamic: dict[tuple, Reply] = {}
        self._seen: dict[tuple, tuple[Dynamic, Decision]] = {}
        self._site_nets = any(n.sites for n in config.nets)
        if previous is not None and previous.config is config and previous.gate is gate:
            # Health changed: rebuild every answer the old table had served, now,
            # so the query path keeps hitting precomputed bytes.
            self.entries = dict(previous.entries)
            self._seen = dict(previous._seen)
            for key, (dyn, decision) in self._seen.items():
                self.dynamic[key] = self._build_service(dyn, decision)

    def entry(self, qkey: bytes, decode: Callable[[bytes], tuple[str, int]]) -> Reply | Dynamic:
        """Reply (or Dynamic) for a question key; memoised."""
        found = self.entries.get(qkey)
        if found is not None:
            return found
        name, qtype = decode(qkey)
        found = self.resolve(name, qtype)
        if len(self.entries) >= MEMO_LIMIT:
            self.entries.clear()
        self.entries[qkey] = found
        return found

    def resolve(self, name: str, qtype: int) -> Reply | Dynamic:
        match = self.zones.lookup(name, qtype)
        allowed = self.gate.allowed(name)
        if self.gate.active and match.wildcard and match.zone is not None and not allowed:
            return negative(match.zone, RCODE_NXDOMAIN)   # no edge serves this name (gate.py)
        if match.kind is Kind.SERVICE and match.service is not None and match.zone is not None:
            if allowed is not None and not allowed:
                return negative(match.zone, RCODE_NOERROR)
            return Dynamic(match.service, qtype, match.zone, allowed)
        return static_reply(self.zones, match, qtype)

    def service(self, dyn: Dynamic, decision: Decision) -> Reply:
        """The reply for a service name and a client decision; memoised per bucket."""
        key = (dyn.service.name, dyn.qtype, decision.key, dyn.allowed)
        found = self.dynamic.get(key)
        if found is None:
            found = self._build_service(dyn, decision)
            if len(self.dynamic) >= MEMO_LIMIT:
                self.dynamic.clear()
                self._seen.clear()
            self.dynamic[key] = found
            self._seen[key] = (dyn, decision)
        return found

    def _build_service(self, dyn: Dynamic, decision: Decision) -> Reply:
        sites = self.config.sites
        if dyn.allowed is not None:
            sites = self._gated_sites.get(dyn.allowed) or self._gated_sites.setdefault(
                dyn.allowed, restrict(sites, dyn.allowed))
        ranked = select.rank(dyn.service, sites, decision)
        family = 4 if dyn.qtype == QTYPE_A else 6
        sel = select.select(dyn.service, ranked, family, self.health)
        depends = select.depends_on_client(dyn.service, self._site_nets)
        return service_reply(dyn, sel, depends)

