"""Health of edge addresses as the answer builder sees it.

The selection code only ever reads a frozen `HealthView`. `HealthBoard` is the
in-process API that owns the mutable state: the config's admin states, runtime
overrides and (later) probe results feed it, and every change produces a new
view and notifies subscribers, which rebuild their answers off the query path.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from .model import AdminState, Config


class State(enum.Enum):
    UP = "up"
    DOWN = "down"
    DRAIN = "drain"
    UNKNOWN = "unknown"     # not checked yet: counts as usable, never as down


@dataclass(frozen=True)
class AddressHealth:
    state: State
    reason: str
    since: float


@dataclass(frozen=True)
class HealthView:
    """A snapshot: per address its state and why. Usable = UP or UNKNOWN."""

    addresses: Mapping[str, AddressHealth] = field(default_factory=dict)
    version: int = 0

    def usable(self, ip: str) -> bool:
        entry = self.addresses.get(ip)
        return entry is None or entry.state in (State.UP, State.UNKNOWN)

    def state(self, ip: str) -> State:
        entry = self.addresses.get(ip)
        return State.UNKNOWN if entry is None else entry.state


_ADMIN = {AdminState.DOWN: State.DOWN, AdminState.DRAIN: State.DRAIN}


class HealthBoard:
    """Holds admin states and overrides; hands out views; tells subscribers."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._site_override: dict[str, AdminState] = {}
        self._addr_override: dict[str, AdminState] = {}
        self._subscribers: list[Callable[[HealthView], None]] = []
        self._version = 0
        self._config = config
        self._since: dict[str, AddressHealth] = {}
        self.view = self._compute()

    def subscribe(self, callback: Callable[[HealthView], None]) -> None:
        self._subscribers.append(callback)

    def set_config(self, config: Config) -> None:
        """A reloaded config brings new sites and admin states."""
        self._config = config
        self._publish()

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

    def _set(self, table: dict[str, AdminState], key: str, state: AdminState | None) -> None:
        if state is None:
            table.pop(key, None)
        else:
            table[key] = state
        self._publish()

    def _compute(self) -> HealthView:
        now = self._clock()
        out: dict[str, AddressHealth] = {}
        for site in self._config.sites.values():
            for addr in site.addresses:
                state, reason = self._effective(site.name, site.state, addr.ip, addr.state)
                old = self._since.get(addr.ip)
                since = old.since if old and old.state is state else now
                out[addr.ip] = AddressHealth(state, reason, since)
        self._since = out
        return HealthView(out, self._version)

    def _effective(self, site: str, site_state: AdminState, ip: str,
                   addr_state: AdminState) -> tuple[State, str]:
        # The most specific statement wins: runtime address override, runtime
        # site override, then the config's address and site states.
        if ip in self._addr_override:
            s = self._addr_override[ip]
            return _ADMIN.get(s, State.UP), f"forced {s.value} (address override)"
        if site in self._site_override:
            s = self._site_override[site]
            return _ADMIN.get(s, State.UP), f"forced {s.value} (site override)"
        if addr_state is not AdminState.UP:
            return _ADMIN[addr_state], f"{addr_state.value} in config (address)"
        if site_state is not AdminState.UP:
            return _ADMIN[site_state], f"{site_state.value} in config (site)"
        return State.UNKNOWN, "no health check configured"

    def _publish(self) -> None:
        self._version += 1
        self.view = self._compute()
        for callback in list(self._subscribers):
            callback(self.view)
