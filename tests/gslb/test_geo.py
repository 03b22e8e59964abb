"""GeoIP + nets location, ECS scopes, and the no-disagreement property."""
from __future__ import annotations

import ipaddress

import geoip2.database
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from gslb.geo import Locator, open_database
from gslb.model import Location, NetOverride
from tests.conftest import DATA, answers, ecs_scope, load_default
from tests.gslb.test_selection import ask, responder

DEMO_DB = str(DATA / "demo-city.mmdb")


def test_demo_database_is_a_real_geoip2_city_file():
    with geoip2.database.Reader(DEMO_DB) as reader:
        city = reader.city("198.51.100.9")
        assert city.city.name == "Frankfurt" and city.country.iso_code == "DE"
        assert str(city.traits.network) == "198.51.100.0/24"
        assert reader.city("2001:db8:3::1").city.name == "Singapore"


def test_build_script_reproduces_the_database(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "rebuilt.mmdb"
    subprocess.run([sys.executable, str(DATA / "build_demo_geo.py"), str(DATA / "demo-geo.csv"),
                    str(out)], check=True, capture_output=True, timeout=60)
    loc = Locator(open_database(str(out)), [])
    d = loc.locate(ipaddress.ip_address("203.0.113.50"))
    assert d.location.city == "Singapore" and str(d.network) == "203.0.113.0/24"


def test_country_database_places_clients_at_their_continent(tmp_path):
    db = tmp_path / "country.mmdb"
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country",
                   languages=["en"], description="test")
    w.insert_network(IPSet(["100.64.0.0/16"]), {"country": {"iso_code": "DE"},
                                                "continent": {"code": "EU"}})
    w.to_db_file(str(db))
    loc = Locator(open_database(str(db)), [])
    d = loc.locate(ipaddress.ip_address("100.64.1.1"))
    assert d.source == "geoip" and d.location.country == "DE" and d.location.has_coords
    assert str(d.network) == "100.64.0.0/16"
    assert loc.locate(ipaddress.ip_address("100.65.0.1")).location is None


def test_nets_longest_prefix_and_scope_narrowing():
    nets = [NetOverride(ipaddress.ip_network("192.0.2.0/24"), sites=("fra",)),
            NetOverride(ipaddress.ip_network("192.0.2.64/26"),
                        location=Location(1.0, 2.0, "X")),
            NetOverride(ipaddress.ip_network("2001:db8:1:8000::/49"), sites=("sin",))]
    loc = Locator(open_database(DEMO_DB), nets)
    assert loc.locate(ipaddress.ip_address("192.0.2.70")).location.city == "X"
    outer = loc.locate(ipaddress.ip_address("192.0.2.1"))
    assert outer.sites == ("fra",) and str(outer.network) == "192.0.2.0/26"
    outer = loc.locate(ipaddress.ip_address("192.0.2.200"))
    assert str(outer.network) == "192.0.2.128/25"
    geo = loc.locate(ipaddress.ip_address("2001:db8:1::1"))
    assert geo.source == "geoip" and str(geo.network) == "2001:db8:1::/49"


def test_ipv4_mapped_ipv6_is_located_as_ipv4():
    loc = Locator(open_database(DEMO_DB), [])
    d = loc.locate(ipaddress.ip_address("::ffff:192.0.2.5"))
    assert d.location.city == "New York"


TRICKY_NETS = {
    "192.0.2.128/25": {"sites": ["sin"]},
    "192.0.2.192/27": {"location": {"lat": 50.1, "lon": 8.7}},
    "198.51.100.0/23": {"sites": ["nyc"]},
    "198.51.100.64/26": {"location": {"lat": 1.3, "lon": 103.8}},
    "10.0.0.0/8": {"location": {"lat": 1.3, "lon": 103.8}},
    "10.20.0.0/16": {"sites": ["fra"]},
}
RESPONDER = None


def tricky():
    global RESPONDER
    if RESPONDER is None:
        cfg = load_default()
        cfg["nets"] = TRICKY_NETS
        RESPONDER = responder(cfg)
    return RESPONDER


# Addresses drawn around the edges of every network that matters (GeoIP
# networks and nets overrides), with source prefixes on both sides of them.
BASES = [int(ipaddress.ip_network(n).network_address) for n in
         list(TRICKY_NETS) + ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]]
ADDRS = st.builds(lambda base, offset: (base + offset) % 2**32,
                  st.sampled_from(BASES), st.integers(-300, 300))
SOURCES = st.one_of(st.sampled_from([8, 16, 22, 23, 24, 25, 26, 27, 28, 32]), st.integers(8, 32))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(ADDRS, SOURCES), min_size=2, max_size=25))
def test_overlapping_scopes_never_disagree(queries):
    r = tricky()
    seen = []
    for value, source in queries:
        net = ipaddress.ip_network((value, source), strict=False)
        resp = ask(r, ecs=str(net))
        scope = ecs_scope(resp)
        assert scope is not None
        cached_for = ipaddress.ip_network((int(net.network_address), scope), strict=False)
        seen.append((cached_for, tuple(answers(resp))))
    for a_net, a_ans in seen:
        for b_net, b_ans in seen:
            if a_net.subnet_of(b_net) or b_net.subnet_of(a_net):
                assert a_ans == b_ans, (a_net, a_ans, b_net, b_ans)


def test_scope_zero_when_the_pool_has_one_site():
    cfg = load_default()
    cfg["services"] = {"*.cdn.example.net.": {"pool": ["fra"]}}
    cfg["sites"] = {"fra": cfg["sites"]["fra"]}
    cfg["nets"] = {}
    resp = ask(responder(cfg), ecs="192.0.2.0/24")
    assert answers(resp) == ["127.0.0.12"] and ecs_scope(resp) == 0
