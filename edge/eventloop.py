"""The event loop `edge serve` runs on: uvloop when it is installed, else asyncio's.

uvloop (libuv, in C) runs the same protocols with less overhead per event: on
this edge's request path it takes ~15 % off the CPU of a proxied request and
of a cache hit (bench/README.md). Nothing in the edge depends on it: the tests
run on asyncio's loop, `edge serve` on uvloop, and the one thing uvloop lacks,
loop.sendfile, is not used: disk-tier hits go out through edge/http/filesend.py.
"""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine

from edge.malloc import keep_freed_memory


def run(main: Coroutine[Any, Any, int]) -> int:
    keep_freed_memory()              # edge/malloc.py: no brk(2) pair per streamed read
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
