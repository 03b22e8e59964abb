"""The store's content at one revision, and its copy on the node's own disk.

A node that loses the store keeps serving what it last applied; one that restarts
while the store is down starts from this file. It is written atomically (a
temporary file, fsync, rename, fsync of the directory): after a crash the file is
the old snapshot or the new one, never half of either.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's value and revisions, as etcd reports them."""

    value: bytes
    mod_revision: int
    create_revision: int


@dataclass(frozen=True)
class Snapshot:
    """Every key under a prefix at one revision. Never changed once made."""

    revision: int
    prefix: str
    entries: Mapping[str, Entry] = field(default_factory=dict)

    def under(self, folder: str) -> dict[str, Entry]:
        """The entries whose key starts with `folder`, by the rest of the key."""
        n = len(folder)
        return {k[n:]: e for k, e in self.entries.items() if k.startswith(folder)}


def save(path: Path, snap: Snapshot) -> None:
    """Write `snap` to `path` atomically (see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"revision": snap.revision, "prefix": snap.prefix,
            "entries": {k: [e.value.decode("utf-8", "surrogateescape"), e.mod_revision,
                            e.create_revision] for k, e in snap.entries.items()}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as out:
        json.dump(body, out, separators=(",", ":"))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path, prefix: str) -> Snapshot | None:
    """The snapshot in `path`, or None when there is none (or it is of another prefix)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            body = json.load(f)
        if body.get("prefix") != prefix:
            return None
        entries = {k: Entry(v[0].encode("utf-8", "surrogateescape"), int(v[1]), int(v[2]))
                   for k, v in body["entries"].items()}
        return Snapshot(int(body["revision"]), prefix, entries)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
