"""One nameserver's view of the fleet's health: what the answers use with the store.

Inputs, each folded in off the query path as it arrives:
  - this nameserver's own probes (the `HealthBoard` view);
  - the other nameservers' verdicts (their node records), combined by quorum.py;
  - the edges' node records: the lease (a record that disappears is an edge
    gone), the edge's own verdict (`draining`), its load and capacity;
  - drains persisted in the store (`config/drain/{edge}`, `cdnctl drain`);
  - whether the store answers at all.

The most specific statement wins, as in health.py: the operator's overrides and
the config's states, then a drain, the edge's own `draining`, a lost lease (and,
once the lease is back, probes that must pass again: `rise` successes here),
then the observers' quorum. Load gives each address a shed level (shed.py).

With the store away nothing here changes by itself: peers' verdicts are set
aside (this nameserver follows its own probes), leases and load are frozen as
last seen, so an outage of the store changes no answer that health did not.
A new view is published (and the answer tables rebuilt) only when an address's
usability or shed level changes.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from cdnkit.nodes import Node

from gslb import capacity as cap
from gslb import shed
from gslb.health import AddressHealth, HealthView, State, Target
from gslb.model import AdminState, Capacity, Config, Site
from gslb.fleet.quorum import combine, needed

log = logging.getLogger("gslb.fleet.health")

HISTORY = 200


@dataclass(frozen=True)
class EdgeReport:
    """An edge as its node record describes it."""

    id: str
    addresses: tuple[str, ...]
    state: str = "serving"
    load: Mapping[str, float] = field(default_factory=dict)
    capacity: Capacity | None = None
    idle: bool = False
    at: float = 0.0
    applied: int = 0
    version: str = ""
    origins: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, node: Node) -> "EdgeReport":
        return cls(node.id, tuple(node.addresses), node.state or "serving", dict(node.load),
                   cap.capacity_of(node.capacity), node.idle, node.at, node.applied,
                   node.version, dict(node.origins))


@dataclass(frozen=True)
class ShedChange:
    at: float
    what: str          # "site fra" or "edge edge-fra"
    old: int
    new: int
    why: str


def _canonical(address: str) -> str:
    import ipaddress
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address


class FleetHealth:
    """Combines the inputs above into the `HealthView` the answers are built from."""

    def __init__(self, me: str, config: Config, clock: Callable[[], float] = time.time):
        self.me = me
        self.config = config
        self._clock = clock
        self.local = HealthView()
        self.store_ok = False
        self.store_since = clock()
        self.peers: dict[str, Mapping[str, str]] = {}
        self.edges: dict[str, EdgeReport] = {}
        self.drains: dict[str, Mapping[str, Any]] = {}
        self.owner: dict[str, str] = {}                 # address -> edge id
        self.lost: dict[str, tuple[str, float]] = {}    # address -> (edge, since)
        self.waiting: dict[str, list[Any]] = {}         # address -> [edge, since, passes]
        self.controllers: dict[str, shed.Controller] = {}
        self.utilization: dict[str, tuple[float, str]] = {}   # "site X" / "edge Y" -> (u, why)
        self.history: collections.deque[ShedChange] = collections.deque(maxlen=HISTORY)
        self.shed_changes = 0
        self.view = HealthView()
        self._published: tuple = ()
        self._version = 0
        self._subscribers: list[Callable[[HealthView], None]] = []
        self._index()

    # --- inputs --------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[HealthView], None]) -> None:
        self._subscribers.append(callback)

    def set_config(self, config: Config) -> None:
        self.config = config
        self._index()
        self.refresh()

    def set_local(self, view: HealthView) -> None:
        """This nameserver's own probes (a HealthBoard subscriber)."""
        self.local = view
        self.refresh()

    def set_store(self, ok: bool) -> None:
        if ok == self.store_ok:
            return
        self.store_ok, self.store_since = ok, self._clock()
        if ok:
            log.info("the store answers again: combining every observer's verdicts")
        else:
            log.warning("the store is unreachable: following this nameserver's own probes; "
                        "leases, load and drains as last seen")
        self.refresh()

    def set_nodes(self, nodes: Mapping[str, Node],
                  drains: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Every node record (a new state of `nodes/`), and the edges drained in the
        store (`config/drain/`, `cdnctl drain`: id -> {at, by}) if given."""
        now = self._clock()
        if drains is not None:
            self.drains = dict(drains)
        peers = {n.id: n.verdicts for n in nodes.values()
                 if n.kind == "nameserver" and n.id != self.me}
        edges = {n.id: EdgeReport.of(n) for n in nodes.values() if n.kind == "edge"}
        ours = set(self._site_of)
        for edge_id, old in self.edges.items():
            if edge_id in edges:
                continue
            for ip in ours.intersection(map(_canonical, old.addresses)):
                self.lost[ip] = (edge_id, now)
                self.waiting.pop(ip, None)
            log.warning("edge %s: its lease is gone; its addresses leave the answers", edge_id)
        for edge_id, report in edges.items():
            for ip in ours.intersection(map(_canonical, report.addresses)):
                self.owner[ip] = edge_id
                if ip in self.lost:
                    del self.lost[ip]
                    entry = self.local.addresses.get(ip)
                    if entry is not None and entry.check:
                        self.waiting[ip] = [edge_id, now, 0]
        self.peers, self.edges = peers, edges
        self._update_load(now)
        self.refresh()

    def on_result(self, target: Target, ok: bool, latency: float) -> None:
        """A raw probe result here: counts the passes a returning lease waits for."""
        waiting = self.waiting.get(target.ip)
        if waiting is None:
            return
        waiting[2] = waiting[2] + 1 if ok else 0
        if waiting[2] >= target.spec.rise:
            del self.waiting[target.ip]
            self.refresh()

    def tick(self) -> None:
        """Once a second: lets a shed level come down when its hold time has passed."""
        if self.store_ok and self._update_load(self._clock()):
            self.refresh()

    # --- load ----------------------------------------------------------------------------

    def _marks(self, site: Site) -> shed.Watermarks:
        health = self.config.health
        return shed.Watermarks(site.shed_low, site.shed_high, health.shed_band,
                               health.shed_hold)

    def _controller(self, key: str, site: Site) -> shed.Controller:
        found = self.controllers.get(key)
        marks = self._marks(site)
        if found is None or found.marks != marks:
            level = found.level if found else 0
            found = self.controllers[key] = shed.Controller(marks)
            found.level = level
        return found

    def _feed(self, key: str, site: Site, load: Mapping[str, float],
              capacity: Capacity | None, now: float) -> bool:
        used, part = cap.utilization(load, capacity)
        ctl = self._controller(key, site)
        old = ctl.level
        changed = ctl.update(used, now)
        why = (f"load {used:.0%} of capacity ({cap.describe(load, capacity, part)}); "
               f"shed_low {site.shed_low:.0%}, shed_high {site.shed_high:.0%}")
        self.utilization[key] = (used, why)
        if changed:
            self.shed_changes += 1
            self.history.append(ShedChange(now, key, old, ctl.level, why))
            log.info("%s: sheds %d%% of its client networks (was %d%%): %s", key,
                     shed.share(ctl.level) * 100, shed.share(old) * 100, why)
        return changed

    def _update_load(self, now: float) -> bool:
        changed = False
        by_site: dict[str, list[EdgeReport]] = {}
        for report in self.edges.values():
            if report.state == "draining" or report.id in self.drains:
                continue
            site = next((self._site_of[ip] for ip in map(_canonical, report.addresses)
                         if ip in self._site_of), None)
            if site is None:
                continue
            by_site.setdefault(site, []).append(report)
            if report.capacity is not None:
                changed |= self._feed(f"edge {report.id}", self.config.sites[site],
                                      report.load, report.capacity, now)
        for name, reports in by_site.items():
            site = self.config.sites[name]
            capacity = site.capacity
            if capacity is None:
                for report in reports:
                    capacity = cap.add(capacity, report.capacity)
            if capacity is None:
                continue
            total: dict[str, float] = {}
            for report in reports:
                for part, value in report.load.items():
                    total[part] = total.get(part, 0.0) + value
            changed |= self._feed(f"site {name}", site, total, capacity, now)
        live = {f"site {n}" for n in by_site} | {f"edge {r.id}" for rs in by_site.values()
                                                 for r in rs if r.capacity is not None}
        for key in set(self.controllers) - live:     # no load reported any more
            level = self.controllers.pop(key).level
            if level:
                self.history.append(ShedChange(now, key, level, 0, "no load reported"))
                changed = True
            self.utilization.pop(key, None)
        return changed

    # --- the view ------------------------------------------------------------------------

    def _index(self) -> None:
        self._site_of = {a.ip: s.name for s in self.config.sites.values() for a in s.addresses}

    def vote(self, entry: AddressHealth) -> str:
        """This nameserver's verdict on an address as it publishes it: its probes only."""
        if not entry.check:
            return State.UNKNOWN.value
        if entry.forced or entry.state is State.DRAIN:
            return entry.probe.value
        return entry.state.value if entry.state in (State.UP, State.DOWN) else "unknown"

    def verdicts(self) -> dict[str, str]:
        """Every checked address -> up | down | unknown, for this nameserver's record."""
        return {ip: self.vote(e) for ip, e in self.local.addresses.items() if e.check}

    def observers(self, ip: str) -> dict[str, str]:
        """Every observer's verdict on `ip` that counts now (the peers' only with the store)."""
        entry = self.local.addresses.get(ip)
        out = {self.me: self.vote(entry) if entry else "unknown"}
        if self.store_ok:
            for peer, verdicts in sorted(self.peers.items()):
                if ip in verdicts:
                    out[peer] = str(verdicts[ip])
        return out

    def _combined(self, site: Site, ip: str, addr_state: AdminState, now: float,
                  entry: AddressHealth) -> tuple[State, str]:
        if entry.forced or addr_state is not AdminState.UP or site.state is not AdminState.UP:
            return entry.state, entry.reason
        edge = self.owner.get(ip, "")
        report = self.edges.get(edge)
        if edge in self.drains:
            by = self.drains[edge].get("by", "")
            return State.DRAIN, f"edge {edge} drained in the store" + (f" by {by}" if by else "")
        if report is not None and report.state == "draining":
            return State.DRAIN, f"edge {edge} reports draining"
        if ip in self.lost:
            gone, since = self.lost[ip]
            return State.DOWN, (f"lease of edge {gone} lost {now - since:.0f} s ago (no record "
                                "in the store)")
        if ip in self.waiting:
            back, since, passes = self.waiting[ip]
            return State.DOWN, (f"lease of edge {back} is back; waiting for probes to pass "
                                f"({passes} so far)")
        verdict = combine(self.observers(ip), self.config.health.quorum, self.me, entry.reason)
        state, reason = verdict.state, verdict.reason
        if state is State.UNKNOWN:
            state, reason = entry.state, entry.reason
        if report is not None and report.state == "degraded":
            backing = ", ".join(sorted(report.origins)) or "an origin"
            reason += f"; edge {edge} reports degraded ({backing} backing off)"
        return state, reason

    def _compute(self) -> HealthView:
        now = self._clock()
        old = self.view.addresses
        out: dict[str, AddressHealth] = {}
        levels: dict[str, int] = {}
        notes: dict[str, str] = {}
        for site in self.config.sites.values():
            site_ctl = self.controllers.get(f"site {site.name}")
            site_level = site_ctl.level if site_ctl else 0
            why = [f"site {site.name}: {self.utilization[f'site {site.name}'][1]}"] \
                if site_level else []
            for addr in site.addresses:
                entry = self.local.addresses.get(addr.ip) or AddressHealth(
                    site.name, State.UNKNOWN, "no health check configured", now)
                state, reason = self._combined(site, addr.ip, addr.state, now, entry)
                previous = old.get(addr.ip)
                since = entry.since if state is entry.state else (
                    previous.since if previous and previous.state is state else now)
                out[addr.ip] = replace(entry, state=state, reason=reason, since=since)
                edge_ctl = self.controllers.get(f"edge {self.owner.get(addr.ip, '')}")
                level = max(site_level, edge_ctl.level if edge_ctl else 0)
                if edge_ctl and edge_ctl.level:
                    edge = self.owner[addr.ip]
                    why.append(f"edge {edge}: {self.utilization[f'edge {edge}'][1]}")
                if level and state in (State.UP, State.UNKNOWN):
                    levels[addr.ip] = level
            if why:
                notes[site.name] = "; ".join(dict.fromkeys(why))
        return HealthView(out, self._version, levels, notes)

    def refresh(self) -> None:
        """Recompute; tell subscribers when what the answers read has changed."""
        view = self._compute()
        key = tuple((ip, view.usable(ip), view.shed.get(ip, 0)) for ip in view.addresses)
        if key == self._published:
            self.view = replace(view, version=self.view.version)
            return
        self._published = key
        self._version += 1
        self.view = replace(view, version=self._version)
        for callback in list(self._subscribers):
            callback(self.view)

    def status(self) -> dict[str, Any]:
        """For the dashboard and /metrics: where the verdicts come from now."""
        observers = [self.me] + (sorted(self.peers) if self.store_ok else [])
        return {"store": "up" if self.store_ok else "down", "since": self.store_since,
                "source": "quorum" if self.store_ok else "local probes only (store unreachable)",
                "observers": observers, "quorum": self.config.health.quorum or "majority",
                "needed": needed(self.config.health.quorum, len(observers))}
