"""Several nameservers, one verdict: an address is down when a quorum of observers says so.

Each nameserver probes every edge on its own and publishes its verdicts
(`up` / `down`, or `unknown` before its first round) in its node record. An
observer counts for an address when it has a verdict for it; `health.quorum`
is how many must say down (0, the default: a majority of those). So one
observer's bad network path is no outage, and a real outage, which every
observer sees within `interval x fall`, is down everywhere within that bound
plus the store's propagation. With fewer observers than the quorum, all of
them must agree; alone (the store away), a nameserver follows its own probes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from gslb.health import State


def needed(quorum: int, live: int) -> int:
    """Down votes that take an address down among `live` observers (at least 1)."""
    if quorum <= 0:
        return live // 2 + 1
    return max(1, min(quorum, live))


@dataclass(frozen=True)
class Verdict:
    """What the observers together say about one address, and why."""

    state: State
    down: tuple[str, ...]          # observers that see it down
    up: tuple[str, ...]            # ... up
    need: int                      # down votes needed
    reason: str


def combine(votes: Mapping[str, str], quorum: int, me: str, my_reason: str) -> Verdict:
    """Votes by observer id (`up`, `down`, `unknown`) -> the combined verdict.

    `me` is this nameserver; `my_reason` its own probes' reason, kept when it
    agrees with the outcome.
    """
    down = tuple(sorted(o for o, v in votes.items() if v == State.DOWN.value))
    up = tuple(sorted(o for o, v in votes.items() if v == State.UP.value))
    live = len(down) + len(up)
    need = needed(quorum, live)
    if live and len(down) >= need:
        if down == (me,):
            return Verdict(State.DOWN, down, up, need, my_reason)
        return Verdict(State.DOWN, down, up, need,
                       f"down for {len(down)} of {live} observers ({', '.join(down)}; "
                       f"quorum {need})" + (f"; here: {my_reason}" if me in down else ""))
    if up:
        if not down:
            return Verdict(State.UP, down, up, need,
                           my_reason if me in up else f"up for {', '.join(up)}")
        return Verdict(State.UP, down, up, need,
                       f"up: only {len(down)} of {live} observers see it down "
                       f"({', '.join(down)}; quorum {need})"
                       + (f"; here: {my_reason}" if me in down else ""))
    return Verdict(State.UNKNOWN, down, up, need, my_reason)
