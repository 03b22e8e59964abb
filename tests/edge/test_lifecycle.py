"""`edge serve` as a process: it owns its port, its workers share it, it stops promptly."""
from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import yaml
from aiohttp import web

from tests.conftest import ROOT, free_port, serve_app, stop


def edge_config(tmp: Path, origin_port: int, port: int) -> Path:
    path = tmp / "edge.yaml"
    path.write_text(yaml.safe_dump({
        "listen": [f"127.0.0.1:{port}"], "name": "edge-test",
        "customers": [{"directory": "test", "cnames": ["www.test.com"],
                       # A long origin timeout: only the drain bound may end a hanging pull.
                       "origin": {"http": [f"127.0.0.1:{origin_port}"], "timeout": 600}}]}))
    return path


async def start_origin() -> tuple[web.AppRunner, int, asyncio.Event]:
    hanging = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        hanging.set()
        await asyncio.sleep(3600)
        return web.Response(text="late")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/hang", hang)
    app.router.add_get("/{tail:.*}", ok)
    runner, port = await serve_app(app)
    return runner, port, hanging


def start_edge(config: Path, log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "-c", str(config),
                             *args], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


async def wait_serving(proc: subprocess.Popen, port: int, log: Path, workers: int = 1) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise AssertionError(f"edge exited: {log.read_text()}")
        if log.read_text().count("ready:") >= workers:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"edge did not start: {log.read_text()}")


@dataclass
class Running:
    """An `edge serve` process of a test, its port, log, config and origin."""

    proc: subprocess.Popen
    port: int
    log: Path
    config: Path
    hanging: asyncio.Event          # set when the origin's /hang was asked


@contextlib.asynccontextmanager
async def running_edge(tmp_path: Path, *args: str, workers: int = 2) -> AsyncIterator[Running]:
    """A test origin and `edge serve --workers N ARGS` in front of it, both stopped after."""
    origin, origin_port, hanging = await start_origin()
    port, log = free_port(), tmp_path / f"edge-{free_port()}.log"
    config = edge_config(tmp_path, origin_port, port)
    proc = start_edge(config, log, "--workers", str(workers), *args)
    try:
        await wait_serving(proc, port, log, workers=workers)
        yield Running(proc, port, log, config, hanging)
    finally:
        stop(proc)
        await origin.cleanup()


async def get(port: int, path: str, **kw) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{port}{path}",
                              headers={"Host": "www.test.com"}, **kw) as r:
            return r.status, await r.text()


async def test_a_second_edge_on_the_same_address_is_refused(tmp_path):
    """With SO_REUSEPORT a second edge used to share the port silently (or crash with a
    traceback and an "Unclosed client session" warning): now one line and exit 1."""
    async with running_edge(tmp_path) as first:
        port, config = first.port, first.config
        for workers in ("1", "2"):
            started = time.monotonic()
            second = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "edge.cli", "serve", "-c", str(config),
                                 "--workers", workers],
                cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert second.returncode == 1, (workers, second.stderr)
            assert time.monotonic() - started < 20
            lines = [l for l in (second.stdout + second.stderr).splitlines() if l.strip()]
            assert lines == [f"edge: cannot listen on 127.0.0.1:{port} (TCP): address in use"
                             + lines[0].split("address in use", 1)[1]], lines
        assert await get(port, "/x") == (200, "ok")            # the first one is untouched


def listening_pids(port: int) -> list[int]:
    out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True,
                         text=True).stdout
    return sorted(int(p) for p in re.findall(r"pid=(\d+)", out))


def accepting_pids(port: int) -> set[int]:
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"sport = :{port}"],
                         capture_output=True, text=True).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


async def test_workers_each_own_a_share_of_the_port(tmp_path):
    async with running_edge(tmp_path) as edge:
        port = edge.port
        pids = listening_pids(port)
        # One listening socket per worker, each held by that worker alone.
        assert len(pids) == 2 and len(set(pids)) == 2 and edge.proc.pid not in pids, pids
        # Connections from many source ports are spread over both.
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as client:
            responses = [await client.get(f"http://127.0.0.1:{port}/x",
                                          headers={"Host": "www.test.com"}) for _ in range(1)]
            conns = []
            for _ in range(24):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /x HTTP/1.1\r\nHost: www.test.com\r\n\r\n")
                await reader.readuntil(b"\r\n\r\n")
                conns.append(writer)
            assert accepting_pids(port) == set(pids)
            for writer in conns:
                writer.close()
            for r in responses:
                r.release()


async def test_an_idle_edge_exits_at_once(tmp_path):
    async with running_edge(tmp_path) as edge:
        port, proc, log = edge.port, edge.proc, edge.log
        assert await get(port, "/a") == (200, "ok")
        # An idle keep-alive connection (handed to aiohttp by a miss) must not hold us up.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /b HTTP/1.1\r\nHost: www.test.com\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        took = time.monotonic() - started
        writer.close()
    assert code == 0 and took < 3, (took, log.read_text())
    assert "stopped in" in log.read_text()


async def test_requests_in_flight_get_the_drain_bound_and_no_more(tmp_path):
    """A pull hanging at the origin used to keep the edge for aiohttp's 60 s after
    SIGTERM; it gets `--drain-timeout` seconds, and the log says what is waited for."""
    async with running_edge(tmp_path, "--drain-timeout", "1.5", workers=1) as edge:
        port, proc, log = edge.port, edge.proc, edge.log
        pending = asyncio.ensure_future(get(port, "/hang", timeout=aiohttp.ClientTimeout(60)))
        await asyncio.wait_for(edge.hanging.wait(), 10)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        took = time.monotonic() - started
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
    text = log.read_text()
    assert code == 0 and 1.4 < took < 1.5 + 3, (took, text)
    assert "waiting up to 1.5 s for 1 request(s) in flight: GET www.test.com/hang" in text
    assert "1 request(s) still in flight after 1.5 s are cut off" in text
    assert "Traceback" not in text


async def test_a_vanished_cache_directory_is_one_line_and_made_again(tmp_path, monkeypatch,
                                                                      caplog):
    """The demo removed its edges' cache directories on exit; an edge left running logged
    a traceback every 10 s. Now: made again, or one line until the reason changes."""
    import logging
    import shutil

    from edge import proxy
    from edge.cache.disk import DiskStore

    monkeypatch.setattr(proxy, "SWEEP_INTERVAL", 0.5)
    root = tmp_path / "cache"
    disk = DiskStore(root, 1 << 20)
    sweeps = {"n": 0}
    real_sweep = disk.sweep

    def counted() -> list[str]:
        sweeps["n"] += 1
        return real_sweep()

    disk.sweep = counted

    async def after_sweeps(n: int) -> None:
        target = sweeps["n"] + n
        for _ in range(400):
            if sweeps["n"] >= target:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the sweeper stopped")

    caplog.set_level(logging.INFO, "edge.proxy")
    task = asyncio.ensure_future(proxy._sweep_forever(disk))
    try:
        await after_sweeps(1)
        shutil.rmtree(root)                       # removed by hand
        await after_sweeps(3)
        assert (root / "objects").is_dir() and (root / "tmp").is_dir()
        shutil.rmtree(root)
        root.write_text("not a directory")        # cannot be made again
        await after_sweeps(4)
        root.unlink()
        await after_sweeps(3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        disk.close()
    records = [r for r in caplog.records if r.name == "edge.proxy"]
    assert all(r.exc_info is None for r in records), "no tracebacks"
    lines = [r.getMessage() for r in records]
    assert lines == [
        f"disk cache {root} had vanished: made it again (what it held is gone)",
        f"disk cache {root}: sweep failed: the directory is gone and cannot be made again "
        "(Not a directory) (logged again when this changes)",
        f"disk cache {root} had vanished: made it again (what it held is gone)",
    ], lines
    assert (root / "objects").is_dir()
