"""The pass-through shortcut (edge/origin/direct.py) against real aiohttp origins.

Every scenario runs three times: with the shortcut reading heads with edge._heads (the
default), with the shortcut reading every head through llhttp (EDGE_HEADS=0), and
with the shortcut off (every request the long way, proxy.proxy + upstream.relay).
What the origin saw and what the client got must be the same every way;
`Passes.relayed` shows the shortcut really took them, and counting edge._heads' calls
that it really read them.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os

import aiohttp
import pytest
from aiohttp import web

from edge.http import client as upstream_client, server as client_server
from tests.edge.test_proxy import Edge, Origin

VOLATILE = {"Date", "Forwarded", "X-Forwarded-For"}   # the client's port is in neither
                                                      # (Forwarded has no port; kept out
                                                      # for symmetry with the peer)


class PassOrigin(Origin):
    """test_proxy's origin, plus a chunked answer, a slow one and a closing one."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/chunked":
            self.headers.append(dict(request.headers))
            resp = web.StreamResponse(headers={"X-Origin": self.name})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(5):
                await resp.write(b"%d" % i * 3000)
            await resp.write_eof()
            return resp
        if request.path == "/slow":
            self.headers.append(dict(request.headers))
            await asyncio.sleep(5)
            return web.Response(text="late")
        if request.path == "/close":
            self.headers.append(dict(request.headers))
            return web.Response(text="bye", headers={"Connection": "close"})
        return await super().handle(request)


def pass_cfg(origins: list[Origin], **origin_opts) -> dict:
    origin = {"http": [f"{o.host}:{o.port}" for o in origins], "backoff": 0.3,
              "backoff_max": 2, "timeout": 1}
    origin.update(origin_opts)
    return {"listen": ["127.0.0.1:0"], "customers": [
        {"directory": "pass", "cnames": ["www.pass.test"], "origin": origin,
         "cache": {"enabled": False}, "alt_svc": 'h3=":443"; ma=60'}]}


@pytest.fixture
async def two():
    started = [await PassOrigin(f"127.0.0.{31 + i}", f"p{i}").start() for i in range(2)]
    yield started
    for o in started:
        await o.stop()


async def run(origins, shortcut: bool, scenario, **origin_opts):
    async with Edge(pass_cfg(origins, **origin_opts)) as edge:
        if not shortcut:
            edge.listeners.passes = None           # new connections: the long way only
        # One client connection, reused: the shortcut needs a pooled origin connection,
        # which the first request (the long way) leaves behind.
        await edge.client.close()
        edge.client = aiohttp.ClientSession(
            auto_decompress=False, connector=aiohttp.TCPConnector(limit=1))
        async with asyncio.timeout(20):
            seen = await scenario(edge)
        passes = edge.listeners.passes
        return seen, (passes.relayed if passes is not None else 0)


async def fetch(edge, path: str, method: str = "GET", **headers) -> tuple:
    async with edge.client.request(method, edge.base + path,
                                   headers={"Host": "www.pass.test", **headers}) as r:
        body = await r.read()
        kept = {k: v for k, v in r.headers.items() if k not in VOLATILE}
        return r.status, hashlib.sha256(body).hexdigest(), len(body), kept


def origin_saw(origin: Origin, n: int) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in VOLATILE} for h in origin.headers[-n:]]


class Counted:
    """edge._heads with a count of the heads it took (request, response)."""

    def __init__(self, module):
        self.module, self.requests, self.responses = module, 0, 0

    def request(self, *args):
        got = self.module.request(*args)
        self.requests += got is not None
        return got

    def response(self, *args):
        got = self.module.response(*args)
        self.responses += got is not None
        return got


@contextlib.contextmanager
def heads(on: bool):
    """edge._heads counted (on), or EDGE_HEADS=0: llhttp reads every head."""
    counted = Counted(client_server._heads)
    saved = os.environ.get("EDGE_HEADS")
    os.environ["EDGE_HEADS"] = "1" if on else "0"
    client_server._heads = upstream_client._heads = counted
    try:
        yield counted
    finally:
        client_server._heads = upstream_client._heads = counted.module
        if saved is None:
            del os.environ["EDGE_HEADS"]
        else:
            os.environ["EDGE_HEADS"] = saved


async def both(origins, scenario, **origin_opts):
    """(what the shortcut run saw, relayed) and the long way's; origins reset between.
    The shortcut runs with and without edge._heads, and must see the same both times."""
    results = []
    for shortcut, read_heads in ((True, True), (True, False), (False, True)):
        for o in origins:
            o.headers.clear()
            o.requests.clear()
            o.status = 200
        with heads(read_heads) as counted:
            results.append(await run(origins, shortcut, scenario, **origin_opts))
        if read_heads and shortcut and results[-1][1]:
            # It read the requests; these origins name a field in Connection, which
            # leaves their responses to llhttp (test_heads_relay.py has plain ones).
            assert counted.requests
        elif not read_heads:
            assert counted.requests == counted.responses == 0
    (fast, relayed), (by_llhttp, relayed_by_llhttp), (slow, none) = results
    assert none == 0
    assert (by_llhttp, relayed_by_llhttp) == (fast, relayed)
    return fast, slow, relayed


async def test_requests_and_answers_are_the_long_ways(two):
    origin = two[0]

    async def scenario(edge):
        got = [await fetch(edge, "/a?x=1", Accept="text/plain", **{"X-Keep": "yes"})
               for _ in range(3)]
        got.append(await fetch(edge, "/a?x=1", "HEAD"))
        got.append(await fetch(edge, "/chunked"))
        got.append(await fetch(edge, "/big/3000000"))
        return got, origin_saw(origin, 6)

    fast, slow, relayed = await both(two[:1], scenario)
    assert relayed >= 4                        # all but the first (nothing pooled yet)
    assert fast == slow
    answers, saw = fast
    assert [a[0] for a in answers] == [200] * 6
    assert answers[4][2] == 15000 and answers[5][2] == 3_000_000
    assert answers[0][3]["Via"] == "1.1 gslb-edge" and "X-Secret" not in answers[0][3]
    assert answers[0][3]["Cache-Status"] == "gslb-edge; fwd=bypass; fwd-status=200"
    assert saw[0]["Host"] == "www.pass.test" and saw[0]["X-Keep"] == "yes"
    assert saw[0]["CDN-Loop"] == "gslb-edge" and saw[0]["X-Forwarded-Host"] == "www.pass.test"


async def test_a_long_way_request_after_the_shortcut_on_the_same_origin_connection(two):
    # The origin connection the shortcut used goes back to the pool; a request with a
    # header only the long way handles (Via) takes it next and must be answered.
    async def scenario(edge):
        got = []
        for i in range(6):
            extra = {"Via": "1.1 other"} if i % 2 else {}
            got.append((await fetch(edge, f"/n{i}", **extra))[:3])
        return got

    fast, slow, relayed = await both(two[:1], scenario)
    assert relayed == 2 and fast == slow
    assert all(status == 200 for status, _, _ in fast)


async def test_origin_failures_answer_as_the_long_way_does(two):
    origin = two[0]

    async def scenario(edge):
        got = [(await fetch(edge, "/warm"))[0]]
        origin.status = 503                           # one server: relayed, backed off
        got.append((await fetch(edge, "/e"))[0])
        origin.status = 200
        await asyncio.sleep(0.35)                     # past the back-off
        got.append((await fetch(edge, "/ok"))[0])
        got.append((await fetch(edge, "/slow"))[0])   # 1 s timeout: 504
        await asyncio.sleep(0.35)
        got.append((await fetch(edge, "/close"))[0])  # the origin closes after it
        got.append((await fetch(edge, "/after-close"))[0])
        with pytest.raises(aiohttp.ClientPayloadError):
            await fetch(edge, "/cut")                 # cut short: the client sees it
        await asyncio.sleep(0.35)
        got.append((await fetch(edge, "/after-cut"))[0])
        errors = edge.state.metrics.origin_errors.children
        return got, sorted(k[2] for k in errors)

    fast, slow, relayed = await both(two[:1], scenario)
    assert relayed >= 4 and fast == slow
    statuses, reasons = fast
    assert statuses == [200, 503, 200, 504, 200, 200, 200]
    assert "http_503" in reasons and "timeout" in reasons and "truncated" in reasons


async def test_a_5xx_tries_the_next_server(two):
    async def scenario(edge):
        got = [(await fetch(edge, "/warm"))[0] for _ in range(2)]
        two[0].status = 500
        two[1].status = 200
        got += [(await fetch(edge, f"/r{i}"))[3].get("X-Origin") for i in range(4)]
        return got

    fast, slow, relayed = await both(two, scenario, balancing="failover")
    assert relayed >= 1 and fast == slow
    assert fast[:2] == [200, 200] and fast[2:] == ["p1"] * 4


async def test_a_client_that_goes_away_mid_body_leaves_the_edge_serving(two):
    origin = two[0]
    async with Edge(pass_cfg([origin])) as edge:
        await edge.get("/warm", host="www.pass.test")
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"GET /big/50000000 HTTP/1.1\r\nHost: www.pass.test\r\n\r\n")
        await writer.drain()
        await reader.readexactly(100_000)           # the body is flowing, then we go
        writer.transport.abort()
        await asyncio.sleep(0.3)
        assert edge.listeners.passes.relayed >= 1
        async with asyncio.timeout(5):
            status, body, _ = await edge.get("/after", host="www.pass.test")
        assert status == 200 and body.startswith("p0 /after")


async def test_pass_through_at_the_default_worker_count(two):
    # `edge serve` as users start it: every worker relays by the shortcut and by the
    # long way in turn on its pooled origin connections, nothing hangs and nothing
    # unobserved reaches the log (ServedEdge checks it on exit).
    from tests.edge.served import ServedEdge

    origin = two[0]
    async with ServedEdge(pass_cfg([origin])) as edge:
        await edge.client.close()
        edge.client = aiohttp.ClientSession(
            auto_decompress=False, connector=aiohttp.TCPConnector(limit=4))

        async def one(i: int) -> tuple:
            path = ("/chunked", "/big/300000", f"/n{i}", f"/v{i}")[i % 4]
            extra = {"Via": "1.1 other"} if i % 4 == 3 else {}
            status, _, size, headers = await fetch(edge, path, **extra)
            return status, size, headers.get("Cache-Status")

        async with asyncio.timeout(30):
            got = await asyncio.gather(*(one(i) for i in range(80)))
        assert [g[0] for g in got] == [200] * 80
        assert [g[1] for g in got[:2]] == [15000, 300000]
        assert {g[2] for g in got} == {"gslb-edge; fwd=bypass; fwd-status=200"}
