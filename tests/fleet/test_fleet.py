"""Two nameservers, two edges and a real etcd: one view of health, leases, load, drain.

One fleet for the module (starting it is most of the time); each test leaves it as
it found it. Site a's edge is probed fast through a relay per nameserver (so one
nameserver's path can be cut); site b's slowly, so only its lease takes it out fast.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.conftest import ROOT
from tests.control.fleet import cdnctl, customer, put
from tests.etcd import Etcd
from tests.fleet.cluster import (
    NAME,
    NEAR_A,
    NEAR_B,
    A,
    B,
    BigOrigin,
    LoadClient,
    Relay,
    edge,
    free_port,
    gslb_config,
    record,
    start_nameserver,
    until,
)

BIG = 100 * 1024 * 1024
LEASE_TTL = 5.0


class Fleet:
    pass


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    f = Fleet()
    f.tmp = tmp
    (tmp / "etcd").mkdir()
    f.etcd = Etcd(tmp / "etcd").start()
    started = []
    try:
        f.origin = BigOrigin(BIG)
        put(f.etcd, "/cdn/config/customers/dl", customer("dl", f.origin.address, "dl.example.com"))
        f.port = free_port(A)
        f.edges = {"a": edge(tmp, f.etcd, "edge-a", A, f.port),
                   "b": edge(tmp, f.etcd, "edge-b", B, f.port)}
        started += f.edges.values()
        f.relays = [Relay((A, f.port)), Relay((A, f.port))]
        # site a: 100 requests/s; clients move away from 50 % on, all of them at 100 %
        site_a = {"capacity": {"requests": 100}, "shed_low": 0.5, "shed_high": 1.0}
        f.ns = [start_nameserver(tmp, f.etcd.url, f"ns{i + 1}", f"127.0.0.{i + 1}",
                                 gslb_config(tmp, f.port, relay, **site_a))
                for i, relay in enumerate(f.relays)]
        started += f.ns
        until(lambda: all(record(f.etcd, n.name).get("verdicts", {}).get(A) == "up"
                          for n in f.ns), 15, "both nameservers see a up")
        until(lambda: all(n.resolve(NEAR_A[0]) == (A,) for n in f.ns), 15, "answers")
        yield f
    finally:
        for proc in started:
            proc.stop()
        for relay in getattr(f, "relays", []):
            relay.close()
        if hasattr(f, "origin"):
            f.origin.close()
        f.etcd.stop()


def tables(f: Fleet, nets=NEAR_A[:20] + NEAR_B[:5]) -> list[dict]:
    return [ns.table(nets) for ns in f.ns]


def fleet_addresses(ns) -> dict:
    return ns.api("/api/fleet")["addresses"]


def test_both_nameservers_give_the_same_answers(fleet):
    one, two = tables(fleet, NEAR_A + NEAR_B)
    assert one == two
    assert {one[n] for n in NEAR_A} == {(A,)} and {one[n] for n in NEAR_B} == {(B,)}
    view = fleet.ns[0].api("/api/fleet")
    assert view["store"]["store"] == "up" and view["store"]["observers"] == ["ns1", "ns2"]
    assert {n["id"] for n in view["nameservers"]} == {"ns1", "ns2"}
    assert {e["id"]: e["state"] for e in view["edges"]} == {"edge-a": "serving",
                                                            "edge-b": "serving"}


def test_one_observer_cut_off_does_not_take_an_edge_down_two_do(fleet):
    one, two = fleet.relays
    ns1, ns2 = fleet.ns
    try:
        one.cut()                             # ns1 can no longer reach edge-a
        until(lambda: fleet_addresses(ns1)[A]["observers"] == {"ns1": "down", "ns2": "up"},
              5, "ns1 sees a down")
        time.sleep(1.0)
        assert tables(fleet) == [ns2.table(NEAR_A[:20] + NEAR_B[:5])] * 2
        assert ns1.resolve(NEAR_A[0]) == (A,) == ns2.resolve(NEAR_A[0])
        entry = fleet_addresses(ns1)[A]
        assert entry["state"] == "up" and "only 1 of 2 observers see it down" in entry["reason"]
        two.cut()                             # now both: a real outage for everyone
        _, took = until(lambda: ns1.resolve(NEAR_A[0]) == (B,) == ns2.resolve(NEAR_A[0]),
                        5, "both moved a's clients to b")
        # the same bound as with one nameserver: interval x fall (+10 % jitter) + 1 s
        assert took < 0.5 * 2 * 1.1 + 1.0 + 0.5, took
        assert "down for 2 of 2 observers" in fleet_addresses(ns2)[A]["reason"]
    finally:
        one.mend()
        two.mend()
    until(lambda: all(n.resolve(NEAR_A[0]) == (A,) for n in fleet.ns), 10, "a is back")


def test_an_edge_killed_leaves_the_answers_of_both_within_the_lease_ttl(fleet):
    b = fleet.edges["b"]
    before = tables(fleet)
    b.proc.kill()                 # SIGKILL: no goodbye, the lease just stops being renewed
    killed = time.monotonic()
    _, took = until(lambda: all(n.resolve(NEAR_B[0]) == (A,) for n in fleet.ns),
                    LEASE_TTL + 3, "both stopped answering edge-b")
    # b's probes need 4 s x 3 failures: only the lease can be this fast
    assert took <= LEASE_TTL + 1.0, took
    assert "lease of edge edge-b lost" in fleet_addresses(fleet.ns[0])[B]["reason"]
    assert tables(fleet)[0] == tables(fleet)[1]
    b.restart()
    # back only when the lease is there again and its probes pass (rise 1, every 4 s)
    until(lambda: all(n.resolve(NEAR_B[0]) == (B,) for n in fleet.ns), 15, "edge-b back")
    assert time.monotonic() - killed > 0
    assert tables(fleet) == [before[0]] * 2


def test_etcd_killed_mid_run_changes_no_answer_health_did_not_change(fleet):
    before = tables(fleet)
    assert before[0] == before[1]
    fleet.etcd.kill()
    try:
        until(lambda: all("gslb_store_up 0.0" in n.metrics() for n in fleet.ns), 8,
              "both say the store is away")
        view = fleet.ns[0].api("/api/fleet")
        assert view["store"]["source"] == "local probes only (store unreachable)"
        deadline = time.monotonic() + LEASE_TTL + 2        # longer than any lease
        while time.monotonic() < deadline:
            assert tables(fleet) == before
            time.sleep(0.5)
    finally:
        fleet.etcd.start()
    until(lambda: all("gslb_store_up 1.0" in n.metrics() for n in fleet.ns), 15,
          "both see the store again")
    time.sleep(1.0)
    assert tables(fleet) == before


def shed_share(ns) -> float:
    moved = [net for net in NEAR_A if ns.resolve(net) == (B,)]
    return len(moved) / len(NEAR_A)


def test_an_edge_past_its_watermark_sheds_clients_to_the_next_site_and_takes_them_back(fleet):
    before = tables(fleet, NEAR_A)
    load = LoadClient(A, fleet.port, "dl.example.com", rate=400)
    try:
        _, took = until(lambda: all(shed_share(n) == 1.0 for n in fleet.ns), 10,
                        "a's clients sent to b")
        assert load.done > 100
        one, two = tables(fleet, NEAR_A)
        assert one == two                                 # the same networks from both
        metrics = fleet.ns[0].metrics()
        assert re.search(r'gslb_shed_ratio\{kind="site",name="a"\} 1\.0', metrics), metrics
        view = fleet.ns[1].api("/api/fleet")
        assert view["shed"]["a"]["share"] == 1.0 and "requests" in view["shed"]["a"]["why"]
        assert view["history"][0]["what"] == "site a"
        # the dashboard's explain and `gslb explain` say why a client was shed
        ns1 = fleet.ns[0]
        text = ns1.api(f"/api/explain?name={NAME}&ecs={NEAR_A[0]}")["explanation"]
        assert "sheds 100% of client networks" in text and "sent away from a" in text, text
        out = subprocess.run([sys.executable, "-m", "gslb.cli", "explain", "-c",
                              str(ns1.log.parent / "gslb.yaml"), NAME, "--ecs", NEAR_A[0],
                              "--server", f"http://{ns1.host}:{ns1.http}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert "sent away from a" in out.stdout and "answer: NOERROR" in out.stdout, out
    finally:
        load.stop()
    until(lambda: tables(fleet, NEAR_A) == [before[0]] * 2, 15, "a's clients back")


def test_a_drain_with_a_download_in_flight_loses_no_byte(fleet):
    a = fleet.edges["a"]
    got = hashlib.sha256()
    size = [0]
    done = threading.Event()

    def download() -> None:
        conn = http.client.HTTPConnection(A, fleet.port, timeout=30)
        conn.request("GET", "/big", headers={"Host": "dl.example.com"})
        resp = conn.getresponse()
        while chunk := resp.read(256 * 1024):
            got.update(chunk)
            size[0] += len(chunk)
            time.sleep(0.01)                  # a slow client: the drain lands mid-way
        conn.close()
        done.set()

    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    until(lambda: size[0] > 10 * 1024 * 1024, 20, "the download under way")
    out = cdnctl(fleet.etcd.url, "drain", "edge-a")
    assert out.returncode == 0, out.stderr
    _, took = until(lambda: all(n.resolve(NEAR_A[0]) == (B,) for n in fleet.ns), 3,
                    "nameservers stopped answering edge-a", every=0.02)
    assert took <= 1.0, took
    until(lambda: record(fleet.etcd, "edge-a")["state"] == "draining", 3,
          "edge-a reports draining")
    assert not done.is_set()                  # still downloading while drained
    assert record(fleet.etcd, "edge-a")["idle"] is False
    until(done.is_set, 60, "the download finished")
    assert size[0] == BIG and got.digest() == hashlib.sha256(fleet.origin.body).digest()
    until(lambda: record(fleet.etcd, "edge-a").get("idle") is True, 5, "edge-a idle")
    waited = cdnctl(fleet.etcd.url, "drain", "edge-a", "--wait", "5")
    assert waited.returncode == 0 and "idle" in waited.stdout, waited.stdout + waited.stderr
    fleet.ns[1].restart()                     # a restarted nameserver keeps the drain
    assert fleet.ns[1].resolve(NEAR_A[0]) == (B,)
    assert a.proc.poll() is None
    out = cdnctl(fleet.etcd.url, "undrain", "edge-a")
    assert out.returncode == 0, out.stderr
    until(lambda: all(n.resolve(NEAR_A[0]) == (A,) for n in fleet.ns), 15, "edge-a back")


def test_the_fleet_view_in_a_browser_drains_and_undrains_an_edge(fleet):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import chromium
    from tests.fleet.cluster import TOKEN
    from tests.gslb.test_dashboard_browser import fresh

    ns1 = fleet.ns[0]

    def cell(driver, css: str) -> str:
        return fresh(lambda: driver.find_element(By.CSS_SELECTOR, css).text)

    with chromium() as browser:
        browser.get(f"http://{ns1.host}:{ns1.http}/")
        wait = WebDriverWait(browser, 15, poll_frequency=0.1)
        wait.until(lambda d: "store up" in cell(d, "#storestate"))
        assert "observers ns1, ns2" in cell(browser, "#storestate")
        wait.until(lambda d: cell(d, 'tr[data-fleetedge="edge-b"] .verdict').startswith("serving"))
        assert "NS2" in cell(browser, "#observers thead").upper()
        assert cell(browser, f'tr[data-observed="{B}"] td.combined') == "up"
        assert "(this one)" in cell(browser, 'tr[data-ns="ns1"]')
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        fresh(lambda: browser.find_element(
            By.CSS_SELECTOR, 'tr[data-fleetedge="edge-b"] button[data-edgeaction="drain"]').click())
        _, took = until(lambda: all(n.resolve(NEAR_B[0]) == (A,) for n in fleet.ns), 3,
                        "both stopped answering edge-b", every=0.02)
        assert took <= 1.0, took
        wait.until(lambda d: "drained by dashboard ns1" in cell(d, 'tr[data-fleetedge="edge-b"]'))
        wait.until(lambda d: cell(d, f'tr[data-observed="{B}"] td.combined') == "drain")
        wait.until(lambda d: "ANSWERS PER SITE" in cell(d, "#charts").upper())
        shot = os.environ.get("FLEET_SCREENSHOT")
        if shot:
            browser.save_screenshot(shot)
        fresh(lambda: browser.find_element(
            By.CSS_SELECTOR, 'tr[data-fleetedge="edge-b"] button[data-edgeaction="undrain"]'
        ).click())
        until(lambda: all(n.resolve(NEAR_B[0]) == (B,) for n in fleet.ns), 10, "edge-b back")
    # the store says who did it; a wrong name or token changes nothing
    assert '"action": "drain"' in fleet.etcd.dump() and "dashboard ns1" in fleet.etcd.dump()
    assert ns1.post("/api/admin/edge/drain", {"edge": "edge-c"})[0] == 404
    assert ns1.post("/api/admin/edge/drain", {"edge": "edge-a"}, token="wrong")[0] == 401
    assert all(n.resolve(NEAR_A[0]) == (A,) for n in fleet.ns)


PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "by",
                "without", "histogram_quantile", "scalar", "on", "ignoring", "and", "or",
                "unless", "bool", "topk", "bottomk", "offset", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: everything that is no function,
    keyword, label (inside {} or by/without ()), string, number or range."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS}


def exposed(text: str) -> set[str]:
    """Every sample name a /metrics page can carry, for the families it declares."""
    from prometheus_client.parser import text_string_to_metric_families
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def test_the_grafana_dashboard_names_only_metrics_that_exist(fleet):
    import json
    board = json.loads((ROOT / "deploy" / "grafana-fleet.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    wanted = set().union(*(metric_names(e) for e in exprs))
    assert metric_names('sum by (le) (rate(gslb_x_bucket{a="b"}[5m])) / scalar(y)') == \
        {"gslb_x_bucket", "y"}
    with urllib.request.urlopen(f"http://{A}:{fleet.port}/metrics", timeout=5) as r:
        edge_text = r.read().decode()
    have = exposed(fleet.ns[0].metrics()) | exposed(edge_text)
    assert wanted - have == set(), sorted(wanted - have)
    # the fleet's own metrics are there with values, not only declared
    from prometheus_client.parser import text_string_to_metric_families

    def sampled() -> set[str]:
        return {s.name for f in text_string_to_metric_families(fleet.ns[0].metrics())
                for s in f.samples}

    fleet.ns[0].resolve(NEAR_A[0])             # at least one answer from a site
    until(lambda: {"gslb_store_up", "gslb_edge_load", "gslb_utilization",
                   "gslb_node_seen_seconds", "gslb_observer_verdict",
                   "gslb_dns_answers_total"} <= sampled(), 5, "fleet metrics with values")
