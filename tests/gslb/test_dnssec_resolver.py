"""Our signed answers through real validators: Debian's unbound (stub zone, our DS as
trust anchor, ECS forwarded) and BIND's delv (our DNSKEY as anchor). Secure for every
answer kind; bogus when an answer is tampered with or its signatures have expired."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import ROOT, dig, free_port, stop, wait_ready, write_config
from tests.gslb.signed import ZONE, gslb, signed_dict
from tests.gslb.test_semantics import flags_of, status_of

SHOP = "www.shop.com.cdn.example.net"

class Forwarder:
    """A UDP hop between the resolver and our server that can rewrite answers."""

    def __init__(self, upstream: int, rewrite: tuple[bytes, bytes]):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.upstream, self.rewrite = upstream, rewrite
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                up.settimeout(2)
                up.sendto(data, ("127.0.0.1", self.upstream))
                try:
                    reply = up.recv(65535)
                except socket.timeout:
                    continue
            self.sock.sendto(reply.replace(*self.rewrite), peer)

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


def start_unbound(tmp: Path, name: str, ds: str, upstream: int, extra: str = "") -> tuple:
    port = free_port()
    folder = tmp / name
    folder.mkdir()
    (folder / "unbound.conf").write_text(f"""
server:
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{folder}"
  pidfile: "{folder}/unbound.pid"
  use-syslog: no
  logfile: "{folder}/unbound.log"
  verbosity: 1
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  module-config: "subnetcache validator iterator"
  send-client-subnet: 127.0.0.1
  client-subnet-always-forward: yes
  trust-anchor: "{ds}"
  qname-minimisation: no
  {extra}
remote-control:
  control-enable: no
stub-zone:
  name: "{ZONE}"
  stub-addr: 127.0.0.1@{upstream}
""")
    proc = subprocess.Popen(["unbound", "-d", "-c", str(folder / "unbound.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "status:" in dig(port, "cdn.example.net", "SOA", "+time=1"):
            return port, proc
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError((folder / "unbound.log").read_text())


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("signed")
    cfg = signed_dict(tmp / "keys")
    cfg["zones"][ZONE]["records"]["big"] = [
        {"type": "TXT", "values": [f"chunk-{i:03d}-" + "x" * 100 for i in range(30)]}]
    path = write_config(tmp, cfg)
    gslb("dnssec", "init", ZONE, "-c", str(path))
    lines = gslb("dnssec", "ds", ZONE, "-c", str(path)).stdout.splitlines()
    ds = next(line for line in lines if " DS " in line)
    dnskey = next(line for line in lines if " DNSKEY " in line)
    port = free_port()
    log = tmp / "gslb.log"
    server = subprocess.Popen([sys.executable, "-m", "gslb.cli", "serve", "-c", str(path),
                               "--dns", f"127.0.0.1:{port}", "--workers", "1", "--no-http"],
                              stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    procs = [server]
    forwarder = None
    try:
        wait_ready(port, server, log)
        good, p1 = start_unbound(tmp, "good", ds, port)
        procs.append(p1)
        # 127.0.0.11 (New York's edge) becomes 6.6.6.6 on the way: a forged edge address.
        forwarder = Forwarder(port, (bytes([127, 0, 0, 11]), bytes([6, 6, 6, 6])))
        forged, p2 = start_unbound(tmp, "forged", ds, forwarder.port)
        procs.append(p2)
        late, p3 = start_unbound(tmp, "late", ds, port, 'val-override-date: "20991231000000"')
        procs.append(p3)
        yield {"port": port, "good": good, "forged": forged, "late": late, "tmp": tmp,
               "dnskey": dnskey}
    finally:
        if forwarder is not None:
            forwarder.close()
        for proc in procs:
            stop(proc)


def resolve(port: int, *args: str) -> tuple[str, set[str], str]:
    out = dig(port, *args, "+dnssec", "+rec", "+time=5")
    return status_of(out), flags_of(out), out


SECURE = [
    ("service A, New York net", SHOP, "A", "192.0.2.0/24", "NOERROR", "127.0.0.11"),
    ("service A, Singapore net", SHOP, "A", "203.0.113.0/24", "NOERROR", "127.0.0.13"),
    ("service AAAA, Frankfurt net", SHOP, "AAAA", "2001:db8:4::/48", "NOERROR",
     "2001:db8:ed9e::12"),
    ("exact service", "www.cdn.example.net", "A", "198.51.100.0/24", "NOERROR", "127.0.0.12"),
    ("static", "cdn.example.net", "TXT", None, "NOERROR", "gslb demo zone"),
    ("static next to a service", "www.cdn.example.net", "TXT", None, "NOERROR", "static next"),
    ("CNAME to a wildcard service", "alias.cdn.example.net", "A", "203.0.113.0/24",
     "NOERROR", "127.0.0.13"),
    ("CNAME to static", "to-static.cdn.example.net", "A", None, "NOERROR", "192.0.2.80"),
    ("NODATA", "ns2.cdn.example.net", "AAAA", None, "NOERROR", "SOA"),
    ("wildcard NODATA", SHOP, "TXT", None, "NOERROR", "SOA"),
    ("empty non-terminal", "deep.cdn.example.net", "A", None, "NOERROR", "SOA"),
    ("NXDOMAIN (compact: NODATA + NXNAME)", "nope.static.cdn.example.net", "A", None,
     "NOERROR", "SOA"),
    ("too big for UDP: TC, then TCP", "big.cdn.example.net", "TXT", None, "NOERROR",
     "chunk-029"),
]


@pytest.mark.parametrize("label,name,qtype,ecs,status,expect", SECURE,
                         ids=[s[0] for s in SECURE])
def test_unbound_validates_as_secure(signed, label, name, qtype, ecs, status, expect):
    args = [name, qtype] + ([f"+subnet={ecs}"] if ecs else [])
    got, flags, out = resolve(signed["good"], *args)
    assert got == status, out
    assert "ad" in flags, f"{label}: not validated as secure\n{out}"
    assert expect in out, out


def test_signed_big_answer_truncates_over_udp_and_is_whole_over_tcp(signed):
    udp = dig(signed["port"], "big.cdn.example.net", "TXT", "+dnssec", "+notcp", "+ignore")
    assert "tc" in flags_of(udp) and "udp: 1232" in udp
    tcp = dig(signed["port"], "big.cdn.example.net", "TXT", "+dnssec", "+tcp")
    assert tcp.count("chunk-") == 30 and "RRSIG\tTXT" in tcp


def test_forged_edge_address_is_bogus(signed):
    got, flags, out = resolve(signed["forged"], SHOP, "A", "+subnet=192.0.2.0/24")
    assert got == "SERVFAIL" and "6.6.6.6" not in out, out
    # the same resolver path still validates answers the forger did not touch
    got, flags, out = resolve(signed["forged"], SHOP, "A", "+subnet=203.0.113.0/24")
    assert got == "NOERROR" and "ad" in flags and "127.0.0.13" in out


def test_expired_signatures_are_bogus(signed):
    got, _, out = resolve(signed["late"], SHOP, "A", "+subnet=192.0.2.0/24")
    assert got == "SERVFAIL", out
    assert "127.0.0.11" not in out


def test_delv_fully_validates_with_the_dnskey_as_anchor(signed):
    parts = signed["dnskey"].split()
    anchor = signed["tmp"] / "anchor.conf"
    anchor.write_text(f'trust-anchors {{ "{ZONE}" static-key {parts[4]} {parts[5]} '
                      f'{parts[6]} "{"".join(parts[7:])}"; }};\n')
    for name, qtype, expect in ((SHOP, "A", "; fully validated"),
                                ("nope.static.cdn.example.net", "A",
                                 "; negative response, fully validated"),
                                ("alias.cdn.example.net", "AAAA", "; fully validated")):
        out = subprocess.run(["delv", "@127.0.0.1", "-p", str(signed["port"]), "-a",
                              str(anchor), f"+root={ZONE}", name, qtype],
                             capture_output=True, text=True, timeout=20)
        assert expect in out.stdout + out.stderr, out.stdout + out.stderr
