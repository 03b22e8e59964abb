"""HTTP/2 on the edge's TLS listeners, with real clients (curl --http2, h2load) through
`edge serve` at the default worker count to a real aiohttp origin."""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import ROOT, free_port, serve_app
from tests.edge.served import ServedEdge
from tests.tlsutil import CA

BIG = 30 * 1024 * 1024


class TlsEdge(ServedEdge):
    """`edge serve` with a TLS listener for www.test.com (certificate of a test CA)."""

    def __init__(self, cfg: dict, ca: CA):
        cert, key = ca.issue("www.test.com", "127.0.0.1")
        self.tls_port = free_port()
        cfg = {**cfg, "tls": {"listen": [f"127.0.0.1:{self.tls_port}"], "certificates": [
            {"names": ["www.test.com"], "cert": str(cert), "key": str(key)}]}}
        super().__init__(cfg)
        self.ca = ca
        self.url = f"https://www.test.com:{self.tls_port}"


def curl(edge, path: str, *args: str, version: str = "--http2") -> tuple[dict, bytes]:
    """(response info, body) of one curl request to the edge's TLS port."""
    out = subprocess.run(
        ["curl", "-sS", version, "--max-time", "30", "--cacert", str(edge.ca.path),
         "--resolve", f"www.test.com:{edge.tls_port}:127.0.0.1", "-D", "-", "-o", "-",
         "-w", "\n%{json}", *args, edge.url + path], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    raw, _, info = out.stdout.rpartition(b"\n")
    info = json.loads(info)
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    info["headers"] = headers
    return info, body



async def origin_app(seen: list) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append((request.method, request.path, len(body), request.headers.get("Host")))
        if request.path == "/big":
            resp = web.StreamResponse(headers={"Content-Length": str(BIG),
                                               "Cache-Control": "max-age=600"})
            await resp.prepare(request)
            block = bytes(range(256)) * 256
            for _ in range(BIG // len(block)):
                await resp.write(block)
            return resp
        if request.method == "POST":
            return web.Response(text=f"got {len(body)} {hashlib.sha256(body).hexdigest()}")
        return web.Response(text=f"object {request.path} " + "y" * 10_000,
                            headers={"Cache-Control": "max-age=600"})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
async def h2edge(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_ADMIN_TOKEN", "purge-me")
    seen: list = []
    runner, oport = await serve_app(await origin_app(seen), "127.0.0.81")
    cfg = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                          "origin": {"http": [f"127.0.0.81:{oport}"]}}]}
    try:
        async with TlsEdge(cfg, CA(tmp_path)) as edge:
            edge.seen = seen
            yield edge
    finally:
        await runner.cleanup()


async def test_curl_http2_miss_hit_range_purge_post_and_a_large_body(h2edge, tmp_path):
    edge = h2edge
    info, body = await asyncio.to_thread(curl, edge, "/a.txt")
    assert info["http_version"] == "2" and info["http_code"] == 200
    assert body == b"object /a.txt " + b"y" * 10_000
    assert "fwd=uri-miss" in info["headers"]["cache-status"]
    assert info["headers"]["via"] == "2 gslb-edge"
    info, body = await asyncio.to_thread(curl, edge, "/a.txt")
    assert re.search(r"gslb-edge; hit", info["headers"]["cache-status"]), info["headers"]
    assert body.startswith(b"object /a.txt") and len(edge.seen) == 1
    info, body = await asyncio.to_thread(curl, edge, "/a.txt", "-r", "7-12")
    assert info["http_code"] == 206 and body == b"/a.txt"
    assert info["headers"]["content-range"] == f"bytes 7-12/{10_014}"
    # purge over HTTP/2 (a POST body read by the edge itself), then a miss again
    info, body = await asyncio.to_thread(
        curl, edge, "/.edge/purge", "-H", "Authorization: Bearer purge-me",
        "-H", "Host: edge.internal", "--data", json.dumps({"url": "http://www.test.com/a.txt"}))
    assert info["http_code"] == 200 and json.loads(body)["path"] == "/a.txt"
    await asyncio.sleep(0.6)                     # the other workers read the ban
    info, _ = await asyncio.to_thread(curl, edge, "/a.txt")
    assert "fwd=" in info["headers"]["cache-status"] and len(edge.seen) == 2
    # a POST body streamed to the origin, larger than every window
    upload = tmp_path / "up.bin"
    upload.write_bytes(bytes(range(256)) * 12_000)
    info, body = await asyncio.to_thread(curl, edge, "/form", "--data-binary", f"@{upload}")
    digest = hashlib.sha256(upload.read_bytes()).hexdigest()
    assert info["http_code"] == 200 and body == f"got {3_072_000} {digest}".encode()
    # a large body, streamed while it is filled, then from the cache
    for _ in range(2):
        info, body = await asyncio.to_thread(curl, edge, "/big")
        assert info["http_version"] == "2" and len(body) == BIG
        assert hashlib.sha256(body).digest() == hashlib.sha256(
            bytes(range(256)) * 256 * (BIG // 65536)).digest()
    assert "hit" in info["headers"]["cache-status"]
    # HTTP/1.1 on the same TLS port, as ALPN agreed
    info, body = await asyncio.to_thread(curl, edge, "/a.txt", version="--http1.1")
    assert info["http_version"] == "1.1" and body.startswith(b"object /a.txt")


@pytest.mark.parametrize("table", ["4096", "0"])
async def test_h2load_2000_requests_without_an_error(h2edge, table):
    """Hits from both workers' memory; with a header table of 0 the first answer on a
    connection is a pre-encoded hit head, which must open with the table size update
    nghttp2's decoder insists on (RFC 7541 4.2)."""
    edge = h2edge
    await asyncio.to_thread(curl, edge, "/load.txt")           # stored: then hits
    for _ in range(2):
        out = await asyncio.to_thread(subprocess.run, [
            "h2load", "-n", "2000", "-c", "10", "-m", "10", "-H", ":authority: www.test.com",
            f"--header-table-size={table}", f"https://127.0.0.1:{edge.tls_port}/load.txt"],
            capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Application protocol: h2" in out.stdout
        assert "2000 succeeded, 0 failed, 0 errored, 0 timeout" in out.stdout, out.stdout
        assert "status codes: 2000 2xx" in out.stdout


async def test_quick_mode_serves_https_with_http2(tmp_path):
    seen: list = []
    runner, oport = await serve_app(await origin_app(seen), "127.0.0.82")
    ca = CA(tmp_path)
    cert, key = ca.issue("www.test.com")
    port, tls_port = free_port(), free_port()
    log = tmp_path / "edge.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "serve", "--origin", f"http://127.0.0.82:{oport}",
         "--listen", f"127.0.0.1:{port}", "--https", f"127.0.0.1:{tls_port}",
         "--cert", str(cert), "--key", str(key)], cwd=ROOT, stdout=log.open("w"),
        stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            if "ready:" in log.read_text():
                break
            assert proc.poll() is None, log.read_text()
            await asyncio.sleep(0.05)
        edge = type("E", (), {"ca": ca, "tls_port": tls_port,
                              "url": f"https://www.test.com:{tls_port}"})
        info, body = await asyncio.to_thread(curl, edge, "/q")
        assert info["http_version"] == "2" and body.startswith(b"object /q")
        assert seen[-1][3] == f"www.test.com:{tls_port}"
    finally:
        proc.terminate()
        proc.wait(10)
        await runner.cleanup()
    # a key that is not the certificate's: one clear line, exit 1
    _, other = ca.issue("other.test.com")
    out = subprocess.run(
        [sys.executable, "-m", "edge.cli", "serve", "--origin", "http://127.0.0.1:1",
         "--https", f"127.0.0.1:{tls_port}", "--cert", str(cert), "--key", str(other)],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "cannot load the certificate" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "edge.cli", "serve", "--origin", "http://127.0.0.1:1",
         "--https", f"127.0.0.1:{tls_port}"], cwd=ROOT, capture_output=True, text=True,
        timeout=30)
    assert out.returncode == 1 and "go together" in out.stderr
