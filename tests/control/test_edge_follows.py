"""Edges that follow the store: a change in etcd is served without a restart, every
node says which revision it applied, and an edge keeps (and restarts on) its last
config while etcd is away."""
from __future__ import annotations

import json

from tests.control.fleet import Origin, customer, node, put, start_edge, wait_for


def test_an_edge_serves_what_the_store_holds_and_follows_its_changes(etcd, tmp_path):
    one, two = Origin("one"), Origin("two")
    edge = start_edge(tmp_path, etcd.url, "edge-a")
    try:
        assert edge.get("/x", "www.a.com")[0] == 404          # nothing in the store yet
        put(etcd, "/cdn/config/customers/a", customer("a", one.address, "www.a.com"))
        wait_for(lambda: edge.get("/x", "www.a.com") == (200, "one /x"), what="served")
        record = wait_for(lambda: node(etcd, "edge-a").get("applied", 0) > 0 and
                          node(etcd, "edge-a"))
        assert record["kind"] == "edge" and record["addresses"] == ["127.0.0.1"]
        # a change of origin is served at once, without a restart
        put(etcd, "/cdn/config/customers/a", customer("a", two.address, "www.a.com"))
        wait_for(lambda: edge.get("/x", "www.a.com") == (200, "two /x"), what="changed")
        # a document the edge cannot use is left out and reported; the others stay
        etcd.ctl("put", "/cdn/config/customers/bad", json.dumps(
            {"directory": "bad", "origin": {"http": ["http://nope"]}}))
        bad = wait_for(lambda: node(etcd, "edge-a").get("rejected", {}).get("bad"))
        assert "no scheme" in bad[0]
        assert edge.get("/x", "www.a.com") == (200, "two /x")
        # a delete is a delete
        etcd.ctl("del", "/cdn/config/customers/a")
        wait_for(lambda: edge.get("/x", "www.a.com")[0] == 404, what="dropped")
    finally:
        edge.stop()
        one.close()
        two.close()


def test_etcd_away_the_edge_serves_on_and_restarts_from_its_snapshot(etcd, tmp_path):
    one = Origin("one")
    put(etcd, "/cdn/config/customers/a", customer("a", one.address, "www.a.com"))
    edge = start_edge(tmp_path, etcd.url, "edge-a")
    try:
        wait_for(lambda: edge.get("/x", "www.a.com") == (200, "one /x"))
        applied = wait_for(lambda: node(etcd, "edge-a").get("applied"))
        etcd.kill()
        assert edge.get("/y", "www.a.com") == (200, "one /y")     # keeps serving
        edge.restart()                                            # etcd still down
        assert edge.get("/z", "www.a.com") == (200, "one /z")     # from its snapshot
        assert f"snapshot of revision {applied}" in edge.log.read_text()
        etcd.start()                                              # and catches up
        put(etcd, "/cdn/config/customers/b", customer("b", one.address, "www.b.com"))
        wait_for(lambda: edge.get("/q", "www.b.com") == (200, "one /q"), what="caught up")
        wait_for(lambda: node(etcd, "edge-a").get("applied", 0) > applied, what="re-registered")
    finally:
        edge.stop()
        one.close()
