"""Small time series for the dashboard: the last 15 minutes at a fixed step, in memory.

Answers per site, load per edge, hit ratio per edge, shed share per site: enough
for an operator to see a shift or a shed happen on the dashboard, without a
Prometheus. Lines share one time axis; a value that was not known is None.
"""
from __future__ import annotations

import collections
from typing import Any, Mapping

STEP = 5.0
SPAN = 900.0


class Series:
    """Groups of named lines (`answers` -> `fra` -> values), one sample per step."""

    def __init__(self, step: float = STEP, span: float = SPAN):
        self.step = step
        self.size = max(2, int(span / step))
        self.times: collections.deque[float] = collections.deque(maxlen=self.size)
        self.lines: dict[str, dict[str, collections.deque[float | None]]] = {}

    def record(self, now: float, groups: Mapping[str, Mapping[str, float | None]]) -> None:
        """One sample of every line; a line missing from `groups` gets None."""
        self.times.append(now)
        count = len(self.times)
        for group in set(self.lines) | set(groups):
            lines = self.lines.setdefault(group, {})
            values = groups.get(group, {})
            for key in set(lines) | set(values):
                line = lines.get(key)
                if line is None:
                    line = lines[key] = collections.deque([None] * (count - 1),
                                                          maxlen=self.size)
                line.append(values.get(key))
            for key in [k for k, line in lines.items() if not any(v is not None for v in line)]:
                del lines[key]            # nothing known in the whole window

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step, "times": list(self.times),
                **{group: {key: list(line) for key, line in sorted(lines.items())}
                   for group, lines in self.lines.items()}}


class Rates:
    """Per-second rates from growing counters (counted since the process started),
    between two samples; a counter that appears was 0 at the sample before."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}
        self._at: float | None = None

    def __call__(self, now: float, counters: Mapping[str, float]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for key, value in counters.items():
            before = self._last.get(key) or ((self._at, 0.0) if self._at else None)
            self._last[key] = (now, value)
            if before is not None and now > before[0] and value >= before[1]:
                out[key] = (value - before[1]) / (now - before[0])
        self._at = now
        return out
