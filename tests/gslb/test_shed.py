"""Load-aware answers: shed levels with hysteresis, and answers that shed by client network."""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import yaml

from cdnkit.check import ConfigError
from cdnkit.yamlsrc import load_yaml_text
from gslb import shed
from gslb.config import build_config
from gslb.health import HealthBoard
from gslb.server import UDP_PLAIN_LIMIT, Responder
from tests.conftest import DATA, answers, ecs_scope, load_default, make_query, parse

FRA, SIN, NYC = "127.0.0.12", "127.0.0.13", "127.0.0.11"
NETS = [f"10.{i // 256}.{i % 256}.0/24" for i in range(200)]   # 200 client networks at Frankfurt


def config(**site_extra):
    cfg = load_default(checks=False)
    cfg["geoip"] = {"database": str(DATA / "demo-city.mmdb")}
    cfg["health"] = {"state_file": None}
    cfg["nets"] = {net: {"location": {"lat": 50.1, "lon": 8.7}} for net in NETS}
    cfg["sites"]["fra"].update(site_extra)
    raw = load_yaml_text(yaml.safe_dump(cfg, sort_keys=False), "t.yaml")
    return build_config(raw, "t.yaml", Path("."))


def marks(**kw) -> shed.Watermarks:
    return shed.Watermarks(**{"low": 0.8, "high": 1.0, "band": 0.05, "hold": 10.0, **kw})


def test_level_rises_at_once_and_falls_only_after_the_hold():
    ctl = shed.Controller(marks())
    assert not ctl.update(0.5, 0) and ctl.level == 0
    assert ctl.update(0.9, 1) and ctl.level == 10          # half way: at the first report
    assert ctl.update(1.2, 2) and ctl.level == shed.STEPS  # past high: everyone elsewhere
    t, levels = 3, []
    while ctl.level and t < 30:                            # the load is gone
        ctl.update(0.0, t)
        levels.append((t, ctl.level))
        t += 1
    # held for hold seconds once the (smoothed) load is low enough, then down at once
    assert levels[-1][1] == 0 and levels[-2][1] == shed.STEPS, levels
    assert 13 <= levels[-1][0] <= 16, levels


def test_a_load_hovering_at_the_watermark_moves_no_answer_back_and_forth():
    ctl = shed.Controller(marks())
    rng = random.Random(7)
    changes = []
    for t in range(900):                                    # 15 minutes, one sample a second
        if ctl.update(0.8 + rng.uniform(-0.04, 0.04), t):  # +-4 % around shed_low
            changes.append((t, ctl.level))
    # it sheds a few steps as the noise peaks, never more than the peak asks for,
    # and never comes back down: no answer moves back and forth
    assert changes and all(b[1] > a[1] for a, b in zip(changes, changes[1:])), changes
    assert changes[-1][1] <= shed.target(0.84, marks()), changes


def test_smoothing_weighs_time_not_how_often_a_site_is_fed():
    once, thrice = shed.Controller(marks()), shed.Controller(marks())
    for ctl in (once, thrice):
        ctl.update(0.0, 0)
    once.update(1.0, 1)
    for _ in range(3):                         # three edges of one site reporting at t=1
        thrice.update(1.0, 1)
    assert once.used == thrice.used == 0.5


def test_level_steps_follow_the_load_between_the_watermarks():
    m = marks(low=0.5, high=0.9)
    assert [shed.target(u, m) for u in (0.4, 0.5, 0.51, 0.7, 0.89, 0.9, 3)] == \
        [0, 0, 1, 10, 20, 20, 20]


def test_buckets_are_stable_and_spread():
    import ipaddress
    nets = [ipaddress.ip_network(n) for n in NETS]
    first = [shed.bucket(n) for n in nets]
    assert first == [shed.bucket(n) for n in nets]
    counts = [first.count(b) for b in range(shed.STEPS)]
    assert min(counts) >= 3, counts           # every bucket has networks


def ask_all(r: Responder) -> dict[str, tuple[list[str], int]]:
    out = {}
    for net in NETS:
        resp = parse(r.answer(make_query("www.test.com.cdn.example.net", "A", ecs=net),
                              "10.200.0.1", UDP_PLAIN_LIMIT))
        out[net] = (answers(resp), ecs_scope(resp))
    return out


def test_a_shedding_site_sends_a_share_of_its_networks_to_the_next_one():
    cfg = config()
    board = HealthBoard(cfg)
    r = Responder(cfg, board.view)
    before = ask_all(r)
    assert {tuple(a) for a, _ in before.values()} == {(FRA,)}
    previous: list[str] = []
    for level in (5, 10, shed.STEPS):
        view = replace(board.view, shed={FRA: level, "2001:db8:ed9e::12": level},
                       shed_notes={"fra": "site fra: load 90% of capacity"})
        r.set_health(view)
        now = ask_all(r)
        moved = [n for n, (a, _) in now.items() if a != [FRA]]
        share = len(moved) / len(NETS)
        assert abs(share - level / shed.STEPS) < 0.12, (level, share)
        # they go to the next-nearest site, and the scope is the network decided on
        assert {tuple(now[n][0]) for n in moved} <= {(NYC,), (SIN,)}
        assert {scope for _, scope in now.values()} == {24}
        # a network shed at a level is still shed at a higher level (no reshuffle)
        assert set(previous) <= set(moved)
        previous = moved
        assert ask_all(r) == now                          # the same every time
    r.set_health(board.view)
    assert ask_all(r) == before                          # back when the load is gone


def test_every_site_shedding_answers_as_without_shedding():
    cfg = config()
    board = HealthBoard(cfg)
    r = Responder(cfg, board.view)
    every = {a.ip: shed.STEPS for s in cfg.sites.values() for a in s.addresses}
    r.set_health(replace(board.view, shed=every))
    assert {tuple(a) for a, _ in ask_all(r).values()} == {(FRA,)}


def test_capacity_and_watermarks_in_the_config():
    cfg = config(capacity={"requests": 1000, "bandwidth": "10Gbit", "connections": 5000},
                 shed_low=0.7, shed_high=0.9)
    site = cfg.sites["fra"]
    assert (site.capacity.requests, site.capacity.bandwidth, site.capacity.connections) == \
        (1000, 10e9, 5000)
    assert (site.shed_low, site.shed_high) == (0.7, 0.9)
    try:
        config(capacity={"bandwidth": "fast", "request": 3}, shed_low=0.9, shed_high=0.5)
    except ConfigError as exc:
        problems = exc.problems
    else:
        raise AssertionError("a bad capacity was accepted")
    text = "\n".join(problems)
    assert "bandwidth 'fast' must be bits per second" in text
    assert "unknown key 'request'" in text
    assert "shed_high (0.5) must be above shed_low (0.9)" in text
    assert all(p.startswith("t.yaml:") for p in problems)


def test_shed_answers_of_a_signed_zone_are_signed_on_the_same_rebuild(tmp_path):
    import dns.message

    from gslb.config import load_config
    from tests.gslb.signed import check_signed, do_query, make_signed
    from tests.gslb.test_dnssec import dnskeys

    cfg = load_config(make_signed(tmp_path))
    r = Responder(cfg, HealthBoard(cfg).view)
    keys = dnskeys(r)
    # 127.0.0.12 sheds all its networks: Frankfurt's clients are answered from the next
    # site, signed and valid, by the rebuild that the new view caused
    view = HealthBoard(cfg).view
    r.set_health(replace(view, shed={FRA: shed.STEPS}))
    got = set()
    for net in ("198.51.100.0/24", "2001:db8:2::/48"):
        msg = dns.message.from_wire(r.answer(do_query("www.test.com.cdn.example.net", "A",
                                                      ecs=net), "10.0.0.1", 4096))
        assert check_signed(msg, keys) >= 1
        got |= {rr.to_text() for rrset in msg.answer for rr in rrset
                if rrset.rdtype == 1}
    assert FRA not in got and got, got
