"""Load-aware answers: which client networks a busy site (or edge) sheds, with hysteresis.

A site's load against its capacity gives a level, 0..STEPS: the share of its
client networks (in 1/STEPS steps) answered with the next-nearest site. Between
`shed_low` and `shed_high` the level grows with the load; at `shed_high` it is
STEPS (every new client goes elsewhere). A level rises as soon as a load
report asks for it, and falls only once the smoothed load has stayed below the
lower level's threshold minus `shed_band` for `shed_hold` seconds, so a load
that hovers at a watermark moves no answer back and forth.

Which networks: each decision network (the ECS scope of the answer) has a
stable bucket, 0..STEPS-1, from a hash of the network; site S sheds bucket b
when (b + offset(S)) mod STEPS < level(S). So one network's answer is the same
from every nameserver and every worker, stays the same while the level does,
and a resolver's cached scope never disagrees with a fresh answer. The offset
spreads the networks shed first over different sites.

Levels are computed off the query path (fleet/health.py); the answer tables
precompute one reply per bucket for the pools that shed (answers.py).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

STEPS = 20


def bucket(network: object) -> int:
    """The stable bucket of a decision network (an ipaddress network)."""
    packed = network.network_address.packed + bytes((network.prefixlen,))  # type: ignore[attr-defined]
    return zlib.crc32(packed) % STEPS


def offset(site: str) -> int:
    """Where a site starts counting buckets, so sites do not all shed the same networks."""
    return zlib.crc32(site.encode()) % STEPS


def sheds(level: int, site_offset: int, client: int) -> bool:
    """Whether a site at `level` sends the networks of bucket `client` elsewhere."""
    return (client + site_offset) % STEPS < level


def share(level: int) -> float:
    return level / STEPS


@dataclass(frozen=True)
class Watermarks:
    low: float                 # fraction of capacity where shedding starts
    high: float                # ... and where it is total
    band: float = 0.05         # how far below a level's threshold the load must fall
    hold: float = 10.0         # ... and for how long, before the level comes down


def target(used: float, marks: Watermarks) -> int:
    """The level a load asks for: 0 at or below low, STEPS at or above high."""
    if used <= marks.low:
        return 0
    if used >= marks.high:
        return STEPS
    return min(STEPS, max(1, math.ceil((used - marks.low) / (marks.high - marks.low) * STEPS)))


SMOOTHING = 0.5      # weight of a second of new load in the smoothed load (for going down)


class Controller:
    """One site's (or edge's) shed level over time: up at once, down with hysteresis."""

    def __init__(self, marks: Watermarks):
        self.marks = marks
        self.level = 0
        self.used: float | None = None      # the smoothed load
        self.since = 0.0                    # when the level last changed
        self._below: float | None = None    # since when the load allows a lower level
        self._fed = 0.0                     # when the last sample came

    def update(self, sample: float, now: float) -> bool:
        """Feed the load as of `now`; True when the level changed.

        Smoothing weighs time, not calls: the same load fed twice in a second (a
        site whose edges report one after the other) counts as one second of it.
        """
        if self.used is None:
            used = sample
        else:
            weight = 1 - (1 - SMOOTHING) ** max(0.0, min(now - self._fed, 10.0))
            used = weight * sample + (1 - weight) * self.used
        self.used, self._fed = used, now
        # Up on the load as reported (overload is shed at the first report that shows
        # it); down on the smoothed load, with the band and the hold below.
        wanted = target(sample, self.marks)
        if wanted > self.level:
            self.level, self.since, self._below = wanted, now, None
            return True
        # Down only to what the load would ask for even `band` higher, and only
        # after it has asked for that long enough.
        lower = target(used + self.marks.band, self.marks)
        if lower >= self.level:
            self._below = None
            return False
        if self._below is None:
            self._below = now
        if now - self._below < self.marks.hold:
            return False
        self.level, self.since, self._below = lower, now, None
        return True


class ClientHealth:
    """A health view as the networks of one bucket see it: what sheds them is unusable.

    Duck-types HealthView for select.py (`usable`, `state`).
    """

    __slots__ = ("view", "client", "_shed")

    def __init__(self, view: object, client: int):
        self.view = view
        self.client = client
        where = view.addresses  # type: ignore[attr-defined]
        self._shed = frozenset(
            ip for ip, level in view.shed.items()  # type: ignore[attr-defined]
            if sheds(level, offset(where[ip].site if ip in where else ""), client))

    def usable(self, ip: str) -> bool:
        return ip not in self._shed and self.view.usable(ip)  # type: ignore[attr-defined]

    def state(self, ip: str) -> object:
        return self.view.state(ip)  # type: ignore[attr-defined]

    def shed(self, ip: str) -> bool:
        return ip in self._shed
