"""Name compression (RFC 1035 4.1.4): no reply is larger than dnspython's re-encoding.

A real server (UDP and TCP sockets) is asked a broad mix of questions, plain,
with EDNS, with ECS and, on a signed copy of the demo zone, with DO=1. Every
reply must parse, must be no longer than `dns.message.from_wire(reply).to_wire()`
(dnspython compresses owner names and the names inside NS, SOA, CNAME, MX and
PTR rdata against everything written before), and signed replies must still
validate. The demo's own apex replies are also held to fixed sizes.
"""
from __future__ import annotations

import re
import socket
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import pytest
import yaml

from tests.conftest import load_default, recv_framed, udp_query
from tests.gslb.signed import ZONE, check_signed, make_signed

SHOP = "www.shop.com.cdn.example.net."


def extended(cfg: dict) -> dict:
    """The demo config plus static records of every type with names in rdata."""
    records = cfg["zones"][ZONE]["records"]
    records.setdefault("mail", [{"type": "MX", "values": ["10 mx1.cdn.example.net.",
                                                           "20 mx.other.example.org."]}])
    records.setdefault("mx1", [{"type": "A", "value": "192.0.2.25"}])
    records.setdefault("ptr", [{"type": "PTR", "value": "host.cdn.example.net."}])
    records.setdefault("sub", [{"type": "NS", "values": ["ns1.cdn.example.net.",
                                                          "ns.sub.cdn.example.net."]}])
    records.setdefault("to-svc", [{"type": "CNAME", "value": "www.test.com.cdn.example.net."}])
    records.setdefault("away", [{"type": "CNAME", "value": "www.example.org."}])
    records.setdefault("srv", [{"type": "SRV", "value": "0 5 80 mx1.cdn.example.net."}])
    return cfg


QUESTIONS = [
    (ZONE, "SOA"), (ZONE, "NS"), (ZONE, "TXT"), (ZONE, "CAA"), (ZONE, "ANY"),
    (ZONE, "DNSKEY"), (ZONE, "MX"),
    ("ns1.cdn.example.net.", "A"), ("ns1.cdn.example.net.", "AAAA"),
    ("ns2.cdn.example.net.", "A"), ("ns2.cdn.example.net.", "AAAA"),
    ("mail.cdn.example.net.", "MX"), ("ptr.cdn.example.net.", "PTR"),
    ("sub.cdn.example.net.", "NS"), ("srv.cdn.example.net.", "SRV"),
    ("to-svc.cdn.example.net.", "A"), ("to-svc.cdn.example.net.", "AAAA"),
    ("to-svc.cdn.example.net.", "MX"), ("away.cdn.example.net.", "A"),
    ("alias.cdn.example.net.", "A"), ("alias.cdn.example.net.", "AAAA"),
    ("to-static.cdn.example.net.", "A"), ("static.cdn.example.net.", "A"),
    ("www.cdn.example.net.", "A"), ("www.cdn.example.net.", "TXT"),
    (SHOP, "A"), (SHOP, "AAAA"), (SHOP, "MX"), ("WwW.sHoP.CoM.cDn.ExAmPlE.nEt.", "A"),
    ("x.y.z.cdn.example.net.", "A"), ("deep.cdn.example.net.", "A"),
    ("nope.static.cdn.example.net.", "A"), ("nope.ns1.cdn.example.net.", "AAAA"),
    ("www.example.org.", "A"), (ZONE, "AXFR"), (ZONE, "NSEC"),
]
SHAPES = ["plain", "edns", "ecs", "do", "do-ecs"]


def query(name: str, qtype: str, shape: str, payload: int = 1232) -> bytes:
    if shape == "plain":
        q = dns.message.make_query(name, qtype, use_edns=False)
    else:
        options = ([dns.edns.ECSOption.from_text("192.0.2.0/24")] if "ecs" in shape else [])
        q = dns.message.make_query(name, qtype, use_edns=0, payload=payload,
                                   want_dnssec=shape.startswith("do"), options=options)
    q.flags &= ~dns.flags.RD
    return q.to_wire()


def tcp_ask(port: int, wire: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(len(wire).to_bytes(2, "big") + wire)
        return recv_framed(s)


def reencoded(wire: bytes) -> int:
    """The size of the same message written by dnspython (which compresses)."""
    return len(dns.message.from_wire(wire).to_wire())


def check_all(port: int, keys=None) -> dict[tuple[str, str, str, str], int]:
    sizes = {}
    bigger = []
    for name, qtype in QUESTIONS:
        for shape in SHAPES:
            wire = query(name, qtype, shape)
            for transport, out in (("udp", udp_query(port, wire)), ("tcp", tcp_ask(port, wire))):
                assert out is not None, (name, qtype, shape, transport)
                msg = dns.message.from_wire(out)
                if len(out) > reencoded(out):
                    bigger.append(f"{name} {qtype} {shape} {transport}: {len(out)} B, "
                                  f"dnspython {reencoded(out)} B")
                if keys is not None and shape.startswith("do") and msg.rcode() in (0, 3) \
                        and msg.answer + msg.authority and not msg.flags & dns.flags.TC:
                    check_signed(msg, keys)
                sizes[(name, qtype, shape, transport)] = len(out)
    assert not bigger, "\n".join(bigger)
    return sizes


def test_unsigned_replies_are_never_larger_than_dnspythons(start_server):
    server = start_server(extended(load_default()))
    sizes = check_all(server.port)
    # The demo's apex replies, which were 227 B (NS) and 121 B (SOA) uncompressed.
    assert sizes[(ZONE, "NS", "plain", "udp")] <= 161        # Knot's size; dnspython: 140
    assert sizes[(ZONE, "SOA", "plain", "udp")] <= 95
    assert sizes[(ZONE, "NS", "edns", "udp")] <= 161
    # dig reads the same sizes off the wire.
    out = server.dig(ZONE, "NS", "+nocookie")   # a server cookie would add 28 B
    assert "ns1.cdn.example.net." in out and "status: NOERROR" in out
    assert int(re.search(r"MSG SIZE\s+rcvd: (\d+)", out).group(1)) <= 161


@pytest.mark.parametrize("denial", ["compact", "white_lies"])
def test_signed_replies_are_never_larger_and_still_validate(start_server, tmp_path: Path,
                                                          denial):
    path = make_signed(tmp_path, denial=denial)
    server = start_server(extended(yaml.safe_load(path.read_text())))
    keys_msg = dns.message.from_wire(tcp_ask(server.port, query(ZONE, "DNSKEY", "do")))
    keys = keys_msg.find_rrset(keys_msg.answer, dns.name.from_text(ZONE), 1,
                               dns.rdatatype.DNSKEY)
    sizes = check_all(server.port, keys)
    assert sizes[(ZONE, "NS", "plain", "udp")] <= 161
    assert sizes[(ZONE, "NS", "do", "udp")] <= 600           # 728 B uncompressed
    # Truncation still works on compressed replies: the signed apex NS with its glue
    # does not fit 512 B, so UDP says TC and TCP carries all of it, valid.
    udp = udp_query(server.port, query(ZONE, "NS", "do", payload=512))
    assert udp is not None and len(udp) <= 512 and udp[2] & 0x02
    whole = dns.message.from_wire(tcp_ask(server.port, query(ZONE, "NS", "do", payload=512)))
    assert not whole.flags & dns.flags.TC and len(whole.additional) >= 3
    assert check_signed(whole, keys) >= 1
