"""`edge serve` as users run it, with the interface of tests.edge.test_proxy.Edge.

The cache tests run against both: the in-process edge (one worker, memory only) and
this one, a separate process at the default worker count, where the workers share a
disk tier and coalesce through its part files. A path that works at one worker and
hangs at the default is caught here.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import free_port
from tests.edge.test_proxy import Edge

ROOT = Path(__file__).resolve().parents[2]
# What must never appear in a served edge's log during a cache test.
UNOBSERVED = ("Task exception was never retrieved", "Task was destroyed but it is pending",
              "Traceback")


class ServedEdge:
    """`edge serve -c CONFIG --listen 127.0.0.1:PORT`, no --workers: the default count."""

    def __init__(self, cfg: dict, port: int | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="served-edge-"))
        self.config = self.dir / "edge.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = self.dir / "edge.log"
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workers = os.cpu_count() or 1

    async def __aenter__(self) -> "ServedEdge":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "serve", "-c", str(self.config),
             "--listen", f"127.0.0.1:{self.port}"],
            cwd=ROOT, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        try:
            await self._ready()
        except BaseException:
            self._stop()
            raise
        self.client = aiohttp.ClientSession(auto_decompress=False,
                                            connector=aiohttp.TCPConnector(limit=0))
        return self

    async def _ready(self) -> None:
        for _ in range(200):
            if self.proc.poll() is not None:
                raise AssertionError(f"edge exited: {self.log.read_text()}")
            if self.log.read_text().count("ready:") >= self.workers:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"edge did not start: {self.log.read_text()}")

    async def __aexit__(self, *exc) -> None:
        await self.client.close()
        self._stop()
        text = self.log.read_text()
        if exc[0] is None:
            bad = [line for line in text.splitlines() if any(s in line for s in UNOBSERVED)]
            assert not bad, text
        for p in self.dir.iterdir():
            p.unlink()
        self.dir.rmdir()

    def _stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"edge did not stop on SIGTERM: {self.log.read_text()}")

    async def get(self, path: str, host: str = "www.test.com", **kw) -> tuple[int, str, dict]:
        async with self.client.get(self.base + path, headers={"Host": host, **kw.pop("headers", {})},
                                   **kw) as r:
            return r.status, await r.text(), dict(r.headers)


@pytest.fixture(params=["one-worker", "default-workers"])
def AnyEdge(request):
    """The edge class of a cache test: in process at one worker, or `edge serve` as a
    user starts it (default workers, shared disk tier)."""
    return Edge if request.param == "one-worker" else ServedEdge
