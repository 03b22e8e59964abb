"""Under attack: rate limiting, TCP limits and timeouts, EDNS Cookies, NSID."""
from __future__ import annotations

import os
import random
import resource
import select
import socket
import struct
import time
import urllib.request

import dnslib
import pytest

from tests.conftest import DEMO_NAME, load_default, make_query, parse, recv_framed, udp_query

RATE, SLIP, FLOOD_SECONDS = 20, 2, 2.0


def with_edns_option(wire: bytes, code: int, data: bytes) -> bytes:
    """Append one EDNS option to a query made by make_query (its OPT is last, rdlen last)."""
    rdlen = struct.unpack("!H", wire[-2:])[0]
    assert rdlen == 0
    option = struct.pack("!HH", code, len(data)) + data
    return wire[:-2] + struct.pack("!H", len(option)) + option


def options_of(resp: dnslib.DNSRecord) -> dict[int, bytes]:
    for rr in resp.ar:
        if rr.rtype == dnslib.QTYPE.OPT:
            return {opt.code: bytes(opt.data) for opt in rr.rdata}
    return {}


def _collect(socks: list[socket.socket], tally: dict) -> None:
    """Read every reply waiting on `socks`; count full and truncated ones and their bytes."""
    for s in socks:
        while True:
            try:
                data = s.recv(4096)
            except BlockingIOError:
                break
            kind = "tc" if data[2] & 0x02 else "full"
            tally[kind] += 1
            tally[kind + "_bytes"] += len(data)


def flood(port: int, wires: list[bytes], sources: list[str], seconds: float) -> dict:
    """Send as fast as we can from many source addresses; count what comes back."""
    socks = []
    for src in sources:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.setblocking(False)
        socks.append(s)
    tally = dict.fromkeys(("sent", "sent_bytes", "full", "full_bytes", "tc", "tc_bytes"), 0)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for s in socks:
                wire = random.choice(wires)
                try:
                    s.sendto(wire, ("127.0.0.1", port))
                    tally["sent"] += 1
                    tally["sent_bytes"] += len(wire)
                except BlockingIOError:
                    pass
            readable, _, _ = select.select(socks, [], [], 0)
            _collect(readable, tally)
            time.sleep(0.0005)
        time.sleep(0.2)
        _collect(socks, tally)
    finally:
        for s in socks:
            s.close()
    return tally


def rrl_config() -> dict:
    cfg = load_default(checks=False)
    cfg["server"]["rate_limit"] = {"enabled": True, "responses_per_second": RATE, "slip": SLIP}
    return cfg


@pytest.mark.parametrize("kind", ["answer", "nxdomain", "refused"])
def test_rrl_bounds_reflection_while_others_are_answered(start_server, kind):
    srv = start_server(rrl_config(), workers=1)
    victims = [f"127.0.9.{i}" for i in range(1, 41)]         # "spoofed" sources, one /24
    if kind == "answer":
        wires = [make_query(DEMO_NAME, "A", edns=False)]
    elif kind == "nxdomain":
        # random names below a zone without a wildcard: every NXDOMAIN shares a bucket
        wires = [make_query(f"r{random.getrandbits(40):x}.ns1.cdn.example.net", "A", edns=False)
                 for _ in range(300)]
    else:
        wires = [make_query(f"r{random.getrandbits(40):x}.example.org", "A", edns=False)
                 for _ in range(300)]
    legit_ok = 0
    stats = flood(srv.port, wires, victims, FLOOD_SECONDS / 2)
    for i in range(20):   # a client in another network is answered every time
        if udp_query(srv.port, make_query(DEMO_NAME, "A", ecs="198.51.100.0/24"),
                     source="127.0.10.1", timeout=1) is not None:
            legit_ok += 1
    more = flood(srv.port, wires, victims, FLOOD_SECONDS / 2)
    for key in stats:
        stats[key] += more[key]
    allowed = RATE * (FLOOD_SECONDS + 1.5) + RATE          # rate over the run, plus a burst
    assert stats["sent"] > 20 * allowed, stats               # it was a real flood
    assert stats["full"] <= allowed, stats                   # full answers held to the rate
    assert stats["tc"] > 0, stats                            # slipped answers went out ...
    # ... about one in SLIP, each no bigger than its query: no amplification at all
    assert stats["tc_bytes"] <= stats["sent_bytes"] / SLIP * 1.05, stats
    assert stats["tc_bytes"] + stats["full_bytes"] < stats["sent_bytes"] * 0.6, stats
    assert legit_ok == 20
    # a real resolver told to retry over TCP gets its answer there
    out = srv.dig(DEMO_NAME, "A", "+tcp", "+short")
    assert out.strip()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        metrics = urllib.request.urlopen(f"{srv.http}/metrics", timeout=5).read().decode()
        line = next((l for l in metrics.splitlines()
                     if l.startswith('gslb_rrl_responses_total{action="dropped"}')), "")
        if line and float(line.split()[-1]) > 0:
            break
        time.sleep(0.2)
    assert float(line.split()[-1]) > 0


def test_valid_cookie_exempts_a_client_from_rrl(start_server):
    srv = start_server(rrl_config(), workers=1)
    client_cookie = os.urandom(8)
    first = parse(udp_query(srv.port, with_edns_option(make_query(DEMO_NAME), 10, client_cookie),
                            source="127.0.9.200"))
    server_cookie = options_of(first)[10][8:]
    good = with_edns_option(make_query(DEMO_NAME), 10, client_cookie + server_cookie)
    flood(srv.port, [make_query(DEMO_NAME, "A", edns=False)], ["127.0.9.201"], 1.0)
    answered = sum(1 for _ in range(60)
                   if (r := udp_query(srv.port, good, source="127.0.9.200", timeout=1))
                   and not r[2] & 0x02)
    assert answered == 60       # the same /24 is being limited, but this client proved itself


def test_cookies_issued_validated_and_malformed(demo_server):
    client_cookie = bytes.fromhex("0123456789abcdef")
    resp = parse(demo_server.query(with_edns_option(make_query(DEMO_NAME), 10, client_cookie)))
    cookie = options_of(resp)[10]
    assert cookie[:8] == client_cookie and len(cookie) == 24
    assert cookie[8] == 1 and cookie[9:12] == b"\x00\x00\x00"           # RFC 9018 version 1
    stamp = struct.unpack("!I", cookie[12:16])[0]
    assert abs(stamp - time.time()) < 5
    again = parse(demo_server.query(with_edns_option(make_query(DEMO_NAME), 10, cookie)))
    assert again.rr and options_of(again)[10][:8] == client_cookie
    forged = cookie[:-1] + bytes([cookie[-1] ^ 1])
    lenient = parse(demo_server.query(with_edns_option(make_query(DEMO_NAME), 10, forged)))
    assert lenient.rr and options_of(lenient)[10][8:] != forged[8:]    # answered, new cookie
    bad = demo_server.query(with_edns_option(make_query(DEMO_NAME), 10, b"short"))
    assert bad[3] & 0x0F == 1                                           # FORMERR
    out = demo_server.dig(DEMO_NAME, "+cookie")
    assert "COOKIE:" in out and "(good)" in out


def test_nsid_when_configured(start_server, demo_server):
    assert "NSID" not in demo_server.dig(DEMO_NAME, "+nsid")
    cfg = load_default(checks=False)
    cfg["server"]["nsid"] = "gslb-fra-1"
    srv = start_server(cfg)
    assert 'NSID: 67 73 6c 62 2d 66 72 61 2d 31 ("gslb-fra-1")' in srv.dig(DEMO_NAME, "+nsid")


def open_many(port: int, count: int, sources: list[str]) -> list[socket.socket]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 512)), hard))
    conns = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((sources[i % len(sources)], 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        conns.append(s)
    return conns


def test_thousand_idle_tcp_connections_do_not_block_anyone(start_server):
    cfg = load_default(checks=False)
    cfg["server"]["tcp_idle_timeout"] = 30
    srv = start_server(cfg, workers=1)
    sources = [f"127.0.11.{i}" for i in range(1, 51)]
    conns = open_many(srv.port, 1000, sources)
    try:
        # half of them slow: a length prefix and part of a message, then nothing
        for s in conns[::2]:
            s.sendall(b"\x00\x40\x12\x34")
        start = time.monotonic()
        assert udp_query(srv.port, make_query(DEMO_NAME), timeout=1) is not None
        with socket.create_connection(("127.0.0.1", srv.port), timeout=2) as fresh:
            wire = make_query(DEMO_NAME, "A", ecs="203.0.113.0/24")
            fresh.sendall(len(wire).to_bytes(2, "big") + wire)
            assert str(parse(recv_framed(fresh)).rr[0].rdata) == "127.0.0.13"
        assert time.monotonic() - start < 1.0
    finally:
        for s in conns:
            s.close()


def test_tcp_limits_and_read_timeout(start_server):
    cfg = load_default(checks=False)
    cfg["server"].update({"tcp_max_connections": 50, "tcp_max_per_client": 5,
                          "tcp_read_timeout": 0.5, "tcp_idle_timeout": 30})
    srv = start_server(cfg, workers=1)
    # per client: the sixth connection from one address is closed at once
    mine = open_many(srv.port, 6, ["127.0.12.1"])
    try:
        assert mine[5].recv(1) == b""
    finally:
        for s in mine:
            s.close()
    # total: past 50, the longest idle connections are closed to make room
    crowd = open_many(srv.port, 60, [f"127.0.13.{i}" for i in range(1, 21)])
    try:
        time.sleep(0.3)
        closed = 0
        for s in crowd[:10]:
            s.settimeout(1)
            try:
                closed += s.recv(1) == b""
            except (socket.timeout, ConnectionResetError):
                closed += 0
        assert closed == 10
        with socket.create_connection(("127.0.0.1", srv.port), timeout=2) as fresh:
            wire = make_query(DEMO_NAME)
            fresh.sendall(len(wire).to_bytes(2, "big") + wire)
            assert parse(recv_framed(fresh)).rr
    finally:
        for s in crowd:
            s.close()
    # read timeout: a message that starts and never finishes is cut off
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as slow:
        slow.sendall(b"\x00\x30\x00\x01")
        start = time.monotonic()
        assert slow.recv(1) == b""
        assert 0.3 < time.monotonic() - start < 3


def test_client_that_never_reads_is_bounded_and_cut_off(start_server):
    cfg = load_default(checks=False)
    cfg["server"].update({"tcp_idle_timeout": 1.0, "tcp_max_queued": 8})
    srv = start_server(cfg, workers=1)
    wire = make_query(DEMO_NAME)
    framed = (len(wire).to_bytes(2, "big") + wire) * 300_000     # ~18 MB: more than any socket buffer
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)      # and we read nothing back
    s.connect(("127.0.0.1", srv.port))
    s.setblocking(False)
    sent, cut_off, start = 0, False, time.monotonic()
    while time.monotonic() - start < 8 and sent < len(framed):
        try:
            sent += s.send(framed[sent:sent + 65536])
        except BlockingIOError:
            time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            cut_off = True
            break
    s.close()
    # The server stopped reading once its queue to us was full (we could not
    # push everything), and reset us once we had not read for the idle timeout.
    assert sent < len(framed) and cut_off, (sent, len(framed))
    assert time.monotonic() - start < 6
    assert udp_query(srv.port, make_query(DEMO_NAME)) is not None
