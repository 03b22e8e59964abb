"""`edge validate`, ranking by validation time, and `edge whitelist`."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import yaml
from aiohttp import web

from edge.proxy import rank_once
from tests.conftest import DEFAULT_CONFIG, ROOT, free_port, serve_app
from tests.edge.test_proxy import Edge


async def origin(host: str, port: int, delay: float, status: int, seen: list) -> web.AppRunner:
    async def handler(request: web.Request) -> web.Response:
        seen.append((host, request.path, request.headers["Host"]))
        await asyncio.sleep(delay)
        return web.Response(status=status, text=host)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner, _ = await serve_app(app, host, port)
    return runner


def config(port: int, rank: bool = False) -> dict:
    return {"customers": [{"directory": "adn", "cnames": ["adn.mydomain.com"], "origin": {
        "http": [f"127.0.0.41:{port}", f"127.0.0.42:{port}"], "balancing": "failover",
        "host_header": "adn.mydomain.com", "rank": rank,
        "validation_path": "http://adn.mydomain.com/permanent/background.png"}}]}


def run_edge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


async def test_validate_prints_every_server_and_fails_unless_all_200(tmp_path):
    port, seen = free_port(), []
    runners = [await origin("127.0.0.41", port, 0.0, 200, seen),
               await origin("127.0.0.42", port, 0.0, 404, seen)]
    try:
        path = tmp_path / "edge.yaml"
        path.write_text(yaml.safe_dump(config(port)))
        out = await asyncio.to_thread(run_edge, "validate", "-c", str(path), "adn")
        assert out.returncode == 1, out.stdout + out.stderr
        rows = [l for l in out.stdout.splitlines() if "127.0.0.4" in l]
        assert len(rows) == 2 and " 200 " in rows[0] and " 404 " in rows[1]
        assert ("127.0.0.41", "/permanent/background.png", "adn.mydomain.com") in seen
        assert "NOT all origin servers returned 200 OK" in out.stdout
    finally:
        for r in runners:
            await r.cleanup()
    runners = [await origin("127.0.0.41", port, 0.0, 200, seen),
               await origin("127.0.0.42", port, 0.0, 200, seen)]
    try:
        out = await asyncio.to_thread(run_edge, "validate", "-c", str(path), "adn")
        assert out.returncode == 0 and "all origin servers returned 200 OK" in out.stdout
    finally:
        for r in runners:
            await r.cleanup()


async def test_ranking_makes_the_fastest_server_primary():
    port, seen = free_port(), []
    runners = [await origin("127.0.0.41", port, 0.3, 200, seen),      # slow primary
               await origin("127.0.0.42", port, 0.0, 200, seen)]
    try:
        async with Edge(config(port, rank=True)) as edge:
            await rank_once(edge.state)
            status, body, _ = await edge.get("/video.mp4", host="adn.mydomain.com")
            assert (status, body) == (200, "127.0.0.42")
    finally:
        for r in runners:
            await r.cleanup()


def test_whitelist_text_and_json(tmp_path):
    path = tmp_path / "edge.yaml"
    cfg = config(9)
    cfg["egress"] = ["198.51.100.0/25", "198.51.100.128/25", "2001:db8:ffff::/48"]
    path.write_text(yaml.safe_dump(cfg))
    out = run_edge("whitelist", "-c", str(path), "--gslb", str(DEFAULT_CONFIG), "--json")
    assert out.returncode == 0, out.stderr
    blocks = json.loads(out.stdout)
    assert "198.51.100.0/24" in blocks["ipv4"]                       # halves collapsed
    assert {"127.0.0.11/32", "127.0.0.12/31"} <= set(blocks["ipv4"])  # the gslb's edges
    assert "2001:db8:ffff::/48" in blocks["ipv6"]
    text = run_edge("whitelist", "-c", str(path)).stdout
    assert text.splitlines()[1:] == ["# IPv4", "198.51.100.0/24", "# IPv6", "2001:db8:ffff::/48"]
