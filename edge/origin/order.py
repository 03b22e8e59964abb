"""Which origin server to try, in which order, and the growing back-off of failing ones.

The seed's rule: a server that fails is skipped for a brief period; when the
period ends it is tried again, and if it still fails it is skipped for a
slightly longer period, and so on until it recovers.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable

from edge.model import Balancing, Origin, Server


@dataclass
class ServerState:
    failures: int = 0          # in a row
    until: float = 0.0         # skipped until this monotonic time
    last_error: str = ""


class OriginPool:
    """Ordering and back-off for one customer's servers of one protocol."""

    def __init__(self, origin: Origin, servers: tuple[Server, ...],
                 clock: Callable[[], float] = time.monotonic):
        self.origin = origin
        self.servers = servers
        self.state = {s: ServerState() for s in servers}
        self._clock = clock
        self._turn = itertools.count()
        self._failing = 0              # servers with failures recorded (0: nothing to clear)

    def order(self) -> list[Server]:
        """Servers to try for one request: usable ones first, then those backing off.

        Round robin starts one further along for every request; failover always
        starts at the primary. Servers in back-off come last (soonest retry
        first), so a request still has somewhere to go when all are failing.
        """
        if len(self.servers) == 1:
            return list(self.servers)          # one server: nothing to order
        now = self._clock()
        servers = list(self.servers)
        if self.origin.balancing is Balancing.ROUND_ROBIN and servers:
            start = next(self._turn) % len(servers)
            servers = servers[start:] + servers[:start]
        ready = [s for s in servers if self.state[s].until <= now]
        waiting = sorted((s for s in servers if self.state[s].until > now),
                         key=lambda s: self.state[s].until)
        return ready + waiting

    def adopt(self, states: dict[Server, ServerState]) -> None:
        """Take over the back-off of the servers this pool shares with an older one."""
        self.state.update({k: v for k, v in states.items() if k in self.state})
        self._failing = sum(1 for s in self.state.values() if s.failures or s.until)

    def succeeded(self, server: Server) -> None:
        if not self._failing:
            return                     # the usual case, per request: nothing to look up
        state = self.state[server]
        if state.failures or state.until:
            state.failures, state.until, state.last_error = 0, 0.0, ""
            self._failing -= 1

    def failed(self, server: Server, reason: str) -> float:
        """Record a failure; returns how long the server is now skipped."""
        state = self.state[server]
        if not state.failures and not state.until:
            self._failing += 1
        state.failures += 1
        period = min(self.origin.backoff * 2 ** (state.failures - 1), self.origin.backoff_max)
        state.until = self._clock() + period
        state.last_error = reason
        return period

    def summary(self) -> dict[str, dict[str, object]]:
        now = self._clock()
        return {f"{s.host}:{s.port or ''}".rstrip(":"): {
            "state": "backoff" if self.state[s].until > now else "ok",
            "failures": self.state[s].failures,
            "retry_in": max(0.0, round(self.state[s].until - now, 2)),
            "last_error": self.state[s].last_error} for s in self.servers}
