"""Helpers for fleet tests: edges started with --store, customers written to etcd."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from aiohttp import web

from tests.conftest import ROOT, free_port, serve_app, stop
from tests.etcd import Etcd


@dataclass
class EdgeProc:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    cmd: list[str]
    host: str = "127.0.0.1"

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def get(self, path: str, host: str, timeout: float = 3.0) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> None:
        stop(self.proc)

    def restart(self) -> None:
        self.stop()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT)
        wait_healthy(self)


def wait_healthy(edge: EdgeProc, timeout: float = 20.0, workers: int = 1) -> None:
    """Until the edge answers /healthz and its `workers` processes all said ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if edge.proc.poll() is not None:
            raise RuntimeError(f"edge exited: {edge.log.read_text()[-3000:]}")
        try:
            if edge.get("/healthz", "x", timeout=0.5)[0] == 200 and \
                    edge.log.read_text().count("ready:") >= workers:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"edge not ready: {edge.log.read_text()[-3000:]}")


def start_edge(tmp: Path, store: str, name: str, *extra: str, port: int | None = None,
               host: str = "127.0.0.1", workers: int | None = 1,
               config: dict | None = None) -> EdgeProc:
    """`edge serve --store` with a YAML of its listener, name and state_dir (plus
    `config`); `workers=None`: the default worker count, as users run it."""
    port = port or free_port()
    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    cfg = {"listen": [f"{host}:{port}"], "name": name, "state_dir": str(home / "state"),
           **(config or {})}
    path = home / "edge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = home / "edge.log"
    count = ["--workers", str(workers)] if workers else []
    cmd = [sys.executable, "-m", "edge.cli", "serve", "-c", str(path), *count,
           "--store", store, "--node-id", name, *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    edge = EdgeProc(name, port, proc, log, cmd, host)
    try:
        wait_healthy(edge, workers=workers or os.cpu_count() or 1)
    except BaseException:
        edge.stop()
        raise
    return edge


def put(etcd: Etcd, key: str, value: dict) -> None:
    etcd.ctl("put", key, json.dumps(value))


def node(etcd: Etcd, node_id: str) -> dict:
    text = etcd.get(f"/cdn/nodes/{node_id}")
    return json.loads(text) if text else {}


def wait_for(check, timeout: float = 10.0, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"{what} not met in {timeout} s (last: {last!r})")


@dataclass
class Ctl:
    """`cdnctl serve` started by a test, and a small JSON client for its API."""

    port: int
    proc: subprocess.Popen
    log: Path
    token: str = "admin-secret"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body=None, token: str | None = None,
             headers: dict | None = None) -> tuple[int, dict, dict]:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        token = self.token if token is None else token
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers=hdrs)
        try:
            with urllib.request.urlopen(request, timeout=15) as resp:
                raw = resp.read()
                return resp.status, _json(raw), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read()), dict(exc.headers)

    def stop(self) -> None:
        stop(self.proc)


def _json(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return {"text": raw.decode(errors="replace")}


def start_ctl(tmp: Path, store: str, *extra: str, env: dict | None = None) -> Ctl:
    import os
    port = free_port()
    log = tmp / f"cdnctl-{port}.log"
    environment = {**os.environ, "CDNCTL_TOKEN": "admin-secret",
                   "CDNCTL_READ_TOKEN": "viewer=read-secret", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "control.cli", "serve", "--store", store,
                             "--listen", f"127.0.0.1:{port}", *extra], cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=environment)
    ctl = Ctl(port, proc, log)
    wait_for(lambda: proc.poll() is None and "ready:" in log.read_text(), timeout=20,
             what=f"cdnctl ready ({log})")
    return ctl


def cdnctl(store: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-m", "control.cli", *args, "--store", store],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


class Origin:
    """A real origin on loopback in its own thread: answers "<label> <path>".

    Subclasses add other routes in `routes`."""

    def __init__(self, label: str, host: str = "127.0.0.1", port: int | None = None):
        self.label, self.host, self.port = label, host, port or free_port()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def main() -> None:
            app = web.Application()
            self.routes(app)
            self.runner, _ = await serve_app(app, self.host, self.port)
            started.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(main()),
                                                       self.loop.run_forever()), daemon=True)
        self.thread.start()
        started.wait(10)

    def routes(self, app: web.Application) -> None:
        async def handle(request: web.Request) -> web.Response:
            return web.Response(text=f"{self.label} {request.path}",
                                headers={"Cache-Control": "no-store"})

        app.router.add_get("/{tail:.*}", handle)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def customer(directory: str, origin: str, *cnames: str) -> dict:
    return {"directory": directory, "cnames": list(cnames),
            "origin": {"protocol": "http", "http": [origin]}}
