"""Precomputed wire answers, rebuilt when health, config or signing keys change.

The server asks an `AnswerTable` for the reply to a question key (the query's
name + type + class, lower-cased, exactly as on the wire). Static answers come
back as a `Reply`; service names come back as a `Dynamic` that the server
completes with the client's `Decision`, again from a cache. Each table is built
for one (config, health view, zone signers) and never changes afterwards except
by filling its memo; a change builds a new table and the server swaps one
reference. Replies themselves are made by replies.py.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from gslb import select
from gslb.dnssec.sign import ZoneSigner
from gslb.fleet.gate import OPEN, Gate, restrict
from gslb.geo import Decision
from gslb.health import HealthView
from gslb.model import Config, Service
from gslb.replies import REFUSED, Dynamic, Reply, ReplyBuilder, Variant
from gslb.select import Selection, families
from gslb.shed import STEPS, ClientHealth
from gslb.wire import QTYPE_A, QTYPE_AAAA, decode_qkey
from gslb.zone import ZoneIndex

__all__ = ["AnswerTable", "Dynamic", "Reply", "Variant", "REFUSED"]

MEMO_LIMIT = 100_000   # distinct question keys kept; a random-name flood only clears it


class AnswerTable:
    """Replies for one (config, health view, signers). Filled lazily, never mutated otherwise.

    The build is a function of the config and the health view only (plus the
    signers, which depend on the clock in whole signing periods), so a filter
    on which edges may answer a name can be applied in `_build_service`.
    """

    def __init__(self, config: Config, zones: ZoneIndex, health: HealthView,
                 previous: "AnswerTable | None" = None,
                 signers: dict[str, ZoneSigner] | None = None, presign: bool = True,
                 processes: int = 1, gate: Gate = OPEN):
        self.config = config
        self.zones = zones
        self.health = health
        self.signers = signers or {}
        self.gate = gate
        self._gated_sites: dict[frozenset[str], dict] = {}
        self.builder = ReplyBuilder(zones, self.signers, gate)
        self.entries: dict[bytes, Reply | Dynamic] = {}
        self.dynamic: dict[tuple, Reply] = {}
        self._selections: dict[tuple, tuple[select.Selection, bool]] = {}
        self._seen: dict[tuple, tuple[Dynamic, Decision]] = {}
        self._site_nets = any(n.sites for n in config.nets)
        # Sites with an address that sheds some client networks (shed.py): their
        # pools get one selection per client bucket.
        self.shedding = frozenset(health.addresses[ip].site for ip in health.shed
                                  if ip in health.addresses)
        if previous is not None and previous.config is config and previous.gate is gate:
            # Health changed (or a signing period began): rebuild every answer the
            # old table had served, now, so the query path keeps hitting
            # precomputed (and presigned) bytes. Pools none of whose sites changed
            # keep their answers.
            same_signers = previous.signers == self.signers
            if same_signers:
                self.entries = dict(previous.entries)
            else:                   # a new signing period or key state: sign it all again
                if self.signers and presign:
                    self.presign(processes)
                for qkey in list(previous.entries)[:MEMO_LIMIT // 10]:
                    self.entries[qkey] = self._resolve_key(qkey)
            changed = changed_sites(previous.health, health) if same_signers else None
            if changed is not None:
                self._selections = {k: v for k, v in previous._selections.items()
                                    if changed.isdisjoint(k[0])}
            for key, (dyn, decision) in previous._seen.items():
                self._seen[key] = (dyn, decision)
                if changed is not None and changed.isdisjoint(dyn.service.pool):
                    self.dynamic[key] = previous.dynamic[key]
                else:
                    self.dynamic[key] = self._build_service(dyn, decision)
        elif self.signers and presign:
            self.presign(processes)

    def _resolve_key(self, qkey: bytes) -> Reply | Dynamic:
        name, qtype = decode_qkey(qkey)
        return self.resolve(name, qtype, qkey[:-4])

    def entry(self, qkey: bytes, decode: Callable[[bytes], tuple[str, int]]) -> Reply | Dynamic:
        """Reply (or Dynamic) for a question key; memoised."""
        found = self.entries.get(qkey)
        if found is not None:
            return found
        name, qtype = decode(qkey)
        found = self.resolve(name, qtype, qkey[:-4])
        if len(self.entries) >= MEMO_LIMIT:
            self.entries.clear()
        self.entries[qkey] = found
        return found

    def resolve(self, name: str, qtype: int, qname: bytes | None = None) -> Reply | Dynamic:
        return self.builder.resolve(name, qtype, qname)

    def service(self, dyn: Dynamic, decision: Decision) -> Reply:
        """The reply for a service name and a client decision; memoised per bucket."""
        key = (dyn.service.name, dyn.qtype, decision.key, dyn.layout, dyn.allowed)
        found = self.dynamic.get(key)
        if found is None:
            found = self._build_service(dyn, decision)
            if len(self.dynamic) >= MEMO_LIMIT:
                self.dynamic.clear()
                self._seen.clear()
            self.dynamic[key] = found
            self._seen[key] = (dyn, decision)
        if type(found) is tuple:        # a pool that sheds: one reply per client bucket
            return found[decision.bucket]
        return found

    def _build_service(self, dyn: Dynamic, decision: Decision) -> Reply | tuple[Reply, ...]:
        choices = self._selection(dyn.service, dyn.qtype, decision, dyn.allowed)
        if len(choices) == 1:
            return self.builder.service_reply(dyn, *choices[0])
        replies: dict[int, Reply] = {}          # buckets that select alike share a reply
        for sel, dependent in choices:
            if id(sel) not in replies:
                replies[id(sel)] = self.builder.service_reply(dyn, sel, dependent)
        return tuple(replies[id(sel)] for sel, _ in choices)

    def _selection(self, svc: Service, qtype: int, decision: Decision,
                   allowed: frozenset[str] | None = None
                   ) -> tuple[tuple[select.Selection, bool], ...]:
        """The selection for a service and client, shared by services that select alike.

        Everything selection reads is in the key: the service's settings but not
        its name, the client's decision bucket, the family, and the edges the
        gate allows for a customer name (gate.py). One (selection, client
        dependent) pair, or one per shed bucket when a site of the pool sheds.
        """
        key = (svc.pool, svc.algorithm, svc.answers, svc.ttl, svc.ip_version, svc.all_down,
               svc.fallback, qtype, decision.key, allowed)
        found = self._selections.get(key)
        if found is None:
            sites = self.config.sites
            if allowed is not None:
                sites = self._gated_sites.get(allowed) or self._gated_sites.setdefault(
                    allowed, restrict(sites, allowed))
            ranked = select.rank(svc, sites, decision)
            family = 4 if qtype == QTYPE_A else 6
            plain = select.select(svc, ranked, family, self.health)
            if self.shedding.isdisjoint(svc.pool):
                found = ((plain, select.depends_on_client(svc, self._site_nets)),)
            else:
                found = shed_selections(svc, ranked, family, self.health, plain)
            if len(self._selections) >= MEMO_LIMIT:
                self._selections.clear()
            self._selections[key] = found
        return found

    # --- signing ahead -----------------------------------------------------------------

    def presign(self, processes: int = 1) -> int:
        """Sign, ahead of any query, every RRset the signed zones can answer with.

        Static RRsets, apex SOA/NS/DNSKEY, each existing name's NODATA NSEC, and
        for each service every address set a site (or the fallback) can give,
        with all addresses up. Later tables reuse these signatures through the
        signers' caches. Returns the number of signatures made.
        """
        before = sum(s.signatures for s in self.signers.values())
        zones = self.zones
        for zone in zones.zones:
            if zone.origin not in self.signers:
                continue
            for name in sorted(n for n in zones.existing if zones.zone_of(n) is zone):
                if name in zones.services and name not in zones.nodes:
                    # A/AAAA come below; other types at a service name (a rare NODATA)
                    # are signed at their first query: 10k services, 10k signatures fewer.
                    continue
                for qtype in sorted(zones.types_at(name, zone, True)) or [QTYPE_A]:
                    self.resolve(name, qtype)
                self.resolve(name, 0xFF00)          # a type nobody has: the NODATA proof
        batches: dict[str, list] = {}
        for svc in self.config.services:
            zone = zones.zone_of(svc.name)
            signer = self.signers.get(zone.origin) if zone else None
            if signer is None:
                continue
            batch = batches.setdefault(zone.origin, [])
            for qtype, family in ((QTYPE_A, 4), (QTYPE_AAAA, 6)):
                dyn = Dynamic(svc, qtype, zone)
                if family not in families(svc.ip_version):     # always NODATA
                    self.builder.service_reply(dyn, select.Selection((), None, svc.ttl), False)
                    continue
                sets = [tuple(a.ip for a in self.config.sites[s].family(family))
                        for s in svc.pool] + [tuple(a.ip for a in svc.fallback
                                                    if a.version == family)]
                for addrs in sets:
                    if not addrs:
                        continue
                    for rotation in select._rotations(list(addrs), svc.answers):
                        batch.append(self.builder.service_rrset(dyn, svc.ttl, rotation))
        for origin, rrsets in batches.items():
            self.signers[origin].sign_all(rrsets, processes)
        return sum(s.signatures for s in self.signers.values()) - before


def changed_sites(old: HealthView, new: HealthView) -> frozenset[str]:
    """Sites with an address whose usability or shed level differs between two views."""
    out = set()
    for ip, entry in new.addresses.items():
        before = old.addresses.get(ip)
        if (before is None or before.site != entry.site or old.usable(ip) != new.usable(ip)
                or old.shed.get(ip, 0) != new.shed.get(ip, 0)):
            out.add(entry.site)
    out.update(old.addresses[ip].site for ip in old.addresses.keys() - new.addresses.keys())
    return frozenset(out)


def shed_selections(svc: Service, ranked: tuple[select.Ranked, ...], family: int,
                    health: HealthView, plain: Selection) -> tuple[tuple[Selection, bool], ...]:
    """One selection per client bucket, with what sheds that bucket left out.

    A bucket that every usable site sheds is answered as without shedding:
    load moves clients between sites, it never leaves them without an answer.
    Buckets that see the same addresses shed share one selection object.
    """
    by_shed: dict[frozenset[str], Selection] = {}
    out = []
    for client in range(STEPS):
        view = ClientHealth(health, client)
        sel = by_shed.get(view._shed)
        if sel is None:
            sel = select.select(svc, ranked, family, view)
            if sel.all_down and not plain.all_down:
                sel = replace(plain, notes=plain.notes + (
                    "every usable site sheds this client network: answered as without "
                    "shedding",))
            elif sel.variants != plain.variants:
                why = "; ".join(health.shed_notes.get(site, site) for site in
                                sorted({health.addresses[ip].site for ip in view._shed}))
                sel = replace(sel, notes=sel.notes + (
                    f"shed: this client network (bucket {client}) is sent away from "
                    f"{plain.site or ', '.join(plain.variants[0])}: {why}",))
            by_shed[view._shed] = sel
        out.append((sel, True))
    return tuple(out)
