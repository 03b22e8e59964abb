"""RFC 9111 details a CDN is judged on: invalidation by unsafe methods, targeted cache
fields (RFC 9213), Cache-Status (RFC 9211), strict parsing, what may be stored."""
from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

from aiohttp import web

from edge.cache.freshness import http_date, initial_age, response_policy
from tests.conftest import free_port, serve_app
from tests.edge.test_cache import CountingOrigin, cfg, fetch
from tests.edge.served import AnyEdge  # noqa: F401  (a fixture)
from tests.edge.test_proxy import Edge


def entries(headers) -> list[list[str]]:
    """Cache-Status as a list of entries, each a list of its parts."""
    return [[p.strip() for p in e.split(";")] for e in headers["Cache-Status"].split(",")]


async def test_a_successful_unsafe_request_invalidates_the_url_and_its_locations(AnyEdge):
    async with CountingOrigin() as origin:
        for path in ("/doc", "/doc/new", "/other", "/kept"):
            origin.routes[path] = {"headers": {"Cache-Control": "max-age=60"}}
        async with AnyEdge(cfg(origin)) as edge:
            for path in ("/doc", "/doc/new", "/other", "/kept"):
                await fetch(edge, path)
                assert (await fetch(edge, path))[2]["X-Cache"] == "HIT"

            async def send(method: str, path: str, status: int = 200, **headers) -> None:
                origin.routes[path]["post"] = (status, headers)
                async with edge.client.request(method, edge.base + path, data=b"x=1",
                                               headers={"Host": "www.test.com"}) as r:
                    assert r.status == status

            await send("POST", "/doc", 201, Location="/doc/new",
                       **{"Content-Location": "http://elsewhere.example/other"})
            assert (await fetch(edge, "/doc"))[2]["X-Cache"] == "MISS"
            assert (await fetch(edge, "/doc/new"))[2]["X-Cache"] == "MISS"   # same origin
            assert (await fetch(edge, "/other"))[2]["X-Cache"] == "HIT"      # another origin
            await send("DELETE", "/kept", 500)                               # an error: kept
            assert (await fetch(edge, "/kept"))[2]["X-Cache"] == "HIT"
            await send("PUT", "/kept", 204)
            assert (await fetch(edge, "/kept"))[2]["X-Cache"] == "MISS"


async def test_cdn_cache_control_rules_over_cache_control_and_stays_in_the_cdn(AnyEdge):
    async with CountingOrigin() as origin:
        routes = {
            "/cdn-store": ({"Cache-Control": "no-store", "CDN-Cache-Control": "max-age=60"}, 1),
            "/cdn-nostore": ({"Cache-Control": "max-age=60", "CDN-Cache-Control": "no-store"}, 3),
            "/cdn-private": ({"Cache-Control": "max-age=60", "CDN-Cache-Control": "private"}, 3),
            "/cdn-zero": ({"Cache-Control": "max-age=60", "CDN-Cache-Control": "max-age=0"}, 3),
            "/cdn-bad": ({"Cache-Control": "max-age=60", "CDN-Cache-Control": "max-age=6x0"}, 1),
            "/edge-field": ({"Cache-Control": "no-store", "CDN-Cache-Control": "no-store",
                             "Edge-Cache-Control": "max-age=60"}, 1),
            "/surrogate": ({"Cache-Control": "no-store", "Surrogate-Control": "max-age=60"}, 1),
        }
        for path, (headers, _) in routes.items():
            origin.routes[path] = {"headers": headers}
        rules = {"targeted_field": "Edge-Cache-Control", "surrogate_control": True}
        async with AnyEdge(cfg(origin, **rules)) as edge:
            for path, (_, hits) in routes.items():
                for _ in range(3):
                    _, _, headers = await fetch(edge, path)
                    for name in ("CDN-Cache-Control", "Edge-Cache-Control",
                                 "Surrogate-Control"):
                        assert name not in headers, (path, name)     # not past the CDN
                assert origin.hits[path] == hits, path
            assert "Cache-Control" in (await fetch(edge, "/cdn-store"))[2]   # the browser's
        async with AnyEdge(cfg(origin)) as edge:          # Surrogate-Control is opt-in
            for _ in range(2):
                await fetch(edge, "/surrogate")
            assert origin.hits["/surrogate"] == 3


async def test_cache_status_says_what_the_cache_did(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/c"] = {"headers": {"Cache-Control": "max-age=60", "ETag": '"1"'}}
        origin.routes["/r"] = {"headers": {"Cache-Control": "max-age=1", "ETag": '"r"'}}
        origin.routes["/p"] = {"headers": {"Cache-Control": "private"}}
        async with AnyEdge(cfg(origin, honour_client_no_cache=True)) as edge:
            _, _, h = await fetch(edge, "/c")
            # ttl: 60 less the age the Date header gives (whole seconds)
            assert entries(h) in ([["gslb-edge", "fwd=uri-miss", "fwd-status=200", f"ttl={t}",
                                    "stored"]] for t in (59, 60)) and h["X-Cache"] == "MISS"
            _, _, h = await fetch(edge, "/c")
            assert entries(h)[0][:2] == ["gslb-edge", "hit"] and h["X-Cache"] == "HIT"
            _, _, h = await fetch(edge, "/c", Range="bytes=0-1")        # a hit the long way
            assert entries(h)[0][:2] == ["gslb-edge", "hit"]
            _, _, h = await fetch(edge, "/c", **{"Cache-Control": "no-cache"})
            # revalidated because the client asked: the origin's answer was 304
            assert entries(h)[0][:3] == ["gslb-edge", "fwd=request", "fwd-status=304"]
            _, _, h = await fetch(edge, "/p")
            assert entries(h) == [["gslb-edge", "fwd=uri-miss", "fwd-status=200"]]
            await fetch(edge, "/r")
            await asyncio.sleep(1.2)
            _, _, h = await fetch(edge, "/r")
            assert entries(h)[0][:3] == ["gslb-edge", "fwd=stale", "fwd-status=304"]
            async with edge.client.post(edge.base + "/c", data=b"x",
                                        headers={"Host": "www.test.com"}) as r:
                assert entries(r.headers) == [["gslb-edge", "fwd=method", "fwd-status=200"]]
            _, _, h = await fetch(edge, "/x")                         # nothing to store
            assert entries(h)[0][:3] == ["gslb-edge", "fwd=uri-miss", "fwd-status=200"]
            for own in ("/healthz", "/metrics"):                      # the edge's own answers
                async with edge.client.get(edge.base + own) as r:
                    assert entries(r.headers) == [["gslb-edge", "fwd=bypass"]], own
                    assert r.headers["Via"] == "1.1 gslb-edge"


async def test_shield_and_edge_each_add_their_cache_status_entry():
    from tests.edge.test_shield import edge_cfg
    async with CountingOrigin() as origin:
        origin.routes["/s"] = {"headers": {"Cache-Control": "max-age=60"}}
        sport = free_port()
        shields = [{"name": "shield-a", "address": f"127.0.0.1:{sport}"}]
        async with Edge(edge_cfg(origin, "shield-a", shields, "shield-a"), sport), \
                Edge(edge_cfg(origin, "e1", shields, "shield-a")) as e1, \
                Edge(edge_cfg(origin, "e2", shields, "shield-a")) as e2:
            _, _, h = await fetch(e1, "/s")
            assert [e[:2] for e in entries(h)] == [["shield-a", "fwd=uri-miss"],
                                                   ["e1", "fwd=uri-miss"]]
            _, _, h = await fetch(e2, "/s")
            assert [e[:2] for e in entries(h)] == [["shield-a", "hit"], ["e2", "fwd=uri-miss"]]
            _, _, h = await fetch(e2, "/s")
            assert [e[:2] for e in entries(h)] == [["e2", "hit"]]        # served by e2 alone


def test_expires_age_and_dates_are_parsed_strictly():
    now = 1_800_000_000.0
    future = formatdate(now + 3600, usegmt=True)
    assert http_date(future) == now + 3600
    assert http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777        # RFC 850
    assert http_date("Sun Nov  6 08:49:37 1994") == 784111777              # asctime
    for bad in ("0", "-1", "Sun, 06 Nov 1994 08:49:37 +0100", "Sun, 06 Nov 1994 08:49:37 EST",
                "06 Nov 1994 08:49:37 GMT", "Sun, 6 Nov 1994 08:49:37 GMT ", "tomorrow",
                "Sun, 31 Feb 1994 08:49:37 GMT"):
        assert http_date(bad) is None, bad

    def ttl(headers: list[tuple[str, str]]) -> float:
        from multidict import CIMultiDict
        h = CIMultiDict(headers)
        return response_policy(200, h, [], False, now).ttl

    date = ("Date", formatdate(now, usegmt=True))
    assert ttl([date, ("Expires", future)]) == 3600
    assert ttl([date, ("Expires", future.replace("GMT", "+0000"))]) == 0     # not an HTTP-date
    assert ttl([date, ("Expires", future), ("Expires", future)]) == 0        # two lines
    assert ttl([date, ("Expires", f"{future}, {future}")]) == 0
    from multidict import CIMultiDict
    assert initial_age(CIMultiDict([("Age", "30, 5")]), now, now) == 30      # the first member
    assert initial_age(CIMultiDict([("Age", "30"), ("Age", "5")]), now, now) == 30
    assert initial_age(CIMultiDict([("Age", "x")]), now, now) == 0


async def test_vary_star_anywhere_and_qualified_no_cache_and_private(AnyEdge):
    async def handler(request: web.Request) -> web.Response:
        hits[request.path] = hits.get(request.path, 0) + 1
        headers = {"/star": {"Cache-Control": "max-age=60", "Vary": "Accept-Encoding, *"},
                   "/nc": {"Cache-Control": 'no-cache="Set-Cookie", max-age=60',
                           "Set-Cookie": "id=1", "X-Other": "kept"},
                   "/pv": {"Cache-Control": 'private="Set-Cookie, X-Token", max-age=60',
                           "Set-Cookie": "id=2", "X-Token": "t", "X-Other": "kept"},
                   "/plain-private": {"Cache-Control": "private, max-age=60"}}[request.path]
        return web.Response(text=f"{request.path} {hits[request.path]}", headers=headers)

    hits: dict[str, int] = {}
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner, port = await serve_app(app, "127.0.0.89")
    config = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                             "origin": {"http": [f"127.0.0.89:{port}"]}}]}
    try:
        async with AnyEdge(config) as edge:
            for path in ("/star", "/nc", "/pv", "/plain-private"):
                first = await fetch(edge, path)
                second = await fetch(edge, path)
                if path in ("/star", "/plain-private"):
                    assert hits[path] == 2, path                 # never stored
                    continue
                assert hits[path] == 1 and second[2]["X-Cache"] == "HIT", path
                assert "Set-Cookie" in first[2] and "Set-Cookie" not in second[2], path
                assert second[2]["X-Other"] == "kept" and second[1] == first[1]
                assert "X-Token" not in second[2]
    finally:
        await runner.cleanup()


async def test_any_final_status_with_explicit_freshness_and_chunked_bodies_are_stored(AnyEdge):
    async def handler(request: web.Request) -> web.StreamResponse:
        hits[request.path] = hits.get(request.path, 0) + 1
        name = request.path.strip("/")
        if name == "chunked":
            resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for piece in (b"chunk one ", b"chunk two"):
                await resp.write(piece)
            await resp.write_eof()
            return resp
        status = int(name.split("-")[0])
        cc = {"Cache-Control": "max-age=60"} if name.endswith("-fresh") else {
            "Last-Modified": formatdate(time.time() - 86400, usegmt=True)}
        return web.Response(status=status, headers=cc,
                            body=None if status == 204 else f"status {status}".encode())

    hits: dict[str, int] = {}
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner, port = await serve_app(app, "127.0.0.90")
    config = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                             "origin": {"http": [f"127.0.0.90:{port}"], "retry_5xx": False}}]}
    try:
        async with AnyEdge(config) as edge:
            expect = {"/204-fresh": 1, "/299-fresh": 1, "/302-fresh": 1, "/403-fresh": 1,
                      "/500-fresh": 1, "/chunked": 1,
                      "/302-heuristic": 2, "/200-heuristic": 1, "/404-heuristic": 1}
            for path in expect:
                results = [await fetch(edge, path) for _ in range(2)]
                assert hits[path] == expect[path], path
                assert results[0][1] == results[1][1], path
            status, body, headers = await fetch(edge, "/chunked")
            assert (status, body, headers["X-Cache"]) == (200, b"chunk one chunk two", "HIT")
    finally:
        await runner.cleanup()
