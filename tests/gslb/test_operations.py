"""Running it: reload under load, workers, `explain` agreeing with the server."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import yaml

from tests.conftest import DEMO_NAME, ROOT, dig_short, load_default, make_query, parse, stop


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


class Load(threading.Thread):
    """Sequential UDP queries from one socket; counts answers and losses."""

    def __init__(self, port: int, ecs: str):
        super().__init__(daemon=True)
        self.port, self.wire = port, make_query(DEMO_NAME, "A", ecs)
        self.answered = self.lost = 0
        self.seen: set[str] = set()
        self.stop_flag = threading.Event()

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            while not self.stop_flag.is_set():
                s.sendto(self.wire, ("127.0.0.1", self.port))
                try:
                    data = s.recv(4096)
                except socket.timeout:
                    self.lost += 1
                    continue
                self.answered += 1
                self.seen.update(str(r.rdata) for r in parse(data).rr)


def test_sighup_reload_under_load_drops_nothing(start_server):
    cfg = load_default()
    srv = start_server(cfg)
    load = Load(srv.port, "198.51.100.0/24")
    load.start()
    try:
        time.sleep(0.3)
        for addr in ("127.0.0.22", "127.0.0.32", "127.0.0.12"):
            cfg["sites"]["fra"]["addresses"] = [addr, "2001:db8:ed9e::12"]
            srv.config.write_text(yaml.safe_dump(cfg, sort_keys=False)
                                  .replace("demo-city.mmdb", str(ROOT / "data/demo-city.mmdb")))
            srv.hup()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and dig_short(srv.port, DEMO_NAME,
                                                            "+subnet=198.51.100.0/24") != [addr]:
                time.sleep(0.05)
            assert dig_short(srv.port, DEMO_NAME, "+subnet=198.51.100.0/24") == [addr]
        # A broken config is rejected with its problems logged; the old one keeps serving.
        good = srv.config.read_text()
        srv.config.write_text(good.replace("ttl: 30", "ttl: -5").replace("nearest", "closest"))
        srv.hup()
        deadline = time.monotonic() + 5
        while "rejected" not in srv.logtext() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        load.stop_flag.set()
        load.join(5)
    log = srv.logtext()
    assert "reload of" in log and "rejected" in log
    assert "ttl = -5 is out of range" in log and "'closest' is not one of" in log
    assert dig_short(srv.port, DEMO_NAME, "+subnet=198.51.100.0/24") == ["127.0.0.12"]
    assert load.lost == 0 and load.answered > 50
    assert {"127.0.0.22", "127.0.0.32", "127.0.0.12"} <= load.seen


def test_workers_share_the_port_and_all_reload(start_server):
    cfg = load_default()
    srv = start_server(cfg, workers=2)
    workers = children_of(srv.proc.pid)
    assert len(workers) == 2
    # Many source ports spread over both SO_REUSEPORT sockets: every one answers.
    for i in range(40):
        assert dig_short(srv.port, DEMO_NAME, "+subnet=203.0.113.0/24") == ["127.0.0.13"]
    cfg["sites"]["sin"]["addresses"] = ["127.0.0.23", "2001:db8:ed9e::13"]
    srv.config.write_text(yaml.safe_dump(cfg, sort_keys=False)
                          .replace("demo-city.mmdb", str(ROOT / "data/demo-city.mmdb")))
    out = subprocess.run([sys.executable, "-m", "gslb.cli", "reload", "--pidfile",
                          str(srv.pidfile), "-c", str(srv.config)],
                         capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and srv.logtext().count("applied new config") < 2:
        time.sleep(0.05)
    assert srv.logtext().count("applied new config") == 2          # both workers
    for i in range(40):
        assert dig_short(srv.port, DEMO_NAME, "+subnet=203.0.113.0/24") == ["127.0.0.23"]
    stop(srv.proc)
    assert all(not os.path.exists(f"/proc/{pid}") for pid in workers)


def test_a_dead_worker_is_replaced(start_server):
    srv = start_server(load_default(), workers=2)
    first = children_of(srv.proc.pid)
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = children_of(srv.proc.pid)
        if len(now) == 2 and first[0] not in now:
            break
        time.sleep(0.1)
    assert len(children_of(srv.proc.pid)) == 2, srv.logtext()
    assert dig_short(srv.port, DEMO_NAME, "+subnet=192.0.2.0/24") == ["127.0.0.11"]


def test_reload_refuses_a_bad_config_before_signalling(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("zones: {}\n")
    out = subprocess.run([sys.executable, "-m", "gslb.cli", "reload", "--pid", "1", "-c", str(bad)],
                         capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 1 and "at least one zone" in out.stderr


def explain_answer(config: str, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "gslb.cli", "explain", "-c", config, *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("answer:"))
    return sorted(l.split()[-1] for l in lines[start + 1:] if not l.strip().startswith(("authority",
                                                                                         "ecs")))


def test_explain_agrees_with_the_server(demo_server):
    cases = [("--ecs", "192.0.2.0/24", "A"), ("--ecs", "198.51.100.0/24", "A"),
             ("--ecs", "203.0.113.0/24", "AAAA"), ("--ecs", "2001:db8:6::/48", "AAAA"),
             ("--ecs", "2001:db8:7::/48", "A"), ("--ecs", "233.252.0.0/24", "A"),
             ("--client", "127.0.0.1", "A")]
    for flag, who, qtype in cases:
        got = explain_answer(str(demo_server.config), DEMO_NAME, flag, who, "--type", qtype,
                             "--server", demo_server.http)
        subnet = [f"+subnet={who}"] if flag == "--ecs" else []
        assert got == dig_short(demo_server.port, DEMO_NAME, qtype, *subnet), (who, qtype)


def test_explain_shows_the_chain(demo_server):
    out = subprocess.run([sys.executable, "-m", "gslb.cli", "explain", "-c", str(demo_server.config),
                          DEMO_NAME, "--ecs", "2001:db8:4::/48"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60).stdout
    assert "geoip network 2001:db8:4::/48 -> London" in out
    assert "1. fra (Frankfurt;" in out and "km" in out
    assert "ecs scope: /48" in out and "127.0.0.12" in out


def second_server(cfg_path: str, port: int, workers: int, timeout: float = 30) -> \
        subprocess.CompletedProcess:
    """`gslb serve` on a port another server has; it must give up on its own."""
    from tests.conftest import free_port

    return subprocess.run([sys.executable, "-m", "gslb.cli", "serve", "-c", cfg_path,
                           "--dns", f"127.0.0.1:{port}", "--workers", str(workers),
                           "--http", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_a_second_server_on_the_same_port_is_refused(start_server):
    """SO_REUSEPORT would let a second server take a share of the queries; only the
    workers of one server may share its sockets."""
    for first_workers, second_workers in ((2, 2), (1, 2), (2, 1)):
        cfg = load_default()
        srv = start_server(cfg, workers=first_workers)
        started = time.monotonic()
        out = second_server(str(srv.config), srv.port, second_workers)
        assert out.returncode == 1, (first_workers, second_workers, out.stderr)
        assert time.monotonic() - started < 20
        lines = [l for l in out.stderr.splitlines() if l.strip()]
        assert any(f"127.0.0.1:{srv.port} (UDP): address in use" in l for l in lines), lines
        assert "Traceback" not in out.stderr
        # The first server still answers every query (none went to the second).
        for _ in range(30):
            assert dig_short(srv.port, DEMO_NAME, "+subnet=203.0.113.0/24") == ["127.0.0.13"]
        stop(srv.proc)


def test_logs_are_in_utc_whatever_the_local_zone(start_server):
    """The dashboard shows UTC; so do the logs, even on a machine set to another zone."""
    from datetime import datetime, timezone

    srv = start_server(load_default(), env={"TZ": "Asia/Tokyo"})        # UTC+9
    deadline = time.monotonic() + 10
    while "ready:" not in srv.logtext() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(l for l in srv.logtext().splitlines() if "ready:" in l)
    stamp = datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 120, line


def run_explain(config: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gslb.cli", "explain", "-c", config, DEMO_NAME,
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_explain_reads_the_running_servers_health(start_server, edges):
    """With the Frankfurt edge dead, the server answers Frankfurt's clients from New York;
    `explain` used to call every address unknown and explain a Frankfurt answer."""
    from tests.conftest import free_port
    from tests.gslb.test_health_live import wait_all_up, wait_for

    cfg = edges.config()
    cfg["dashboard"] = {"listen": f"127.0.0.1:{free_port()}"}
    srv = start_server(cfg)
    wait_all_up(srv)
    edges.kill("fra")
    wait_for(srv, "127.0.0.11", 5)
    # Found through the --http listener it was started with...
    out = run_explain(str(srv.config), "--ecs", "198.51.100.0/24", "--server", srv.http)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"health: from the running server at {srv.http}"
    assert "127.0.0.12 down" in out.stdout and "127.0.0.11 up" in out.stdout
    assert explain_answer(str(srv.config), DEMO_NAME, "--ecs", "198.51.100.0/24",
                          "--server", srv.http) \
        == dig_short(srv.port, DEMO_NAME, "+subnet=198.51.100.0/24") == ["127.0.0.11"]
    # ... and without --server through the config's dashboard listener, where nothing
    # listens here (the test's server was told --http): said so, and counted as unknown.
    out = run_explain(str(srv.config), "--ecs", "198.51.100.0/24")
    first = out.stdout.splitlines()[0]
    assert first.startswith(f"health: none: no server answers at http://{cfg['dashboard']['listen']}")
    assert "127.0.0.12 unknown" in out.stdout
    # A server given explicitly that does not answer is an error, not a silent fallback.
    dead = f"http://127.0.0.1:{free_port()}"
    out = run_explain(str(srv.config), "--server", dead)
    assert out.returncode == 1 and out.stderr.startswith(f"explain: no server answers at {dead}")
    # A server that runs another config is not taken for ours.
    other = srv.config.parent / "other.yaml"
    other.write_text(srv.config.read_text())
    out = run_explain(str(other), "--server", srv.http)
    assert out.returncode == 0 and "runs another config" in out.stdout.splitlines()[0]


def test_a_worker_killed_before_it_is_ready_is_replaced(tmp_path):
    """A worker that dies during start-up used to stop the whole server ('could not
    listen'); the supervisor bound the sockets itself, so it starts another."""
    from tests.conftest import free_port, wait_ready, write_config

    port = free_port()
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "gslb.cli", "serve", "-c",
                             str(write_config(tmp_path, load_default())), "--dns",
                             f"127.0.0.1:{port}", "--workers", "2", "--http",
                             f"127.0.0.1:{free_port()}"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not children_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        victim = children_of(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)                 # long before it could be ready
        wait_ready(port, proc, log)
        deadline = time.monotonic() + 20
        while "ready:" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "ready:" in log.read_text() and proc.poll() is None, log.read_text()
        assert len(children_of(proc.pid)) == 2 and victim not in children_of(proc.pid)
    finally:
        stop(proc)
