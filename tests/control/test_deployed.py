"""Issue 22, items 2-4, on the real `gslb demo --fleet` (etcd, cdnctl, edges, ns1 and ns2):
the API answers only once every part is registered; `deployed` means every edge applied
it and every nameserver answers it (asked over DNS the moment the API says so); a
private S3 bucket (moto) works end to end; a customer types only its own domain and is
told the CNAME target, which the nameservers answer."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.conftest import ROOT, free_port, stop
from tests.test_demo_e2e import demo_config

TOKEN = "t0ken"
ZONE = "cdn.example.net"
FRANKFURT = "198.51.100.0/24"


class FleetDemo:
    def __init__(self, tmp):
        self.port, self.http = free_port(), free_port()
        etcd, peer, self.ctl = free_port(), free_port(), free_port()
        config, options = demo_config(tmp)
        self.env = {**os.environ, "CDNCTL_TOKEN": TOKEN}
        self.out = tmp / "demo.out"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gslb.cli", "demo", "-c", str(config), "--dns",
             f"127.0.0.1:{self.port}", "--http", f"127.0.0.1:{self.http}", "--fleet",
             "--etcd", f"127.0.0.1:{etcd}", "--etcd-peer", f"127.0.0.1:{peer}",
             "--cdnctl", f"127.0.0.1:{self.ctl}", *options],
            stdout=self.out.open("w"), stderr=(tmp / "demo.log").open("w"), cwd=ROOT,
            env=self.env)
        self.store = f"etcd://127.0.0.1:{etcd}"
        # The first moment the API answers, and what it says about the fleet then.
        self.first_fleet, self.api_at = None, 0.0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                self.first_fleet = self.api("GET", "/api/edges")
                self.api_at = time.monotonic() - self.started
                break
            except (OSError, ValueError):
                time.sleep(0.05)
        while time.monotonic() < deadline and "Stop with" not in self.out.read_text():
            time.sleep(0.05)
        self.banner_at = time.monotonic() - self.started
        assert "Stop with" in self.out.read_text(), (self.out.read_text(),
                                                     (tmp / "demo.log").read_text())

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.ctl}{path}", method=method,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def ask(self, server: str, name: str) -> dns.message.Message:
        q = dns.message.make_query(name, "A", use_edns=0)
        return dns.query.udp(q, server, port=self.port, timeout=2)

    def close(self) -> None:
        stop(self.proc)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = FleetDemo(tmp_path_factory.mktemp("fleetdemo"))
    yield d
    d.close()


def wait_deployed(demo: FleetDemo, directory: str, timeout: float = 20) -> tuple[dict, float]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        card = demo.api("GET", f"/api/customers/{directory}")
        if card["status"] == "deployed":
            return card, time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"{directory} not deployed after {timeout} s: {card}")


def test_the_api_answers_only_once_every_part_is_registered(demo):
    nodes = {n["id"]: n for n in demo.first_fleet["nodes"]}
    revision = demo.first_fleet["revision"]
    assert set(nodes) >= {"shield-fra", "edge-fra", "edge-nyc", "edge-sin", "ns1", "ns2"}, \
        (nodes, demo.api_at)
    assert all(n["applied"] >= revision for n in nodes.values()), nodes
    assert demo.api_at >= 0
    print(f"API first answered at {demo.api_at:.2f} s, banner at {demo.banner_at:.2f} s")


def test_deployed_means_every_nameserver_answers(demo):
    name = f"v2.example.com.{ZONE}"
    doc = {"directory": "v2", "cnames": ["v2.example.com", name],
           "origin": {"http": ["127.0.0.1:9"]}}
    demo.api("POST", "/api/customers", doc)
    card, took = wait_deployed(demo, "v2")
    # The moment the API says deployed, both nameservers answer (no NXDOMAIN to cache).
    for server in ("127.0.0.1", "127.0.0.2"):
        reply = demo.ask(server, name)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer, (server, reply, card)
    assert card["answering"] == 2 and card["progress"] == "edges 4/4, nameservers 2/2", card
    print(f"POST -> deployed in {took:.2f} s")
    # Timings for the record: a second customer, DNS and status polled side by side.
    other = f"v3.example.com.{ZONE}"
    start, first = time.monotonic(), {}
    demo.api("POST", "/api/customers", {**doc, "directory": "v3",
                                        "cnames": ["v3.example.com", other]})
    while len(first) < 3 and time.monotonic() - start < 20:
        if "deployed" not in first and demo.api("GET", "/api/customers/v3")["status"] == \
                "deployed":
            first["deployed"] = time.monotonic() - start
        for server in ("127.0.0.1", "127.0.0.2"):
            if server not in first and demo.ask(server, other).rcode() == dns.rcode.NOERROR:
                first[server] = time.monotonic() - start
        time.sleep(0.005)
    print("first NOERROR / deployed after POST:", {k: round(v, 3) for k, v in first.items()})
    assert first["deployed"] >= max(first["127.0.0.1"], first["127.0.0.2"]) - 0.05, first
    out = subprocess.run([sys.executable, "-m", "control.cli", "status", "--store",
                          demo.store], capture_output=True, text=True, timeout=30, cwd=ROOT,
                         env=demo.env)
    assert "ns1" in out.stdout and "serving" not in out.stderr, out


def test_cname_target_is_derived_shown_and_answered(demo):
    doc = {"directory": "shop", "cnames": ["shop.example.org"],
           "origin": {"http": ["127.0.0.1:9"]}}
    created = demo.api("POST", "/api/customers", doc)
    target = f"shop.example.org.{ZONE}"
    assert created["cname_target"] == {"shop.example.org": target}, created
    wait_deployed(demo, "shop")
    for server in ("127.0.0.1", "127.0.0.2"):
        reply = demo.ask(server, target)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer, (server, reply)
    out = subprocess.run([sys.executable, "-m", "control.cli", "customers", "show", "shop",
                          "--store", demo.store], capture_output=True, text=True, timeout=30,
                         cwd=ROOT, env=demo.env)
    assert json.loads(out.stdout)["cname_target"] == {"shop.example.org": target}, out
    page = urllib.request.urlopen(f"http://127.0.0.1:{demo.ctl}/", timeout=5).read().decode()
    assert "cname_target" in page


def test_a_private_bucket_customer_works_end_to_end(demo):
    from tests.edge.test_bucket import Moto

    moto = Moto(auth=True)
    try:
        origin = moto.origin(access_key_id=moto.key_id, secret_access_key=moto.secret)
        doc = {"directory": "priv", "cnames": ["priv.example.org"], "origin": origin}
        try:
            created = demo.api("POST", "/api/customers", doc)
        except urllib.error.HTTPError as exc:
            raise AssertionError(exc.read().decode()) from None
        assert moto.secret not in json.dumps(created), created        # write-only
        assert created["secrets"] == ["/origin/secret_access_key"], created
        wait_deployed(demo, "priv")
        edge_port, edge = re.search(r"--resolve www\.test\.com:(\d+):([\d.]+)",
                                    demo.out.read_text()).groups()
        got = subprocess.run(["curl", "-s", "--max-time", "10", "-H", "Host: priv.example.org",
                              f"http://{edge}:{edge_port}/clip.mp4"], capture_output=True,
                             timeout=15)
        assert got.stdout == b"v1" * 5000, got.stdout[:200]
    finally:
        moto.close()
