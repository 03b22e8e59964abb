"""`gslb demo --fleet` as a newcomer runs it: a real etcd, cdnctl, the edges and the DNS
all reading the store; the printed curl lines create a customer, the printed dig and
curl lines show it answered and served. On ports of the test's own."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import free_port
from tests.control.fleet import wait_for
from tests.test_demo_e2e import demo_config, dig, start_demo


def run(line: str, env: dict) -> str:
    return subprocess.run(["bash", "-c", line.split("  #")[0]], capture_output=True, text=True,
                          timeout=30, env=env).stdout


def test_the_fleet_demo_creates_a_customer_and_serves_it(tmp_path):
    port, http = free_port(), free_port()
    etcd, peer, ctl = free_port(), free_port(), free_port()
    config, options = demo_config(tmp_path)
    env = {**os.environ, "CDNCTL_TOKEN": "t0ken"}
    log = tmp_path / "demo.log"
    proc, banner = start_demo(tmp_path, config, port, http,
                              ["--fleet", "--etcd", f"127.0.0.1:{etcd}",
                               "--etcd-peer", f"127.0.0.1:{peer}", "--cdnctl", f"127.0.0.1:{ctl}",
                               *options], log, env)
    try:
        text = "\n".join(banner)
        assert "etcd " in text and "cdnctl " in text, text
        post = next(l.strip() for l in banner if "-X POST" in l)
        show = next(l.strip() for l in banner if "/api/customers/video" in l and "POST" not in l)
        digs = next(l.strip() for l in banner if l.strip().startswith("dig") and "video" in l)
        fetch = next(l.strip() for l in banner if "video.example.com:" in l and "curl" in l)
        # the seeded customer (data/edge.yaml's) is answered and served already
        seeded = digs.replace("video.example.com", "www.test.com")
        assert wait_for(lambda: dig(seeded) == ["127.0.0.12"], timeout=20), text
        # the zone's ns2 (127.0.0.2) is a second nameserver of the fleet: same answers
        ns2 = next(l.strip() for l in banner if l.strip().startswith("dig @127.0.0.2"))
        assert f"-p {port}" in ns2, ns2
        assert wait_for(lambda: dig(ns2) == ["127.0.0.12"], timeout=20), text
        assert "ns2 " in text and "127.0.0.2:" in text
        created = json.loads(run(post, env))
        assert created["directory"] == "video", created
        card = wait_for(lambda: (c := json.loads(run(show, env)))["status"] == "deployed" and c,
                        timeout=20)
        assert card["deployed"] == card["of"] == 4            # three edges and the shield
        assert wait_for(lambda: dig(digs) == ["127.0.0.12"], timeout=10)
        ip, edge_port = fetch.split("--resolve video.example.com:")[1].split()[0].split(":")[::-1]
        got = curl_video(edge_port, ip)
        assert got["status"] == "200" and "shield-fra" in got["via"], got

        # https: auto, as printed: pebble looks the name up at ns1, asks an edge for the
        # HTTP-01 answer, and the edge then serves the certificate it issued
        shop = next(l.strip() for l in banner if '"https": "auto"' in l)
        certs = next(l.strip() for l in banner if "cdnctl certs" in l)
        https = next(l.strip() for l in banner if "acme-root.pem" in l)
        assert json.loads(run(shop, env))["directory"] == "shop"
        certs = certs.replace("cdnctl", f"{sys.executable} -m control.cli", 1)
        wait_for(lambda: any(l.startswith("shop") and " active " in l
                             for l in run(certs, env).splitlines()), timeout=60, every=0.5)
        head = run(https, env).splitlines()
        assert head and head[0].split()[1] == "200", (head, https)
    finally:
        proc.terminate()
        proc.wait(30)


def curl_video(port: str, ip: str) -> dict:
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-D", "-", "--max-time", "10",
                          "--resolve", f"video.example.com:{port}:{ip}",
                          f"http://video.example.com:{port}/clip.webm"],
                         capture_output=True, text=True, timeout=15).stdout
    lines = out.splitlines()
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    headers["status"] = lines[0].split()[1] if lines else ""
    return headers
