"""Helpers for fleet tests: edges started with --store, customers written to etcd."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.conftest import ROOT, free_port
from tests.etcd import Etcd


@dataclass
class EdgeProc:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    cmd: list[str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, host: str, timeout: float = 3.0) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT)
        wait_healthy(self)


def wait_healthy(edge: EdgeProc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if edge.proc.poll() is not None:
            raise RuntimeError(f"edge exited: {edge.log.read_text()[-3000:]}")
        try:
            if edge.get("/healthz", "x", timeout=0.5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"edge not ready: {edge.log.read_text()[-3000:]}")


def start_edge(tmp: Path, store: str, name: str, *extra: str, port: int | None = None,
               host: str = "127.0.0.1") -> EdgeProc:
    port = port or free_port()
    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    cfg = {"listen": [f"{host}:{port}"], "name": name, "state_dir": str(home / "state")}
    path = home / "edge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = home / "edge.log"
    cmd = [sys.executable, "-m", "edge.cli", "serve", "-c", str(path), "--workers", "1",
           "--store", store, "--node-id", name, *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    edge = EdgeProc(name, port, proc, log, cmd)
    wait_healthy(edge)
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
