"""The edge cache: stored objects, the memory tier, and fills that many requests share.

One `Fill` per key at a time (Varnish's busy object): the first miss starts it,
later misses for the same key attach to it and are streamed the body as it
arrives, not after it is complete. A fill whose response may not be shared
(`private`, `no-store`, ...) is read by its first client only, and the key is
remembered as "pass" for a while so later requests do not queue behind it.
A fill that fails leaves nothing in the cache.
"""
from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

from .freshness import Policy

PASS_MEMORY = 120.0          # seconds a key whose response was not storable skips coalescing


def header(headers: "tuple[tuple[str, str], ...] | list[tuple[str, str]]",
           name: str) -> str | None:
    """The first value of header `name` in a list of (name, value) pairs."""
    name = name.lower()
    return next((v for k, v in headers if k.lower() == name), None)


@dataclass(frozen=True)
class Stored:
    """A complete cached response. Headers are the origin's end-to-end ones."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    chunks: tuple[bytes, ...]
    size: int
    stored_at: float             # wall clock, for Age
    initial_age: float
    policy: Policy

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.stored_at)

    def fresh(self, now: float) -> bool:
        return not self.policy.no_cache and self.age(now) < self.policy.ttl

    def header(self, name: str) -> str | None:
        return header(self.headers, name)

    def revalidated(self, headers: list[tuple[str, str]], policy: Policy, now: float,
                    initial_age: float) -> "Stored":
        """RFC 9111 4.3.4: a 304 updates the stored headers and freshness, not the body."""
        updated = {k.lower() for k, _ in headers}
        keep = [(k, v) for k, v in self.headers if k.lower() not in updated]
        merged = tuple(keep + [(k, v) for k, v in headers if k.lower() != "content-length"])
        return replace(self, headers=merged, stored_at=now, initial_age=initial_age,
                       policy=policy)


class MemoryStore:
    """Objects by key, evicted least recently used first when over `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: collections.OrderedDict[str, Stored] = collections.OrderedDict()

    def get(self, key: str) -> Stored | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, item: Stored) -> None:
        self.delete(key)
        if item.size > self.max_bytes:
            return
        self._items[key] = item
        self.bytes += item.size
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.size

    def delete(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    def keys(self) -> list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Fill:
    """A response on its way from the origin; readers follow its chunks."""

    key: str
    headers_ready: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                          .create_future())
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    length: int | None = None
    shareable: bool = False
    initial_age: float = 0.0
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0            # bytes in `chunks`
    done: bool = False
    failed: bool = False
    readers: int = 0
    task: asyncio.Task | None = None
    direct: object = None        # a response handed to the first client when not shareable
    revalidated: bool = False
    leader_headers: object = None   # the first client's request headers (for Vary)
    _more: asyncio.Future | None = None

    def start(self, status: int, reason: str, headers: list[tuple[str, str]],
              length: int | None, shareable: bool, initial_age: float) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        self.length, self.shareable, self.initial_age = length, shareable, initial_age
        if not self.headers_ready.done():
            self.headers_ready.set_result(True)

    def append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.received += len(chunk)
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self) -> None:
        self.failed = True
        if not self.headers_ready.done():
            self.headers_ready.set_result(False)
        self._wake()

    def _wake(self) -> None:
        if self._more is not None and not self._more.done():
            self._more.set_result(None)
        self._more = None

    async def more(self) -> None:
        """Wait until a chunk arrives or the fill ends."""
        if self._more is None:
            self._more = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._more)


def vary_names(headers: "tuple[tuple[str, str], ...] | list[tuple[str, str]]") -> tuple[str, ...]:
    """The request headers a response varies on, lower case, sorted."""
    names = {n.strip().lower() for k, v in headers if k.lower() == "vary" for n in v.split(",")}
    return tuple(sorted(n for n in names if n))


def secondary_key(primary: str, names: tuple[str, ...], request_headers: "CIMultiDictProxy") -> str:
    """RFC 9111 4.1: one stored variant per combination of the varied request headers."""
    parts = []
    for name in names:
        values = request_headers.getall(name, [])
        parts.append(f"{name}={','.join(' '.join(v.split()) for v in values)}")
    return primary + "\x00" + "\x00".join(parts)


class Cache:
    """The memory tier, the fills in flight, and the keys to pass."""

    def __init__(self, memory_bytes: int):
        self.memory = MemoryStore(memory_bytes)
        self.fills: dict[str, Fill] = {}
        self._pass: dict[str, float] = {}
        self._vary: dict[str, tuple[str, ...]] = {}     # primary key -> varied header names

    def key_for(self, primary: str, request_headers: "Mapping") -> str:
        """The key a request's variant lives under (the primary key without Vary)."""
        names = self._vary.get(primary)
        return secondary_key(primary, names, request_headers) if names else primary

    def put_variant(self, primary: str, request_headers: "Mapping", item: Stored) -> None:
        names = vary_names(item.headers)
        if names:
            self._vary[primary] = names
            self.memory.put(secondary_key(primary, names, request_headers), item)
        else:
            self._vary.pop(primary, None)
            self.memory.put(primary, item)

    def get(self, key: str) -> Stored | None:
        return self.memory.get(key)

    def put(self, key: str, item: Stored) -> None:
        self.memory.put(key, item)

    def purge(self, matches: "Callable[[str], bool]") -> int:
        """Drop every stored object whose key matches; returns how many."""
        gone = [key for key in self.memory.keys() if matches(key)]
        for key in gone:
            self.memory.delete(key)
        return len(gone)

    def passing(self, key: str, now: float | None = None) -> bool:
        until = self._pass.get(key)
        if until is None:
            return False
        if until < (now or time.monotonic()):
            del self._pass[key]
            return False
        return True

    def remember_pass(self, key: str) -> None:
        if len(self._pass) > 100_000:
            self._pass.clear()
        self._pass[key] = time.monotonic() + PASS_MEMORY
