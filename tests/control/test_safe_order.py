"""The safe order, end to end: a nameserver answers a customer's name only with edges
that serve it, on create (edges first) and on removal (nameservers first). A probe
loop resolves the name and fetches from every address it is given, all the time the
customer is created, changed, stripped of its CNAME and deleted: it never gets a 404.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import dnslib
import yaml

from tests.conftest import ROOT, free_port, make_query, parse, udp_query, wait_ready
from tests.control.fleet import Origin, customer, node, start_ctl, start_edge, wait_for

NAME = "www.a.com.cdn.example.net"
NEAR_A, NEAR_B = "192.0.2.0/24", "198.51.100.0/24"


def gslb_config(tmp) -> dict:
    return {
        "zones": {"cdn.example.net.": {
            "soa": {"mname": "ns1.cdn.example.net.", "rname": "h.example.net.", "serial": 1,
                    "minimum": 1},
            "ns": ["ns1.cdn.example.net."],
            "records": {"ns1": [{"type": "A", "value": "127.0.0.1"}]}}},
        "sites": {"a": {"lat": 40.7, "lon": -74.0, "addresses": ["127.0.0.21"]},
                  "b": {"lat": 50.0, "lon": 8.6, "addresses": ["127.0.0.22"]}},
        "nets": {NEAR_A: {"sites": ["a", "b"]}, NEAR_B: {"sites": ["b", "a"]}},
        "services": {"*.cdn.example.net.": {"pool": ["a", "b"], "ttl": 1}},
        "health": {"state_file": str(tmp / "gslb-state.json")},
    }


def start_gslb(tmp, store: str, port: int) -> subprocess.Popen:
    path = tmp / "gslb.yaml"
    path.write_text(yaml.safe_dump(gslb_config(tmp), sort_keys=False))
    log = tmp / "gslb.log"
    proc = subprocess.Popen([sys.executable, "-m", "gslb.cli", "serve", "-c", str(path),
                             "--dns", f"127.0.0.1:{port}", "--workers", "2", "--no-http",
                             "--store", store, "--node-id", "ns1"], cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_ready(port, proc, log)
    return proc


def resolve(port: int, ecs: str) -> tuple[str, list[str]]:
    out = udp_query(port, make_query(NAME, "A", ecs=ecs), timeout=1.0)
    if out is None:
        return "TIMEOUT", []
    resp = parse(out)
    return dnslib.RCODE[resp.header.rcode], [str(rr.rdata) for rr in resp.rr]


class Probe(threading.Thread):
    """Resolve, then fetch from each answered edge, in a loop; keep what went wrong."""

    def __init__(self, dns_port: int, http_port: int):
        super().__init__(daemon=True)
        self.dns_port, self.http_port = dns_port, http_port
        self.running = True
        self.bad: list[str] = []
        self.seen: set[str] = set()
        self.fetches = 0

    def run(self) -> None:
        while self.running:
            for ecs in (NEAR_A, NEAR_B):
                rcode, addresses = resolve(self.dns_port, ecs)
                for address in addresses:
                    self.seen.add(address)
                    request = urllib.request.Request(
                        f"http://{address}:{self.http_port}/p", headers={"Host": NAME})
                    try:
                        with urllib.request.urlopen(request, timeout=3) as resp:
                            status = resp.status
                    except urllib.error.HTTPError as exc:
                        status = exc.code
                    except OSError as exc:
                        status = str(exc)
                    self.fetches += 1
                    if status != 200:
                        self.bad.append(f"{address}: {status} at {time.monotonic():.3f}")
            time.sleep(0.01)


def test_names_follow_the_edges_on_create_and_on_removal(etcd, tmp_path):
    origin = Origin("one")
    http_port, dns_port = free_port(), free_port()
    ctl = start_ctl(tmp_path, etcd.url)
    edge_a = start_edge(tmp_path, etcd.url, "edge-a", host="127.0.0.21", port=http_port)
    edge_b = start_edge(tmp_path, etcd.url, "edge-b", host="127.0.0.22", port=http_port)
    gslb = start_gslb(tmp_path, etcd.url, dns_port)
    probe = Probe(dns_port, http_port)
    try:
        assert resolve(dns_port, NEAR_A) == ("NXDOMAIN", [])      # not a customer's name
        probe.start()
        # edge-b is stuck (stopped): it cannot apply anything new
        os.kill(edge_b.proc.pid, signal.SIGSTOP)
        status, body, _ = ctl.call("POST", "/api/customers",
                                   customer("a", origin.address, "www.a.com", NAME))
        assert status == 201, body
        wait_for(lambda: resolve(dns_port, NEAR_A) == ("NOERROR", ["127.0.0.21"]),
                 what="answered with the edge that serves it")
        # clients near b get a, the edge that has it, not b, which does not yet
        assert resolve(dns_port, NEAR_B) == ("NOERROR", ["127.0.0.21"])
        assert ctl.call("GET", "/api/customers/a")[1]["status"] == "deploying"
        os.kill(edge_b.proc.pid, signal.SIGCONT)
        wait_for(lambda: resolve(dns_port, NEAR_B) == ("NOERROR", ["127.0.0.22"]),
                 what="b answers once it has applied", timeout=15)
        card = wait_for(lambda: (c := ctl.call("GET", "/api/customers/a")[1])["status"] ==
                        "deployed" and c)
        time.sleep(0.5)                                   # the probe fetches from both
        # the nameserver reports what it answers from
        assert node(etcd, "ns1")["kind"] == "nameserver"
        # removal: the CNAME goes first; nameservers stop, then the edges drop it
        bare = customer("a", origin.address)
        current = ctl.call("PUT", "/api/customers/a", bare,
                           headers={"If-Match": str(card["revision"])})[1]["revision"]
        wait_for(lambda: resolve(dns_port, NEAR_A)[0] == "NXDOMAIN", what="nameserver stopped")
        assert edge_a.get("/p", NAME)[0] == 200           # the edges still serve it meanwhile
        wait_for(lambda: edge_a.get("/p", NAME)[0] == 404 and edge_b.get("/p", NAME)[0] == 404,
                 what="edges dropped it after the TTL", timeout=15)
        deleted = ctl.call("DELETE", "/api/customers/a", headers={"If-Match": str(current)})
        assert deleted[0] == 200, deleted
        time.sleep(0.5)
        probe.running = False
        probe.join(10)
        assert probe.bad == [], probe.bad
        assert probe.seen == {"127.0.0.21", "127.0.0.22"} and probe.fetches >= 10
    finally:
        probe.running = False
        if edge_b.proc.poll() is None:
            os.kill(edge_b.proc.pid, signal.SIGCONT)
        for proc in (gslb,):
            proc.terminate()
            proc.wait(10)
        edge_a.stop()
        edge_b.stop()
        ctl.stop()
        origin.close()
