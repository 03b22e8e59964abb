"""The control plane's API on a real etcd with a real edge following it: the customer
lifecycle, compare-and-swap, the seed's rules, tokens, secrets, and etcd going away."""
from __future__ import annotations

import json

import pytest

from tests.control.fleet import Origin, customer, start_ctl, start_edge, wait_for

ZONE_ORIGIN = "origin.cdn.example.net"


@pytest.fixture
def origin():
    server = Origin("one")
    yield server
    server.close()


def test_lifecycle_through_the_api_is_served_by_the_edge(etcd, tmp_path, origin):
    ctl = start_ctl(tmp_path, etcd.url)
    edge = start_edge(tmp_path, etcd.url, "edge-a")
    try:
        status, body, headers = ctl.call("POST", "/api/customers",
                                         customer("img", origin.address, "img.example.com"))
        assert status == 201, body
        revision = body["revision"]
        assert headers["ETag"] == f'"{revision}"'
        wait_for(lambda: edge.get("/a.png", "img.example.com") == (200, "one /a.png"))
        card = wait_for(lambda: (c := ctl.call("GET", "/api/customers/img")[1])["status"] ==
                        "deployed" and c)
        assert card["deployed"] == card["of"] == 1
        assert card["edges"]["edge-a"] >= revision
        assert ctl.call("GET", "/api/customers")[1]["customers"][0]["directory"] == "img"
        # the CDN URL works too: /<account>/<directory>/...
        assert edge.get("/800001/img/b.png", "cdn.example.net") == (200, "one /b.png")

        changed = customer("img", origin.address, "img.example.com")
        changed["origin"]["host_header"] = "img.internal"
        assert ctl.call("PUT", "/api/customers/img", changed)[0] == 428     # If-Match needed
        stale = ctl.call("PUT", "/api/customers/img", changed,
                         headers={"If-Match": str(revision - 1)})
        assert stale[0] == 412 and "read it again" in stale[1]["error"]
        ok = ctl.call("PUT", "/api/customers/img", changed, headers={"If-Match": str(revision)})
        assert ok[0] == 200 and ok[1]["revision"] > revision
        assert ok[1]["customer"]["origin"]["host_header"] == "img.internal"

        # a CNAME points at it: no delete, no rename (seed 003)
        current = ok[1]["revision"]
        refused = ctl.call("DELETE", "/api/customers/img", headers={"If-Match": str(current)})
        assert refused[0] == 409 and "img.example.com" in refused[1]["error"]
        renamed = dict(changed, directory="images")
        assert ctl.call("PUT", "/api/customers/img", renamed,
                        headers={"If-Match": str(current)})[0] == 409
        # delete the edge CNAME first, then the customer
        bare = dict(changed, cnames=[])
        current = ctl.call("PUT", "/api/customers/img", bare,
                           headers={"If-Match": str(current)})[1]["revision"]
        wait_for(lambda: ctl.call("DELETE", "/api/customers/img",
                                  headers={"If-Match": str(current)})[0] == 200,
                 what="deleted once the CNAME is retired")
        wait_for(lambda: edge.get("/a.png", "img.example.com")[0] == 404, what="edge dropped it")
        assert ctl.call("GET", "/api/customers/img")[0] == 404
        actions = [r["action"] for r in ctl.call("GET", "/api/audit")[1]["records"]]
        # img.example.com and its CNAME target (img.example.com.cdn.example.net) are
        # both retired: the reaper may take them in one write or two
        actions = [a for i, a in enumerate(actions) if not (a == "retire" and i and
                                                            actions[i - 1] == "retire")]
        assert actions[:4] == ["delete", "retire", "update", "update"] and "create" in actions
    finally:
        edge.stop()
        ctl.stop()


def test_a_bad_document_is_rejected_with_every_problem_and_nothing_stored(etcd, tmp_path):
    ctl = start_ctl(tmp_path, etcd.url)
    try:
        bad = {"directory": "a b", "cnames": ["x.com", "x.com"], "colour": "red",
               "origin": {"http": ["http://h", "h:99999"], "balancing": "random"},
               "cache": {"default_ttl": -1}}
        status, body, _ = ctl.call("POST", "/api/customers", bad)
        assert status == 422
        pointers = sorted(p.split(":", 1)[0] for p in body["problems"])
        assert pointers == sorted(["/directory", "/cnames/1", "/colour", "/origin/http/0",
                                   "/origin/http/1", "/origin/balancing",
                                   "/cache/default_ttl", "/origin"]), body["problems"]
        assert "/cdn/config/customers" not in etcd.dump()
    finally:
        ctl.stop()


def test_the_seed_rules(etcd, tmp_path, origin):
    ctl = start_ctl(tmp_path, etcd.url, "--max-customers", "2")
    try:
        post = lambda doc: ctl.call("POST", "/api/customers", doc)   # noqa: E731
        assert post(customer("a", origin.address, "www.a.com"))[0] == 201
        # an edge CNAME belongs to one customer
        taken = post(customer("b", origin.address, "www.a.com"))
        assert taken[0] == 409 and "belongs to customer a" in taken[1]["error"]
        # the origin is neither our own CDN zone nor an edge CNAME (seed 000)
        own = post(customer("b", ZONE_ORIGIN))
        assert own[0] == 422 and "our own CDN domain cdn.example.net" in str(own[1])
        loop = post(customer("b", "www.b.com", "www.b.com"))
        assert loop[0] == 422 and "one of its own edge CNAMEs" in str(loop[1])
        other = post(customer("b", "www.a.com"))
        assert other[0] == 409 and "edge CNAME of customer a" in other[1]["error"]
        assert post(customer("a", origin.address))[0] == 409        # exists already
        # at most max_customers
        assert post(customer("b", origin.address))[0] == 201
        full = post(customer("c", origin.address))
        assert full[0] == 409 and "at most 2" in full[1]["error"]
        # a directory without CNAMEs can be renamed
        b = ctl.call("GET", "/api/customers/b")[1]
        moved = ctl.call("PUT", "/api/customers/b", customer("bee", origin.address),
                         headers={"If-Match": str(b["revision"])})
        assert moved[0] == 200 and moved[1]["directory"] == "bee"
        assert ctl.call("GET", "/api/customers/b")[0] == 404
    finally:
        ctl.stop()


def test_tokens(etcd, tmp_path, origin):
    ctl = start_ctl(tmp_path, etcd.url)
    try:
        assert ctl.call("GET", "/api/customers", token="")[0] == 401
        assert ctl.call("GET", "/api/customers", token="wrong")[0] == 401
        assert ctl.call("GET", "/api/customers", token="read-secret")[0] == 200
        refused = ctl.call("POST", "/api/customers", customer("a", origin.address),
                           token="read-secret")
        assert refused[0] == 403 and "viewer" in refused[1]["error"]
        assert ctl.call("POST", "/api/customers", customer("a", origin.address))[0] == 201
        assert ctl.call("GET", "/api/audit")[1]["records"][0]["who"] == "admin"
    finally:
        ctl.stop()


def test_bucket_secrets_are_never_readable_back(etcd, tmp_path):
    key = tmp_path / "seal.key"
    key.write_text("ab" * 32)
    ctl = start_ctl(tmp_path, etcd.url, "--key-file", str(key))
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    doc = {"directory": "media", "cnames": ["media.example.com"],
           "origin": {"type": "s3", "address": "media.s3.us-east-1.amazonaws.com",
                      "region": "us-east-1", "access_key_id": "AKIDEXAMPLE",
                      "secret_access_key": secret}}
    try:
        status, body, _ = ctl.call("POST", "/api/customers", doc)
        assert status == 201, body
        assert "secret_access_key" not in body["customer"]["origin"]
        assert body["secrets"] == ["/origin/secret_access_key"]
        # a read-modify-write without the secret keeps it (write-only field)
        body["customer"]["origin"]["timeout"] = 20
        again = ctl.call("PUT", "/api/customers/media", body["customer"],
                         headers={"If-Match": str(body["revision"])})
        assert again[0] == 200 and again[1]["secrets"] == ["/origin/secret_access_key"]
        everything = [etcd.dump(), json.dumps(ctl.call("GET", "/api/customers")[1]),
                      json.dumps(ctl.call("GET", "/api/audit")[1]), ctl.log.read_text()]
        assert all(secret not in text for text in everything)
        assert "sealed:v1:" in etcd.dump()
        # without the key there is no way to store a secret
        ctl.stop()
        keyless = start_ctl(tmp_path, etcd.url)
        try:
            doc2 = json.loads(json.dumps(doc))
            doc2["directory"], doc2["cnames"] = "media2", []
            refused = keyless.call("POST", "/api/customers", doc2)
            assert refused[0] == 422 and "--key-file" in str(refused[1])
        finally:
            keyless.stop()
    finally:
        ctl.stop()


def test_etcd_away_the_api_says_so_and_loses_no_accepted_write(etcd, tmp_path, origin):
    ctl = start_ctl(tmp_path, etcd.url)
    try:
        assert ctl.call("POST", "/api/customers", customer("a", origin.address))[0] == 201
        etcd.kill()
        status, body, _ = ctl.call("POST", "/api/customers", customer("b", origin.address))
        assert status == 503 and "unavailable" in body["error"] and "Nothing" in body["error"]
        assert ctl.call("GET", "/api/customers")[0] == 503
        etcd.start()
        listing = wait_for(lambda: (r := ctl.call("GET", "/api/customers"))[0] == 200 and r[1])
        assert [c["directory"] for c in listing["customers"]] == ["a"]
        assert ctl.call("POST", "/api/customers", customer("b", origin.address))[0] == 201
    finally:
        ctl.stop()
