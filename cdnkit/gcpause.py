"""Pausing Python's cyclic garbage collector while big object trees are built.

A collection runs every few hundred new container objects and, as the
generations fill, rescans everything built so far: loading a 10,000-service
config or building its answers spends most of its time there. Nothing built
then is garbage, so the collector waits until the build is done.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (left as found when already paused)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
