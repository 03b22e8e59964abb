"""DNS semantics of an authoritative server (DESIGN.md 3), against a running server."""
from __future__ import annotations

import socket
import struct
import time

import dnslib
import pytest

from tests.conftest import DEMO_NAME, load_default, make_query, parse, recv_framed, tcp_exchange


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
