"""Every cache path behaves the same at the default worker count as at one.

At the default count the workers share a disk tier: a fill writes a part file
that the other workers follow. Chunked bodies (length unknown up front) once
crashed that writer, and the clients of the fill waited until the edge was stopped.
"""
from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from aiohttp import web

from edge.cache import disk as disk_module
from tests.conftest import free_port, serve_app
from tests.edge.served import AnyEdge  # noqa: F401  (a fixture)
from tests.edge.test_proxy import Edge

SIZES = (0, 1, 2000, 64 * 1024 + 7, 5 * 1000 * 1000)
TIMEOUT = aiohttp.ClientTimeout(total=15)


def pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


class ChunkedOrigin:
    """/chunked/N: N bytes with Transfer-Encoding: chunked, in pieces; the query's
    `cc` is the Cache-Control (max-age=60 unless given)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: dict[str, int] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        body = pattern(int(request.match_info["n"]))
        resp = web.StreamResponse(headers={
            "Cache-Control": request.query.get("cc", "max-age=60"), "ETag": '"c1"'})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 100_000):
            await resp.write(body[i:i + 100_000])
        await resp.write_eof()
        return resp

    async def __aenter__(self) -> "ChunkedOrigin":
        app = web.Application()
        app.router.add_get("/chunked/{n}", self.handle)
        self.runner, _ = await serve_app(app, "127.0.0.82", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


def config(origin: ChunkedOrigin) -> dict:
    return {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                           "origin": {"http": [f"127.0.0.82:{origin.port}"]}}]}


async def get(edge, path: str, **headers) -> tuple[int, bytes, dict]:
    async with edge.client.get(edge.base + path, timeout=TIMEOUT,
                               headers={"Host": "www.test.com", **headers}) as r:
        return r.status, await r.read(), r.headers.copy()


async def test_cacheable_chunked_bodies_of_any_size_are_answered_and_stored(AnyEdge):
    async with ChunkedOrigin() as origin, AnyEdge(config(origin)) as edge:
        for n in SIZES:
            path = f"/chunked/{n}"
            # Several clients at once: they land on different workers and coalesce.
            first = await asyncio.gather(*(get(edge, path) for _ in range(4)))
            for status, body, _ in first:
                assert (status, len(body), body == pattern(n)) == (200, n, True), n
            # Every worker then serves it from the cache (the shared disk tier).
            later = await asyncio.gather(*(get(edge, path) for _ in range(6)))
            for status, body, headers in later:
                assert (status, body == pattern(n), headers["X-Cache"]) == (200, True, "HIT"), n
            assert origin.hits[path] <= 2, (n, origin.hits[path])


async def test_ranges_and_conditionals_of_a_chunked_object(AnyEdge):
    n = 300_000
    async with ChunkedOrigin() as origin, AnyEdge(config(origin)) as edge:
        status, body, _ = await get(edge, f"/chunked/{n}", Range="bytes=1000-1999")
        # On the miss the length is not known yet: the whole object (RFC 9110 14.2 lets a
        # server ignore Range), or the range once it can be cut.
        assert (status, body) in ((206, pattern(n)[1000:2000]), (200, pattern(n)))
        status, body, headers = await get(edge, f"/chunked/{n}", Range="bytes=-10")
        assert (status, body) == (206, pattern(n)[-10:])                # on the hit
        assert headers["Content-Range"] == f"bytes {n - 10}-{n - 1}/{n}"
        status, body, _ = await get(edge, f"/chunked/{n}", **{"If-None-Match": '"c1"'})
        assert (status, body) == (304, b"")


async def test_a_chunked_no_store_body_passes_through(AnyEdge):
    async with ChunkedOrigin() as origin, AnyEdge(config(origin)) as edge:
        for _ in range(2):
            status, body, headers = await get(edge, "/chunked/5000?cc=no-store")
            assert (status, body, headers["X-Cache"] in ("MISS", "PASS")) == (200, pattern(5000), True)
        assert origin.hits["/chunked/5000"] == 2


async def test_a_fault_in_a_fill_is_logged_with_the_url_and_answered(tmp_path, monkeypatch,
                                                                     caplog):
    """A bug of ours in the fill (here: the disk writer raising) reaches every client as a
    502 or an aborted body, at once, never as a wait; it is logged once with the URL, and
    the origin is not marked failed for it."""
    def broken(*_args, **_kw):
        raise RuntimeError("injected fault")

    async with ChunkedOrigin() as origin:
        cfg = {**config(origin), "cache_disk": str(tmp_path / "cache")}
        async with Edge(cfg) as edge:
            monkeypatch.setattr(disk_module.PartWriter, "append", broken)
            caplog.set_level(logging.INFO)
            results = await asyncio.wait_for(asyncio.gather(
                *(get(edge, "/chunked/2000") for _ in range(3)), return_exceptions=True), 10)
            for result in results:
                assert isinstance(result, aiohttp.ClientError) or result[0] == 502, result
            faults = [r for r in caplog.records if "/chunked/2000" in r.getMessage()
                      and r.exc_info]
            # Once per fill (one per origin request), each with its URL.
            assert 1 <= len(faults) == origin.hits["/chunked/2000"], [
                r.getMessage() for r in caplog.records]
            assert not any("skipping it" in r.getMessage() for r in caplog.records)
            monkeypatch.undo()
            # The origin is still in use and nothing half-written was kept.
            status, body, headers = await get(edge, "/chunked/2000")
            assert (status, body, headers["X-Cache"]) == (200, pattern(2000), "MISS")
            status, _, headers = await get(edge, "/chunked/2000")
            assert (status, headers["X-Cache"]) == (200, "HIT")


@pytest.mark.parametrize("n", [0, 2000])
async def test_served_edge_log_stays_clean_under_aborted_clients(AnyEdge, n):
    """Clients that go away mid-fill leave no dead task behind (the served edge's log is
    checked for unobserved task errors when it stops)."""
    async with ChunkedOrigin() as origin, AnyEdge(config(origin)) as edge:
        tasks = [asyncio.ensure_future(get(edge, f"/chunked/{5_000_000 + n}")) for _ in range(4)]
        await asyncio.sleep(0.05)
        for t in tasks[:2]:
            t.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        for result in done[2:]:
            assert result[0] == 200 and len(result[1]) == 5_000_000 + n
