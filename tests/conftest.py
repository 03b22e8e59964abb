"""Fixtures: real gslb servers on loopback, dig, raw UDP/TCP DNS clients."""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import dnslib
import pytest
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
DEFAULT_CONFIG = DATA / "gslb.yaml"
DEMO_NAME = "www.test.com.cdn.example.net"


# Ports below the ephemeral range: the kernel gives ports of that range to every outgoing
# connection (the tests' own clients, etcd's, the edges' to origins), and one of them taking
# a port between free_port() and the server's bind made a server fail "already in use".
_EPHEMERAL_LOW = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
_ALL_PORTS = range(10000, max(_EPHEMERAL_LOW, 10001))


def _my_ports() -> range:
    """This test process's own slice of the ports: with pytest-xdist every worker counts
    from a random start, and two counters that met handed out the same port before
    either server had bound it (CI saw three "address in use" in one run)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = len(_ALL_PORTS) // max(count, 1)
    start = _ALL_PORTS.start + size * min(index, count - 1)
    return range(start, start + size)


_PORTS = _my_ports()
_next_port = random.randrange(len(_PORTS))


def free_port(*hosts: str) -> int:
    """A port free for both UDP and TCP on `hosts` (127.0.0.1 and ::1 by default), below
    the ephemeral range, never the same twice in one test run (a port handed out may not
    be bound yet)."""
    global _next_port
    for _ in range(500):
        port = _PORTS[_next_port % len(_PORTS)]
        _next_port += 1
        try:
            for host in hosts or ("127.0.0.1", "::1"):
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(fam, kind) as t:
                        t.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port below the ephemeral range")


async def serve_app(app: "web.Application", host: str = "127.0.0.1", port: int | None = None,
                    ssl_context=None) -> "tuple[web.AppRunner, int]":
    """Run an aiohttp app on a real loopback socket; `runner.cleanup()` stops it.

    Shutdown does not wait long for handlers that hang on purpose.
    """
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    return runner, port


def udp_query(port: int, wire: bytes, host: str = "127.0.0.1", timeout: float = 2.0,
              source: str | None = None) -> bytes | None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        if source:
            s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(wire, (host, port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def tcp_exchange(port: int, wires: list[bytes], host: str = "127.0.0.1",
                 timeout: float = 3.0) -> list[bytes]:
    """Send several queries on one TCP connection; read as many answers."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"".join(len(w).to_bytes(2, "big") + w for w in wires))
        out = []
        for _ in wires:
            out.append(recv_framed(s))
        return out


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def recv_framed(s: socket.socket) -> bytes:
    size = int.from_bytes(recv_exact(s, 2), "big")
    return recv_exact(s, size)


def make_query(name: str, qtype: str = "A", ecs: str | None = None, edns: bool = True,
               qid: int | None = None) -> bytes:
    q = dnslib.DNSRecord.question(name, qtype)
    q.header.rd = 0
    if qid is not None:
        q.header.id = qid
    if edns or ecs:
        opts = []
        if ecs:
            import ipaddress
            net = ipaddress.ip_network(ecs, strict=False)
            fam = 1 if net.version == 4 else 2
            opts.append(dnslib.EDNSOption(8, fam.to_bytes(2, "big") + bytes((net.prefixlen, 0))
                                          + net.network_address.packed[:(net.prefixlen + 7) // 8]))
        q.add_ar(dnslib.EDNS0(udp_len=1232, opts=opts))
    return bytes(q.pack())


def parse(wire: bytes) -> dnslib.DNSRecord:
    return dnslib.DNSRecord.parse(wire)


def ecs_scope(resp: dnslib.DNSRecord) -> int | None:
    for rr in resp.ar:
        if rr.rtype == dnslib.QTYPE.OPT:
            for opt in rr.rdata:
                if opt.code == 8:
                    return opt.data[3]
    return None


def answers(resp: dnslib.DNSRecord) -> list[str]:
    return sorted(str(rr.rdata) for rr in resp.rr)


@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    config: Path
    log: Path
    pidfile: Path
    http_port: int = 0

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def dig(self, *args: str, host: str = "127.0.0.1") -> str:
        return dig(self.port, *args, host=host)

    def query(self, wire: bytes, host: str = "127.0.0.1", **kw) -> bytes | None:
        return udp_query(self.port, wire, host=host, **kw)

    def ask(self, name: str, qtype: str = "A", ecs: str | None = None,
            **kw) -> dnslib.DNSRecord:
        out = self.query(make_query(name, qtype, ecs), **kw)
        assert out is not None, "no answer"
        return parse(out)

    def logtext(self) -> str:
        return self.log.read_text()

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)


def dig(port: int, *args: str, host: str = "127.0.0.1") -> str:
    cmd = ["dig", f"@{host}", "-p", str(port), "+norec", "+time=2", "+tries=1", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    return out.stdout


def dig_short(port: int, *args: str) -> list[str]:
    return sorted(line for line in dig(port, "+short", *args).splitlines() if line)


def wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    probe = make_query("cdn.example.net", "SOA", edns=False)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        if udp_query(port, probe, timeout=0.2) is not None:
            return
        time.sleep(0.05)
    raise RuntimeError(f"server not ready:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def load_default(checks: bool = True) -> dict:
    """data/gslb.yaml as a dict; checks=False strips the health checks from it."""
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    if not checks:
        cfg.pop("checks", None)
        for site in cfg["sites"].values():
            site.pop("check", None)
            site["addresses"] = [a["address"] if isinstance(a, dict) else a
                                 for a in site["addresses"]]
    return cfg


def write_config(tmp: Path, cfg: dict, name: str = "gslb.yaml") -> Path:
    cfg = dict(cfg)
    geo = cfg.get("geoip")
    if geo and not os.path.isabs(geo["database"]):
        cfg["geoip"] = {"database": str(DATA / geo["database"])}
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """start_server(config_dict=None, workers=1, v6=True) -> Server; stopped after the test."""
    procs: list[subprocess.Popen] = []

    def start(cfg: dict | None = None, workers: int = 1, v6: bool = True,
              port: int | None = None, env: dict | None = None) -> Server:
        port = port or free_port()
        http_port = free_port()
        path = write_config(tmp_path, cfg if cfg is not None else load_default(),
                            f"gslb-{len(procs)}.yaml")
        log = tmp_path / f"server-{len(procs)}.log"
        pidfile = tmp_path / f"server-{len(procs)}.pid"
        cmd = [sys.executable, "-m", "gslb.cli", "serve", "-c", str(path),
               "--dns", f"127.0.0.1:{port}", "--workers", str(workers), "--pidfile", str(pidfile),
               "--http", f"127.0.0.1:{http_port}"]
        if v6:
            cmd += ["--dns", f"[::1]:{port}"]
        proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **(env or {})})
        procs.append(proc)
        wait_ready(port, proc, log)
        return Server(port, proc, path, log, pidfile, http_port)

    yield start
    for proc in procs:
        stop(proc)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory) -> Iterator[Server]:
    """One server on the default config, shared by a module's read-only tests."""
    tmp = tmp_path_factory.mktemp("demo")
    port, http_port = free_port(), free_port()
    path = write_config(tmp, load_default())
    log = tmp / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "gslb.cli", "serve", "-c", str(path),
                             "--dns", f"127.0.0.1:{port}", "--dns", f"[::1]:{port}",
                             "--workers", "1", "--http", f"127.0.0.1:{http_port}"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_ready(port, proc, log)
        yield Server(port, proc, path, log, tmp / "none.pid", http_port)
    finally:
        stop(proc)


def pytest_configure(config) -> None:
    if shutil.which("dig") is None:
        raise pytest.UsageError("dig is missing: run the tests with ./dev test "
                                "(it installs bind9-dnsutils)")
