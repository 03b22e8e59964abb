"""DNS semantics of an authoritative server (DESIGN.md 3), against a running server."""
from __future__ import annotations

import socket
import struct
import time
import urllib.request
from pathlib import Path

import dnslib
import pytest
import yaml

from cdnkit.check import ConfigError
from cdnkit.yamlsrc import load_yaml_text
from gslb.config import build_config
from gslb.server import UDP_PLAIN_LIMIT, Responder
from tests.conftest import (
    DATA,
    DEMO_NAME,
    ecs_scope,
    load_default,
    make_query,
    parse,
    recv_framed,
    tcp_exchange,
)


def flags_of(text: str) -> set[str]:
    line = next(line for line in text.splitlines() if line.startswith(";; flags:"))
    return set(line.split("flags:")[1].split(";")[0].split())


def status_of(text: str) -> str:
    return text.split("status: ")[1].split(",")[0]


def test_refused_outside_our_zones_and_never_recursive(demo_server):
    out = demo_server.dig("www.example.org", "A", "+rec")
    assert status_of(out) == "REFUSED"
    assert "ra" not in flags_of(out) and "aa" not in flags_of(out)


def test_answers_are_authoritative_without_recursion(demo_server):
    out = demo_server.dig(DEMO_NAME, "A", "+rec")
    assert status_of(out) == "NOERROR"
    flags = flags_of(out)
    assert "aa" in flags and "ra" not in flags
    assert "rd" in flags  # RD is copied from the query


def test_apex_soa_ns_and_glue(demo_server):
    soa = parse(demo_server.query(make_query("cdn.example.net", "SOA")))
    assert soa.header.aa and len(soa.rr) == 1
    assert str(soa.rr[0].rdata.mname) == "ns1.cdn.example.net."
    assert soa.rr[0].rdata.times[4] == 60   # minimum from data/gslb.yaml
    ns = parse(demo_server.query(make_query("cdn.example.net", "NS")))
    assert sorted(str(r.rdata) for r in ns.rr) == ["ns1.cdn.example.net.", "ns2.cdn.example.net."]
    glue = {(str(r.rname), dnslib.QTYPE[r.rtype], str(r.rdata)) for r in ns.ar
            if r.rtype != dnslib.QTYPE.OPT}
    assert glue == {("ns1.cdn.example.net.", "A", "127.0.0.1"),
                    ("ns1.cdn.example.net.", "AAAA", "::1"),
                    ("ns2.cdn.example.net.", "A", "127.0.0.2")}


def test_static_records(demo_server):
    out = demo_server.dig("cdn.example.net", "TXT", "+short")
    assert out.strip() == '"gslb demo zone"'
    out = demo_server.dig("cdn.example.net", "CAA", "+short")
    assert out.strip() == '0 issue "letsencrypt.org"'
    assert demo_server.dig("ns2.cdn.example.net", "A", "+short").strip() == "127.0.0.2"


def test_nxdomain_and_nodata_carry_soa_with_negative_ttl(start_server):
    cfg = load_default()
    zone = cfg["zones"]["cdn.example.net."]
    zone["soa"]["minimum"] = 45
    zone["soa"]["ttl"] = 900
    del cfg["services"]["*.cdn.example.net."]
    cfg["services"]["www.cdn.example.net."] = {"pool": ["nyc", "fra", "sin"]}
    srv = start_server(cfg)
    nx = srv.ask("nope.cdn.example.net", "A")
    assert nx.header.rcode == dnslib.RCODE.NXDOMAIN and nx.header.aa
    assert [dnslib.QTYPE[r.rtype] for r in nx.auth] == ["SOA"]
    assert nx.auth[0].ttl == 45       # min(SOA TTL 900, MINIMUM 45): RFC 2308
    nodata = srv.ask("www.cdn.example.net", "MX")
    assert nodata.header.rcode == dnslib.RCODE.NOERROR and not nodata.rr
    assert [dnslib.QTYPE[r.rtype] for r in nodata.auth] == ["SOA"]
    # ns1 exists with A/AAAA only: TXT is NODATA, not NXDOMAIN
    assert srv.ask("ns1.cdn.example.net", "TXT").header.rcode == dnslib.RCODE.NOERROR


def test_empty_non_terminal_is_nodata(start_server):
    cfg = load_default()
    cfg["zones"]["cdn.example.net."]["records"]["a.b.c"] = [{"type": "TXT", "value": "deep"}]
    del cfg["services"]["*.cdn.example.net."]
    cfg["services"]["www.cdn.example.net."] = {"pool": ["nyc", "fra", "sin"]}
    srv = start_server(cfg)
    ent = srv.ask("b.c.cdn.example.net", "A")
    assert ent.header.rcode == dnslib.RCODE.NOERROR and not ent.rr
    assert srv.ask("x.b.c.cdn.example.net", "A").header.rcode == dnslib.RCODE.NXDOMAIN


def test_edns_payload_and_badvers(demo_server):
    out = demo_server.dig(DEMO_NAME, "A", "+bufsize=4096")
    assert "udp: 1232" in out
    q = dnslib.DNSRecord.question(DEMO_NAME, "A")
    q.add_ar(dnslib.EDNS0(version=1, udp_len=1232))
    resp = parse(demo_server.query(bytes(q.pack())))
    opt = [r for r in resp.ar if r.rtype == dnslib.QTYPE.OPT]
    assert len(opt) == 1
    ext_rcode = (opt[0].ttl >> 24) & 0xFF
    version = (opt[0].ttl >> 16) & 0xFF
    assert (ext_rcode << 4) | resp.header.rcode == 16   # BADVERS
    assert version == 0 and not resp.rr


def big_txt_config() -> dict:
    cfg = load_default()
    cfg["zones"]["cdn.example.net."]["records"]["big"] = [
        {"type": "TXT", "values": [f"chunk-{i:03d}-" + "x" * 100 for i in range(40)]}]
    return cfg


def test_truncation_over_udp_and_full_answer_over_tcp(start_server):
    srv = start_server(big_txt_config())
    plain = parse(srv.query(make_query("big.cdn.example.net", "TXT", edns=False)))
    assert plain.header.tc and not plain.rr
    edns = srv.query(make_query("big.cdn.example.net", "TXT"))
    assert len(edns) <= 1232 and parse(edns).header.tc
    out = srv.dig("big.cdn.example.net", "TXT", "+tcp")
    assert out.count("chunk-") == 40 and "flags: qr aa;" in out
    # dig retries over TCP by itself when it sees TC over UDP
    out = srv.dig("big.cdn.example.net", "TXT", "+notcp", "+ignore")
    assert "tc" in flags_of(out)


def test_several_queries_on_one_tcp_connection(demo_server):
    wires = [make_query(DEMO_NAME, "A", ecs=e, qid=1000 + i)
             for i, e in enumerate(["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"])]
    replies = [parse(r) for r in tcp_exchange(demo_server.port, wires)]
    assert [r.header.id for r in replies] == [1000, 1001, 1002]
    assert [str(r.rr[0].rdata) for r in replies] == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]


def test_tcp_idle_timeout_closes_connection(start_server):
    cfg = load_default()
    cfg["server"]["tcp_idle_timeout"] = 0.5
    srv = start_server(cfg)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        w = make_query(DEMO_NAME)
        s.sendall(len(w).to_bytes(2, "big") + w)
        assert parse(recv_framed(s)).rr
        start = time.monotonic()
        assert s.recv(10) == b""          # server closed us
        assert time.monotonic() - start < 3


def test_unknown_opcode_is_notimp(demo_server):
    wire = bytearray(make_query(DEMO_NAME, edns=False))
    wire[2] = (wire[2] & 0x87) | (5 << 3)      # opcode UPDATE
    resp = demo_server.query(bytes(wire))
    assert resp is not None
    assert resp[3] & 0x0F == 4 and (resp[2] >> 3) & 0x0F == 5 and resp[:2] == bytes(wire[:2])


def test_malformed_packets_get_formerr_or_drop(demo_server):
    good = make_query(DEMO_NAME, edns=False)
    # qdcount 2 with one question
    two = good[:4] + b"\x00\x02" + good[6:]
    assert demo_server.query(two)[3] & 0x0F == 1
    # trailing junk
    assert demo_server.query(good + b"junk")[3] & 0x0F == 1
    # a response (QR set) and a runt header are dropped, not answered
    assert demo_server.query(bytes([good[0], good[1], 0x80]) + good[3:], timeout=0.5) is None
    assert demo_server.query(b"\x12\x34\x00", timeout=0.5) is None
    # still healthy afterwards
    assert demo_server.ask(DEMO_NAME).rr


def test_query_case_is_echoed(demo_server):
    out = demo_server.query(make_query("WwW.TeSt.CoM.CdN.eXaMpLe.NeT", "A"))
    assert b"\x03WwW\x04TeSt\x03CoM\x03CdN\x07eXaMpLe\x03NeT\x00" in out
    assert parse(out).rr


def test_any_gets_rfc8482_minimal_answer(demo_server):
    out = demo_server.dig("cdn.example.net", "ANY")
    assert 'HINFO\t"RFC8482" ""' in out
    assert status_of(demo_server.dig("missing.x.example.org", "ANY")) == "REFUSED"


def test_zone_transfer_is_refused(demo_server):
    out = demo_server.dig("cdn.example.net", "AXFR")
    assert "Transfer failed" in out or "REFUSED" in out


def test_ipv6_listener(demo_server):
    out = demo_server.dig(DEMO_NAME, "AAAA", "+short", host="::1")
    assert out.strip() in {"2001:db8:ed9e::11", "2001:db8:ed9e::12", "2001:db8:ed9e::13"}


def test_other_class_is_refused(demo_server):
    q = dnslib.DNSRecord(q=dnslib.DNSQuestion("version.bind", dnslib.QTYPE.TXT, dnslib.CLASS.CH))
    resp = parse(demo_server.query(bytes(q.pack())))
    assert resp.header.rcode == dnslib.RCODE.REFUSED


@pytest.mark.parametrize("qtype", ["A", "AAAA"])
def test_raw_header_is_well_formed(demo_server, qtype):
    wire = make_query(DEMO_NAME, qtype, qid=0xBEEF)
    out = demo_server.query(wire)
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", out[:12])
    assert qid == 0xBEEF and flags & 0x8000 and flags & 0x0400 and not flags & 0x0080
    assert (qd, an, ns, ar) == (1, 1, 0, 1)


# --- protocol corners (issue 17) -----------------------------------------------------------


def local(cfg: dict | None = None) -> Responder:
    """An in-process responder on a config dict (the same code the server runs)."""
    cfg = dict(cfg if cfg is not None else load_default())
    cfg["geoip"] = {"database": str(DATA / "demo-city.mmdb")}
    raw = load_yaml_text(yaml.safe_dump(cfg, sort_keys=False), "test.yaml")
    return Responder(build_config(raw, "test.yaml", Path(".")))


def opt_of(resp: dnslib.DNSRecord) -> dnslib.RR | None:
    return next((r for r in resp.ar if r.rtype == dnslib.QTYPE.OPT), None)


def test_header_only_unknown_opcode_is_notimp():
    # opcode 15, no question at all (RFC 8906 3.1.4: check the opcode first)
    wire = struct.pack("!HHHHHH", 0x4242, 15 << 11, 0, 0, 0, 0)
    out = local().answer(wire, "192.0.2.1", UDP_PLAIN_LIMIT)
    assert out is not None and out[:2] == b"\x42\x42"
    assert out[3] & 0x0F == 4 and (out[2] >> 3) & 0x0F == 15
    with_opt = struct.pack("!HHHHHH", 7, 15 << 11, 0, 0, 0, 1) + b"\x00\x00\x29\x04\xd0" + bytes(6)
    resp = parse(local().answer(with_opt, "192.0.2.1", UDP_PLAIN_LIMIT))
    assert resp.header.rcode == 4 and opt_of(resp) is not None


def test_cookie_only_query_gets_our_server_cookie():
    # RFC 7873 5.4: a client may ask for a server cookie with no question at all.
    client_cookie = bytes(range(8))
    option = struct.pack("!HH", 10, 8) + client_cookie
    wire = (struct.pack("!HHHHHH", 0x1234, 0, 0, 0, 0, 1)
            + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00" + struct.pack("!H", len(option)) + option)
    out = local().answer(wire, "192.0.2.1", UDP_PLAIN_LIMIT)
    resp = parse(out)
    assert resp.header.rcode == 0 and not resp.questions and not resp.rr
    opt = opt_of(resp)
    cookies = [bytes(o.data) for o in opt.rdata if o.code == 10]
    assert len(cookies) == 1 and cookies[0][:8] == client_cookie and len(cookies[0]) == 24


@pytest.mark.parametrize("case", ["bad-ecs", "bad-cookie", "trailing", "notimp", "refused"])
def test_error_responses_carry_opt_and_question(case):
    wire = make_query("www.cdn.example.net", "A")
    if case == "bad-ecs":            # family 3 does not exist: FORMERR (RFC 7871 7.1.1)
        option = struct.pack("!HHHBB", 8, 5, 3, 8, 0) + b"\x01"
        wire = wire[:-2] + struct.pack("!H", len(option)) + option
    elif case == "bad-cookie":       # a 5-byte cookie is malformed (RFC 7873 5.2.2)
        option = struct.pack("!HH", 10, 5) + b"abcde"
        wire = wire[:-2] + struct.pack("!H", len(option)) + option
    elif case == "trailing":
        wire = wire + b"junk"
    elif case == "notimp":
        wire = wire[:2] + bytes([(wire[2] & 0x87) | (4 << 3)]) + wire[3:]   # NOTIFY
    elif case == "refused":
        wire = wire.replace(b"\x00\x01\x00\x01\x00\x00\x29", b"\x00\x01\x00\x03\x00\x00\x29")
    out = local().answer(wire, "192.0.2.1", UDP_PLAIN_LIMIT)
    resp = parse(out)
    expected = {"notimp": 4, "refused": 5}.get(case, 1)
    assert resp.header.rcode == expected
    assert opt_of(resp) is not None, "RFC 6891 7: an error to an EDNS query carries OPT"
    assert [str(q.qname) for q in resp.questions] == ["www.cdn.example.net."]


# --- in-zone CNAME chasing (RFC 1034 4.3.2 step 3a) ----------------------------------------


def chase_config() -> dict:
    cfg = load_default()
    cfg["nets"] = {}
    records = cfg["zones"]["cdn.example.net."]["records"]
    records["static"] = [{"type": "A", "value": "192.0.2.80"}, {"type": "TXT", "value": "s"}]
    records["to-static"] = [{"type": "CNAME", "value": "static.cdn.example.net."}]
    records["to-service"] = [{"type": "CNAME", "value": "edge.shop.com.cdn.example.net."}]
    records["hop1"] = [{"type": "CNAME", "value": "hop2.cdn.example.net."}]
    records["hop2"] = [{"type": "CNAME", "value": "to-static.cdn.example.net."}]
    records["loop-a"] = [{"type": "CNAME", "value": "loop-b.cdn.example.net."}]
    records["loop-b"] = [{"type": "CNAME", "value": "loop-a.cdn.example.net."}]
    records["to-outside"] = [{"type": "CNAME", "value": "www.example.org."}]
    records["sub"] = [{"type": "TXT", "value": "no wildcard below sub"}]
    records["to-missing"] = [{"type": "CNAME", "value": "gone.sub.cdn.example.net."}]
    return cfg


def chain(resp: dnslib.DNSRecord) -> list[tuple[str, str, str]]:
    return [(str(r.rname), dnslib.QTYPE[r.rtype], str(r.rdata)) for r in resp.rr]


def ask_local(r: Responder, name: str, qtype: str = "A", ecs: str | None = None) -> dnslib.DNSRecord:
    return parse(r.answer(make_query(name, qtype, ecs), "10.9.9.9", UDP_PLAIN_LIMIT))


def test_cname_to_static_name_is_followed():
    r = local(chase_config())
    resp = ask_local(r, "to-static.cdn.example.net")
    assert chain(resp) == [("to-static.cdn.example.net.", "CNAME", "static.cdn.example.net."),
                           ("static.cdn.example.net.", "A", "192.0.2.80")]
    assert resp.header.aa and resp.header.rcode == 0


def test_cname_to_service_is_followed_with_the_clients_answer():
    r = local(chase_config())
    for ecs, site in (("192.0.2.0/24", "127.0.0.11"), ("203.0.113.0/24", "127.0.0.13")):
        resp = ask_local(r, "to-service.cdn.example.net", "A", ecs)
        assert chain(resp) == [
            ("to-service.cdn.example.net.", "CNAME", "edge.shop.com.cdn.example.net."),
            ("edge.shop.com.cdn.example.net.", "A", site)]
        assert ecs_scope(resp) == 24


def test_cname_chain_is_followed_and_loops_are_bounded():
    r = local(chase_config())
    resp = ask_local(r, "hop1.cdn.example.net", "TXT")
    assert [c[0] for c in chain(resp)] == ["hop1.cdn.example.net.", "hop2.cdn.example.net.",
                                           "to-static.cdn.example.net.", "static.cdn.example.net."]
    assert chain(resp)[-1][1] == "TXT"
    loop = ask_local(r, "loop-a.cdn.example.net")
    assert loop.header.rcode == 0
    assert [c[0] for c in chain(loop)] == ["loop-a.cdn.example.net.", "loop-b.cdn.example.net."]


def test_cname_target_nodata_and_nxdomain_carry_soa():
    r = local(chase_config())
    nodata = ask_local(r, "to-static.cdn.example.net", "MX")
    assert nodata.header.rcode == 0 and len(nodata.rr) == 1
    assert [dnslib.QTYPE[a.rtype] for a in nodata.auth] == ["SOA"]
    nx = ask_local(r, "to-missing.cdn.example.net")
    assert nx.header.rcode == dnslib.RCODE.NXDOMAIN   # RFC 6604: the rcode of the last name
    assert chain(nx) == [("to-missing.cdn.example.net.", "CNAME", "gone.sub.cdn.example.net.")]
    assert [dnslib.QTYPE[a.rtype] for a in nx.auth] == ["SOA"]


def test_cname_leaving_our_zones_is_answered_alone():
    resp = ask_local(local(chase_config()), "to-outside.cdn.example.net")
    assert chain(resp) == [("to-outside.cdn.example.net.", "CNAME", "www.example.org.")]
    assert not resp.auth and resp.header.rcode == 0


def test_cname_chase_live_with_dig(start_server):
    srv = start_server(chase_config())
    out = srv.dig("hop1.cdn.example.net", "A", "+noall", "+answer")
    records = [line.split() for line in out.splitlines() if line.strip()]
    assert [(r[0], r[3], r[4]) for r in records] == [
        ("hop1.cdn.example.net.", "CNAME", "hop2.cdn.example.net."),
        ("hop2.cdn.example.net.", "CNAME", "to-static.cdn.example.net."),
        ("to-static.cdn.example.net.", "CNAME", "static.cdn.example.net."),
        ("static.cdn.example.net.", "A", "192.0.2.80")]


# --- services next to static records, services without coordinates -----------------------


def test_service_name_also_carries_static_records_of_other_types():
    cfg = load_default()
    records = cfg["zones"]["cdn.example.net."]["records"]
    records["www"] = [{"type": "TXT", "value": "v=spf1 -all"},
                      {"type": "CAA", "value": '0 issue "letsencrypt.org"'}]
    records["*"] = [{"type": "TXT", "value": "wildcard txt"}]
    cfg["services"]["www.cdn.example.net."] = {"pool": ["nyc", "fra", "sin"]}
    r = local(cfg)
    assert [str(x.rdata) for x in ask_local(r, "www.cdn.example.net", "TXT").rr] == \
        ['"v=spf1 -all"']
    assert len(ask_local(r, "www.cdn.example.net", "CAA").rr) == 1
    assert dnslib.QTYPE[ask_local(r, "www.cdn.example.net", "A").rr[0].rtype] == "A"
    assert [str(x.rdata) for x in ask_local(r, "x.shop.com.cdn.example.net", "TXT").rr] == \
        ['"wildcard txt"']
    assert dnslib.QTYPE[ask_local(r, "x.shop.com.cdn.example.net", "AAAA").rr[0].rtype] == "AAAA"


def test_failover_and_weighted_services_need_no_coordinates():
    cfg = load_default()
    cfg["nets"] = {}
    for site in cfg["sites"].values():
        site.pop("lat")
        site.pop("lon")
    cfg["services"] = {"*.cdn.example.net.": {"pool": ["fra", "nyc", "sin"],
                                              "algorithm": "failover"},
                       "w.cdn.example.net.": {"pool": ["sin"], "algorithm": "weighted"}}
    r = local(cfg)
    assert [str(x.rdata) for x in ask_local(r, "a.b.cdn.example.net", "A").rr] == ["127.0.0.12"]
    assert [str(x.rdata) for x in ask_local(r, "w.cdn.example.net", "A").rr] == ["127.0.0.13"]
    cfg["services"]["n.cdn.example.net."] = {"pool": ["fra", "nyc"], "algorithm": "nearest"}
    with pytest.raises(ConfigError) as err:
        local(cfg)
    assert any("nearest" in p and "lat" in p for p in err.value.problems)


def _worker_threads(supervisor: int) -> int:
    """Threads of the supervisor's one worker process."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    assert len(children) == 1, children
    return len(list(Path(f"/proc/{children[0]}/task").iterdir()))


UDP_MODES = {"thread": {}, "thread-no-yield": {"GSLB_UDP_YIELD": "0"},
             "event-loop": {"GSLB_UDP_THREAD": "0"}, "python": {"GSLB_UDP_BATCH": "0"}}


@pytest.mark.parametrize("mode", list(UDP_MODES))
def test_udp_with_and_without_the_recvmmsg_helper(start_server, mode):
    """The compiled helper (gslb._udpbatch) read by a thread per socket (the default),
    from the event loop, and the pure-Python loop answer alike, also for a burst bigger
    than one batch from many sources at once."""
    from gslb import server
    if mode != "python":
        assert server.batching(), "gslb._udpbatch is built by pip install -e ."
    srv = start_server(load_default(checks=False), env=UDP_MODES[mode])
    # two listeners (127.0.0.1 and ::1): a thread each beside the event loop's, by default.
    # The server is ready once 127.0.0.1 answers; ::1's listener starts after it.
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6:
        s6.settimeout(3)
        s6.sendto(make_query("cdn.example.net", "SOA"), ("::1", srv.port))
        assert parse(s6.recv(4096)).header.rcode == 0
    threads = _worker_threads(srv.proc.pid)
    assert threads >= 3 if mode.startswith("thread") else threads < 3, threads
    socks = []
    try:
        for i in range(100):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.{i // 50}.{i % 50 + 1}", 0))
            s.settimeout(3)
            socks.append(s)
        for i, s in enumerate(socks):
            s.sendto(make_query(DEMO_NAME, "A", "192.0.2.0/24", qid=i), ("127.0.0.1", srv.port))
        replies = [parse(s.recv(4096)) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert [r.header.id for r in replies] == list(range(100))
    assert {str(r.rr[0].rdata) for r in replies} == {"127.0.0.11"}
    # Repeats are response-cache hits (answered inside the helper): still counted.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        for i in range(50):
            s.sendto(make_query("cdn.example.net", "TXT", qid=i), ("127.0.0.1", srv.port))
            assert parse(s.recv(4096)).header.id == i
    deadline = time.monotonic() + 5
    counted = 0
    while time.monotonic() < deadline and counted < 50:
        time.sleep(0.3)
        metrics = urllib.request.urlopen(f"{srv.http}/metrics", timeout=5).read().decode()
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("gslb_dns_queries_total") and 'service="zone"' in line
                      and 'rcode="NOERROR"' in line)
    assert counted >= 50
    # a UDP thread waiting in recvmmsg does not hold the worker up when it stops
    started = time.monotonic()
    srv.proc.terminate()
    srv.proc.wait(timeout=10)
    assert time.monotonic() - started < 3
