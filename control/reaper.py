"""Finishing the safe order on removal: an edge CNAME taken out of a customer is first
marked retiring (nameservers stop answering it, edges still serve it); the reaper
deletes its index entry, which makes the edges drop it, once every nameserver has
applied the retiring mark and the longest TTL they give answers has passed, so no
resolver still holds an answer that sends a client to an edge for that name.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

from cdnkit.store import StoreError

from .service import ControlPlane

log = logging.getLogger("control.reaper")

INTERVAL = 0.25


class Reaper:
    def __init__(self, plane: ControlPlane, min_grace: float = 0.0):
        self.plane, self.min_grace = plane, min_grace
        self.acked: dict[tuple[str, int], float] = {}    # (name, revision) -> when all acked

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except StoreError as exc:
                log.debug("reaper: store unavailable (%s)", exc)
            await asyncio.sleep(INTERVAL)

    async def once(self) -> list[str]:
        """Retire what is due; the names retired."""
        plane = self.plane
        view, nodes = await asyncio.gather(plane.view(), plane.nodes())
        servers = [n for n in nodes.values() if n.kind == "nameserver"]
        grace = max([self.min_grace] + [float(n.ttl) for n in servers])
        now, done = time.monotonic(), []
        for name, cname in sorted(view.cnames.items()):
            if not cname.retiring:
                continue
            revision = cname.entry.mod_revision
            if any(n.applied < revision for n in servers):
                continue
            since = self.acked.setdefault((name, revision), now)
            if now - since < grace:
                continue
            store, keys = plane.store, plane.keys
            resp = await store.txn(
                [store.same_revision(keys.cname(name), revision)],
                [store.delete(keys.cname(name)),
                 store.put(keys.rev, json.dumps({"at": time.time(), "by": "reaper"})),
                 store.put(f"{keys.audit}{time.time_ns():020d}-retire", json.dumps(
                     {"at": time.time(), "who": "reaper", "action": "retire",
                      "changes": [{"action": "retire", "cname": name,
                                   "directory": cname.directory, "old": revision}]}))])
            self.acked.pop((name, revision), None)
            if resp.succeeded:
                log.info("edge CNAME %s of %s retired: %d nameserver(s) stopped answering it "
                         "%.0f s ago", name, cname.directory, len(servers), now - since)
                done.append(name)
        return done
