"""Purge by URL, prefix and customer; through the API and `edge purge`; in every worker."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest
import yaml
from aiohttp import web

from cdnkit.yamlsrc import load_yaml_text
from edge import config as edge_config
from edge.cache.purge import Ban, ban_for
from tests.conftest import ROOT, free_port, serve_app
from tests.edge.test_cache import CountingOrigin, cfg, fetch
from tests.edge.served import AnyEdge  # noqa: F401  (a fixture)
from tests.edge.test_proxy import Edge


def test_bans_match_keys():
    assert Ban("t", "/a.mp4").matches("http://t/a.mp4")
    assert Ban("t", "/a.mp4").matches("https://t/a.mp4\x00accept-encoding=gzip")
    assert not Ban("t", "/a.mp4").matches("http://t/a.mp4x")
    assert Ban("t", "/v/", True).matches("http://t/v/1.ts")
    assert not Ban("t", "/v/", True).matches("http://other/v/1.ts")
    assert Ban("t", "", True).matches("http://t/anything?x=1")


def test_operator_input_becomes_a_ban():
    raw = load_yaml_text(yaml.safe_dump({"account": "800001", "customers": [
        {"directory": "t", "cnames": ["www.test.com"], "origin": {"http": ["127.0.0.1"]}}]}),
        "e.yaml")
    config = edge_config.build(raw, "e.yaml")
    assert ban_for(config, url="http://www.test.com/a.mp4?x=1") == Ban("t", "/a.mp4?x=1")
    assert ban_for(config, prefix="https://www.test.com/v/") == Ban("t", "/v/", True)
    assert ban_for(config, url="http://cdn.example/800001/t/b.png") == Ban("t", "/b.png")
    assert ban_for(config, customer="t") == Ban("t", "", True)
    # the path is made canonical as a request's is: the ban names the object that is stored
    assert ban_for(config, url="http://www.test.com/a/%2e%2e/b/./c") == Ban("t", "/b/c")
    for bad in ({"url": "http://elsewhere.org/a"}, {"customer": "nope"}, {},
                {"url": "http://www.test.com/../etc"}):
        with pytest.raises(ValueError):
            ban_for(config, **bad)


async def post(edge: Edge, body: dict, token: str | None) -> tuple[int, dict | str]:
    headers = {"Host": "127.0.0.1"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with edge.client.post(edge.base + "/.edge/purge", json=body, headers=headers) as r:
        return r.status, (await r.json() if r.status == 200 else await r.text())


async def test_purge_api(monkeypatch, AnyEdge):
    async with CountingOrigin() as origin:
        for path in ("/a", "/v/1", "/v/2", "/b"):
            origin.routes[path] = {"headers": {"Cache-Control": "max-age=600"}}
        monkeypatch.delenv("EDGE_ADMIN_TOKEN", raising=False)
        async with AnyEdge(cfg(origin)) as edge:
            assert (await post(edge, {"url": "http://www.test.com/a"}, "x"))[0] == 403
        monkeypatch.setenv("EDGE_ADMIN_TOKEN", "purge-me")
        async with AnyEdge(cfg(origin)) as edge:
            for path in ("/a", "/v/1", "/v/2", "/b"):
                await fetch(edge, path)
            assert (await post(edge, {"url": "http://www.test.com/a"}, "wrong"))[0] == 401
            status, body = await post(edge, {"url": "http://www.test.com/a"}, "purge-me")
            assert status == 200 and body["purged_here"] == 1
            assert (await fetch(edge, "/a"))[2]["X-Cache"] == "MISS"
            assert (await fetch(edge, "/b"))[2]["X-Cache"] == "HIT"
            status, body = await post(edge, {"prefix": "http://www.test.com/v/"}, "purge-me")
            assert body["purged_here"] == 2
            assert (await fetch(edge, "/v/1"))[2]["X-Cache"] == "MISS"
            status, body = await post(edge, {"customer": "t"}, "purge-me")
            assert body["purged_here"] == 3       # /a and /v/1 (stored again since) and /b
            assert (await fetch(edge, "/b"))[2]["X-Cache"] == "MISS"
            # a customer's own path of that name is proxied, never taken as the API
            async with edge.client.post(edge.base + "/.edge/purge", json={},
                                        headers={"Host": "www.test.com"}) as r:
                assert r.status == 200 and "body of /.edge/purge" in await r.text()


async def test_edge_purge_reaches_every_worker(tmp_path):
    version = {"v": 1}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=f"v{version['v']}", headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner, oport = await serve_app(app, "127.0.0.91")
    eport = free_port()
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({
        "listen": [f"127.0.0.1:{eport}"], "state_dir": "state",
        "customers": [{"directory": "t", "cnames": ["www.test.com"],
                       "origin": {"http": [f"127.0.0.91:{oport}"]}}]}))
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "-c", str(path),
                             "--workers", "2"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{eport}/video.mp4"
    try:
        async with aiohttp.ClientSession() as s:
            async def bodies(n: int) -> set[str]:
                out = set()
                for _ in range(n):
                    # a new connection each time, so SO_REUSEPORT spreads them over both workers
                    async with aiohttp.ClientSession() as fresh:
                        async with fresh.get(url, headers={"Host": "www.test.com"}) as r:
                            out.add(await r.text())
                return out
            for _ in range(100):
                try:
                    async with s.get(url, headers={"Host": "www.test.com"}) as r:
                        await r.read()
                    break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.1)
            assert await bodies(30) == {"v1"}             # both workers hold v1 now
            version["v"] = 2
            assert await bodies(10) == {"v1"}             # still cached
            out = await asyncio.to_thread(subprocess.run, [
                sys.executable, "-m", "edge.cli", "purge", "-c", str(path),
                "--url", "http://www.test.com/video.mp4"], capture_output=True, text=True,
                cwd=ROOT, timeout=30)
            assert out.returncode == 0, out.stderr
            await asyncio.sleep(0.6)                     # workers look every 0.2 s
            assert await bodies(30) == {"v2"}             # every worker dropped v1
    finally:
        proc.terminate()
        proc.wait(10)
        await runner.cleanup()
