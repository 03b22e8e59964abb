"""The fleet's combined health: quorum of observers, leases, drains, load, store away."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from cdnkit.nodes import Node
from cdnkit.yamlsrc import load_yaml_text
from gslb import shed
from gslb.config import build_config
from gslb.fleet.health import FleetHealth
from gslb.health import AddressHealth, HealthView, State, Target
from gslb.fleet.quorum import combine, needed
from tests.conftest import DATA, load_default

FRA, FRA6, NYC = "127.0.0.12", "2001:db8:ed9e::12", "127.0.0.11"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(**health):
    cfg = load_default(checks=True)
    cfg["health"] = {"state_file": None, **health}
    cfg["geoip"] = {"database": str(DATA / "demo-city.mmdb")}
    cfg["sites"]["fra"]["capacity"] = {"requests": 100}
    cfg["sites"]["fra"]["shed_low"], cfg["sites"]["fra"]["shed_high"] = 0.5, 1.0
    raw = load_yaml_text(yaml.safe_dump(cfg, sort_keys=False), "t.yaml")
    return build_config(raw, "t.yaml", Path("."))


def local(cfg, state: State = State.UP, **by_ip) -> HealthView:
    out = {}
    for site in cfg.sites.values():
        for a in site.addresses:
            s = by_ip.get(a.ip, state)
            out[a.ip] = AddressHealth(site.name, s, f"here: {s.value}", 0.0, s, check="edge")
    return HealthView(out)


def nameserver(name: str, **verdicts) -> Node:
    return Node(name, "nameserver", 0, verdicts={ip: v for ip, v in verdicts.items()})


def edge(name: str, *addresses: str, **extra) -> Node:
    return Node(name, "edge", 0, addresses=addresses, **extra)


def fleet(cfg, **health) -> tuple[FleetHealth, Clock, list[HealthView]]:
    clock = Clock()
    fh = FleetHealth("ns1", cfg, clock)
    seen: list[HealthView] = []
    fh.subscribe(seen.append)
    fh.set_store(True)
    return fh, clock, seen


def test_quorum_needs_a_majority_of_the_observers_with_a_verdict():
    assert [needed(0, n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert [needed(2, n) for n in (1, 2, 3)] == [1, 2, 2]
    assert combine({"a": "down", "b": "up"}, 0, "a", "x").state is State.UP
    assert combine({"a": "down", "b": "down"}, 0, "a", "x").state is State.DOWN
    assert combine({"a": "down", "b": "unknown"}, 0, "a", "x").state is State.DOWN
    three = {"a": "down", "b": "down", "c": "up"}
    assert combine(three, 0, "c", "x").state is State.DOWN
    assert combine(three, 3, "c", "x").state is State.UP


def test_one_observer_cut_off_does_not_take_an_edge_down_two_do():
    cfg = config()
    fh, _, _ = fleet(cfg)
    fh.set_local(local(cfg, **{FRA: State.DOWN}))        # this one cannot reach fra
    fh.set_nodes({"ns2": nameserver("ns2", **{FRA: "up"})})
    assert fh.view.state(FRA) is State.UP
    assert "only 1 of 2 observers see it down (ns1; quorum 2)" in fh.view.addresses[FRA].reason
    fh.set_nodes({"ns2": nameserver("ns2", **{FRA: "down"})})
    assert fh.view.state(FRA) is State.DOWN
    assert "down for 2 of 2 observers" in fh.view.addresses[FRA].reason
    assert fh.observers(FRA) == {"ns1": "down", "ns2": "down"}
    # the other one sees it down but this one does not: still up
    fh.set_local(local(cfg))
    assert fh.view.state(FRA) is State.UP


def test_the_store_away_means_own_probes_only():
    cfg = config()
    fh, _, _ = fleet(cfg)
    fh.set_local(local(cfg, **{FRA: State.DOWN}))
    fh.set_nodes({"ns2": nameserver("ns2", **{FRA: "up"})})
    assert fh.view.state(FRA) is State.UP
    fh.set_store(False)
    assert fh.view.state(FRA) is State.DOWN
    assert fh.status()["source"].startswith("local probes only")
    assert fh.observers(FRA) == {"ns1": "down"}


def test_a_lost_lease_takes_the_edge_out_until_probes_pass_again():
    cfg = config()
    fh, clock, seen = fleet(cfg)
    fh.set_local(local(cfg))
    fh.set_nodes({"e": edge("edge-fra", FRA)})
    assert fh.view.usable(FRA)
    clock.now += 1
    fh.set_nodes({})                                       # the record expired
    assert fh.view.state(FRA) is State.DOWN
    assert "lease of edge edge-fra lost" in fh.view.addresses[FRA].reason
    fh.set_nodes({"e": edge("edge-fra", FRA)})            # back, but not yet probed
    assert fh.view.state(FRA) is State.DOWN
    assert "waiting for probes" in fh.view.addresses[FRA].reason
    spec = cfg.checks["edge"]
    target = Target(FRA, "fra", spec, FRA, spec.port)
    for _ in range(spec.rise - 1):
        fh.on_result(target, True, 0.001)
    assert fh.view.state(FRA) is State.DOWN
    fh.on_result(target, True, 0.001)
    assert fh.view.state(FRA) is State.UP
    # the store going away takes nothing down by itself
    fh.set_store(False)
    fh.set_nodes({"e": edge("edge-fra", FRA)})
    assert fh.view.state(FRA) is State.UP


def test_a_drain_in_the_store_and_the_edges_own_draining():
    cfg = config()
    fh, _, _ = fleet(cfg)
    fh.set_local(local(cfg))
    fh.set_nodes({"e": edge("edge-fra", FRA)}, {"edge-fra": {"by": "ops"}})
    assert fh.view.state(FRA) is State.DRAIN
    assert fh.view.addresses[FRA].reason == "edge edge-fra drained in the store by ops"
    fh.set_nodes({"e": edge("edge-fra", FRA, state="draining")}, {})
    assert fh.view.state(FRA) is State.DRAIN
    fh.set_nodes({"e": edge("edge-fra", FRA, state="degraded", origins={"o1": {}})}, {})
    assert fh.view.state(FRA) is State.UP
    assert "reports degraded (o1 backing off)" in fh.view.addresses[FRA].reason


def test_load_past_the_watermark_sheds_and_only_then_rebuilds():
    cfg = config()
    fh, clock, seen = fleet(cfg)
    fh.set_local(local(cfg))
    fh.set_nodes({"e": edge("edge-fra", FRA, load={"requests": 40.0})})
    published = len(seen)
    for _ in range(5):                                     # steady, under the watermark
        clock.now += 1
        fh.set_nodes({"e": edge("edge-fra", FRA, load={"requests": 41.0})})
    assert len(seen) == published and not fh.view.shed     # nothing to rebuild
    clock.now += 1
    fh.set_nodes({"e": edge("edge-fra", FRA, load={"requests": 300.0})})
    assert fh.view.shed == {FRA: shed.STEPS, FRA6: shed.STEPS}     # the whole site
    assert len(seen) == published + 1
    assert "requests" in fh.view.shed_notes["fra"] and "of capacity" in fh.view.shed_notes["fra"]
    assert fh.history[-1].what == "site fra" and fh.history[-1].new == shed.STEPS
    # the load ends; the level comes down after the hold, not before
    for _ in range(5):
        clock.now += 1
        fh.set_nodes({"e": edge("edge-fra", FRA, load={"requests": 0.0})})
    assert fh.view.shed == {FRA: shed.STEPS, FRA6: shed.STEPS}
    for _ in range(12):
        clock.now += 1
        fh.tick()
        fh.set_nodes({"e": edge("edge-fra", FRA, load={"requests": 0.0})})
    assert fh.view.shed == {}


def test_an_edge_capacity_sheds_that_edge_only():
    cfg = config()
    cfg = replace(cfg, sites={**cfg.sites, "fra": replace(cfg.sites["fra"], capacity=None)})
    fh, clock, _ = fleet(cfg)
    fh.set_local(local(cfg))
    fh.set_nodes({"a": edge("edge-a", FRA, load={"connections": 90.0},
                            capacity={"connections": 100}),
                  "b": edge("edge-b", FRA6, load={"connections": 10.0},
                            capacity={"connections": 100})})
    # edge-a at 90 % with watermarks 50..100 %: 80 % of the networks go elsewhere; the
    # site as a whole (its edges' capacities added) is at 50 %: no site-wide shedding
    assert fh.view.shed == {FRA: 16}
    assert "edge edge-a: load 90% of capacity" in fh.view.shed_notes["fra"]
