"""`gslb serve --store etcd://...`: the nameserver's side of the fleet.

The supervisor follows two parts of the store: the CNAME index (`config/`, which
names are customers' and since which revision) and the node records (`nodes/`,
which edge has applied what). From both it builds the gate (gate.py) and hands it
to every worker; once all of them answer from it, it reports that config revision
as applied in its own node record (kind `nameserver`, with the longest TTL it
gives answers, which the control plane waits out before edges drop a retired name).

With the store away it keeps answering from what it has; a restart while the store
is away starts from the snapshot files it wrote (the last state it answered from).
Before it has any, customer names are answered by no one (the safe side).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from cdnkit import snapshot as snapfile
from cdnkit.keys import Keys
from cdnkit.nodes import Registration, merge, stop_following
from cdnkit.snapshot import Snapshot
from cdnkit.store import EtcdStore, StoreError, StoreSpec

from . import gate as gates

log = logging.getLogger("gslb.fleet")

START_WAIT = 3.0


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
        self._tasks: list[asyncio.Task] = []

    def _prefix(self, part: str) -> str:
        return self.keys.config if part == "config" else self.keys.nodes

    async def start(self, sup: Any) -> None:
        """Load (store, else snapshots), set the supervisor's gate, then follow the store."""
        self.sup = sup
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
        self._tasks.append(loop.create_task(self._register()))

    def publish(self, save: bool = True) -> None:
        """Build the gate from what the snapshots hold and give it to the workers."""
        config, nodes = self.snaps["config"], self.snaps["nodes"]
        cnames: dict[str, tuple[bool, int]] = {}
        for name, entry in (config.under(self.keys.cnames) if config else {}).items():
            try:
                cnames[name] = (bool(json.loads(entry.value).get("retiring")),
                                entry.mod_revision)
            except (ValueError, AttributeError):
                continue
        edges = [(n.applied, n.addresses) for n in
                 merge(nodes.under(self.keys.nodes) if nodes else {}).values()
                 if n.kind == "edge"]
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

    def _applied(self) -> None:
        if self.registration is not None:
            self.registration.update(applied=self.sup.gate_applied())

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
        self.registration = Registration(self.store, self.keys.node(self.node_id))
        self.registration.update(id=self.node_id, kind="nameserver", ttl=ttl, pid=os.getpid(),
                                 addresses=sorted({str(l.host) for l in self.sup.listeners}),
                                 applied=self.sup.gate_applied())
        self.registration.start()

    async def stop(self) -> None:
        await stop_following(self._tasks, self.registration, self.store)
