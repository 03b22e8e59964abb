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
import bisect
import collections
import os
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

from edge.cache.disk import DiskObject, DiskStore, Meta
from edge.cache.freshness import Policy
from edge.cache.parts import Parts

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
    file: DiskObject | None = None   # body on disk (too big for memory), sent from the file

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

    def meta(self, key: str) -> Meta:
        return Meta(key, self.status, self.reason, self.headers, self.stored_at,
                    self.initial_age, self.policy)

    @classmethod
    def from_disk(cls, obj: DiskObject, body: bytes | None) -> "Stored":
        m = obj.meta
        return cls(m.status, m.reason, m.headers, (body,) if body is not None else (),
                   obj.size, m.stored_at, m.initial_age, m.policy,
                   None if body is not None else obj)


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

    def __contains__(self, key: str) -> bool:
        return key in self._items

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
    received: int = 0            # bytes of body arrived
    done: bool = False
    failed: bool = False
    readers: int = 0
    task: asyncio.Task | None = None
    direct: object = None        # a response handed to the first client when not shareable
    revalidated: bool = False
    from_cache: bool = False     # the object is in the cache now: waiters are served from it
    leader_headers: object = None   # the first client's request headers (for Vary)
    interim: object = None       # where 1xx responses go: the first client's reply
    fwd: str = "uri-miss"        # why the request went forward (Cache-Status)
    failed_status: int = 502     # what a failed fill answers (504 when the origin timed out)
    stored: bool = False         # its response is being stored
    policy: Policy | None = None
    spilled: bool = False        # past `keep` bytes: `chunks` dropped, reads come from the file
    _file: int = -1              # read fd on the part file the body is also written to
    _file_offset: int = 0        # where the body starts in that file
    _keep: int = 0
    _ends: list[int] = field(default_factory=list)    # where each of `chunks` ends
    _trim: bool = False          # not stored after all: read chunks may be dropped
    _trimmed: int = 0
    _more: asyncio.Future | None = None

    def spill_to(self, fd: int, offset: int, keep: int) -> None:
        """The body is also being written to a file (readable through `fd`, which the fill
        now owns): past `keep` bytes, stop holding it in memory and read it from there."""
        self._file, self._file_offset, self._keep = fd, offset, keep
        weakref.finalize(self, os.close, fd)

    def overflowed(self) -> None:
        """The body (of unknown length) will not be stored: with one reader, what it has
        read need not be held any more."""
        self.shareable = False
        self._trim = True

    def read(self, offset: int, size: int) -> bytes:
        """Some bytes of the body from `offset` (< received), at most `size`; possibly fewer
        (one chunk's worth), so callers loop."""
        if self._trim and self.readers <= 1 and not self.spilled:
            # Only the reader at `offset` is left: the chunks before it can go.
            index = bisect.bisect_right(self._ends, offset)
            for i in range(self._trimmed, index):
                self.chunks[i] = b""
            self._trimmed = max(self._trimmed, index)
        if self.spilled:
            return os.pread(self._file, min(size, self.received - offset),
                            self._file_offset + offset)
        ends = self._ends
        index = bisect.bisect_right(ends, offset)
        start = ends[index - 1] if index else 0
        chunk = self.chunks[index]
        return chunk[offset - start:offset - start + size]

    def start(self, status: int, reason: str, headers: list[tuple[str, str]],
              length: int | None, shareable: bool, initial_age: float) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        self.length, self.shareable, self.initial_age = length, shareable, initial_age
        if not self.headers_ready.done():
            self.headers_ready.set_result(True)

    def append(self, chunk: bytes) -> None:
        """A chunk arrived (already in the spill file, if there is one)."""
        self.received += len(chunk)
        if not self.spilled:
            if self._file >= 0 and self.received > self._keep:
                self.spilled = True
                self.chunks, self._ends = [], []
            else:
                self.chunks.append(chunk)
                self._ends.append(self.received)
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def header(self, name: str) -> str | None:
        return header(self.headers, name)

    def fail(self, status: int = 502) -> None:
        self.failed, self.failed_status = True, status
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
    """The memory tier over the (optional) disk tier, the fills in flight, the keys to pass.

    Objects up to `promote_bytes` are read from disk into memory on their first
    hit; bigger ones stay on disk and are sent from their file, their metadata
    kept here so a hit reads no metadata from disk.
    """

    def __init__(self, memory_bytes: int, disk: DiskStore | None = None,
                 promote_bytes: int = 4 * 1024 * 1024):
        self.memory = MemoryStore(memory_bytes)
        self.disk = disk
        self.promote_bytes = min(promote_bytes, memory_bytes)
        self.fills: dict[str, Fill] = {}
        self.files: collections.OrderedDict[str, Stored] = collections.OrderedDict()
        self.verified: set[tuple[int, int]] = set()     # on-disk bodies whose CRC we checked
        self._pass: dict[str, float] = {}
        self._vary: dict[str, tuple[str, ...]] = {}     # primary key -> varied header names
        self._invalid: dict[str, float] = {}            # url id -> when it was invalidated
        self.parts = Parts(memory_bytes // 4)            # 206s of objects not held whole

    @property
    def vary_keys(self) -> dict[str, tuple[str, ...]]:
        """Primary keys whose responses vary (the hit shortcut leaves them alone)."""
        return self._vary

    def key_for(self, primary: str, request_headers: "Mapping") -> str:
        """The key a request's variant lives under (the primary key without Vary)."""
        names = self._vary.get(primary)
        if (names is None and self.disk is not None and primary not in self.memory
                and primary not in self.files):
            obj = self.disk.lookup(primary)      # another worker (or a past run) may know
            if obj is not None and obj.meta.vary:
                names = self._vary[primary] = obj.meta.vary
        return secondary_key(primary, names, request_headers) if names else primary

    def put_variant(self, primary: str, request_headers: "Mapping", item: Stored,
                    written_as: str | None = None) -> None:
        """Store `item` for the request's variant; `written_as`: the key whose disk file the
        fill wrote already (a response that turns out to vary belongs under another key)."""
        names = vary_names(item.headers)
        if names:
            if self._vary.get(primary) != names:
                self._vary[primary] = names
                if self.disk is not None:
                    stub = Meta(primary, 0, "", (), item.stored_at, 0.0, item.policy, names)
                    self.disk.put_bytes(stub, b"")
            key = secondary_key(primary, names, request_headers)
        else:
            self._vary.pop(primary, None)
            key = primary
        self.put(key, item, on_disk=key == written_as)

    def get(self, key: str) -> Stored | None:
        item = self.memory.get(key)
        if item is not None:
            return item
        item = self.files.get(key)
        if item is not None:
            self.files.move_to_end(key)
            if self.disk is not None:
                self.disk.touch(key)
            return item
        if self.disk is None:
            return None
        obj = self.disk.lookup(key)
        if obj is None or obj.meta.vary:
            return None
        self.disk.touch(key)
        if obj.size <= self.promote_bytes:
            body = self.disk.read_body(obj)
            if body is None:
                return None
            item = Stored.from_disk(obj, body)
            self.memory.put(key, item)
            return item
        item = Stored.from_disk(obj, None)
        self._remember_file(key, item)
        return item

    def put(self, key: str, item: Stored, on_disk: bool = False) -> None:
        """Keep an object: in memory when small enough, on disk when there is a disk tier."""
        if self.disk is not None and not on_disk:
            if item.file is not None:
                self.disk.rewrite(item.file, item.meta(key))
                item = replace(item, file=None)       # found again below, new file
            elif sum(map(len, item.chunks)) == item.size:
                self.disk.put_bytes(item.meta(key), b"".join(item.chunks))
            else:
                return       # the body went to a file under another key (it turned out to
                             # vary); the next request for this variant fills it again
        if item.file is not None or (self.disk is not None and item.size > self.promote_bytes):
            self.memory.delete(key)
            if item.file is None:
                obj = self.disk.lookup(key) if self.disk is not None else None
                if obj is None:
                    return
                item = Stored.from_disk(obj, None)
            self._remember_file(key, item)
            return
        self.files.pop(key, None)
        self.memory.put(key, item)

    def _remember_file(self, key: str, item: Stored) -> None:
        self.files[key] = item
        self.files.move_to_end(key)
        while len(self.files) > 10_000:
            self.files.popitem(last=False)

    def forget(self, key: str) -> None:
        """Drop a key from this process only (its disk file was found bad or replaced)."""
        self.memory.delete(key)
        self.files.pop(key, None)
        self.parts.delete(key)

    def purge(self, matches: "Callable[[str], bool]") -> int:
        """Drop every stored object whose key matches; returns how many."""
        gone = {key for key in self.memory.keys() if matches(key)}
        gone |= {key for key in self.files if matches(key)}
        gone |= {key for key in self.parts.keys() if matches(key)}
        for key in gone:
            self.forget(key)
        if self.disk is not None:
            for key in self.disk.keys():
                if matches(key):
                    gone.add(key)
                    self.disk.delete(key)
        return len(gone)

    def invalidate(self, url: str, keys: list[str], when: float) -> None:
        """A successful unsafe request made `url` obsolete (RFC 9111 4.4): its `keys` go,
        and no variant of it stored before `when` is used again."""
        if len(self._invalid) > 100_000:
            self._invalid.clear()
        self._invalid[url] = max(when, self._invalid.get(url, 0.0))
        for key in keys:
            self.forget(key)
            self._vary.pop(key, None)
            if self.disk is not None:
                self.disk.delete(key)

    def invalidated_since(self, url: str, stored_at: float) -> bool:
        when = self._invalid.get(url)
        return when is not None and stored_at <= when

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
