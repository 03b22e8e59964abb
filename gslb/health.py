"""Health of edge addresses: hysteresis, admin overrides, snapshots.

Three parts, as in gdnsd: *how* to check (`CheckSpec`, from config) is separate
from *what* to check (`Target`, one per address); the prober (probe.py) only
reports raw results; `HealthBoard` applies rise/fall once for all of them, merges the
operator's overrides, keeps history, and publishes a frozen `HealthView` to
subscribers (the answer builders), which rebuild their tables off the query
path. Nothing here runs on the DNS query path.
"""
from __future__ import annotations

import asyncio
import collections
import enum
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

from gslb.model import AdminState, CheckSpec, Config

log = logging.getLogger("gslb.health")

HISTORY = 200
PUBLISH_DELAY = 0.05
CLEARED = ("override cleared;", "config state removed;")
BODY_LIMIT = 65536


class State(enum.Enum):
    UP = "up"
    DOWN = "down"
    DRAIN = "drain"
    UNKNOWN = "unknown"     # not checked yet, or no check: usable, never "down"


@dataclass(frozen=True)
class AddressHealth:
    """Everything known about one edge address, as of one snapshot."""

    site: str
    state: State                     # effective: what the answers use
    reason: str                      # why it is in that state
    since: float                     # when it entered that state (epoch seconds)
    probe: State = State.UNKNOWN     # the checks' own verdict
    forced: str = ""                 # "", "address" or "site": an override decided
    check: str = ""                  # check name, "" when unchecked
    last_ok: bool | None = None
    last_detail: str = ""
    last_latency_ms: float | None = None     # None when the last check failed
    last_checked: float | None = None
    probed: str = ""                         # where the checks go when not the address itself


@dataclass(frozen=True)
class HealthView:
    """A snapshot: per address its state and why. Usable = UP or UNKNOWN."""

    addresses: Mapping[str, AddressHealth] = field(default_factory=dict)
    version: int = 0
    # Load-aware answers (shed.py, fleet/health.py): per address the shed level,
    # 0..shed.STEPS, only where it is above 0; and per site or edge why.
    shed: Mapping[str, int] = field(default_factory=dict)
    shed_notes: Mapping[str, str] = field(default_factory=dict)

    def usable(self, ip: str) -> bool:
        entry = self.addresses.get(ip)
        return entry is None or entry.state in (State.UP, State.UNKNOWN)

    def state(self, ip: str) -> State:
        entry = self.addresses.get(ip)
        return State.UNKNOWN if entry is None else entry.state


@dataclass(frozen=True)
class Change:
    at: float
    site: str
    ip: str
    old: State
    new: State
    reason: str


@dataclass(frozen=True)
class Target:
    """One address to probe and how."""

    ip: str
    site: str
    spec: CheckSpec
    host: str       # where to connect (the address itself, or its `probe` override)
    port: int


def targets(config: Config) -> list[Target]:
    """Every (address, check) pair the config asks for."""
    out = []
    for site in config.sites.values():
        for addr in site.addresses:
            name = addr.check or site.check
            if not name or name not in config.checks:
                continue
            spec = config.checks[name]
            out.append(Target(addr.ip, site.name, spec, addr.probe_host or addr.ip,
                              addr.probe_port or spec.port))
    return out


@dataclass
class _Probe:
    """Mutable per-address probe state, owned by the board."""

    state: State = State.UNKNOWN
    ok_run: int = 0
    fail_run: int = 0
    since: float = 0.0
    reason: str = "not checked yet"
    last_ok: bool | None = None
    last_detail: str = ""
    last_latency_ms: float | None = None
    last_checked: float | None = None


_ADMIN = {AdminState.DOWN: State.DOWN, AdminState.DRAIN: State.DRAIN, AdminState.UP: State.UP}


class HealthBoard:
    """Owns health state; hands out views; tells subscribers on every change."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time,
                 state_file: str | None = None):
        self._clock = clock
        self._config = config
        self._state_file = Path(state_file) if state_file else None
        self._site_override: dict[str, AdminState] = {}
        self._addr_override: dict[str, AdminState] = {}
        self._probes: dict[str, _Probe] = {}
        self._first_round: set[str] = set()
        self._subscribers: list[Callable[[HealthView], None]] = []
        self.result_listeners: list[Callable[[Target, bool, float], None]] = []
        self.history: collections.deque[Change] = collections.deque(maxlen=HISTORY)
        self.change_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._version = 0
        self._pending: asyncio.TimerHandle | None = None
        self._deciders: dict[str, str] = {}       # per address: who decided its state
        self.view = HealthView()
        self._load_overrides()
        self._sync_targets()
        self.view = self._compute()

    # --- subscribers and config ---------------------------------------------------------

    def subscribe(self, callback: Callable[[HealthView], None]) -> None:
        self._subscribers.append(callback)

    @property
    def config(self) -> Config:
        return self._config

    def set_config(self, config: Config) -> None:
        """A reloaded config: new sites, checks and admin states; probe state kept per address."""
        self._config = config
        self._sync_targets()
        self._publish()

    def _sync_targets(self) -> None:
        now = self._clock()
        wanted = {t.ip for t in targets(self._config)}
        for ip in list(self._probes):
            if ip not in wanted:
                del self._probes[ip]
        for ip in wanted - set(self._probes):
            self._probes[ip] = _Probe(since=now)
            self._first_round.add(ip)
        self._first_round &= wanted

    @property
    def first_round_done(self) -> bool:
        return not self._first_round

    def end_first_round(self) -> None:
        """Called by the prober when the first round's deadline passed."""
        if self._first_round:
            self._first_round.clear()
            self._publish()

    # --- probe results ------------------------------------------------------------------

    def record(self, target: Target, ok: bool, detail: str, latency: float) -> None:
        """One raw check result; applies rise/fall and publishes on a state change."""
        probe = self._probes.get(target.ip)
        if probe is None:
            return
        now = self._clock()
        probe.last_ok, probe.last_detail = ok, detail
        # A failed check's time is its timeout or how fast it was refused: not a latency.
        probe.last_latency_ms, probe.last_checked = (latency * 1000 if ok else None), now
        for listener in self.result_listeners:
            listener(target, ok, latency)
        spec = target.spec
        if ok:
            probe.ok_run, probe.fail_run = probe.ok_run + 1, 0
        else:
            probe.fail_run, probe.ok_run = probe.fail_run + 1, 0
        old = probe.state
        if old is State.UNKNOWN:
            # The first result decides directly: nothing flaps through rise/fall at
            # start, and nothing is published as down before the round is complete.
            new = State.UP if ok else State.DOWN
        elif old is State.UP and probe.fail_run >= spec.fall:
            new = State.DOWN
        elif old is State.DOWN and probe.ok_run >= spec.rise:
            new = State.UP
        else:
            new = old
        first = target.ip in self._first_round
        self._first_round.discard(target.ip)
        if new is not old:
            probe.state, probe.since = new, now
            if old is State.UNKNOWN:
                probe.reason = f"first check: {detail}"
            elif new is State.DOWN:
                probe.reason = f"{probe.fail_run} failures in a row (fall {spec.fall}): {detail}"
            else:
                probe.reason = f"{probe.ok_run} successes in a row (rise {spec.rise}): {detail}"
        if first and not self._first_round:
            self._publish()          # the first round just completed: one rebuild for all
        elif new is not old and not self._first_round:
            self._publish_soon()

    def _publish_soon(self) -> None:
        """Publish within PUBLISH_DELAY, once for every change until then.

        Each publication makes every worker rebuild its answer tables; a storm of
        flapping checks must not turn into a rebuild per result. Without a running
        loop (tools, tests) it publishes at once.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._publish()
            return
        if self._pending is None:
            self._pending = loop.call_later(PUBLISH_DELAY, self._publish)

    # --- admin overrides ----------------------------------------------------------------

    def set_site(self, site: str, state: AdminState | None) -> None:
        """Force a whole site up/down/drain; None clears the override."""
        if site not in self._config.sites:
            raise KeyError(f"no site {site!r}")
        self._set(self._site_override, site, state)

    def set_address(self, ip: str, state: AdminState | None) -> None:
        """Force one address up/down/drain; None clears the override."""
        if not any(a.ip == ip for s in self._config.sites.values() for a in s.addresses):
            raise KeyError(f"no edge address {ip}")
        self._set(self._addr_override, ip, state)

    def overrides(self) -> dict[str, dict[str, str]]:
        return {"sites": {k: v.value for k, v in sorted(self._site_override.items())},
                "addresses": {k: v.value for k, v in sorted(self._addr_override.items())}}

    def _set(self, table: dict[str, AdminState], key: str, state: AdminState | None) -> None:
        if state is None:
            table.pop(key, None)
        else:
            table[key] = state
        self._save_overrides()
        self._publish()

    def _load_overrides(self) -> None:
        if self._state_file is None or not self._state_file.exists():
            return   # a missing file counts as empty
        try:
            data = json.loads(self._state_file.read_text())
            self._site_override = {k: AdminState(v) for k, v in data.get("sites", {}).items()}
            self._addr_override = {k: AdminState(v) for k, v in data.get("addresses", {}).items()}
        except (OSError, ValueError, AttributeError) as exc:
            log.error("ignoring unreadable override file %s: %s", self._state_file, exc)

    def _save_overrides(self) -> None:
        if self._state_file is None:
            return
        # Written to a temporary name and renamed: a crash never leaves half a file.
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_name(self._state_file.name + ".tmp")
        tmp.write_text(json.dumps(self.overrides(), indent=1) + "\n")
        os.replace(tmp, self._state_file)

    # --- views --------------------------------------------------------------------------

    def _compute(self) -> HealthView:
        now = self._clock()
        old = self.view.addresses
        gated = bool(self._first_round)
        out: dict[str, AddressHealth] = {}
        deciders: dict[str, str] = {}
        for site in self._config.sites.values():
            for addr in site.addresses:
                probe = self._probes.get(addr.ip)
                state, reason, forced, decider = self._effective(
                    site.name, site.state, addr.ip, addr.state, probe, gated)
                since, reason = self._since_and_reason(
                    old.get(addr.ip), self._deciders.get(addr.ip), state, reason, decider,
                    probe, now)
                deciders[addr.ip] = decider
                out[addr.ip] = AddressHealth(
                    site.name, state, reason, since,
                    probe.state if probe else State.UNKNOWN, forced,
                    addr.check or site.check if probe else "",
                    probe.last_ok if probe else None, probe.last_detail if probe else "",
                    probe.last_latency_ms if probe else None,
                    probe.last_checked if probe else None,
                    _probe_text(addr.probe_host, addr.probe_port) if probe else "")
        self._deciders = deciders
        return HealthView(out, self._version)

    @staticmethod
    def _since_and_reason(previous: AddressHealth | None, decided_by: str | None, state: State,
                          reason: str, decider: str, probe: _Probe | None,
                          now: float) -> tuple[float, str]:
        """When the address entered `state`, and why, as the dashboard shows them.

        The time changes only with the state. When an override (or a config state)
        gives way to the checks, the checks' last word may be old ("first check: ..."
        an hour ago): the reason says the override was cleared, and stays so until
        the checks themselves change the state.
        """
        by_checks = decider == "probe" and probe is not None
        if previous is not None and previous.state is state:
            since = previous.since
        elif by_checks and probe.since and decided_by in (None, "probe", "gated"):
            since = probe.since          # the checks changed it (published a moment later)
        else:
            since = now
        if not by_checks or decided_by is None or decided_by == "gated":
            return since, reason
        if decided_by != "probe":
            what = "override cleared" if decided_by.endswith("override") else \
                "config state removed"
            return since, (f"{what}; the checks say {state.value} "
                           f"(last check: {probe.last_detail})")
        if previous is not None and previous.reason.startswith(CLEARED) \
                and probe.since <= previous.since:
            return since, previous.reason
        return since, reason

    def current(self, base: HealthView | None = None) -> HealthView:
        """The published view (or `base`, the fleet's) with every address's latest check
        result, for display.

        Results that change no state are not published (that would rebuild the
        answers for nothing); this shows them anyway.
        """
        base = base or self.view
        addresses = {}
        for ip, entry in base.addresses.items():
            probe = self._probes.get(ip)
            if probe is not None:
                entry = replace(entry, last_ok=probe.last_ok, last_detail=probe.last_detail,
                                last_latency_ms=probe.last_latency_ms,
                                last_checked=probe.last_checked)
            addresses[ip] = entry
        return HealthView(addresses, base.version, base.shed, base.shed_notes)

    def _effective(self, site: str, site_state: AdminState, ip: str, addr_state: AdminState,
                   probe: _Probe | None, gated: bool) -> tuple[State, str, str, str]:
        """(state, reason, forced, who decided): the most specific statement wins --
        runtime address override, runtime site override, the config's address and
        site states, then the checks."""
        if ip in self._addr_override:
            s = self._addr_override[ip]
            return (_ADMIN[s], f"forced {s.value} by an operator (address)", "address",
                    "address-override")
        if site in self._site_override:
            s = self._site_override[site]
            return (_ADMIN[s], f"forced {s.value} by an operator (site {site})", "site",
                    "site-override")
        if addr_state is not AdminState.UP:
            return _ADMIN[addr_state], f"{addr_state.value} in config (address)", "", "config"
        if site_state is not AdminState.UP:
            return _ADMIN[site_state], f"{site_state.value} in config (site)", "", "config"
        if probe is None:
            return State.UNKNOWN, "no health check configured", "", "unchecked"
        if gated or probe.state is State.UNKNOWN:
            return State.UNKNOWN, "first round of checks not complete", "", "gated"
        return probe.state, probe.reason, "", "probe"

    def _publish(self) -> None:
        if self._pending is not None:
            self._pending.cancel()       # this publication covers the pending one
            self._pending = None
        self._version += 1
        before = self.view.addresses
        self.view = self._compute()
        changes = sorted((Change(entry.since, entry.site, ip, old.state, entry.state,
                                 entry.reason)
                          for ip, entry in self.view.addresses.items()
                          if (old := before.get(ip)) is not None and old.state is not entry.state),
                         key=lambda c: c.at)      # one publication may carry several
        for change in changes:
            self.history.append(change)
            self.change_counts[(change.ip, change.new.value)] += 1
            level = logging.WARNING if change.new is State.DOWN else logging.INFO
            log.log(level, "%s (site %s): %s -> %s: %s", change.ip, change.site,
                    change.old.value, change.new.value, change.reason)
        for callback in list(self._subscribers):
            callback(self.view)


# --- display ---------------------------------------------------------------------------------


def url_host(host: str) -> str:
    """A host as it goes into a URL or HOST:PORT (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def _probe_text(host: str, port: int) -> str:
    """An address's `probe:` as written (HOST, HOST:PORT, [V6]:PORT); "" without one."""
    if not host:
        return f":{port}" if port else ""
    return f"{url_host(host)}:{port}" if port else host


def view_to_json(view: HealthView) -> dict:
    """A JSON-able form of a view, for the API."""
    return {ip: {"site": h.site, "state": h.state.value, "reason": h.reason, "since": h.since,
                 "probe": h.probe.value, "forced": h.forced, "check": h.check,
                 "last_ok": h.last_ok, "last_detail": h.last_detail,
                 "last_latency_ms": h.last_latency_ms, "last_checked": h.last_checked,
                 "probed": h.probed}
            for ip, h in view.addresses.items()}


def view_from_json(data: Mapping[str, Mapping]) -> HealthView:
    """The inverse of `view_to_json` (what `gslb explain` reads from a running server)."""
    return HealthView({ip: AddressHealth(
        str(h["site"]), State(h["state"]), str(h.get("reason", "")), float(h.get("since") or 0),
        State(h.get("probe", "unknown")), str(h.get("forced", "")), str(h.get("check", "")),
        h.get("last_ok"), str(h.get("last_detail", "")), h.get("last_latency_ms"),
        h.get("last_checked"), str(h.get("probed", "")))
        for ip, h in data.items()})


def site_summary(view: HealthView, ips: list[str]) -> dict:
    """A site's overall state from its addresses': up, down, drain, degraded (some usable,
    some not) or unknown (usable but not checked yet); with the usable count."""
    states = [view.state(ip) for ip in ips]
    usable = sum(1 for s in states if s in (State.UP, State.UNKNOWN))
    if states and all(s is State.UP for s in states):
        overall = "up"
    elif usable == len(states):
        overall = "unknown"
    elif usable:
        overall = "degraded"
    elif all(s is State.DRAIN for s in states):
        overall = "drain"
    else:
        overall = "down"
    return {"state": overall, "usable": usable, "addresses": len(states)}

