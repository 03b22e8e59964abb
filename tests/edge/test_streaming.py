"""Big disk-tier hits streamed by `edge serve` (uvloop) to several clients at once.

The bytes go out through edge/http/filesend.py: copied through one buffer per worker
(the default) or by sendfile(2). Slow readers fill their sockets, so a hit is
written in pieces and resumed; every client must get exactly its object, and
the edge's memory must not grow with what it streams.
"""
from __future__ import annotations

import asyncio
import hashlib
import random
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import stop
from tests.edge.test_cache import CountingOrigin
from tests.edge.test_disk import _wait_up, disk_cfg, edge_serve

SIZE = 24 * 1024 * 1024
# Not periodic: a piece sent twice or skipped anywhere changes the digest.
BODY = random.Random(16).randbytes(SIZE)
DIGEST = hashlib.sha256(BODY).hexdigest()
REQUEST = b"GET /big HTTP/1.1\r\nHost: www.test.com\r\n%s\r\n"


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its children (the workers), in MiB."""
    total = 0.0
    pids = [pid] + [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                    for c in (t / "children").read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


async def read_response(reader: asyncio.StreamReader, slow: bool) -> tuple[bytes, bytes]:
    """(head, body digest): the body read in 256 KiB pieces, with pauses when `slow`."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    digest = hashlib.sha256()
    while length:
        piece = await asyncio.wait_for(reader.read(min(length, 256 * 1024)), 10)
        if not piece:
            raise AssertionError("the body was cut short")
        digest.update(piece)
        length -= len(piece)
        if slow:
            await asyncio.sleep(0.004)
    return head, digest.hexdigest().encode()


async def client(port: int, slow: bool) -> list[tuple[bytes, bytes]]:
    """A whole hit, then a range, pipelined on one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST % b"" + REQUEST % b"Range: bytes=1000-1999\r\n")
    try:
        return [await read_response(reader, slow) for _ in range(2)]
    finally:
        writer.close()


@pytest.mark.parametrize("sendfile", [False, True], ids=["copy", "sendfile"])
async def test_big_hits_stream_whole_to_slow_and_fast_clients_in_flat_memory(tmp_path,
                                                                              sendfile):
    async with CountingOrigin() as origin:
        origin.routes["/big"] = {"body": BODY, "headers": {"Cache-Control": "max-age=60"}}
        proc, port = edge_serve(tmp_path, disk_cfg(origin, tmp_path / "cache", cache_memory="1M",
                                                   sendfile=sendfile), stderr=subprocess.PIPE)
        try:
            async with aiohttp.ClientSession() as session:
                await _wait_up(session, port)
                for want in ("MISS", "HIT"):
                    async with session.get(f"http://127.0.0.1:{port}/big",
                                           headers={"Host": "www.test.com"}) as r:
                        assert r.headers["X-Cache"] == want
                        assert hashlib.sha256(await r.read()).hexdigest() == DIGEST
            before = peak = rss_mb(proc.pid)
            streams = asyncio.gather(*(client(port, slow) for slow in (True, False, True, False)))
            while not streams.done():
                peak = max(peak, rss_mb(proc.pid))
                await asyncio.wait([streams], timeout=0.05)
            for whole, part in streams.result():
                assert b" 200 " in whole[0] and b"X-Cache: HIT" in whole[0]
                assert whole[1] == DIGEST.encode()
                assert b" 206 " in part[0] and b"Content-Range: bytes 1000-1999/" in part[0]
                assert part[1] == hashlib.sha256(BODY[1000:2000]).hexdigest().encode()
            assert origin.hits["/big"] == 1
            # 4 x 24 MiB went out; the edge's memory did not follow them
            assert peak - before < 12, (before, peak)
        finally:
            stop(proc)
            err = proc.stderr.read().decode() if proc.stderr else ""
        assert "Traceback" not in err, err
