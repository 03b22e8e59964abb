"""Partial content (206) kept for objects the cache does not hold whole.

An object too big to store (over `max_object`) is asked of the origin range by
range; each 206 is kept here under the object's key, and parts that carry the
same strong validator are combined (RFC 9111 3.4), so a player seeking around
a long video is answered from the edge for every range it has fetched before.
A part that differs in validator means the object changed: the old ones go.
Parts live in memory, within their own byte budget, least recently used first.
"""
from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field

from edge.cache.freshness import Policy


@dataclass
class Partial:
    """The parts of one object we have, merged into non-overlapping spans."""

    validator: str                       # the strong ETag (or Last-Modified) they share
    size: int                            # the complete length (from Content-Range)
    headers: tuple[tuple[str, str], ...]  # of the 206, less Content-Range / Content-Length
    stored_at: float
    initial_age: float
    policy: Policy
    starts: list[int] = field(default_factory=list)
    spans: list[bytes] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(map(len, self.spans))

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.stored_at)

    def fresh(self, now: float) -> bool:
        return not self.policy.no_cache and self.age(now) < self.policy.ttl

    def covering(self, first: int, last: int) -> bytes | None:
        """Bytes first..last (inclusive) if one span holds them all."""
        index = bisect.bisect_right(self.starts, first) - 1
        if index < 0:
            return None
        start, data = self.starts[index], self.spans[index]
        if last < start + len(data):
            return data[first - start:last - start + 1]
        return None

    def add(self, first: int, data: bytes) -> None:
        """Keep bytes from `first`, merging with the spans they touch or overlap."""
        last = first + len(data)               # exclusive
        keep_starts, keep_spans = [], []
        for start, span in zip(self.starts, self.spans):
            end = start + len(span)
            if end < first or start > last:
                keep_starts.append(start)
                keep_spans.append(span)
                continue
            # Overlapping or adjacent: one span from the lower start to the higher end.
            if start < first:
                data, first = span[:first - start] + data, start
            if end > first + len(data):
                data = data + span[first + len(data) - start:]
            last = first + len(data)
        index = bisect.bisect_left(keep_starts, first)
        keep_starts.insert(index, first)
        keep_spans.insert(index, data)
        self.starts, self.spans = keep_starts, keep_spans

    def whole(self) -> bytes | None:
        """The complete body, once the parts have come together."""
        if len(self.spans) == 1 and self.starts[0] == 0 and len(self.spans[0]) == self.size:
            return self.spans[0]
        return None


def content_range(value: str | None) -> tuple[int, int, int] | None:
    """`bytes first-last/size` (RFC 9110 14.4) as (first, last, size); None otherwise."""
    if not value or not value.startswith("bytes "):
        return None
    span, _, size = value[6:].partition("/")
    first, _, last = span.partition("-")
    if not (first.isdigit() and last.isdigit() and size.isdigit()):
        return None
    a, b, n = int(first), int(last), int(size)
    return (a, b, n) if a <= b < n else None


class Parts:
    """Partial objects by cache key, least recently used out above `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: collections.OrderedDict[str, Partial] = collections.OrderedDict()

    def get(self, key: str) -> Partial | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def add(self, key: str, validator: str, first: int, data: bytes, size: int,
            headers: tuple[tuple[str, str], ...], stored_at: float, initial_age: float,
            policy: Policy) -> Partial | None:
        """Keep one 206 part; returns the object's parts (None if it could not be kept)."""
        if len(data) > self.max_bytes:
            return None
        item = self._items.get(key)
        if item is None or item.validator != validator or item.size != size:
            self.delete(key)                 # new, or the object changed: start over
            item = Partial(validator, size, headers, stored_at, initial_age, policy)
            self._items[key] = item
        else:
            self.bytes -= item.bytes
            item.headers, item.stored_at, item.initial_age, item.policy = (
                headers, stored_at, initial_age, policy)
        item.add(first, data)
        self.bytes += item.bytes
        self._items.move_to_end(key)
        while self.bytes > self.max_bytes and self._items:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.bytes
        return self._items.get(key)

    def delete(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.bytes

    def keys(self) -> list[str]:
        return list(self._items)
