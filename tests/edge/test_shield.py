"""Origin shield: edges miss through a shield that caches, fall back when it is down,
and a loop between tiers is answered 508, never a storm."""
from __future__ import annotations

import pytest
import yaml

from cdnkit.yamlsrc import load_yaml_text
from edge import config as edge_config
from tests.conftest import free_port
from tests.edge.test_cache import CountingOrigin, fetch
from tests.edge.test_proxy import Edge


def edge_cfg(origin: CountingOrigin, name: str, shields: list[dict], shield=None, **top) -> dict:
    customer = {"directory": "t", "cnames": ["www.test.com"],
                "origin": {"http": [f"127.0.0.81:{origin.port}"]}}
    if shield is not None:
        customer["shield"] = shield
    # A shield trusts the edges' forwarding headers (the edges send from loopback; the
    # test's clients too, so only shields trust it).
    trust = ["127.0.0.1"] if name in [s["name"] for s in shields] else []
    return {"name": name, "via": name, "shields": shields, "customers": [customer],
            "trusted_proxies": trust, **top}


async def test_edges_miss_through_one_shield_that_caches():
    async with CountingOrigin() as origin:
        origin.routes["/v.mp4"] = {"headers": {"Cache-Control": "max-age=60"}}
        sport = free_port()
        shields = [{"name": "shield-a", "address": f"127.0.0.1:{sport}"}]
        async with Edge(edge_cfg(origin, "shield-a", shields, "shield-a"), sport) as shield, \
                Edge(edge_cfg(origin, "e1", shields, "shield-a")) as e1, \
                Edge(edge_cfg(origin, "e2", shields, "shield-a")) as e2:
            s1, b1, h1 = await fetch(e1, "/v.mp4", **{"X-Forwarded-For": "192.0.2.7"})
            s2, b2, h2 = await fetch(e2, "/v.mp4")
            assert (s1, s2) == (200, 200) and b1 == b2 == b"body of /v.mp4 #1"
            assert (h1["X-Cache"], h2["X-Cache"]) == ("MISS", "MISS")   # each edge's own cache
            assert origin.hits["/v.mp4"] == 1                          # the shield absorbed e2's
            assert "shield-a" in h1["Via"] and "e1" in h1["Via"]
            metrics = shield.state.metrics.registry
            assert metrics.get_sample_value("edge_cache_requests_total",
                                            {"customer": "t", "result": "HIT"}) == 1
            assert shield.state.config.customers[0].shields == ()      # a shield goes to origin


async def test_what_reaches_the_origin_through_a_shield():
    async with CountingOrigin() as origin:
        sport = free_port()
        shields = [{"name": "shield-a", "address": f"127.0.0.1:{sport}"}]
        async with Edge(edge_cfg(origin, "shield-a", shields, "shield-a"), sport), \
                Edge(edge_cfg(origin, "e1", shields, "shield-a")) as e1:
            await fetch(e1, "/x", **{"X-Forwarded-For": "192.0.2.7"})
        seen = origin.last_headers["/x"]
    assert seen["Host"] == "www.test.com"
    # e1 replaced the client's chain with the client's address; the shield trusts e1's
    assert seen["X-Forwarded-For"] == "127.0.0.1, 127.0.0.1"
    assert seen["CDN-Loop"] == "e1, shield-a"


async def test_a_dead_shield_falls_back_to_the_next_then_the_origin():
    async with CountingOrigin() as origin:
        dead, alive = free_port(), free_port()
        shields = [{"name": "dead", "address": f"127.0.0.1:{dead}"},
                   {"name": "alive", "address": f"127.0.0.1:{alive}"}]
        async with Edge(edge_cfg(origin, "e1", shields, "dead")) as e1:
            async with Edge(edge_cfg(origin, "alive", shields, "alive"), alive):
                status, body, _ = await fetch(e1, "/a")
                assert (status, body) == (200, b"body of /a #1")
            status, body, _ = await fetch(e1, "/b")        # both shields gone now
            assert (status, body) == (200, b"body of /b #1")
            status, _, _ = await fetch(e1, "/c")
            metric = e1.state.metrics.registry.get_sample_value
            assert metric("edge_shield_requests_total",
                          {"customer": "t", "shield": "dead", "result": "failed"}) == 1
            assert metric("edge_shield_requests_total",     # backing off: not asked again
                          {"customer": "t", "shield": "dead", "result": "skipped"}) == 2
            assert metric("edge_shield_requests_total",
                          {"customer": "t", "shield": "origin", "result": "fallback"}) == 2
            assert origin.hits == {"/a": 1, "/b": 1, "/c": 1}


async def test_a_loop_between_tiers_is_answered_508():
    async with CountingOrigin() as origin:
        pa, pb = free_port(), free_port()
        # Misconfigured: each thinks the other is its shield, neither lists itself.
        a_cfg = edge_cfg(origin, "a", [{"name": "b", "address": f"127.0.0.1:{pb}"}], "b")
        b_cfg = edge_cfg(origin, "b", [{"name": "a", "address": f"127.0.0.1:{pa}"}], "a")
        async with Edge(a_cfg, pa) as a, Edge(b_cfg, pb) as b:
            status, body, _ = await fetch(a, "/loop")
            assert status == 508 and b"loop detected at a" in body
            assert origin.hits == {}
            requests = sum(e.state.metrics.registry.get_sample_value(
                "edge_requests_total", {"customer": "t", "status": "508"}) or 0 for e in (a, b))
            # client -> a -> b -> a (refused): three answers of 508, then it stops; no storm
            assert requests == 3


def test_shield_plans_per_region():
    shields = [{"name": "fra", "address": "10.0.0.1:80", "lat": 50.0, "lon": 8.6},
               {"name": "sin", "address": "10.0.0.2:80", "lat": 1.36, "lon": 104.0},
               {"name": "nyc", "address": "10.0.0.3:80", "lat": 40.7, "lon": -74.0}]
    choice = {"regions": {"eu": "fra", "asia": "blank", "cn": "bypass"}, "default": "nyc"}

    def plan_for(region: str, lat: float, lon: float, name: str = "edge") -> list[str]:
        raw = {"name": name, "region": region, "lat": lat, "lon": lon, "shields": shields,
               "customers": [{"directory": "t", "cnames": ["w.test"], "shield": choice,
                              "origin": {"http": ["10.0.0.9"]}}]}
        cfg = edge_config.build(load_yaml_text(yaml.safe_dump(raw), "e.yaml"), "e.yaml")
        return [s.name for s in cfg.customers[0].shields]

    assert plan_for("eu", 48.9, 2.3) == ["fra", "nyc", "sin"]       # then by distance
    assert plan_for("asia", 35.7, 139.7) == ["sin", "fra", "nyc"]   # blank: nearest first
    assert plan_for("cn", 31.2, 121.5) == []                        # bypass: the origin
    assert plan_for("sa", -23.5, -46.6) == ["nyc", "fra", "sin"]    # default
    assert plan_for("eu", 50.0, 8.6, name="fra") == []              # a shield itself
    with pytest.raises(edge_config.ConfigError) as err:
        edge_config.build(load_yaml_text(yaml.safe_dump(
            {"customers": [{"directory": "t", "cnames": ["w.test"], "shield": "nowhere",
                            "origin": {"http": ["10.0.0.9"]}}]}), "e.yaml"), "e.yaml")
    assert "e.yaml:" in err.value.problems[0] and "nowhere" in err.value.problems[0]
