"""Running the edge: drain, reload, keep-alive to origins, client disconnects."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from tests.conftest import ROOT, free_port, serve_app
from tests.edge.test_proxy import Edge


async def start_origin(host: str, port: int, state: dict) -> web.AppRunner:
    async def small(request: web.Request) -> web.Response:
        state.setdefault("transports", set()).add(id(request.transport))
        return web.Response(text=f"{host} {request.path}")

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        state["sent"] = 0
        try:
            for _ in range(100_000):
                await resp.write(b"z" * 65536)
                state["sent"] += 65536
        except (ConnectionResetError, ConnectionError):
            state["stopped"] = True
        return resp

    app = web.Application()
    app.router.add_get("/endless", endless)
    app.router.add_get("/{tail:.*}", small)
    runner, _ = await serve_app(app, host, port)
    return runner


async def wait_http(url: str, host: str, want: int | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s:
        for _ in range(100):
            try:
                async with s.get(url, headers={"Host": host}) as r:
                    body = await r.text()
                    if want is None or r.status == want:
                        return r.status, body
            except aiohttp.ClientConnectorError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered {want}")


async def test_drain_and_reload_in_a_running_edge(tmp_path):
    oport, eport, state = free_port(), free_port(), {}
    runners = [await start_origin("127.0.0.71", oport, state),
               await start_origin("127.0.0.72", oport, state)]
    cfg = {"listen": [f"127.0.0.1:{eport}"], "customers": [
        {"directory": "t", "cnames": ["www.test.com"], "origin": {"http": [f"127.0.0.71:{oport}"]}}]}
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "edge.log"
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "-c", str(path)],
                            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{eport}"
    try:
        assert (await wait_http(base + "/a", "www.test.com"))[1] == "127.0.0.71 /a"
        assert (await wait_http(base + "/healthz", "x"))[0] == 200
        proc.send_signal(signal.SIGUSR1)                       # drain: probes see 503
        status, body = await wait_http(base + "/healthz", "x", 503)
        assert '"draining"' in body
        assert (await wait_http(base + "/a", "www.test.com"))[0] == 200   # still serves
        proc.send_signal(signal.SIGUSR2)
        await wait_http(base + "/healthz", "x", 200)
        # a broken config is rejected and the old one keeps serving
        path.write_text("customers: [{directory: t, origin: {http: ['http://bad']}}]\n")
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert (await wait_http(base + "/b", "www.test.com"))[1] == "127.0.0.71 /b"
        assert "rejected" in log.read_text()
        # a good one takes effect
        cfg["customers"][0]["origin"]["http"] = [f"127.0.0.72:{oport}"]
        path.write_text(yaml.safe_dump(cfg))
        proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            if (await wait_http(base + "/c", "www.test.com"))[1] == "127.0.0.72 /c":
                break
            await asyncio.sleep(0.1)
        assert (await wait_http(base + "/c", "www.test.com"))[1] == "127.0.0.72 /c"
    finally:
        proc.terminate()
        proc.wait(10)
        for r in runners:
            await r.cleanup()


async def test_keep_alive_to_origins_and_client_disconnect_stops_the_pull():
    oport, state = free_port(), {}
    runner = await start_origin("127.0.0.73", oport, state)
    cfg = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                          "origin": {"http": [f"127.0.0.73:{oport}"]}}]}
    try:
        async with Edge(cfg) as edge:
            for i in range(20):
                await edge.get(f"/k{i}")
            assert len(state["transports"]) <= 2        # 20 requests, reused connections
            async with edge.client.get(edge.base + "/endless",
                                       headers={"Host": "www.test.com"}) as r:
                await r.content.readexactly(1 << 20)    # read a little, then hang up
            for _ in range(50):
                if state.get("stopped"):
                    break
                await asyncio.sleep(0.1)
            assert state.get("stopped")                 # the origin saw the edge let go
            assert state["sent"] < 200 * (1 << 20)      # long before the end of the "file"
    finally:
        await runner.cleanup()


async def _healthz_of_every_worker(base: str, tries: int = 40) -> set[int]:
    """Statuses of /healthz over fresh connections (the kernel spreads them over workers)."""
    seen = set()
    for _ in range(tries):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            async with s.get(base + "/healthz") as r:
                seen.add(r.status)
    return seen


async def _keep_busy(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        async def one() -> None:
            while True:
                async with s.get(base + "/a", headers={"Host": "www.test.com"}) as r:
                    await r.read()
        await asyncio.gather(*(one() for _ in range(8)))


async def test_drain_signals_sent_close_together_end_in_the_last_ones_state(tmp_path):
    """`kill -USR1; kill -USR2` at once: every worker ends undrained, whichever order the
    two reached it in (a busy worker took them in the wrong order and stayed drained);
    and a drain sent while the workers start still reaches every one of them."""
    oport, eport, state = free_port(), free_port(), {}
    runner = await start_origin("127.0.0.74", oport, state)
    cfg = {"listen": [f"127.0.0.1:{eport}"], "customers": [
        {"directory": "t", "cnames": ["www.test.com"], "origin": {"http": [f"127.0.0.74:{oport}"]}}]}
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "-c", str(path)],
                            cwd=ROOT, stdout=(tmp_path / "edge.log").open("w"),
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{eport}"
    try:
        for _ in range(200):                        # the parent catches SIGUSR1 (bit 10)
            caught = (Path(f"/proc/{proc.pid}/status").read_text().split("SigCgt:")[1].split()[0])
            if int(caught, 16) & (1 << (signal.SIGUSR1 - 1)):
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGUSR1)            # while the workers are still starting
        assert (await wait_http(base + "/healthz", "x"))[0] in (200, 503)
        await asyncio.sleep(0.5)
        assert await _healthz_of_every_worker(base) == {503}
        assert proc.poll() is None, "a worker's early signal must not kill the edge"
        for first, last, want in ((signal.SIGUSR1, signal.SIGUSR2, {200}),
                                  (signal.SIGUSR2, signal.SIGUSR1, {503})):
            load = asyncio.create_task(_keep_busy(base))    # workers late to their signals
            for _ in range(20):
                proc.send_signal(first)
                await asyncio.sleep(0.002)          # the parent takes them one at a time
                proc.send_signal(last)
                await asyncio.sleep(0.002)
            load.cancel()
            await asyncio.sleep(0.5)
            assert await _healthz_of_every_worker(base) == want
    finally:
        proc.terminate()
        proc.wait(10)
        await runner.cleanup()
