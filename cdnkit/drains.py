"""Coordinated drain: an edge taken out of the answers of every nameserver, in the store.

`config/drain/{edge}` holds `{at, by}` while the edge is drained. It lives under
`config/` so every edge and nameserver gets it through the watch they already
have, and keeps it in their snapshots: a restarted nameserver or edge (even with
the store away) still knows. Nameservers stop answering the edge's addresses as
soon as they see the key; the edge keeps serving what is open, reports
`draining`, and `idle` once nothing is in flight (edge/fleet/report.py). Written by
`cdnctl drain|undrain` and the nameserver dashboard's button, with an audit
record in the same transaction. A drain does not touch `config/rev`: it is no
customer change, so it never races `cdnctl apply`.
"""
from __future__ import annotations

import json
import time
from typing import Any

from .keys import Keys
from .store import EtcdStore


async def set_drain(store: EtcdStore, keys: Keys, edge: str, who: str, on: bool = True) -> int:
    """Drain (or, with `on=False`, undrain) `edge`; the store revision of the change."""
    if not edge or "/" in edge:
        raise ValueError(f"{edge!r} is not a node id")
    now = time.time()
    op = store.put(keys.drain(edge), json.dumps({"at": now, "by": who})) if on \
        else store.delete(keys.drain(edge))
    audit = store.put(f"{keys.audit}{time.time_ns():020d}-drain", json.dumps(
        {"at": now, "who": who, "action": "drain" if on else "undrain",
         "changes": [{"action": "drain" if on else "undrain", "node": edge}]}))
    resp = await store.txn([], [op, audit])
    return int(resp.header.revision)


def drains(entries: dict[str, Any], keys: Keys) -> dict[str, dict[str, Any]]:
    """The drained edges among a config snapshot's entries (key -> Entry): id -> {at, by}."""
    out: dict[str, dict[str, Any]] = {}
    for key, entry in entries.items():
        if not key.startswith(keys.drains):
            continue
        try:
            value = json.loads(entry.value)
        except ValueError:
            value = {}
        out[key[len(keys.drains):]] = value if isinstance(value, dict) else {}
    return out
