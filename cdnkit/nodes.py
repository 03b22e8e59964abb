"""The fleet's nodes in the store: each edge, shield and nameserver under its lease.

A node writes `{prefix}nodes/{id}` with a lease it keeps alive: the record says what
it is (kind, site, the addresses DNS hands out for it, its egress blocks) and which
config revision it has applied. If the node dies or loses the store for longer than
the lease TTL, the record goes away by itself. An edge running several worker
processes writes one record per worker (`{id}~{n}` for worker n > 0); readers
merge them, and the node's applied revision is that of its slowest worker.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from .snapshot import Entry
from .store import EtcdStore, StoreError

log = logging.getLogger("cdnkit.nodes")

LEASE_TTL = 5          # seconds; issue 15's default: a dead node leaves within this


@dataclass(frozen=True)
class Node:
    """One node as merged from its workers' records."""

    id: str
    kind: str                            # edge | shield | nameserver
    applied: int                         # config revision every worker has applied
    site: str = ""
    addresses: tuple[str, ...] = ()      # what DNS answers for this node
    egress: tuple[str, ...] = ()         # source blocks it reaches origins from
    admin: str = ""                      # http://HOST:PORT for validation requests
    at: float = 0.0                      # when the record was last written (its clock)
    workers: int = 1
    ttl: int = 0                         # nameservers: the longest answer TTL they give
    rejected: Mapping[str, list[str]] = field(default_factory=dict)   # directory -> problems
    record: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # What edges report about themselves (edge/fleet/report.py), summed over workers:
    state: str = ""                      # serving | degraded | draining ("" if unreported)
    load: Mapping[str, float] = field(default_factory=dict)   # requests/s, bandwidth, ...
    capacity: Mapping[str, Any] = field(default_factory=dict)
    idle: bool = False                   # draining and nothing in flight on any worker
    version: str = ""
    origins: Mapping[str, Any] = field(default_factory=dict)  # per-origin back-off
    verdicts: Mapping[str, str] = field(default_factory=dict)  # nameservers: probe verdicts
    serving: int = 0                     # nameservers: every customer name given at or
    #                                      before this revision is answered with an edge


STATES = ("serving", "degraded", "draining")     # worst last: a node is its worst worker


def _load(records: list[dict[str, Any]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for record in records:
        for name, value in (record.get("load") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[name] = total.get(name, 0.0) + float(value)
    return total


def _state(records: list[dict[str, Any]]) -> str:
    found = [str(r["state"]) for r in records if r.get("state") in STATES]
    return max(found, key=STATES.index) if found else ""


def merge(entries: Mapping[str, Entry],
          parsed: dict[tuple[str, int], Any] | None = None) -> dict[str, Node]:
    """Records under nodes/ (by the rest of the key) -> nodes by id.

    `parsed` keeps decoded records by (key, revision) between calls: edges rewrite
    their record every second, and a follower should decode only what changed.
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    seen: dict[tuple[str, int], Any] = {}
    for key, entry in entries.items():
        try:
            mark = (key, entry.mod_revision)
            record = parsed.get(mark) if parsed is not None else None
            if record is None:
                record = json.loads(entry.value)
            seen[mark] = record
            grouped.setdefault(str(record["id"]), []).append(record)
        except (ValueError, KeyError, TypeError):
            continue
    if parsed is not None:
        parsed.clear()
        parsed.update(seen)
    out = {}
    for node_id, records in grouped.items():
        first = records[0]
        out[node_id] = Node(
            node_id, str(first.get("kind", "edge")),
            min(int(r.get("applied", 0)) for r in records), str(first.get("site", "")),
            tuple(first.get("addresses") or ()), tuple(first.get("egress") or ()),
            str(first.get("admin", "")), max(float(r.get("at", 0)) for r in records),
            len(records), int(first.get("ttl", 0)),
            {k: v for r in records for k, v in (r.get("rejected") or {}).items()}, first,
            _state(records), _load(records), dict(first.get("capacity") or {}),
            all(bool(r.get("idle")) for r in records), str(first.get("version", "")),
            {k: v for r in records for k, v in (r.get("origins") or {}).items()},
            dict(first.get("verdicts") or {}),
            min(int(r.get("serving", 0)) for r in records))
    return out


class Registration:
    """Keeps one node record in the store under a lease, always the latest version.

    `update()` never waits on the store: it replaces the record to write and wakes
    the writer task, which puts it (with the lease), renews the lease every third
    of its TTL, and grants a new lease and writes again when the old one is lost.
    """

    def __init__(self, store: EtcdStore, key: str, ttl: int = LEASE_TTL,
                 renew: float | None = None):
        self.store, self.key, self.ttl = store, key, ttl
        self.renew = renew or max(ttl / 3, 0.5)
        self.ok_at = 0.0           # monotonic time of the last call the store answered
        self.record: dict[str, Any] = {}
        self.lease = 0
        self.written: dict[str, Any] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def update(self, **fields: Any) -> None:
        self.record = {**self.record, **fields}
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, revoke: bool = True) -> None:
        """Stop renewing; with `revoke`, remove the record now rather than at expiry."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if revoke and self.lease:
            try:
                await self.store.call(self.store.client.lease.revoke(self.lease), timeout=1.0)
            except StoreError:
                pass

    async def _run(self) -> None:
        renew_every = self.renew
        renewed = time.monotonic()
        while True:
            try:
                if not self.lease:
                    grant = await self.store.call(self.store.client.lease.grant(self.ttl))
                    self.lease, self.written, renewed = grant.ID, None, time.monotonic()
                    self.ok_at = renewed
                if self.written != self.record:
                    # What is written is what was current when the put started: an update
                    # that lands while it is in flight is written on the next round.
                    record = dict(self.record)
                    await self.store.call(self.store.kv.put(
                        self.key, json.dumps({**record, "at": time.time()}), lease=self.lease))
                    self.written, self.ok_at = record, time.monotonic()
                # Renew on time however often the record changes (a put does not renew).
                if time.monotonic() - renewed >= renew_every:
                    if not await self._renew():
                        log.warning("lease of %s was lost; registering again", self.key)
                        self.lease = 0
                        continue
                    renewed = self.ok_at = time.monotonic()
                try:
                    await asyncio.wait_for(self._wake.wait(),
                                           max(0.0, renew_every - (time.monotonic() - renewed)))
                    self._wake.clear()
                except asyncio.TimeoutError:
                    pass
            except StoreError as exc:
                if "lease not found" in str(exc):
                    self.lease = 0           # expired while we could not reach the store
                log.debug("cannot register %s yet: %s", self.key, exc)
                await asyncio.sleep(0.5)

    async def _renew(self) -> bool:
        """One keep-alive; False when the lease no longer exists."""
        stream = self.store.client.lease.keep_alive(self.lease)
        try:
            async with asyncio.timeout(self.ttl):
                async for reply in stream:
                    return reply.TTL > 0
        except asyncio.TimeoutError:
            raise StoreError("keep-alive timed out") from None
        except Exception as exc:       # grpc errors of a stream call
            raise StoreError(f"keep-alive failed: {exc}") from None
        finally:
            stream.cancel()
        return False


async def stop_following(tasks: list[asyncio.Task], registration: Registration | None,
                         store: EtcdStore | None) -> None:
    """End a node's store tasks, remove its record now (not at lease expiry), disconnect."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if registration is not None:
        await registration.stop()
    if store is not None:
        await store.close()
