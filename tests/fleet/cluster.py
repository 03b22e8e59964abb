"""A small fleet on loopback for the tests: a real etcd, two nameservers (127.0.0.1 and
127.0.0.2), edges that register and report their load, relays that can cut one
nameserver's path to an edge, an origin, and a load client."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from aiohttp import web

from tests.conftest import ROOT, answers, make_query, parse, stop, udp_query
from tests.conftest import free_port as conftest_free_port
from tests.control.fleet import EdgeProc, Origin, start_edge, wait_for
from tests.etcd import Etcd

A, B = "127.0.0.21", "127.0.0.22"
NEAR_A = [f"10.21.{i}.0/24" for i in range(100)]       # client networks a serves first
NEAR_B = [f"10.22.{i}.0/24" for i in range(20)]
TOKEN = "fleet-admin"
NAME = "www.cdn.example.net"


def free_port(host: str) -> int:
    """A port free for UDP and TCP on `host` (below the ephemeral range, as conftest's)."""
    return conftest_free_port(host)


class Relay:
    """A TCP relay (one nameserver's path to an edge) the test can cut and mend."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port("127.0.0.1")
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.conns: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.mend()

    async def _pipe(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.conns |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self.conns -= {writer, up_writer}

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def mend(self) -> None:
        async def start():
            self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port,
                                                     reuse_address=True)
        self._run(start())

    def cut(self) -> None:
        async def close():
            self.server.close()
            for writer in list(self.conns):
                writer.transport.abort()
            await self.server.wait_closed()
        self._run(close())

    def close(self) -> None:
        if self.server is not None and self.server.is_serving():
            self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def gslb_config(tmp: Path, edge_port: int, relay: Relay | None, **site_a) -> dict:
    """Sites a and b; a is probed through `relay` (this nameserver's own path)."""
    a = {"address": A, "probe": f"127.0.0.1:{relay.port}"} if relay else A
    return {
        "zones": {"cdn.example.net.": {
            "soa": {"mname": "ns1.cdn.example.net.", "rname": "h.example.net.", "serial": 1,
                    "minimum": 1},
            "ns": ["ns1.cdn.example.net.", "ns2.cdn.example.net."],
            "records": {"ns1": [{"type": "A", "value": "127.0.0.1"}],
                        "ns2": [{"type": "A", "value": "127.0.0.2"}]}}},
        "checks": {
            # a: fast probes; b: slow ones, so only its lease can take it out quickly
            "fast": {"type": "http", "port": edge_port, "path": "/healthz", "interval": 0.5,
                     "timeout": 0.4, "rise": 2, "fall": 2},
            "slow": {"type": "http", "port": edge_port, "path": "/healthz", "interval": 4,
                     "timeout": 1, "rise": 1, "fall": 3}},
        "sites": {"a": {"lat": 40.7, "lon": -74.0, "check": "fast", "addresses": [a],
                        **site_a},
                  "b": {"lat": 50.0, "lon": 8.6, "check": "slow", "addresses": [B]}},
        "nets": {**{net: {"sites": ["a", "b"]} for net in NEAR_A},
                 **{net: {"sites": ["b", "a"]} for net in NEAR_B}},
        "services": {f"{NAME}.": {"pool": ["a", "b"], "ttl": 1}},
        "health": {"state_file": str(tmp / "state.json"), "shed_hold": 2, "shed_band": 0.05},
        "dashboard": {"token_env": "FLEET_TEST_TOKEN"},
    }


@dataclass
class Nameserver:
    name: str
    host: str
    port: int
    http: int
    proc: subprocess.Popen
    log: Path
    cmd: list[str] = field(default_factory=list)

    def resolve(self, ecs: str, timeout: float = 1.0) -> tuple[str, ...]:
        out = udp_query(self.port, make_query(NAME, "A", ecs=ecs), host=self.host,
                        timeout=timeout)
        return ("TIMEOUT",) if out is None else tuple(answers(parse(out)))

    def table(self, nets: list[str]) -> dict[str, tuple[str, ...]]:
        return {net: self.resolve(net) for net in nets}

    def api(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://{self.host}:{self.http}{path}", timeout=5) as r:
            return json.loads(r.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.host}:{self.http}/metrics", timeout=5) as r:
            return r.read().decode()

    def post(self, path: str, body: dict, token: str = TOKEN) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://{self.host}:{self.http}{path}", data=json.dumps(body).encode(),
            method="POST", headers={"Authorization": f"Bearer {token}",
                                    "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {"text": exc.read().decode()}

    def stop(self) -> None:
        stop(self.proc)

    def restart(self) -> None:
        self.stop()
        self.proc = _spawn(self.cmd, self.log, "a")
        wait_ready_at(self)


def _spawn(cmd: list[str], log: Path, mode: str = "w") -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open(mode), stderr=subprocess.STDOUT,
                            env={**os.environ, "FLEET_TEST_TOKEN": TOKEN})


def start_nameserver(tmp: Path, store: str, name: str, host: str, cfg: dict) -> Nameserver:
    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    cfg = {**cfg, "health": {**cfg["health"], "state_file": str(home / "state.json")}}
    path = home / "gslb.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    port, http = free_port(host), free_port(host)
    log = home / "gslb.log"
    cmd = [sys.executable, "-m", "gslb.cli", "serve", "-c", str(path), "--dns",
           f"{host}:{port}", "--workers", "1", "--http", f"{host}:{http}", "--store", store,
           "--node-id", name]
    ns = Nameserver(name, host, port, http, _spawn(cmd, log), log, cmd)
    wait_ready_at(ns)
    return ns


def wait_ready_at(ns: Nameserver, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    probe = make_query("cdn.example.net", "SOA", edns=False)
    while time.monotonic() < deadline:
        if ns.proc.poll() is not None:
            raise RuntimeError(f"{ns.name} exited:\n{ns.log.read_text()[-3000:]}")
        if udp_query(ns.port, probe, host=ns.host, timeout=0.2) is not None:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{ns.name} not ready:\n{ns.log.read_text()[-3000:]}")


def edge(tmp: Path, etcd: Etcd, name: str, host: str, port: int, *extra: str) -> EdgeProc:
    return start_edge(tmp, etcd.url, name, "--site", name[-1], *extra, port=port, host=host)


def record(etcd: Etcd, node: str) -> dict:
    text = etcd.get(f"/cdn/nodes/{node}")
    return json.loads(text) if text else {}


def until(check, timeout: float, what: str, every: float = 0.05):
    """wait_for, returning (value, seconds it took)."""
    started = time.monotonic()
    value = wait_for(check, timeout=timeout, every=every, what=what)
    return value, time.monotonic() - started


# --- an origin with one big object, and a load client --------------------------------------


def big_body(size: int) -> bytes:
    block = hashlib.sha256(b"fleet").digest() * 2048           # 64 KiB, not all alike
    return (block * (size // len(block) + 1))[:size]


class BigOrigin(Origin):
    """A real origin on loopback: /big is `size` bytes, anything else a few, cacheable."""

    def __init__(self, size: int):
        self.body = big_body(size)
        super().__init__("big")

    def routes(self, app: web.Application) -> None:
        async def big(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Cache-Control": "no-store",
                                               "Content-Length": str(len(self.body))})
            await resp.prepare(request)
            view = memoryview(self.body)
            for i in range(0, len(view), 1 << 20):
                await resp.write(view[i:i + (1 << 20)])
            return resp

        async def small(request: web.Request) -> web.Response:
            return web.Response(text="small\n", headers={"Cache-Control": "max-age=600"})

        app.router.add_get("/big", big)
        app.router.add_get("/{tail:.*}", small)


class LoadClient:
    """Keep-alive GETs of a cached object against one edge from a few connections, at up to
    `rate` requests per second in all, until stopped."""

    def __init__(self, host: str, port: int, vhost: str, path: str = "/small",
                 connections: int = 4, rate: float = 400.0):
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {vhost}\r\n\r\n").encode()
        self.host, self.port, self.connections, self.rate = host, port, connections, rate
        self.done = 0
        self.errors = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()

    async def _one(self) -> None:
        gap = self.connections / self.rate
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                while not self._stop.is_set():
                    began = time.monotonic()
                    writer.write(self.request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:"))
                    await reader.readexactly(length)
                    self.done += 1
                    await asyncio.sleep(max(0.0, gap - (time.monotonic() - began)))
                writer.close()
            except (OSError, asyncio.IncompleteReadError, StopIteration, ValueError):
                self.errors += 1
                await asyncio.sleep(0.05)

    async def _main(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(self.connections)))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
