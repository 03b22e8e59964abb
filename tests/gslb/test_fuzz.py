"""Bad input: fuzzed, truncated and crafted packets never raise, never hang."""
from __future__ import annotations

import random
import socket
import struct
import time

import dnslib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gslb.config import load_config
from gslb.server import TCP_LIMIT, UDP_PLAIN_LIMIT, Responder
from tests.conftest import DEFAULT_CONFIG, DEMO_NAME, make_query, parse, recv_framed
from tests.gslb.signed import do_query, make_signed

RESPONDER = Responder(load_config(DEFAULT_CONFIG))
SEEDS = [make_query(DEMO_NAME, "A", "192.0.2.0/24"), make_query(DEMO_NAME, "AAAA"),
         make_query("cdn.example.net", "NS", edns=False), make_query("x.example.org", "A")]


def check(wire: bytes) -> bytes | None:
    """The handler's contract: bytes or None, never an exception; ID echoed."""
    for limit in (UDP_PLAIN_LIMIT, TCP_LIMIT):
        out = RESPONDER.answer(wire, "192.0.2.1", limit)
        if out is not None:
            assert len(out) >= 12 and out[:2] == wire[:2] and out[2] & 0x80
            if limit == UDP_PLAIN_LIMIT:
                assert len(out) <= 1232
    return out


def rcode(out: bytes) -> int:
    return out[3] & 0x0F


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=600))
def test_random_bytes(wire):
    check(wire)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                        max_size=8))
def test_mutated_real_queries(seed, flips):
    wire = bytearray(seed)
    for pos, value in flips:
        wire[pos % len(wire)] = value
    check(bytes(wire))


SIGNED_SEEDS = [do_query("www.shop.com.cdn.example.net.", "A", "192.0.2.0/24", co=True),
                do_query("nope.ns1.cdn.example.net.", "AAAA"),
                do_query("alias.cdn.example.net.", "A"), do_query("cdn.example.net.", "DNSKEY")]


@pytest.fixture(scope="module")
def signed_responder(tmp_path_factory) -> Responder:
    return Responder(load_config(make_signed(tmp_path_factory.mktemp("fuzz"))))


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(SIGNED_SEEDS),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
def test_mutated_dnssec_queries_to_a_signed_zone(signed_responder, seed, flips):
    """DO/CO queries, bit-flipped: bytes or None, never an exception, never over 1232 on UDP."""
    wire = bytearray(seed)
    for pos, value in flips:
        wire[pos % len(wire)] = value
    for limit in (UDP_PLAIN_LIMIT, TCP_LIMIT):
        out = signed_responder.answer(bytes(wire), "192.0.2.1", limit)
        if out is not None:
            assert len(out) >= 12 and out[:2] == wire[:2] and out[2] & 0x80
            assert limit == TCP_LIMIT or len(out) <= 1232


def test_every_truncation_of_real_queries():
    for seed in SEEDS:
        for cut in range(len(seed)):
            out = check(seed[:cut])
            if cut < 12:
                assert out is None


def header(qd=1, an=0, ns=0, ar=0, flags=0) -> bytes:
    return struct.pack("!HHHHHH", 0x4242, flags, qd, an, ns, ar)


QNAME = b"\x03www\x03cdn\x07example\x03net\x00"
QUESTION = QNAME + b"\x00\x01\x00\x01"
OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00"


def opt_with(options: bytes) -> bytes:
    return OPT + struct.pack("!H", len(options)) + options


def ecs(family: int, source: int, address: bytes, scope: int = 0) -> bytes:
    data = struct.pack("!HBB", family, source, scope) + address
    return struct.pack("!HH", 8, len(data)) + data


def test_pointer_loop_in_answer_section_is_formerr():
    wire = header(an=1) + QUESTION + b"\xc0\x1d" + b"\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00"
    loop = header(an=1) + QUESTION
    loop += bytes([0xC0, len(loop)]) + b"\x00\x01\x00\x01" + b"\x00" * 6   # points at itself
    assert rcode(check(wire)) == 1
    assert rcode(check(loop)) == 1


def test_pointer_in_question_and_huge_label_count():
    assert rcode(check(header() + b"\xc0\x0c\x00\x01\x00\x01")) == 1
    many = header() + b"\x01a" * 200 + b"\x00\x00\x01\x00\x01"     # 401 octets > 255
    assert rcode(check(many)) == 1
    long_label = header() + bytes([64]) + b"a" * 64 + b"\x00\x00\x01\x00\x01"
    assert rcode(check(long_label)) == 1


def test_opt_in_wrong_section_and_two_opts():
    wrong = header(an=1) + QUESTION + opt_with(b"")
    assert rcode(check(wrong)) == 1
    two = header(ar=2) + QUESTION + opt_with(b"") + opt_with(b"")
    assert rcode(check(two)) == 1
    not_root = header(ar=1) + QUESTION + b"\x01a" + opt_with(b"")[1:]
    assert rcode(check(not_root)) == 1


def test_malformed_ecs_is_formerr():
    cases = [
        ecs(1, 33, b"\xc0\x00\x02\x00\x00"),            # prefix longer than IPv4
        ecs(1, 24, b"\xc0\x00\x02\x07"),                # address longer than prefix
        ecs(1, 20, b"\xc0\x00\x0f"),                    # bits set past /20
        ecs(3, 24, b"\xc0\x00\x02"),                    # unknown family
        ecs(2, 129, b"\x20" + b"\x00" * 16),            # prefix longer than IPv6
        struct.pack("!HH", 8, 2) + b"\x00\x01",         # too short
        ecs(1, 24, b"\xc0\x00\x02") * 2,                # two ECS options
    ]
    for option in cases:
        out = check(header(ar=1) + QUESTION + opt_with(option))
        assert out is not None and rcode(out) == 1, option.hex()
    ok = check(header(ar=1) + QUESTION + opt_with(ecs(1, 24, b"\xc0\x00\x02")))
    assert rcode(ok) == 0


def test_option_running_past_opt_is_formerr():
    bad = header(ar=1) + QUESTION + OPT + b"\x00\x08" + b"\x00\x08\x00\x10\x00\x04"
    assert rcode(check(bad)) == 1


def test_live_server_survives_a_barrage(demo_server):
    rng = random.Random(7)
    sent = 0
    deadline = time.monotonic() + 10
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        while sent < 20_000 and time.monotonic() < deadline:
            seed = bytearray(rng.choice(SEEDS))
            for _ in range(rng.randint(0, 4)):
                seed[rng.randrange(len(seed))] = rng.randrange(256)
            if rng.random() < 0.2:
                seed = seed[:rng.randrange(len(seed))]
            try:
                s.sendto(bytes(seed), ("127.0.0.1", demo_server.port))
            except BlockingIOError:
                time.sleep(0.001)
            sent += 1
            if sent % 500 == 0:
                time.sleep(0.01)    # let the server breathe: this is about content, not load
    # garbage over TCP too: a bad length prefix, then a half message, then close
    for junk in (b"\x00", b"\x00\x05ab", b"\xff\xff" + b"x" * 100):
        with socket.create_connection(("127.0.0.1", demo_server.port), timeout=3) as t:
            t.sendall(junk)
    with socket.create_connection(("127.0.0.1", demo_server.port), timeout=3) as t:
        bad = header(qd=2) + QUESTION
        t.sendall(len(bad).to_bytes(2, "big") + bad)
        assert rcode(recv_framed(t)) == 1
    resp = demo_server.ask(DEMO_NAME, "A", ecs="198.51.100.0/24")
    assert [str(r.rdata) for r in resp.rr] == ["127.0.0.12"]
    assert demo_server.proc.poll() is None
    assert "Traceback" not in demo_server.logtext()


def test_dnslib_agrees_our_replies_parse():
    for seed in SEEDS:
        out = check(seed)
        assert parse(out).header.id == dnslib.DNSRecord.parse(seed).header.id
