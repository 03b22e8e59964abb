"""`gslb serve --store etcd://...`: the nameserver's side of the fleet.

The supervisor follows two parts of the store: the CNAME index (`config/`, which
names are customers' and since which revision) and the node records (`nodes/`,
which edge has applied what). From both it builds the gate (gate.py) and hands it
to every worker; once all of them answer from it, it reports that config revision
as applied in its own node record, and as `serving` the revision up to which every
customer name is answered with an edge (the control plane's "nameserver answers it") (kind `nameserver`, with the longest TTL it
gives answers, which the control plane waits out before edges drop a retired name).

It also shares health with the other nameservers and folds in what the edges say
about themselves (fleet/health.py): its own probe verdicts go into its node record,
the other nameservers' and the edges' records (lease, load, `draining`) and the
drains under `config/drain/` come back through the same two watches.

With the store away it keeps answering from what it has; a restart while the store
is away starts from the snapshot files it wrote (the last state it answered from).
Before it has any, customer names are answered by no one (the safe side).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from cdnkit import snapshot as snapfile
from cdnkit.drains import drains as drain_records
from cdnkit.drains import set_drain
from cdnkit.keys import Keys
from cdnkit.nodes import Node, Registration, merge, stop_following
from cdnkit.snapshot import Snapshot
from cdnkit.store import EtcdStore, StoreError, StoreSpec

from gslb.fleet import gate as gates
from gslb.fleet.health import FleetHealth

log = logging.getLogger("gslb.fleet.watch")

START_WAIT = 3.0
RENEW = 1.0             # the node record's lease is renewed every second
STORE_DOWN_AFTER = 3.0  # no answer from the store for this long: follow our own probes


class Fleet:
    """Keeps a supervisor's gate in step with the store and reports what it answers from."""

    def __init__(self, spec: StoreSpec, node_id: str, snapshot_dir: Path):
        self.spec, self.node_id = spec, node_id
        self.keys = Keys(spec.prefix)
        self.paths = {"config": snapshot_dir / f"store-{node_id}-config.json",
                      "nodes": snapshot_dir / f"store-{node_id}-nodes.json"}
        self.snaps: dict[str, Snapshot | None] = {"config": None, "nodes": None}
        self.store = EtcdStore(spec)
        self.sup: Any = None
        self.registration: Registration | None = None
        self.health: FleetHealth | None = None
        self._gate_inputs: tuple = ()
        self._merged: dict[str, Node] = {}
        self._parsed: dict[tuple[str, int], Any] = {}     # node records decoded (merge)
        self._tasks: list[asyncio.Task] = []

    def _prefix(self, part: str) -> str:
        return self.keys.config if part == "config" else self.keys.nodes

    async def start(self, sup: Any) -> None:
        """Load (store, else snapshots), set the supervisor's gate and health, then follow."""
        self.sup = sup
        self.health = health = FleetHealth(self.node_id, sup.config)
        sup.board.subscribe(health.set_local)
        sup.board.subscribe(self._local_changed)
        sup.board.result_listeners.append(health.on_result)
        health.subscribe(sup.on_view)
        health.set_local(sup.board.view)
        try:
            async with asyncio.timeout(START_WAIT):
                await self.store.connect()
                for part in self.snaps:
                    self.snaps[part] = await self.store.load(self._prefix(part))
            self.publish(save=True)
        except (StoreError, asyncio.TimeoutError, OSError) as exc:
            for part in self.snaps:
                self.snaps[part] = snapfile.load(self.paths[part], self._prefix(part))
            if self.snaps["config"] is None:
                log.error("the store is unreachable (%s) and there is no snapshot: customer "
                          "names are answered by no edge until it answers", exc)
            else:
                log.warning("the store is unreachable (%s): answering from the snapshot of "
                            "revision %d", exc, self.snaps["config"].revision)
            self.publish(save=False)
        sup.on_gate_applied = self._applied
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow(part)) for part in self.snaps]
        self._tasks += [loop.create_task(self._register()), loop.create_task(self._watchdog())]

    def publish(self, save: bool = True, force: bool = False) -> None:
        """Build the gate and the fleet's health from what the snapshots hold, for the
        workers; `force` rebuilds the gate even if its inputs look unchanged (a reload)."""
        config, nodes = self.snaps["config"], self.snaps["nodes"]
        merged = self._merged = merge(nodes.under(self.keys.nodes) if nodes else {},
                                      self._parsed)
        edges = sorted((n.applied, n.addresses) for n in merged.values() if n.kind == "edge")
        if self.health is not None:
            self.health.set_nodes(merged, self._drains(config))
        # Load reports change node records every second; the gate (and the snapshot
        # files) only when the config, or an edge's applied revision or addresses, do.
        inputs = (config.revision if config else 0, edges)
        if inputs == self._gate_inputs and self.sup.gate.active and not force:
            return
        self._gate_inputs = inputs
        cnames: dict[str, tuple[bool, int]] = {}
        for name, entry in (config.under(self.keys.cnames) if config else {}).items():
            try:
                cnames[name] = (bool(json.loads(entry.value).get("retiring")),
                                entry.mod_revision)
            except (ValueError, AttributeError):
                continue
        new = gates.build([z.origin for z in self.sup.config.zones], cnames, edges,
                          config.revision if config else 0)
        old = self.sup.gate
        if (new.names, new.known, new.revision) != (old.names, old.known, old.revision) \
                or not old.active:
            self.sup.set_gate(new)
        if save:
            for part, snap in self.snaps.items():
                if snap is not None:
                    try:
                        snapfile.save(self.paths[part], snap)
                    except OSError as exc:
                        log.error("cannot write the snapshot %s: %s", self.paths[part], exc)

    def nodes(self) -> dict[str, Node]:
        """Every node in the store as last seen, merged over its workers."""
        return self._merged

    def revision(self) -> int:
        """The latest config revision in the store as last seen (0 before any)."""
        config = self.snaps["config"]
        if config is None:
            return 0
        marker = config.entries.get(self.keys.rev)
        if marker is not None:
            return marker.mod_revision
        # written around cdnctl (no marker): the newest document's revision
        return max((e.mod_revision for e in config.entries.values()), default=0)

    def _drains(self, config: Snapshot | None) -> dict[str, dict[str, Any]]:
        return drain_records(config.entries, self.keys) if config else {}

    def _local_changed(self, _view: Any) -> None:
        if self.registration is not None and self.health is not None:
            self.registration.update(verdicts=self.health.verdicts())

    async def _watchdog(self) -> None:
        """Whether the store answers (our own record's lease), and the shed levels' clock."""
        while True:
            await asyncio.sleep(0.5)
            reg, health = self.registration, self.health
            if health is None:
                continue
            health.set_store(reg is not None and reg.ok_at > 0
                             and time.monotonic() - reg.ok_at < STORE_DOWN_AFTER)
            if reg is not None and time.time() - reg.record.get("beat", 0) >= RENEW:
                reg.update(beat=round(time.time(), 1))     # "seen" on the fleet views
            self._applied()           # workers started after the last gate say so here
            health.tick()

    async def drain(self, edge: str, who: str, on: bool = True) -> int:
        """Drain (or undrain) an edge in the store, for every nameserver; the revision."""
        return await set_drain(self.store, self.keys, edge, who, on)

    def _applied(self) -> None:
        if self.registration is not None:
            self.registration.update(applied=self.sup.gate_applied(),
                                     serving=self.sup.gate_serving())

    async def _follow(self, part: str) -> None:
        while True:
            try:
                while not self.store.ready:
                    try:
                        await self.store.connect()
                    except StoreError:
                        await asyncio.sleep(1.0)
                snap = self.snaps[part] or await self.store.load_retrying(self._prefix(part))
                self.snaps[part] = snap
                async for snap in self.store.follow(snap):
                    self.snaps[part] = snap
                    self.publish()
            except asyncio.CancelledError:
                raise
            except Exception:            # a bug must not stop the following for good
                log.exception("following %s failed; starting again in 1 s", part)
                await asyncio.sleep(1.0)

    async def _register(self) -> None:
        while not self.store.ready:
            await asyncio.sleep(0.2)
        ttl = max((s.ttl for s in self.sup.config.services), default=0)
        self.registration = Registration(self.store, self.keys.node(self.node_id),
                                         renew=RENEW)
        self.registration.update(id=self.node_id, kind="nameserver", ttl=ttl, pid=os.getpid(),
                                 addresses=sorted({str(l.host) for l in self.sup.listeners}),
                                 applied=self.sup.gate_applied(),
                                 serving=self.sup.gate_serving(),
                                 verdicts=self.health.verdicts() if self.health else {})
        self.registration.start()

    async def stop(self) -> None:
        await stop_following(self._tasks, self.registration, self.store)
