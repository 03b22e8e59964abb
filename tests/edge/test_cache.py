"""The cache: RFC 9111 freshness, revalidation, coalescing, failures, client conditionals."""
from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

import aiohttp
import pytest
from aiohttp import web

from edge.cache import cached as cached_module
from edge.cache.store import MemoryStore, Stored
from edge.cache.freshness import Policy
from tests.conftest import free_port, serve_app
from tests.edge.served import AnyEdge  # noqa: F401  (a fixture)
from tests.edge.test_proxy import Edge


class CountingOrigin:
    """An origin whose responses the test scripts per path, counting every request."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: dict[str, int] = {}
        self.last_headers: dict[str, object] = {}
        self.conditional: list[dict] = []
        self.routes: dict[str, dict] = {}
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        self.last_headers[request.path] = request.headers.copy()
        spec = self.routes.get(request.path, {})
        if request.method not in ("GET", "HEAD") and "post" in spec:
            status, headers = spec["post"]
            return web.Response(status=status, headers=headers)
        if spec.get("status"):
            return web.Response(status=spec["status"], text="origin error")
        inm, ims = request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since")
        if inm or ims:
            self.conditional.append({"path": request.path, "inm": inm, "ims": ims})
            if inm and inm == spec.get("headers", {}).get("ETag"):
                return web.Response(status=304, headers={"ETag": inm,
                                                         "Cache-Control": "max-age=60"})
        body = spec.get("body", f"body of {request.path} #{self.hits[request.path]}")
        body = body.encode() if isinstance(body, str) else body
        if spec.get("slow"):
            resp = web.StreamResponse(headers={**spec.get("headers", {}),
                                               "Content-Length": str(len(body))})
            await resp.prepare(request)
            split = spec.get("split", 10)
            await resp.write(body[:split])
            await self.release.wait()
            if spec.get("cut"):
                request.transport.close()
                return resp
            await resp.write(body[split:])
            return resp
        return web.Response(body=body, headers=spec.get("headers", {}))

    async def __aenter__(self) -> "CountingOrigin":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner, _ = await serve_app(app, "127.0.0.81", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self.release.set()
        await self.runner.cleanup()


def cfg(origin: CountingOrigin, **cache) -> dict:
    return {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                           "origin": {"http": [f"127.0.0.81:{origin.port}"]},
                           "cache": cache}]}


async def fetch(edge: Edge, path: str, **headers) -> tuple[int, bytes, dict]:
    async with edge.client.get(edge.base + path, headers={"Host": "www.test.com", **headers}) as r:
        return r.status, await r.read(), r.headers.copy()      # case-insensitive


async def test_miss_then_hit_with_age(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/a"] = {"headers": {"Cache-Control": "max-age=60"}}
        async with AnyEdge(cfg(origin)) as edge:
            s1, b1, h1 = await fetch(edge, "/a")
            await asyncio.sleep(1.1)
            s2, b2, h2 = await fetch(edge, "/a")
            assert (s1, s2) == (200, 200) and b1 == b2 == b"body of /a #1"
            assert (h1["X-Cache"], h2["X-Cache"]) == ("MISS", "HIT")
            assert int(h2["Age"]) >= 1 and origin.hits["/a"] == 1
            async with edge.client.head(edge.base + "/a", headers={"Host": "www.test.com"}) as r:
                assert r.headers["X-Cache"] == "HIT" and r.headers["Content-Length"] == "13"
            assert origin.hits["/a"] == 1


async def test_a_head_miss_fills_the_cache_with_a_get(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/h"] = {"headers": {"Cache-Control": "max-age=60"}}
        origin.routes["/private"] = {"headers": {"Cache-Control": "private"}}
        async with AnyEdge(cfg(origin)) as edge:
            for path in ("/h", "/private"):
                async with edge.client.head(edge.base + path,
                                            headers={"Host": "www.test.com"}) as r:
                    assert r.status == 200 and await r.read() == b""
                    assert r.headers["X-Cache"] in ("MISS", "PASS")
            status, body, headers = await fetch(edge, "/h")
            assert (status, body, headers["X-Cache"]) == (200, b"body of /h #1", "HIT")
            assert origin.hits["/h"] == 1
            assert (await fetch(edge, "/after"))[0] == 200     # connections stayed sound


@pytest.mark.parametrize("headers,stored", [
    ({"Cache-Control": "no-store"}, False),
    ({"Cache-Control": "private, max-age=60"}, False),
    ({}, False),                                                  # no freshness information
    ({"Cache-Control": "max-age=0, s-maxage=60"}, True),         # s-maxage wins in a shared cache
    # dates are made when the test runs: the parameters are built at collection, which
    # can be minutes before in a full run
    ({"Expires": lambda: formatdate(time.time() + 600, usegmt=True)}, True),
    ({"Last-Modified": lambda: formatdate(time.time() - 864000, usegmt=True)}, True),  # heuristic
])
async def test_what_is_stored(headers, stored, AnyEdge):
    headers = {k: v() if callable(v) else v for k, v in headers.items()}
    async with CountingOrigin() as origin:
        origin.routes["/x"] = {"headers": headers}
        async with AnyEdge(cfg(origin)) as edge:
            for _ in range(3):
                await fetch(edge, "/x")
            assert origin.hits["/x"] == (1 if stored else 3)


async def test_customer_default_ttl_and_authorization(AnyEdge):
    async with CountingOrigin() as origin:
        async with AnyEdge(cfg(origin, default_ttl=30)) as edge:
            for _ in range(3):
                await fetch(edge, "/plain")
            assert origin.hits["/plain"] == 1                     # no headers: default TTL
            for _ in range(2):
                await fetch(edge, "/secret", Authorization="Bearer x")
            assert origin.hits["/secret"] == 2                    # RFC 9111 3.5


async def test_stale_object_is_revalidated_with_validators(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/e"] = {"headers": {"Cache-Control": "max-age=1", "ETag": '"v1"'}}
        origin.routes["/lm"] = {"headers": {"Cache-Control": "max-age=1",
                                            "Last-Modified": "Tue, 24 Nov 2026 00:00:00 GMT"}}
        origin.routes["/none"] = {"headers": {"Cache-Control": "max-age=1"}}
        async with AnyEdge(cfg(origin)) as edge:
            for path in ("/e", "/lm", "/none"):
                await fetch(edge, path)
            await asyncio.sleep(1.2)
            status, body, headers = await fetch(edge, "/e")
            assert (status, body, headers["X-Cache"]) == (200, b"body of /e #1", "REVALIDATED")
            assert origin.conditional[0] == {"path": "/e", "inm": '"v1"', "ims": None}
            status, body, headers = await fetch(edge, "/e")
            assert headers["X-Cache"] == "HIT" and origin.hits["/e"] == 2   # fresh again (60 s)
            await fetch(edge, "/lm")
            assert origin.conditional[1]["ims"] == "Tue, 24 Nov 2026 00:00:00 GMT"
            status, body, _ = await fetch(edge, "/none")
            assert body == b"body of /none #2"          # no validators: unconditional GET
            assert all(c["path"] != "/none" for c in origin.conditional)


async def test_client_conditionals_answered_from_cache(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/c"] = {"headers": {"Cache-Control": "max-age=60", "ETag": 'W/"abc"',
                                           "Last-Modified": "Mon, 23 Nov 2026 00:00:00 GMT"}}
        async with AnyEdge(cfg(origin)) as edge:
            await fetch(edge, "/c")
            status, body, headers = await fetch(edge, "/c", **{"If-None-Match": '"abc"'})
            assert status == 304 and body == b"" and headers["ETag"] == 'W/"abc"'
            status, _, _ = await fetch(edge, "/c", **{"If-None-Match": '"other"'})
            assert status == 200
            status, _, _ = await fetch(edge, "/c", **{
                "If-Modified-Since": "Mon, 23 Nov 2026 12:00:00 GMT"})
            assert status == 304
            assert origin.hits["/c"] == 1


async def test_client_no_cache_is_a_customer_choice(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/n"] = {"headers": {"Cache-Control": "max-age=60"}}
        async with AnyEdge(cfg(origin)) as edge:
            await fetch(edge, "/n")
            await fetch(edge, "/n", **{"Cache-Control": "no-cache"})
            assert origin.hits["/n"] == 1
        async with AnyEdge(cfg(origin, honour_client_no_cache=True)) as edge:
            await fetch(edge, "/n")
            await fetch(edge, "/n", **{"Cache-Control": "max-age=0"})
            assert origin.hits["/n"] == 3


async def test_concurrent_misses_make_one_origin_request_and_stream_while_written(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/big"] = {"headers": {"Cache-Control": "max-age=60"}, "slow": True,
                                 "body": "0123456789" + "z" * 100_000}
        async with AnyEdge(cfg(origin)) as edge:
            first_bytes = asyncio.Event()

            async def client(i: int) -> tuple[bytes, str]:
                async with edge.client.get(edge.base + "/big",
                                           headers={"Host": "www.test.com"}) as r:
                    head = await r.content.readexactly(10)
                    if i == 199:
                        first_bytes.set()
                    return head + await r.read(), r.headers["X-Cache"]

            tasks = [asyncio.ensure_future(client(i)) for i in range(200)]
            # Every client, the last one included, got the first bytes while the
            # origin was still holding the rest back.
            await asyncio.wait_for(first_bytes.wait(), 10)
            assert not origin.release.is_set()
            origin.release.set()
            results = await asyncio.gather(*tasks)
            assert origin.hits["/big"] == 1
            assert all(body == b"0123456789" + b"z" * 100_000 for body, _ in results)
            assert (await fetch(edge, "/big"))[2]["X-Cache"] == "HIT"


async def test_origin_cut_mid_body_caches_nothing(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/cut"] = {"headers": {"Cache-Control": "max-age=60"}, "slow": True,
                                 "cut": True, "body": "0123456789" + "q" * 50_000}
        async with AnyEdge(cfg(origin)) as edge:
            origin.release.set()
            with pytest.raises(aiohttp.ClientPayloadError):
                await fetch(edge, "/cut")
            origin.routes["/cut"] = {"headers": {"Cache-Control": "max-age=60"}}
            status, body, headers = await fetch(edge, "/cut")
            assert status == 200 and headers["X-Cache"] == "MISS" and origin.hits["/cut"] == 2


async def test_a_stalled_fill_lets_waiters_go_themselves(monkeypatch):
    monkeypatch.setattr(cached_module, "COALESCE_TIMEOUT", 0.3)
    started = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.headers.get("X-First") == "1":
            started.set()
            await asyncio.sleep(3)                  # the first fetch stalls before headers
        return web.Response(text="ok", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner, port = await serve_app(app, "127.0.0.82")
    config = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                             "origin": {"http": [f"127.0.0.82:{port}"]}}]}
    try:
        async with Edge(config) as edge:
            slow = asyncio.ensure_future(fetch(edge, "/s", **{"X-First": "1"}))
            await started.wait()
            start = time.monotonic()
            status, body, _ = await fetch(edge, "/s")
            assert status == 200 and body == b"ok" and time.monotonic() - start < 2
            slow.cancel()
    finally:
        await runner.cleanup()


async def test_objects_over_max_object_pass_through(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/large"] = {"headers": {"Cache-Control": "max-age=60"}, "body": "L" * 5000}
        async with AnyEdge(cfg(origin, max_object=1000)) as edge:
            for _ in range(2):
                status, body, headers = await fetch(edge, "/large")
                assert status == 200 and len(body) == 5000
            assert origin.hits["/large"] == 2


def test_memory_store_evicts_least_recently_used_by_bytes():
    policy = Policy(True, 60, "test")

    def item(size: int) -> Stored:
        return Stored(200, "OK", (), (b"x" * size,), size, 0.0, 0.0, policy)

    store = MemoryStore(1000)
    store.put("a", item(400))
    store.put("b", item(400))
    store.get("a")                      # a is now the most recently used
    store.put("c", item(400))           # over 1000 bytes: b goes
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None
    assert store.bytes == 800
    store.put("huge", item(2000))       # never fits: not stored, nothing evicted for it
    assert store.get("huge") is None and len(store) == 2


async def test_stale_while_revalidate_answers_at_once_and_refreshes(AnyEdge):
    async with CountingOrigin() as origin:
        # max-age=2, not 1: Date has one-second resolution, so a copy's corrected
        # initial age (RFC 9111 4.2.3) can be almost a second when it arrives.
        origin.routes["/swr"] = {"headers": {"Cache-Control": "max-age=2, stale-while-revalidate=30"}}
        async with AnyEdge(cfg(origin)) as edge:
            assert (await fetch(edge, "/swr"))[1] == b"body of /swr #1"
            await asyncio.sleep(2.2)
            status, body, headers = await fetch(edge, "/swr")
            assert (status, body, headers["X-Cache"]) == (200, b"body of /swr #1", "STALE")
            assert int(headers["Age"]) >= 1 and "Warning" not in headers
            for _ in range(50):                       # the refresh runs in the background
                if origin.hits["/swr"] == 2:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
            status, body, headers = await fetch(edge, "/swr")
            assert (body, headers["X-Cache"]) == (b"body of /swr #2", "HIT")


@pytest.mark.parametrize("cache_control,grace,expect", [
    ("max-age=1, stale-if-error=60", 0, "STALE"),
    ("max-age=1", 60, "STALE"),                          # the operator's grace period
    ("max-age=1, must-revalidate, stale-if-error=60", 60, 502),
    ("max-age=1", 0, 502),
])
async def test_origin_down_serves_stale_when_allowed(cache_control, grace, expect, AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/sie"] = {"headers": {"Cache-Control": cache_control}}
        async with AnyEdge(cfg(origin, grace=grace)) as edge:
            await fetch(edge, "/sie")
            await origin.runner.cleanup()             # the origin goes away
            await asyncio.sleep(1.2)
            status, body, headers = await fetch(edge, "/sie")
            if expect == "STALE":
                assert (status, body, headers["X-Cache"]) == (200, b"body of /sie #1", "STALE")
                assert int(headers["Age"]) >= 1 and "Warning" not in headers
            else:
                assert status == expect
            await origin.runner.setup()


async def test_origin_5xx_during_revalidation_serves_stale(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/5"] = {"headers": {"Cache-Control": "max-age=1, stale-if-error=60"}}
        async with AnyEdge(cfg(origin)) as edge:
            await fetch(edge, "/5")
            await asyncio.sleep(1.2)
            origin.routes["/5"] = {"status": 503}
            status, body, headers = await fetch(edge, "/5")
            assert (status, body, headers["X-Cache"]) == (200, b"body of /5 #1", "STALE")
            assert origin.hits["/5"] == 2                 # it did ask, and the origin failed


async def test_vary_keeps_one_variant_per_header_value(AnyEdge):
    async def handler(request: web.Request) -> web.Response:
        hits[request.path] = hits.get(request.path, 0) + 1
        vary = "*" if request.path == "/star" else "Accept-Encoding"
        return web.Response(text=f"for {request.headers.get('Accept-Encoding', '-')}",
                            headers={"Cache-Control": "max-age=60", "Vary": vary})

    hits: dict[str, int] = {}
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner, port = await serve_app(app, "127.0.0.83")
    config = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                             "origin": {"http": [f"127.0.0.83:{port}"]}}]}
    try:
        async with AnyEdge(config) as edge:
            seen = []
            for encoding in ("gzip", "gzip", "br", "gzip", "br"):
                _, body, headers = await fetch(edge, "/v", **{"Accept-Encoding": encoding})
                seen.append((body.decode(), headers["X-Cache"]))
            assert seen == [("for gzip", "MISS"), ("for gzip", "HIT"), ("for br", "MISS"),
                            ("for gzip", "HIT"), ("for br", "HIT")]
            assert hits["/v"] == 2
            for _ in range(2):
                await fetch(edge, "/star")
            assert hits["/star"] == 2                       # Vary: * is never stored
    finally:
        await runner.cleanup()


async def test_cache_key_can_ignore_the_query_or_include_headers(AnyEdge):
    async with CountingOrigin() as origin:
        for path in ("/q", "/d"):
            origin.routes[path] = {"headers": {"Cache-Control": "max-age=60"}}
        async with AnyEdge(cfg(origin, ignore_query=True, key_headers=["X-Device"])) as edge:
            assert (await fetch(edge, "/q?a=1"))[2]["X-Cache"] == "MISS"
            assert (await fetch(edge, "/q?a=2"))[2]["X-Cache"] == "HIT"
            await fetch(edge, "/d", **{"X-Device": "phone"})
            assert (await fetch(edge, "/d", **{"X-Device": "tv"}))[2]["X-Cache"] == "MISS"
            assert (await fetch(edge, "/d", **{"X-Device": "phone"}))[2]["X-Cache"] == "HIT"
        assert origin.hits == {"/q": 1, "/d": 2}
        async with AnyEdge(cfg(origin)) as edge:                # by default the query counts
            await fetch(edge, "/q?a=1")
            assert (await fetch(edge, "/q?a=2"))[2]["X-Cache"] == "MISS"


BODY = bytes(range(256)) * 4            # 1024 bytes, every offset recognisable


async def ranged(edge: Edge, path: str, rng: str, **headers) -> tuple[int, bytes, dict]:
    return await fetch(edge, path, Range=rng, **headers)


async def test_ranges_on_a_cached_object(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/r"] = {"headers": {"Cache-Control": "max-age=60", "ETag": '"r1"',
                                           "Content-Type": "video/mp4"}, "body": ""}
        origin.routes["/r"]["body"] = BODY.decode("latin-1")
        async with AnyEdge(cfg(origin)) as edge:
            status, full, _ = await fetch(edge, "/r")
            assert status == 200 and full == BODY.decode("latin-1").encode()
            status, body, h = await ranged(edge, "/r", "bytes=0-99")
            assert (status, h["Content-Range"], body) == (206, f"bytes 0-99/{len(full)}", full[:100])
            assert h["X-Cache"] == "HIT" and h["Content-Type"] == "video/mp4"
            status, body, h = await ranged(edge, "/r", "bytes=-10")
            assert (status, body) == (206, full[-10:])
            status, body, h = await ranged(edge, "/r", f"bytes={len(full) - 5}-")
            assert body == full[-5:]
            status, _, h = await ranged(edge, "/r", f"bytes={len(full) + 10}-")
            assert status == 416 and h["Content-Range"] == f"bytes */{len(full)}"
            status, body, h = await ranged(edge, "/r", "bytes=abc")
            assert status == 200 and body == full                 # bad syntax: ignored
            status, body, h = await ranged(edge, "/r", "bytes=0-0", **{"If-Range": '"r1"'})
            assert (status, body) == (206, full[:1])
            status, body, h = await ranged(edge, "/r", "bytes=0-0", **{"If-Range": '"old"'})
            assert (status, body) == (200, full)                  # changed since: whole body
            status, body, h = await ranged(edge, "/r", "bytes=0-9,20-29")
            assert status == 206 and h["Content-Type"].startswith("multipart/byteranges")
            boundary = h["Content-Type"].split("boundary=")[1]
            parts = body.split(f"--{boundary}".encode())[1:-1]
            assert len(parts) == 2
            assert parts[0].endswith(full[0:10] + b"\r\n") and parts[1].endswith(full[20:30] + b"\r\n")
            assert b"Content-Range: bytes 20-29/" in parts[1]
            assert int(h["Content-Length"]) == len(body)
            assert origin.hits["/r"] == 1


async def test_range_on_a_miss_is_answered_while_the_object_is_fetched(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/m"] = {"headers": {"Cache-Control": "max-age=60"}, "slow": True,
                               "body": "0123456789" + "x" * 5000}
        async with AnyEdge(cfg(origin)) as edge:
            status, body, h = await asyncio.wait_for(ranged(edge, "/m", "bytes=2-5"), 5)
            assert (status, body, h["Content-Range"]) == (206, b"2345", "bytes 2-5/5010")
            assert not origin.release.is_set()       # answered before the origin finished
            origin.release.set()
            for _ in range(50):
                if (await fetch(edge, "/m"))[2]["X-Cache"] == "HIT":
                    break
                await asyncio.sleep(0.05)
            status, body, h = await fetch(edge, "/m")
            assert h["X-Cache"] == "HIT" and len(body) == 5010 and origin.hits["/m"] == 1


async def test_a_range_of_an_object_too_big_to_cache_costs_one_origin_request(AnyEdge):
    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Range"))
        rng = request.headers.get("Range")
        if rng:
            first, last = (int(x) for x in rng.split("=")[1].split("-"))
            return web.Response(status=206, body=b"B" * (last - first + 1), headers={
                "Content-Range": f"bytes {first}-{last}/10000"})
        return web.Response(body=b"B" * 10_000, headers={"Cache-Control": "max-age=60"})

    seen: list = []
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner, port = await serve_app(app, "127.0.0.84")
    config = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                             "origin": {"http": [f"127.0.0.84:{port}"]},
                             "cache": {"max_object": 1000}}]}
    try:
        async with AnyEdge(config) as edge:
            status, body, h = await ranged(edge, "/huge", "bytes=100-199")
            assert (status, len(body), h["Content-Range"]) == (206, 100, "bytes 100-199/10000")
            assert seen == [None]        # one origin request: the range was cut from it
            status, body, h = await ranged(edge, "/huge", "bytes=300-399")
            assert (status, len(body)) == (206, 100)
            assert seen == [None, "bytes=300-399"]     # known too big now: asked as a range
    finally:
        await runner.cleanup()


async def test_ttl_rules_by_path_pattern(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/v/a.mp4"] = {"headers": {"Cache-Control": "max-age=0"}}
        origin.routes["/s/app.js"] = {}
        origin.routes["/p/x.mp4"] = {"headers": {"Cache-Control": "private"}}
        origin.routes["/n/y.txt"] = {}
        rules = [{"match": "*.mp4", "ttl": 3600, "override": True},
                 {"match": "/s/*", "ttl": 60}]
        async with AnyEdge(cfg(origin, ttl_rules=rules)) as edge:
            for path in ("/v/a.mp4", "/s/app.js", "/p/x.mp4", "/n/y.txt"):
                for _ in range(2):
                    await fetch(edge, path)
        assert origin.hits == {"/v/a.mp4": 1,      # override beats the origin's max-age=0
                               "/s/app.js": 1,     # default rule: origin said nothing
                               "/p/x.mp4": 2,      # never overrides private
                               "/n/y.txt": 2}      # no rule, no freshness: not stored


async def test_ttl_rules_apply_to_revalidated_objects_too(AnyEdge):
    async with CountingOrigin() as origin:
        origin.routes["/app.js"] = {"headers": {"Cache-Control": "max-age=600", "ETag": '"v1"'}}
        rules = [{"match": "*.js", "ttl": 1, "override": True}]
        async with AnyEdge(cfg(origin, ttl_rules=rules)) as edge:
            await fetch(edge, "/app.js")
            await asyncio.sleep(1.2)
            assert (await fetch(edge, "/app.js"))[2]["X-Cache"] == "REVALIDATED"
            await asyncio.sleep(1.2)
            # The 304 said max-age=60, but the operator's override (1 s) still rules.
            assert (await fetch(edge, "/app.js"))[2]["X-Cache"] == "REVALIDATED"
            assert len(origin.conditional) == 2


async def test_ranges_of_an_object_too_big_to_hold_are_kept_as_parts_and_combined(AnyEdge):
    whole = bytes(range(256)) * 40                     # 10240 bytes

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Range"))
        headers = {"Cache-Control": "max-age=60", "ETag": '"v1"'}
        rng = request.headers.get("Range")
        if rng:
            first, last = (int(x) for x in rng.split("=")[1].split("-"))
            return web.Response(status=206, body=whole[first:last + 1], headers={
                **headers, "Content-Range": f"bytes {first}-{last}/{len(whole)}"})
        return web.Response(body=whole, headers=headers)

    seen: list = []
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner, port = await serve_app(app, "127.0.0.85")
    config = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                             "origin": {"http": [f"127.0.0.85:{port}"]},
                             "cache": {"max_object": 2000}}]}
    try:
        async with AnyEdge(config) as edge:
            async def part(first: int, last: int) -> str:
                status, body, h = await ranged(edge, "/video", f"bytes={first}-{last}")
                assert (status, body) == (206, whole[first:last + 1]), (first, last)
                assert h["Content-Range"] == f"bytes {first}-{last}/{len(whole)}"
                return h["X-Cache"]

            assert await part(100, 199) != "HIT"          # a miss: cut from one whole fetch
            assert await part(3000, 3999) != "HIT"        # known too big: asked as a range
            assert seen == [None, "bytes=3000-3999"]
            assert await part(3000, 3999) == "HIT"        # the 206 was kept
            assert await part(3100, 3200) == "HIT"        # and any range inside it
            assert await part(4000, 4999) != "HIT"
            assert await part(3500, 4500) == "HIT"        # the two parts combined
            assert len(seen) == 3
    finally:
        await runner.cleanup()
