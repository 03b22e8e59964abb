"""Shared directories for workers that were given none.

Workers are separate processes: without a disk tier each would keep its own
memory cache (the same URL a HIT on one worker and a MISS on the other, one
origin request per worker for a burst of misses), and without a state dir a
purge or an invalidation would reach only the worker that took it. So when
several workers are asked for and the config names no `cache_disk` or
`state_dir`, they get them in a temporary directory that lives as long as the
server: the cache then behaves as one, whatever the worker count.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

from edge.model import EdgeConfig

log = logging.getLogger("edge")

SCRATCH_DISK_SIZE = 2 * 1024**3     # a temporary disk tier stays modest


def shared_dirs(cfg: EdgeConfig, workers: int) -> tuple[EdgeConfig, Path | None]:
    """`cfg` with a temporary disk tier and state dir where several workers need them,
    and the directory to remove at exit (None if nothing was made)."""
    if workers <= 1 or (cfg.cache_disk and cfg.state_dir):
        return cfg, None
    scratch = Path(tempfile.mkdtemp(prefix="edge-"))
    changes: dict[str, object] = {}
    if not cfg.cache_disk:
        changes["cache_disk"] = str(scratch / "cache")
        changes["cache_disk_size"] = min(cfg.cache_disk_size, SCRATCH_DISK_SIZE)
    if not cfg.state_dir:
        changes["state_dir"] = str(scratch / "state")
    log.info("%d workers share %s in %s (removed at exit)", workers,
             " and ".join(k for k in ("cache_disk", "state_dir") if k in changes), scratch)
    return dataclasses.replace(cfg, **changes), scratch


def remove(scratch: Path | None) -> None:
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)

