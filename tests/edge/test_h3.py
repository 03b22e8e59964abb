"""HTTP/3 on the edge's TLS listeners (same address and port, UDP), with a real aioquic
HTTP/3 client through `edge serve --origin URL --https ...` at the default worker count
to a real aiohttp origin."""
from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, serve_app
from tests.edge.h3client import h3_connect
from tests.edge.test_h2 import BIG, TlsEdge, curl, origin_app
from tests.tlsutil import CA


class QuickTls:
    """`edge serve --origin URL --listen ... --https 127.0.0.1:PORT --cert F --key F`."""

    def __init__(self, origin: str, ca: CA, *extra: str):
        cert, key = ca.issue("www.test.com", "127.0.0.1")
        self.ca, self.tls_port, self.port = ca, free_port(), free_port()
        self.url = f"https://www.test.com:{self.tls_port}"
        self.dir = Path(tempfile.mkdtemp(prefix="h3-edge-"))
        self.log = self.dir / "edge.log"
        self.args = [sys.executable, "-m", "edge.cli", "serve", "--origin", origin,
                     "--listen", f"127.0.0.1:{self.port}",
                     "--https", f"127.0.0.1:{self.tls_port}", "--cert", str(cert),
                     "--key", str(key), *extra]
        self.workers = os.cpu_count() or 1

    async def __aenter__(self) -> "QuickTls":
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)
        for _ in range(300):
            if self.proc.poll() is not None:
                raise AssertionError(f"edge exited: {self.log.read_text()}")
            if self.log.read_text().count("ready:") >= self.workers:
                return self
            await asyncio.sleep(0.05)
        self.stop()
        raise AssertionError(f"edge did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"edge did not stop: {self.log.read_text()}")

    async def __aexit__(self, *exc) -> None:
        self.stop()
        text = self.log.read_text()
        assert "Traceback" not in text, text


@pytest.fixture
async def origin():
    seen: list = []
    runner, port = await serve_app(await origin_app(seen), "127.0.0.85")
    try:
        yield f"http://127.0.0.85:{port}", seen
    finally:
        await runner.cleanup()


@pytest.fixture
async def h3edge(origin, tmp_path):
    url, seen = origin
    async with QuickTls(url, CA(tmp_path)) as edge:
        edge.seen = seen
        yield edge


def udp_sockets(port: int) -> int:
    """How many UDP sockets are bound to 127.0.0.1:PORT (/proc/net/udp)."""
    want = f"0100007F:{port:04X}"
    lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1] == want)


def udp_bound(port: int) -> bool:
    """Whether something holds UDP 127.0.0.1:PORT."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("127.0.0.1", port))
        return False
    except OSError:
        return True
    finally:
        probe.close()


async def test_h3_miss_hit_head_post_range_and_a_large_body(h3edge):
    edge = h3edge
    auth = f"www.test.com:{edge.tls_port}"
    async with h3_connect(edge.tls_port, edge.ca.path) as client:
        first = await client.request("GET", "/a.txt", auth)
        assert first.status == 200, first
        assert bytes(first.body) == b"object /a.txt " + b"y" * 10_000
        assert "fwd=uri-miss" in first.headers["cache-status"]
        assert first.headers["via"] == "3 gslb-edge"
        hit = await client.request("GET", "/a.txt", auth)
        assert re.search(r"gslb-edge; hit", hit.headers["cache-status"]), hit.headers
        assert hit.headers["via"] == "3 gslb-edge" and "alt-svc" not in hit.headers
        assert bytes(hit.body) == bytes(first.body) and len(edge.seen) == 1
        head = await client.request("HEAD", "/a.txt", auth)
        assert head.status == 200 and not head.body
        assert head.headers["content-length"] == "10014"
        part = await client.request("GET", "/a.txt", auth, [("range", "bytes=7-12")])
        assert part.status == 206 and bytes(part.body) == b"/a.txt"
        assert part.headers["content-range"] == "bytes 7-12/10014"
        upload = bytes(range(256)) * 12_000           # 3 MB, over every window
        posted = await client.request("POST", "/form", auth, body=upload)
        digest = hashlib.sha256(upload).hexdigest()
        assert posted.status == 200 and bytes(posted.body) == f"got {len(upload)} {digest}".encode()
        assert ("POST", "/form", len(upload), auth) in edge.seen
        # 30 MB, streamed from the origin while it fills, then again from the cache
        expect = hashlib.sha256((bytes(range(256)) * 256) * (BIG // 65536)).hexdigest()
        for _ in range(2):
            big = await client.request("GET", "/big", auth, timeout=60)
            assert big.status == 200 and len(big.body) == BIG
            assert hashlib.sha256(big.body).hexdigest() == expect
        assert sum(1 for s in edge.seen if s[1] == "/big") == 1


async def test_alt_svc_on_h2_and_h1_answers_and_h3_on_every_worker(h3edge):
    edge = h3edge
    want = f'h3=":{edge.tls_port}"; ma=86400'
    for version in ("--http2", "--http1.1"):
        for _ in range(2):                          # a miss, then a hit (the shortcut)
            info, _ = await asyncio.to_thread(curl, edge, "/alt", version=version)
            assert info["headers"]["alt-svc"] == want, (version, info["headers"])
    # plain HTTP advertises nothing
    out = subprocess.run(["curl", "-sS", "-D", "-", "-o", "/dev/null", "-H",
                          "Host: www.test.com", f"http://127.0.0.1:{edge.port}/alt"],
                         capture_output=True, timeout=30)
    assert b"alt-svc" not in out.stdout.lower() and out.stdout.startswith(b"HTTP/1.1 ")
    # many connections from many source ports: the kernel spreads them over the workers,
    # and each worker answers its own (one shared socket would break connections).
    auth = f"www.test.com:{edge.tls_port}"

    async def one(i: int) -> int:
        async with h3_connect(edge.tls_port, edge.ca.path) as client:
            answer = await client.request("GET", f"/w{i % 3}", auth)
            return answer.status

    statuses = await asyncio.gather(*[one(i) for i in range(12)])
    assert statuses == [200] * 12


async def test_no_h3_means_no_udp_socket_and_no_alt_svc(origin, tmp_path):
    url, _ = origin
    async with QuickTls(url, CA(tmp_path), "--no-h3") as edge:
        assert not udp_bound(edge.tls_port) and udp_sockets(edge.tls_port) == 0
        for version in ("--http2", "--http1.1"):
            info, _ = await asyncio.to_thread(curl, edge, "/x", version=version)
            assert info["http_code"] == 200 and "alt-svc" not in info["headers"]
    async with QuickTls(url, CA(tmp_path)) as edge:
        # one SO_REUSEPORT socket per worker (the parent closed its copies), not one shared
        assert udp_sockets(edge.tls_port) == edge.workers


async def test_h3_certificate_chosen_by_sni_and_config_key(origin, tmp_path):
    url, _ = origin
    ca = CA(tmp_path)
    other_cert, other_key = ca.issue("other.test.com")
    cfg = {"customers": [{"directory": "t", "cnames": ["www.test.com", "other.test.com"],
                          "origin": {"http": [url.removeprefix("http://")]}}]}
    edge = TlsEdge(cfg, ca)
    import yaml

    raw = yaml.safe_load(edge.config.read_text())
    raw["tls"]["certificates"].append({"names": ["other.test.com"], "cert": str(other_cert),
                                       "key": str(other_key)})
    edge.config.write_text(yaml.safe_dump(raw))
    async with edge:
        for name in ("www.test.com", "other.test.com"):
            # the client checks the certificate against `name`: the wrong one fails
            async with h3_connect(edge.tls_port, ca.path, server_name=name) as client:
                answer = await client.request("GET", "/sni", f"{name}:{edge.tls_port}")
                assert answer.status == 200, answer
    raw["tls"]["h3"] = False
    edge = TlsEdge(cfg, ca)
    raw["tls"]["listen"] = [f"127.0.0.1:{edge.tls_port}"]
    edge.config.write_text(yaml.safe_dump(raw))
    async with edge:
        assert not udp_bound(edge.tls_port)
        info, _ = await asyncio.to_thread(curl, edge, "/x")
        assert "alt-svc" not in info["headers"]


async def test_edge_h3get_fetches_over_http3_as_the_demo_prints_it(h3edge, tmp_path):
    """`edge h3get`, the client the demo prints (Debian's curl has no HTTP/3): the head as
    curl -D - prints it, the body to -o, the certificate checked against --cacert."""
    edge = h3edge
    out = tmp_path / "body"
    line = [sys.executable, "-m", "edge.cli", "h3get", "--cacert", str(edge.ca.path),
            "--resolve", f"www.test.com:{edge.tls_port}:127.0.0.1", "-o", str(out),
            f"{edge.url}/a.txt"]
    for cached in ("uri-miss", "hit"):
        got = await asyncio.to_thread(subprocess.run, line, cwd=ROOT, capture_output=True,
                                      text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        head = got.stdout.splitlines()
        assert head[0] == "HTTP/3 200" and "via: 3 gslb-edge" in head, got.stdout
        assert any(h.startswith("cache-status:") and cached in h for h in head), got.stdout
        assert out.read_bytes() == b"object /a.txt " + b"y" * 10_000
    # A certificate the given CA did not sign: refused, exit 1, said why.
    (tmp_path / "other").mkdir()
    other = CA(tmp_path / "other")
    wrong = await asyncio.to_thread(
        subprocess.run, [*line[:5], str(other.path), *line[6:]], cwd=ROOT,
        capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and wrong.stderr.startswith("edge h3get: "), wrong
    # Nothing listening: a clear error within --max-time, not a hang.
    quiet = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "edge.cli", "h3get", "--max-time", "2",
                         "--cacert", str(edge.ca.path), f"https://127.0.0.1:{free_port()}/"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert quiet.returncode == 1 and "no HTTP/3 answer within 2 s" in quiet.stderr, quiet
