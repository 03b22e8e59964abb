"""What a fleet edge tells the nameservers about itself, every second, in its node record.

Its capacity (`edge serve --capacity requests=2000,bandwidth=1Gbit,connections=5000`)
and version once; then each second its load: requests per second, bandwidth to
clients (bit/s), open client connections, requests in flight, its worker's CPU
(fraction of one core), cache hits and misses per second; and its own verdict:
`serving`, `degraded` (an origin server or shield is backing off; which ones
are listed) or `draining` (drained in the store by `cdnctl drain`, or by
SIGUSR1), with `idle` once a draining edge has nothing in flight. Nameservers
fold it into their answers (gslb/fleet/health.py): load against capacity sheds
clients, `draining` takes the edge out, a lost lease too.

Everything is read from counters the server keeps anyway (edge/metrics.py, the
listeners' connections): nothing is added to the request path. A drain also
closes the keep-alive connections once they are idle, so their clients resolve
again; a response in progress (a long download) is served to its end.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from importlib import metadata
from typing import Any

log = logging.getLogger("edge.fleet.report")

INTERVAL = 1.0

__all__ = ["Reporter", "version"]


def version() -> str:
    try:
        return metadata.version("gslb-cdn")
    except metadata.PackageNotFoundError:
        return "unknown"


def _total(family: Any, match: Any = None) -> float:
    return sum(c.value for labels, c in list(family.children.items())
               if match is None or match(labels))


class Reporter:
    """Samples the counters once a second and writes them into the node record."""

    def __init__(self, follower: Any, app: Any, listeners: Any,
                 capacity: dict[str, float] | None = None):
        self.follower, self.app, self.listeners = follower, app, listeners
        self.capacity = dict(capacity or {})
        self.draining = False
        self._last: tuple[float, float, float, float, float, float] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:               # a report must never stop the edge
                log.exception("cannot report the load")
            await asyncio.sleep(INTERVAL)

    # --- one report ------------------------------------------------------------------------

    def drained(self) -> bool:
        """Whether the store holds a drain for this edge (cdnkit/drains.py)."""
        follower = self.follower
        snap = follower.snap
        return snap is not None and follower.keys.drain(follower.opts.node_id) in snap.entries

    def load(self, now: float) -> dict[str, float]:
        metrics = self.follower.state.metrics
        cpu = sum(os.times()[:2])
        counters = (now, _total(metrics.requests), _total(metrics.to_clients),
                    _total(metrics.cache, lambda labels: labels[1] == "HIT"),
                    _total(metrics.cache, lambda labels: labels[1] != "HIT"), cpu)
        last, self._last = self._last, counters
        conns = self.listeners.conns
        out = {"connections": float(len(conns)),
               "in_flight": float(sum(1 for c in conns if c.in_flight is not None))}
        if last is not None and now > last[0]:
            span = now - last[0]
            out.update(requests=round((counters[1] - last[1]) / span, 2),
                       bandwidth=round((counters[2] - last[2]) * 8 / span),
                       hits=round((counters[3] - last[3]) / span, 2),
                       misses=round((counters[4] - last[4]) / span, 2),
                       cpu=round((counters[5] - last[5]) / span, 3))
        return out

    def origins(self) -> dict[str, dict[str, Any]]:
        """Origin servers (and shields) backing off now, by customer/server."""
        state = self.follower.state
        out = {}
        for (directory, scheme), pool in list(state.pools.items()):
            for server, info in pool.summary().items():
                if info["state"] == "backoff":
                    out[f"{directory}/{scheme}://{server}"] = info
        for server, info in state.shield_pool.summary().items():
            if info["state"] == "backoff":
                out[f"shield/{server}"] = info
        return out

    def tick(self) -> None:
        registration = self.follower.registration
        load = self.load(time.monotonic())
        draining = self.drained() or bool(self.app.draining)
        if draining and not self.draining:
            log.info("draining: no new clients from the nameservers; keep-alive connections "
                     "close once idle, responses in progress are served to their end")
            for conn in list(self.listeners.conns):
                conn.close()
        elif self.draining and not draining:
            log.info("serving again (undrained)")
        self.draining = draining
        origins = self.origins()
        verdict = "draining" if draining else "degraded" if origins else "serving"
        if registration is not None:
            registration.update(load=load, state=verdict, origins=origins,
                                idle=draining and not load["in_flight"],
                                capacity=self.capacity, version=version())
