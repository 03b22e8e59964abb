"""The edge proxy against real origin servers on loopback."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from cdnkit.yamlsrc import load_yaml_text
from edge import config as edge_config
from edge.http.front import Listeners
from edge.proxy import EdgeApp
from edge.state import EdgeState
from tests.conftest import ROOT, free_port, serve_app


class Origin:
    """A real aiohttp origin on 127.0.0.x that records what it was asked."""

    def __init__(self, host: str, name: str):
        self.host, self.name, self.port = host, name, free_port()
        self.requests: list[web.Request] = []
        self.headers: list[dict] = []
        self.status = 200
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self.headers.append(dict(request.headers))
        if request.path.startswith("/big/"):
            size = int(request.path.rsplit("/", 1)[1])
            resp = web.StreamResponse(headers={"Content-Length": str(size)})
            await resp.prepare(request)
            chunk = b"x" * 65536
            for _ in range(size // len(chunk)):
                await resp.write(chunk)
            await resp.write(b"x" * (size % len(chunk)))
            return resp
        if request.path == "/cut":
            resp = web.StreamResponse(headers={"Content-Length": "100000"})
            await resp.prepare(request)
            await resp.write(b"y" * 1000)
            request.transport.close()
            return resp
        body = await request.read()
        return web.Response(status=self.status, text=f"{self.name} {request.path_qs} {len(body)}",
                            headers={"Connection": "keep-alive, X-Secret", "X-Secret": "hop",
                                     "Keep-Alive": "timeout=5", "X-Origin": self.name})

    async def start(self) -> "Origin":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner, _ = await serve_app(app, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def edge_cfg(origins: list[Origin], **origin_opts) -> dict:
    origin = {"http": [f"{o.host}:{o.port}" for o in origins], "backoff": 0.3,
              "backoff_max": 2, "timeout": 2}
    origin.update(origin_opts)
    return {"listen": ["127.0.0.1:0"], "account": "800001", "customers": [
        {"directory": "test", "cnames": ["www.test.com"], "origin": origin,
         "alt_svc": 'h3=":443"; ma=86400'},
        {"directory": "Images", "cnames": ["img.example.com"],
         "origin": {"http": [f"{origins[0].host}:{origins[0].port}"],
                    "host_header": "origin.example.com"}}]}


class Edge:
    def __init__(self, cfg: dict, port: int | None = None):
        raw = load_yaml_text(yaml.safe_dump(cfg), "edge.yaml")
        self.state = EdgeState(edge_config.build(raw, "edge.yaml"))
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> "Edge":
        self.app = EdgeApp(self.state)
        await self.app.start()
        self.listeners = Listeners(self.state, self.app.handle)   # as `edge serve` listens
        await self.listeners.add("127.0.0.1", self.port)
        self.client = aiohttp.ClientSession(auto_decompress=False,
                                            connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.close()
        self.listeners.close()
        await self.listeners.wait_closed(1.0)
        await self.app.stop()

    async def get(self, path: str, host: str = "www.test.com", **kw) -> tuple[int, str, dict]:
        async with self.client.get(self.base + path, headers={"Host": host, **kw.pop("headers", {})},
                                   **kw) as r:
            return r.status, await r.text(), dict(r.headers)


@pytest.fixture
async def origins():
    started = [await Origin(f"127.0.0.{21 + i}", f"o{i}").start() for i in range(3)]
    yield started
    for o in started:
        await o.stop()


async def test_routes_by_edge_cname_and_by_directory_else_404(origins):
    async with Edge(edge_cfg(origins[:1])) as edge:
        assert (await edge.get("/a.mp4?x=1"))[:2] == (200, "o0 /a.mp4?x=1 0")
        status, body, _ = await edge.get("/800001/test/b/c.txt", host="cdn.example.net")
        assert (status, body) == (200, "o0 /b/c.txt 0")
        assert (await edge.get("/800001/Images/p.png", host="x"))[1] == "o0 /p.png 0"
        assert (await edge.get("/800001/images/p.png", host="x"))[0] == 404   # case-sensitive
        assert (await edge.get("/a.mp4", host="evil.example"))[0] == 404
        assert (await edge.get("/800001/nope/x", host="x"))[0] == 404
        # an absolute-form target (open-proxy probe) routes nowhere either
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n"
                     b"Connection: close\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 404")
        writer.close()
        assert len(origins[0].requests) == 3           # the 404s never reached an origin


async def test_host_header_via_forwarded_for_and_hop_by_hop(origins):
    async with Edge(edge_cfg(origins[:1])) as edge:
        status, _, headers = await edge.get("/h", headers={
            "Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "1", "TE": "trailers",
            "X-Keep": "yes", "X-Forwarded-For": "192.0.2.1"})
        seen = origins[0].headers[-1]
        assert seen["Host"] == "www.test.com"                    # blank host_header: client's
        assert "X-Drop-Me" not in seen and "TE" not in seen and seen["X-Keep"] == "yes"
        assert seen["X-Forwarded-For"] == "127.0.0.1"     # the client's own chain is not kept
        assert seen["Via"] == "1.1 gslb-edge"
        assert "X-Secret" not in headers and "Keep-Alive" not in headers
        assert headers["X-Origin"] == "o0" and headers["Via"] == "1.1 gslb-edge"
        assert headers["Alt-Svc"] == 'h3=":443"; ma=86400'
        await edge.get("/800001/Images/p.png", host="cdn")
        assert origins[0].headers[-1]["Host"] == "origin.example.com"   # configured


async def test_round_robin_and_failover(origins):
    async with Edge(edge_cfg(origins, balancing="round_robin")) as edge:
        for i in range(9):
            await edge.get(f"/rr{i}")
        assert [len(o.requests) for o in origins] == [3, 3, 3]
    for o in origins:
        o.requests.clear()
    async with Edge(edge_cfg(origins, balancing="failover")) as edge:
        for i in range(5):
            await edge.get(f"/fo{i}")
        assert [len(o.requests) for o in origins] == [5, 0, 0]


async def test_failing_origin_is_skipped_with_growing_backoff_and_recovers(origins):
    async with Edge(edge_cfg(origins[:2], balancing="failover")) as edge:
        primary = origins[0]
        await primary.stop()
        status, body, _ = await edge.get("/x")
        assert status == 200 and body.startswith("o1")             # retried on the next one
        pool = edge.state.pools[("test", "http")]
        server = pool.servers[0]
        assert pool.state[server].failures == 1
        first_until = pool.state[server].until
        await asyncio.sleep(0.35)                                   # back-off (0.3 s) over
        assert (await edge.get("/y"))[1].startswith("o1")          # tried again, still dead
        assert pool.state[server].failures == 2
        assert pool.state[server].until - first_until > 0.5         # now skipped 0.6 s
        assert (await edge.get("/z"))[1].startswith("o1")
        assert pool.state[server].failures == 2                     # skipped, not retried
        health = await (await edge.client.get(edge.base + "/healthz")).json()
        key = f"127.0.0.21:{primary.port}"
        assert health["origins"]["test/http"][key]["state"] == "backoff"
        await primary.start()
        await asyncio.sleep(0.65)
        assert (await edge.get("/back"))[1].startswith("o0")        # recovered
        assert pool.state[server].failures == 0


async def test_5xx_tries_the_next_server_post_is_not_retried(origins):
    origins[0].status = 503
    async with Edge(edge_cfg(origins[:2], balancing="failover")) as edge:
        assert (await edge.get("/a"))[1].startswith("o1")
        origins[0].status = 200
        for pool in edge.state.pools.values():
            for state in pool.state.values():
                state.until = 0
        origins[1].status = 500
        origins[0].status = 503
        async with edge.client.post(edge.base + "/form", data=b"k=v" * 1000,
                                    headers={"Host": "www.test.com"}) as r:
            assert r.status == 503                                  # one attempt, as answered
            assert (await r.text()) == "o0 /form 3000"              # the body reached the origin
        assert len(origins[0].requests) == 2 and len(origins[1].requests) == 1


async def test_all_origins_down_is_502(origins):
    async with Edge(edge_cfg(origins[:1])) as edge:
        await origins[0].stop()
        assert (await edge.get("/x"))[0] == 502


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_large_body_streams_with_flat_memory(origins):
    size = 1024 * 1024 * 1024
    async with Edge(edge_cfg(origins[:1])) as edge:
        before = rss_mb()
        peak = before
        got = 0
        async with edge.client.get(f"{edge.base}/big/{size}", headers={"Host": "www.test.com"}) as r:
            assert r.status == 200 and r.content_length == size
            async for chunk in r.content.iter_chunked(1 << 20):
                got += len(chunk)
                peak = max(peak, rss_mb())
        assert got == size
        assert peak - before < 60            # 1 GiB passed through, memory did not follow


async def test_origin_cut_mid_body_aborts_the_client(origins):
    async with Edge(edge_cfg(origins[:1])) as edge:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with edge.client.get(edge.base + "/cut", headers={"Host": "www.test.com"}) as r:
                await r.read()


async def test_metrics_per_customer(origins):
    async with Edge(edge_cfg(origins[:2], balancing="failover")) as edge:
        await edge.get("/m1")
        await origins[0].stop()
        await edge.get("/m2")
        text = await (await edge.client.get(edge.base + "/metrics")).text()
        assert 'edge_requests_total{customer="test",status="200"} 2.0' in text
        assert 'edge_bytes_to_clients_total{customer="test"}' in text
        assert 'edge_bytes_from_origin_total{customer="test"}' in text
        assert 'edge_origin_errors_total{customer="test",reason="connect",server="127.0.0.21"} 1.0' in text


def write(tmp: Path, text: str) -> Path:
    path = tmp / "edge.yaml"
    path.write_text(text)
    return path


def test_config_errors_with_lines(tmp_path):
    text = """\
listen: ["127.0.0.1:8081"]
customers:
  - directory: a
    cnames: [www.a.com]
    origin:
      http: ["http://127.0.0.1:9000"]
  - directory: a
    cnames: [www.b.com]
    origin:
      http: [www.b.com]
  - directory: c
    origin: {http: [127.0.0.1, origin.example.com]}
"""
    with pytest.raises(edge_config.ConfigError) as info:
        edge_config.load(write(tmp_path, text))
    problems = "\n".join(info.value.problems)
    path = tmp_path / "edge.yaml"
    assert f"{path}:6: customer a origin http: 'http://127.0.0.1:9000': give HOST" in problems
    assert f"{path}:7: customer a: directory 'a' is used twice" in problems
    assert "origin www.b.com is one of its own edge CNAMEs" in problems
    assert "several IP addresses or one domain, not a mix" in problems
    many = {"customers": [{"directory": f"d{i}", "origin": {"http": ["127.0.0.1"]}}
                          for i in range(101)]}
    with pytest.raises(edge_config.ConfigError) as info:
        edge_config.load(write(tmp_path, yaml.safe_dump(many)))
    assert "101 customers; at most 100 are allowed" in info.value.problems[0]


def test_default_config_loads():
    cfg = edge_config.load(ROOT / "data" / "edge.yaml")
    assert cfg.by_cname["www.test.com"].directory == "test"


async def test_quick_mode_proxies_every_host(origins):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "--origin",
                             f"http://127.0.0.21:{origins[0].port}", "--host", "www.test.com",
                             "--listen", f"127.0.0.1:{port}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    async with s.get(f"http://127.0.0.1:{port}/q", headers={"Host": "any.host"}) as r:
                        assert r.status == 200 and (await r.text()).startswith("o0 /q")
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("edge did not start")
        assert origins[0].headers[-1]["Host"] == "www.test.com"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_head_passes_through_with_its_length(origins):
    async with Edge(edge_cfg(origins[:1])) as edge:
        for _ in range(2):          # the same keep-alive connection stays usable
            async with edge.client.head(edge.base + "/h", headers={"Host": "www.test.com"}) as r:
                assert r.status == 200 and r.headers["Content-Length"] == str(len("o0 /h 0"))
        assert (await edge.get("/after"))[0] == 200
