"""Health end to end: real edges die and recover, dig sees it within the deadline."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import (DEMO_NAME, ROOT, dig_short, free_port, load_default, make_query,
                            parse, stop)

INTERVAL, FALL, RISE = 0.5, 3, 2
SITES = {"nyc": "127.0.0.11", "fra": "127.0.0.12", "sin": "127.0.0.13"}


class Edges:
    """One stub edge process per site: its IPv4 address and a ::1 port for its IPv6."""

    def __init__(self) -> None:
        self.port = free_port()
        self.v6_ports = {site: free_port() for site in SITES}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, site: str) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "demo.standin", site,
                                 f"{SITES[site]}:{self.port}", f"[::1]:{self.v6_ports[site]}"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                cwd=ROOT)
        assert proc.stdout.readline().strip() == "ready"
        self.procs[site] = proc

    def kill(self, site: str) -> None:
        proc = self.procs.pop(site)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop(proc)

    def config(self, token: str | None = None) -> dict:
        cfg = load_default()
        cfg["checks"] = {"edge": {"type": "http", "port": self.port, "path": "/healthz",
                                  "interval": INTERVAL, "timeout": 0.4, "rise": RISE,
                                  "fall": FALL}}
        for site in SITES:
            entry = cfg["sites"][site]
            entry["check"] = "edge"
            v4, v6 = entry["addresses"]
            v6 = v6["address"] if isinstance(v6, dict) else v6
            entry["addresses"] = [v4, {"address": v6, "probe": f"[::1]:{self.v6_ports[site]}"}]
        if token is not None:
            cfg["dashboard"] = {"token": token}
        return cfg


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def post(url: str, body: dict, token: str | None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_all_up(srv, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = get_json(f"{srv.http}/api/health")
        if health["first_round_done"] and all(a["state"] == "up"
                                              for a in health["addresses"].values()):
            return health
        time.sleep(0.1)
    raise AssertionError(f"edges not all up: {health}")


def frankfurt(srv) -> list[str]:
    return dig_short(srv.port, DEMO_NAME, "A", "+subnet=198.51.100.0/24")


def wait_for(srv, want: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if frankfurt(srv) == [want]:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"answer did not become {want} within {timeout} s")


def test_dead_edge_leaves_the_answers_and_comes_back(start_server, edges):
    srv = start_server(edges.config(), workers=2)
    wait_all_up(srv)
    assert frankfurt(srv) == ["127.0.0.12"]
    edges.kill("fra")
    elapsed = wait_for(srv, "127.0.0.11", INTERVAL * FALL + 1)      # next nearest: New York
    # every worker has the same view: many source ports, one answer
    assert {tuple(frankfurt(srv)) for _ in range(20)} == {("127.0.0.11",)}
    aaaa = dig_short(srv.port, DEMO_NAME, "AAAA", "+subnet=198.51.100.0/24")
    assert aaaa == ["2001:db8:ed9e::11"]          # v4_preferred: IPv6 follows IPv4 to nyc
    edges.start("fra")
    back = wait_for(srv, "127.0.0.12", INTERVAL * RISE + 1.5)
    health = get_json(f"{srv.http}/api/health")
    fra = health["addresses"]["127.0.0.12"]
    assert fra["state"] == "up" and "rise 2" in fra["reason"]
    changes = [(c["from"], c["to"]) for c in health["history"] if c["address"] == "127.0.0.12"]
    assert changes[:2] == [("down", "up"), ("up", "down")]        # newest first
    down_reason = next(c["reason"] for c in health["history"] if c["to"] == "down")
    assert down_reason == "3 failures in a row (fall 3): connection refused"
    metrics = urllib.request.urlopen(f"{srv.http}/metrics", timeout=5).read().decode()
    assert 'gslb_check_results_total{address="127.0.0.12",result="fail",site="fra"}' in metrics
    assert 'gslb_edge_state_changes_total{address="127.0.0.12",state="down"} 1.0' in metrics
    assert 'gslb_edge_state{address="127.0.0.12",site="fra",state="up"} 1.0' in metrics
    assert "gslb_check_latency_seconds_bucket" in metrics
    print(f"down after {elapsed:.2f} s (deadline {INTERVAL * FALL + 1}), up after {back:.2f} s")


def test_admin_overrides_need_the_token_and_survive_restart(start_server, edges):
    cfg = edges.config(token="s3cret")
    srv = start_server(cfg)
    wait_all_up(srv)
    url = f"{srv.http}/api/admin/drain"
    assert post(url, {"site": "fra"}, None)[0] == 401
    assert post(url, {"site": "fra"}, "wrong")[0] == 401
    assert post(url, {"site": "atlantis"}, "s3cret")[0] == 404
    status, body = post(url, {"site": "fra"}, "s3cret")
    assert status == 200 and json.loads(body)["overrides"]["sites"] == {"fra": "drain"}
    wait_for(srv, "127.0.0.11", 2)
    health = get_json(f"{srv.http}/api/health")
    assert health["addresses"]["127.0.0.12"]["state"] == "drain"
    assert health["addresses"]["127.0.0.12"]["forced"] == "site"
    assert health["addresses"]["127.0.0.12"]["last_ok"] is True     # still probed
    # restart on the same config (and so the same state file): still drained
    stop(srv.proc)
    again = start_server(cfg, port=srv.port)
    assert frankfurt(again) == ["127.0.0.11"]
    assert post(f"{again.http}/api/admin/clear", {"site": "fra"}, "s3cret")[0] == 200
    wait_for(again, "127.0.0.12", 3)
    assert post(f"{again.http}/api/admin/force-down", {"address": "127.0.0.12"}, "s3cret")[0] == 200
    wait_for(again, "127.0.0.11", 2)


def _flood(port: int, source: str, stop_at: threading.Event, seen: list) -> None:
    """Frankfurt's query as fast as it is answered: repeats are response-cache hits
    answered in the UDP threads while the answers change under them."""
    wire = make_query(DEMO_NAME, "A", "198.51.100.0/24")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(0.5)
        while not stop_at.is_set():
            sock.sendto(wire, ("127.0.0.1", port))
            try:
                reply = parse(sock.recv(4096))
            except (TimeoutError, OSError):
                continue
            seen.append((time.monotonic(), tuple(str(r.rdata) for r in reply.rr)))


def test_overrides_under_a_udp_flood_reach_every_worker_and_stay(start_server, edges):
    # Every change rebuilds the answers while each worker's UDP thread is answering
    # batches from the cache: once a drain or clear answered, no reply may carry the
    # old answer (a cache filled from the old table would keep it).
    srv = start_server(edges.config(token="s3cret"), workers=2)
    wait_all_up(srv)
    stop_at, seen = threading.Event(), []
    floods = [threading.Thread(target=_flood, args=(srv.port, f"127.0.4.{i + 1}", stop_at, seen))
              for i in range(6)]                  # sources spread over both workers
    for t in floods:
        t.start()
    try:
        for round_ in range(6):
            action, want = ("drain", ("127.0.0.11",)) if round_ % 2 == 0 else \
                ("clear", ("127.0.0.12",))
            assert post(f"{srv.http}/api/admin/{action}", {"site": "fra"}, "s3cret")[0] == 200
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and (not seen or seen[-1][1] != want):
                time.sleep(0.02)
            settled = time.monotonic() + 0.3      # every worker has had its rebuild pushed
            time.sleep(0.8)
            late = [answer for at, answer in list(seen) if at > settled]
            assert len(late) > 50, "the flood stopped being answered"
            assert set(late) == {want}, (action, set(late))
    finally:
        stop_at.set()
        for t in floods:
            t.join(5)
    print(f"{len(seen)} flood replies over 6 changes")


def test_token_can_come_from_the_environment(start_server, edges):
    srv = start_server(edges.config(), env={"GSLB_ADMIN_TOKEN": "from-env"})
    url = f"{srv.http}/api/admin/drain"
    assert post(url, {"address": "127.0.0.13"}, "nope")[0] == 401
    assert post(url, {"address": "127.0.0.13"}, "from-env")[0] == 200


def test_admin_actions_are_refused_without_a_configured_token(demo_server):
    status, body = post(f"http://127.0.0.1:{demo_server.http_port}/api/admin/drain",
                        {"site": "fra"}, "anything")
    assert status == 403 and "disabled" in body


def test_services_and_explain_api(demo_server):
    base = f"http://127.0.0.1:{demo_server.http_port}"
    services = get_json(f"{base}/api/services")
    svc = services["services"][0]
    sample = {s["city"]: s for s in svc["samples"]}
    assert sample["Frankfurt"]["a"]["site"] == "fra"
    assert sample["Tokyo"]["a"]["site"] == "sin"
    assert sample["London"]["aaaa"]["addresses"] == ["2001:db8:ed9e::12"]
    out = get_json(f"{base}/api/explain?name={DEMO_NAME}&ecs=203.0.113.0/24")
    assert "Singapore" in out["explanation"] and "127.0.0.13" in out["explanation"]
    with pytest.raises(urllib.error.HTTPError) as info:
        get_json(f"{base}/api/explain?name={DEMO_NAME}&client=not-an-ip")
    assert info.value.code == 400


def test_metrics_count_queries_by_rcode_and_service(demo_server):
    for _ in range(3):
        demo_server.dig(DEMO_NAME, "A")
    demo_server.dig("www.example.org", "A")
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{demo_server.http_port}/metrics",
                                      timeout=5).read().decode()
        if 'rcode="REFUSED"' in text:
            break
        time.sleep(0.2)
    line = next(l for l in text.splitlines()
                if l.startswith('gslb_dns_queries_total{rcode="NOERROR",service="*.cdn.example.net."}'))
    assert float(line.split()[-1]) >= 3
    assert 'gslb_dns_queries_total{rcode="REFUSED",service="zone"}' in text
    assert "gslb_workers 1.0" in text
