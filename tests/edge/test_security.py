"""The edge as an attacker sees it: cache poisoning by unkeyed headers, paths that climb
out of a bucket or a customer's root, absolute-form targets, malformed requests."""
from __future__ import annotations

import logging

from aiohttp import web

from edge.http import refused
from tests.conftest import serve_app
from tests.edge.test_proxy import Edge
from tests.edge.wire import exchange, get


class Reflector:
    """An origin whose answer depends on headers a careless cache does not key on."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.raw_path, dict(request.headers)))
        host = request.headers.get("X-Forwarded-Host", request.host)
        return web.Response(text=f"<script src=//{host}/app.js> {request.raw_path}",
                            headers={"Cache-Control": "max-age=60"})

    async def __aenter__(self) -> "Reflector":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner, self.port = await serve_app(app, "127.0.0.86")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    def origin(self) -> dict:
        return {"http": [f"127.0.0.86:{self.port}"]}


OVERRIDES = ("X-Original-URL: /admin", "X-Rewrite-URL: /admin",
             "X-Forwarded-Scheme: nothttps", "X-HTTP-Method-Override: DELETE",
             "X-Forwarded-Port: 1234", "X-Host: evil.example")


async def test_client_forwarding_headers_are_replaced_not_passed():
    async with Reflector() as origin:
        cfg = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                              "origin": origin.origin()}]}
        async with Edge(cfg) as edge:
            status, _, body = await exchange(edge.port, get(
                "/page", "www.test.com", "X-Forwarded-Host: evil.example",
                "X-Forwarded-For: 6.6.6.6", "X-Forwarded-Proto: https",
                'Forwarded: for=6.6.6.6;host=evil.example;proto=https', *OVERRIDES))
            assert status.startswith(b"HTTP/1.1 200") and b"evil" not in body
            _, seen = origin.seen[-1]
            assert seen["X-Forwarded-Host"] == "www.test.com"
            assert seen["X-Forwarded-For"] == "127.0.0.1"
            assert seen["X-Forwarded-Proto"] == "http"
            assert seen["Forwarded"] == 'for=127.0.0.1;host=www.test.com;proto=http'
            for line in OVERRIDES:
                assert line.split(":")[0] not in seen, line
            # the clean request that follows is a hit on a clean object
            status, headers, body = await exchange(edge.port, get("/page"))
            assert headers["x-cache"] == "HIT" and b"evil" not in body
            assert len(origin.seen) == 1


async def test_a_trusted_tier_keeps_the_chain_and_a_keyed_override_passes():
    async with Reflector() as origin:
        cfg = {"trusted_proxies": ["127.0.0.0/8"],
               "customers": [{"directory": "t", "cnames": ["www.test.com"],
                              "origin": origin.origin(),
                              "cache": {"key_headers": ["X-Original-URL"]}}]}
        async with Edge(cfg) as edge:
            await exchange(edge.port, get("/k", "www.test.com", "X-Forwarded-For: 192.0.2.7",
                                          "X-Forwarded-Host: www.test.com",
                                          "Forwarded: for=192.0.2.7", "X-Original-URL: /a"))
            _, seen = origin.seen[-1]
            assert seen["X-Forwarded-For"] == "192.0.2.7, 127.0.0.1"
            assert seen["Forwarded"] == "for=192.0.2.7, for=127.0.0.1;host=www.test.com;proto=http"
            assert seen["X-Original-URL"] == "/a"                 # keyed: it may pass
            _, headers, _ = await exchange(edge.port, get("/k", "www.test.com",
                                                          "X-Original-URL: /b"))
            assert headers["x-cache"] == "MISS" and origin.seen[-1][1]["X-Original-URL"] == "/b"


async def test_cdn_url_form_sends_a_customer_host_and_quick_mode_keys_on_host():
    async with Reflector() as origin:
        cfg = {"customers": [{"directory": "t", "cnames": ["www.test.com", "alt.test.com"],
                              "origin": origin.origin()}]}
        async with Edge(cfg) as edge:
            await exchange(edge.port, get("/800001/t/u", "evil.example"))
            assert origin.seen[-1][1]["Host"] == "www.test.com"       # never the client's
            # two edge CNAMEs reach the origin with their own Host: two objects
            _, h1, b1 = await exchange(edge.port, get("/two", "www.test.com"))
            _, h2, b2 = await exchange(edge.port, get("/two", "alt.test.com"))
            assert (h1["x-cache"], h2["x-cache"]) == ("MISS", "MISS")
            assert b"//www.test.com/" in b1 and b"//alt.test.com/" in b2


async def bucket_recorder() -> tuple[web.AppRunner, int, list[str]]:
    paths: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        return web.Response(text="object", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner, port = await serve_app(app, "127.0.0.87")
    return runner, port, paths


async def test_bucket_paths_never_leave_the_bucket():
    runner, port, paths = await bucket_recorder()
    cfg = {"customers": [{"directory": "m", "cnames": ["media.test.com"], "origin": {
        "type": "s3", "address": f"127.0.0.87:{port}", "bucket": "media", "addressing": "path",
        "protocol": "http"}}]}
    try:
        async with Edge(cfg) as edge:
            for target in ("/a/../../other/x", "/..%2fother/x", "/%2e%2e/other/x",
                           "/x%2f..%2f..%2fother%2fx", "/%2E%2E%2Fother/x", "/a/%2e%2e/../x"):
                status, _, body = await exchange(edge.port, get(target, "media.test.com"))
                assert status.startswith(b"HTTP/1.1 400"), (target, status)
                assert b"%" not in body and b".." not in body
            assert paths == []                              # nothing reached the bucket
            for target, sent in (("/a/./b/../c.txt", "/media/a/c.txt"),
                                 ("/a%2fb.txt", "/media/a/b.txt"),
                                 ("/d/%2e/e.txt", "/media/d/e.txt"),
                                 ("/sp%20ace.txt", "/media/sp%20ace.txt")):
                status, _, _ = await exchange(edge.port, get(target, "media.test.com"))
                assert status.startswith(b"HTTP/1.1 200") and paths[-1] == sent, target
    finally:
        await runner.cleanup()


async def test_server_origin_and_cdn_url_paths_are_normalised_within_the_root():
    async with Reflector() as origin:
        cfg = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                              "origin": origin.origin()},
                             {"directory": "other", "cnames": ["other.test.com"],
                              "origin": origin.origin()}]}
        async with Edge(cfg) as edge:
            for target, host in (("/a/../../x", "www.test.com"), ("/%2e%2e/x", "www.test.com"),
                                 ("/800001/t/../other/x", "cdn"),
                                 ("/800001/t/%2e%2e/other/x", "cdn")):
                status, _, _ = await exchange(edge.port, get(target, host))
                assert status.startswith(b"HTTP/1.1 400"), target
            assert origin.seen == []
            for target, host, sent in (("/a/%2e%2e/b", "www.test.com", "/b"),
                                       ("/a/./b/../c", "www.test.com", "/a/c"),
                                       ("/a%2f..%2fb", "www.test.com", "/a%2f..%2fb"),
                                       ("/800001/t/a/../b?q=1", "cdn", "/b?q=1")):
                status, _, _ = await exchange(edge.port, get(target, host))
                assert status.startswith(b"HTTP/1.1 200") and origin.seen[-1][0] == sent, target
            # one object, however the path was spelled
            _, headers, _ = await exchange(edge.port, get("/a/x/../c", "www.test.com"))
            assert headers["x-cache"] == "HIT"


async def test_absolute_form_routes_by_its_authority_at_once():
    async with Reflector() as origin:
        cfg = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                              "origin": origin.origin()}]}
        async with Edge(cfg) as edge:
            status, _, body = await exchange(edge.port, get("http://www.test.com/abs?x=1",
                                                            "ignored.example"), timeout=3)
            assert status.startswith(b"HTTP/1.1 200")
            assert origin.seen[-1][0] == "/abs?x=1"
            assert origin.seen[-1][1]["Host"] == "www.test.com"
            status, _, _ = await exchange(edge.port, get(f"http://www.test.com:{edge.port}/p",
                                                         "www.test.com"), timeout=3)
            assert status.startswith(b"HTTP/1.1 200")
            status, _, _ = await exchange(edge.port, get("http://evil.example/x",
                                                         "www.test.com"), timeout=3)
            assert status.startswith(b"HTTP/1.1 404")       # never an open proxy


MALFORMED = [
    b"POST /x HTTP/1.1\r\nHost: www.test.com\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: www.test.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n"
    b"\r\nhello!",
    b"GET /x HTTP/1.1\r\nHost: www.test.com\r\nX-Big: " + b"a" * (10 * 1024 * 1024) + b"\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: www.test.com\r\nBad Header: 1\r\n\r\n",
    # whole plain GET heads, the kind edge._heads reads in one call (not llhttp)
    b"GET /x HTTP/1.1\r\nHost: www.test.com\r\nHost: evil.example\r\n\r\n",
    b"GET /x HTTP/1.1\r\nUser-Agent: no-host\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: www.test.com\r\nX: a\r\n folded\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: www.test.com\nX: bare-lf\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: www.test.com\r\nX: ctl\x01\r\n\r\n",
]


async def test_malformed_requests_get_a_plain_400_and_one_quiet_log_line(caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    # A period of its own: an earlier test's bad request (test_front's) must not have
    # used up this one's log line.
    monkeypatch.setattr(refused.BAD_LOG, "last", 0.0)
    async with Reflector() as origin:
        cfg = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                              "origin": origin.origin()}]}
        async with Edge(cfg) as edge:
            for _ in range(10):
                for data in MALFORMED:
                    try:
                        status, headers, body = await exchange(edge.port, data, timeout=10)
                    except (ConnectionResetError, BrokenPipeError):
                        continue         # refused before the client finished sending
                    assert status == b"HTTP/1.1 400 Bad Request", status
                    assert body == b"bad request\n", body
                    assert headers.get("connection") == "close"
            assert origin.seen == []
            metric = edge.state.metrics.registry.get_sample_value
            total = sum(metric("edge_bad_requests_total", {"reason": r}) or 0
                        for r in ("framing", "too_large", "syntax"))
            assert total >= 30
    assert "Traceback" not in caplog.text
    lines = [r for r in caplog.records if "bad request" in r.getMessage().lower()]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
    assert all(r.levelno <= logging.WARNING for r in caplog.records
               if r.name.startswith(("edge", "aiohttp")))
