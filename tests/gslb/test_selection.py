"""Selection: geo + ECS, algorithms, IP-version policies, health, all-down modes."""
from __future__ import annotations

import collections
from pathlib import Path

import dnslib
import pytest
import yaml

from cdnkit.yamlsrc import load_yaml_text
from gslb.config import build_config
from gslb.health import HealthBoard
from gslb.model import AdminState
from gslb.server import TCP_LIMIT, UDP_PLAIN_LIMIT, Responder
from tests.conftest import (
    DATA,
    DEMO_NAME,
    answers,
    dig_short,
    ecs_scope,
    load_default,
    make_query,
    parse,
)

NYC, FRA, SIN = "127.0.0.11", "127.0.0.12", "127.0.0.13"
NYC6, FRA6, SIN6 = "2001:db8:ed9e::11", "2001:db8:ed9e::12", "2001:db8:ed9e::13"


def responder(cfg: dict) -> Responder:
    cfg = dict(cfg)
    cfg["geoip"] = {"database": str(DATA / "demo-city.mmdb")}
    raw = load_yaml_text(yaml.safe_dump(cfg, sort_keys=False), "test.yaml")
    config = build_config(raw, "test.yaml", Path("."))
    r = Responder(config)
    # The server's arrangement: a board owns health and pushes views to the responder.
    r.board = HealthBoard(config)
    r.board.subscribe(r.set_health)
    return r


def ask(r: Responder, name: str = DEMO_NAME, qtype: str = "A", ecs: str | None = None,
        client: str = "10.9.9.9") -> dnslib.DNSRecord:
    out = r.answer(make_query(name, qtype, ecs), client, UDP_PLAIN_LIMIT)
    assert out is not None
    return parse(out)


def service_cfg(**svc) -> dict:
    cfg = load_default()
    base = {"pool": ["nyc", "fra", "sin"], "ttl": 30}
    base.update(svc)
    cfg["services"] = {"*.cdn.example.net.": base}
    cfg["nets"] = {}   # a nets site list would make every algorithm client-dependent
    return cfg


# --- live: dig with +subnet against the demo config --------------------------------------


@pytest.mark.parametrize("subnet,expected", [
    ("192.0.2.0/24", NYC), ("198.51.100.0/24", FRA), ("203.0.113.0/24", SIN),
    ("2001:db8:1::/48", NYC), ("2001:db8:4::/48", FRA), ("2001:db8:5::/48", SIN),
    ("2001:db8:6::/48", NYC), ("2001:db8:7::/48", SIN),
])
def test_dig_subnet_moves_answer_to_nearest_site(demo_server, subnet, expected):
    assert dig_short(demo_server.port, DEMO_NAME, "A", f"+subnet={subnet}") == [expected]


def test_dig_reports_scope_of_geoip_network(demo_server):
    out = demo_server.dig(DEMO_NAME, "A", "+subnet=198.51.100.77/32")
    assert "CLIENT-SUBNET: 198.51.100.77/32/24" in out
    out = demo_server.dig(DEMO_NAME, "A", "+subnet=2001:db8:4:1::/64")
    assert "CLIENT-SUBNET: 2001:db8:4:1::/64/48" in out


def test_static_answers_have_scope_zero(demo_server):
    out = demo_server.dig("cdn.example.net", "TXT", "+subnet=192.0.2.0/24")
    assert "CLIENT-SUBNET: 192.0.2.0/24/0" in out


def test_source_prefix_zero_uses_resolver_address(demo_server):
    out = demo_server.dig(DEMO_NAME, "A", "+subnet=0.0.0.0/0")
    assert "CLIENT-SUBNET: 0.0.0.0/0/0" in out
    # 127.0.0.1 is not in the demo database: pool order, nyc first
    assert f"\t{NYC}" in out


def test_without_ecs_the_resolver_address_decides(start_server):
    cfg = load_default()
    cfg["nets"] = {"127.0.0.0/8": {"location": {"lat": 1.3, "lon": 103.8, "city": "Lab"}}}
    srv = start_server(cfg)
    assert dig_short(srv.port, DEMO_NAME, "A") == [SIN]


# --- in-process: Responder.answer, the server's own function ------------------------------


def test_nets_beat_geoip_longest_prefix_wins():
    cfg = service_cfg()
    cfg["nets"] = {"192.0.2.0/24": {"sites": ["fra"]},
                   "192.0.2.128/25": {"location": {"lat": 1.29, "lon": 103.85}}}
    r = responder(cfg)
    low = ask(r, ecs="192.0.2.0/25")
    high = ask(r, ecs="192.0.2.128/25")
    assert answers(low) == [FRA] and ecs_scope(low) == 25
    assert answers(high) == [SIN] and ecs_scope(high) == 25


def test_geoip_scope_narrows_around_a_more_specific_override():
    cfg = service_cfg()
    cfg["nets"] = {"192.0.2.192/26": {"sites": ["sin"]}}
    r = responder(cfg)
    # 192.0.2.0 is in the GeoIP /24 (New York) but the /24 also holds the /26
    # override, so the answer may only be cached for a network that excludes it.
    resp = ask(r, ecs="192.0.2.0/24")
    assert answers(resp) == [NYC] and ecs_scope(resp) == 25
    resp = ask(r, ecs="192.0.2.128/26")
    assert answers(resp) == [NYC] and ecs_scope(resp) == 26
    assert answers(ask(r, ecs="192.0.2.192/26")) == [SIN]


def test_failover_uses_pool_order_and_scope_zero():
    r = responder(service_cfg(algorithm="failover", pool=["sin", "nyc", "fra"]))
    for subnet in ("192.0.2.0/24", "198.51.100.0/24"):
        resp = ask(r, ecs=subnet)
        assert answers(resp) == [SIN] and ecs_scope(resp) == 0
    r.board.set_site("sin", AdminState.DOWN)
    assert answers(ask(r, ecs="192.0.2.0/24")) == [NYC]
    # A nets entry with its own site order makes the answer client-specific.
    cfg = service_cfg(algorithm="failover", pool=["sin", "nyc", "fra"])
    cfg["nets"] = {"192.0.2.0/24": {"sites": ["fra"]}}
    resp = ask(responder(cfg), ecs="192.0.2.0/24")
    assert answers(resp) == [FRA] and ecs_scope(resp) == 24


def test_weighted_distribution_follows_weights():
    cfg = service_cfg(algorithm="weighted")
    cfg["sites"]["nyc"]["weight"] = 3
    cfg["sites"]["fra"]["weight"] = 1
    cfg["sites"]["sin"]["weight"] = 0
    r = responder(cfg)
    seen = collections.Counter(answers(ask(r, ecs="203.0.113.0/24"))[0] for _ in range(400))
    assert set(seen) == {NYC, FRA}
    assert 2.5 <= seen[NYC] / seen[FRA] <= 3.5
    r.board.set_site("nyc", AdminState.DOWN)
    assert {answers(ask(r))[0] for _ in range(20)} == {FRA}


def test_answers_n_rotates_within_the_site():
    cfg = service_cfg(answers=2)
    cfg["sites"]["fra"]["addresses"] = ["127.0.0.12", "127.0.0.22", "127.0.0.32",
                                        "2001:db8:ed9e::12"]
    r = responder(cfg)
    seen = set()
    for _ in range(6):
        resp = ask(r, ecs="198.51.100.0/24")
        got = [str(rr.rdata) for rr in resp.rr]
        assert len(got) == 2 and set(got) <= {"127.0.0.12", "127.0.0.22", "127.0.0.32"}
        seen.add(got[0])
    assert seen == {"127.0.0.12", "127.0.0.22", "127.0.0.32"}


def test_health_down_moves_to_next_nearest_and_back():
    r = responder(service_cfg())
    assert answers(ask(r, ecs="198.51.100.0/24")) == [FRA]
    r.board.set_site("fra", AdminState.DOWN)
    assert answers(ask(r, ecs="198.51.100.0/24")) == [NYC]      # next nearest to Frankfurt
    r.board.set_site("fra", None)
    assert answers(ask(r, ecs="198.51.100.0/24")) == [FRA]
    r.board.set_address(FRA, AdminState.DRAIN)
    assert answers(ask(r, ecs="198.51.100.0/24")) == [NYC]


def test_config_states_down_and_drain(start_server):
    cfg = load_default()
    cfg["sites"]["fra"]["state"] = "drain"
    cfg["sites"]["nyc"]["addresses"] = [{"address": "127.0.0.11", "state": "down"},
                                        "2001:db8:ed9e::11"]
    srv = start_server(cfg)
    assert dig_short(srv.port, DEMO_NAME, "A", "+subnet=198.51.100.0/24") == [SIN]
    assert dig_short(srv.port, DEMO_NAME, "A", "+subnet=192.0.2.0/24") == [SIN]


@pytest.mark.parametrize("policy,a,aaaa", [
    ("default", [FRA], []), ("v4_only", [FRA], []), ("v6_only", [], [FRA6]),
    ("v4_preferred", [FRA], [FRA6]), ("v6_preferred", [FRA], [FRA6]),
])
def test_ip_version_policies(policy, a, aaaa):
    r = responder(service_cfg(ip_version=policy))
    ra = ask(r, ecs="198.51.100.0/24")
    r6 = ask(r, qtype="AAAA",
             ecs="198.51.100.0/24")
    assert answers(ra) == a and answers(r6) == aaaa
    for resp, want in ((ra, a), (r6, aaaa)):
        assert resp.header.rcode == dnslib.RCODE.NOERROR
        if not want:
            assert [dnslib.QTYPE[x.rtype] for x in resp.auth] == ["SOA"]   # NODATA


def test_v4_preferred_keeps_dual_stack_clients_on_one_site():
    r = responder(service_cfg(ip_version="v4_preferred"))
    # Frankfurt's IPv6 address is down but its IPv4 is fine: IPv4 still picks fra,
    # so AAAA must not send the same client to fra's v6 (down) ...
    r.board.set_address(FRA6, AdminState.DOWN)
    assert answers(ask(r, ecs="198.51.100.0/24")) == [FRA]
    # ... and with fra lacking usable v6, AAAA picks on its own: the next nearest.
    assert answers(ask(r, qtype="AAAA", ecs="198.51.100.0/24")) == [NYC6]
    # Frankfurt's IPv4 down: IPv4 moves to nyc, and IPv6 follows IPv4 to nyc
    # even though fra's IPv6 is back up.
    r.board.set_address(FRA6, None)
    r.board.set_address(FRA, AdminState.DOWN)
    assert answers(ask(r, ecs="198.51.100.0/24")) == [NYC]
    assert answers(ask(r, qtype="AAAA", ecs="198.51.100.0/24")) == [NYC6]


def test_v6_preferred_falls_back_when_no_v6_is_healthy():
    r = responder(service_cfg(ip_version="v6_preferred"))
    for ip in (NYC6, FRA6, SIN6):
        r.board.set_address(ip, AdminState.DOWN)
    # No usable IPv6 anywhere: IPv4 picks on its own (nearest), not the v6 anchor.
    assert answers(ask(r, ecs="203.0.113.0/24")) == [SIN]


@pytest.mark.parametrize("mode,expect_a", [
    ("serve_all", [FRA]), ("fallback", ["192.0.2.250"]), ("serve_none", []),
])
def test_all_down_modes(mode, expect_a):
    svc = {"all_down": mode}
    if mode == "fallback":
        svc["fallback"] = ["192.0.2.250"]
    r = responder(service_cfg(**svc))
    for site in ("nyc", "fra", "sin"):
        r.board.set_site(site, AdminState.DOWN)
    resp = ask(r, ecs="198.51.100.0/24")
    assert answers(resp) == expect_a
    if mode == "serve_none":
        assert resp.header.rcode == dnslib.RCODE.NOERROR
        assert resp.auth[0].ttl <= 30    # short negative TTL
    if mode == "fallback":
        assert answers(ask(r, qtype="AAAA", ecs="198.51.100.0/24")) == []


def test_answer_table_is_rebuilt_on_health_change_not_per_query():
    r = responder(service_cfg())
    ask(r, ecs="198.51.100.0/24")
    table = r.table
    for _ in range(5):
        ask(r, ecs="198.51.100.0/24")
    assert r.table is table                  # queries never rebuild
    r.board.set_site("fra", AdminState.DOWN)
    assert r.table is not table              # a change does, eagerly:
    assert len(r.table.dynamic) == len(table.dynamic)


def test_tcp_and_udp_agree():
    r = responder(service_cfg())
    q = make_query(DEMO_NAME, "A", "203.0.113.0/24", qid=7)
    assert r.answer(q, "10.0.0.1", UDP_PLAIN_LIMIT) == r.answer(q, "10.0.0.1", TCP_LIMIT)
