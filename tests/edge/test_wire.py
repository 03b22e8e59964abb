"""The edge on the wire with origins that do what frameworks never do: interim 1xx
responses, keep-alive connections closed under the edge, bodies longer than their
Content-Length, no Content-Type; and the edge's own error answers."""
from __future__ import annotations

import asyncio
import time

from tests.conftest import free_port
from tests.edge.test_proxy import Edge
from tests.edge.wire import RawOrigin, exchange, get, read_request


def customer(origin: RawOrigin, **cache) -> dict:
    return {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                           "origin": origin.origin(timeout=1, backoff=5), "cache": cache}]}


async def read_all_responses(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """Status lines and heads of `count` responses (1xx included) and the final body."""
    heads = []
    for _ in range(count):
        heads.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
    return heads


async def test_interim_responses_are_forwarded_and_never_cached():
    async def origin_side(reader, writer, n):
        while True:
            line, headers, _ = await read_request(reader)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"
                         b"HTTP/1.1 102 Processing\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
                         b"Content-Length: 4\r\n\r\npage")
            await writer.drain()

    async with RawOrigin(origin_side) as origin:
        for cache in ({}, {"enabled": False}):
            async with Edge(customer(origin, **cache)) as edge:
                reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
                writer.write(get("/p").replace(b"Connection: close\r\n", b""))
                heads = await read_all_responses(reader, 3)
                assert heads[0].startswith(b"HTTP/1.1 103 Early Hints\r\n")
                assert b"Link: </app.css>; rel=preload" in heads[0]
                assert heads[1].startswith(b"HTTP/1.1 102")
                assert heads[2].startswith(b"HTTP/1.1 200")
                assert await reader.readexactly(4) == b"page"
                if not cache:                       # the hit that follows has no 1xx
                    writer.write(get("/p"))
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                    assert head.startswith(b"HTTP/1.1 200") and b"X-Cache: HIT" in head
                writer.close()


async def test_100_continue_comes_from_the_origin_not_the_edge():
    async def origin_side(reader, writer, n):
        head = (await reader.readuntil(b"\r\n\r\n")).decode()   # the body comes after a 100
        line = head.split("\r\n", 1)[0].encode()
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (x.partition(":") for x in head.split("\r\n")[1:] if x)}
        if line.startswith(b"PUT /refused"):
            writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            return
        await asyncio.sleep(0.3)                    # the origin takes its time to agree
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        body = await reader.readexactly(int(headers["content-length"]))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    async with RawOrigin(origin_side) as origin:
        async with Edge(customer(origin)) as edge:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            start = time.monotonic()
            writer.write(b"PUT /upload HTTP/1.1\r\nHost: www.test.com\r\nContent-Length: 5\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 100 Continue")
            assert time.monotonic() - start >= 0.25          # when the origin said so
            writer.write(b"hello")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(5) == b"hello"
            writer.close()
            status, _, _ = await exchange(edge.port, b"PUT /refused HTTP/1.1\r\nHost: "
                                          b"www.test.com\r\nContent-Length: 5\r\n"
                                          b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 413")         # never a 100 first


async def test_a_pooled_connection_the_origin_closed_is_retried_on_a_new_one():
    async def origin_side(reader, writer, n):
        line, headers, body = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body) + 2, b"ok" + body))
        await writer.drain()
        # Keep-alive as far as the edge knows; the next request on this connection is
        # dropped unanswered, as when an idle timeout closes it just as the edge sends.
        await read_request(reader)

    async with RawOrigin(origin_side) as origin:
        async with Edge(customer(origin, enabled=False)) as edge:
            for i in range(4):
                assert (await edge.get(f"/r{i}"))[:2] == (200, "ok")
            async with edge.client.post(edge.base + "/form", data=b"=body",
                                        headers={"Host": "www.test.com"}) as r:
                assert (r.status, await r.read()) == (200, b"ok=body")  # replayed whole
            pool = edge.state.pools[("t", "http")]
            assert all(s.failures == 0 for s in pool.state.values())   # no back-off
            assert edge.state.client.retried >= 4


async def test_a_fresh_connection_closed_without_an_answer_is_a_502_not_a_retry_loop():
    async def origin_side(reader, writer, n):
        await read_request(reader)                  # and close: never an answer

    async with RawOrigin(origin_side) as origin:
        async with Edge(customer(origin, enabled=False)) as edge:
            status, _, headers = await edge.get("/x")
            assert status == 502 and origin.connections == 1


async def test_an_origin_sending_more_than_its_content_length():
    async def origin_side(reader, writer, n):
        line, _, _ = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n"
                     b"\r\nhelloEXTRA BYTES THAT ARE NOT PART OF IT")
        await writer.drain()
        try:
            await read_request(reader)              # the edge must not reuse this one
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nWRONG")
        except asyncio.IncompleteReadError:
            pass

    async with RawOrigin(origin_side) as origin:
        for cache in ({}, {"enabled": False}):
            async with Edge(customer(origin, **cache)) as edge:
                for path in ("/a", "/b", "/a"):
                    status, _, body = await exchange(edge.port, get(path))
                    assert status.startswith(b"HTTP/1.1 200") and body == b"hello", path


async def test_no_content_type_is_invented_and_own_errors_are_plain_with_via():
    async def origin_side(reader, writer, n):
        while True:
            line, _, _ = await read_request(reader)
            if b"/slow" in line:
                await asyncio.sleep(3)
            writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
                         b"Content-Length: 3\r\n\r\nraw")
            await writer.drain()

    async with RawOrigin(origin_side) as origin:
        async with Edge(customer(origin)) as edge:
            for _ in range(2):                                # MISS, then HIT
                _, headers, body = await exchange(edge.port, get("/untyped"))
                assert body == b"raw" and "content-type" not in headers
            _, headers, _ = await exchange(edge.port, get("/untyped", "www.test.com",
                                                          "Range: bytes=0-1"))
            assert "content-type" not in headers and headers["content-range"] == "bytes 0-1/3"
            errors = [(get("/x", "nobody.example"), b"404"), (get("/../x"), b"400"),
                      (get("/slow"), b"504")]
            for request, code in errors:
                status, headers, body = await exchange(edge.port, request, timeout=10)
                assert status.split(b" ")[1] == code, (request, status)
                assert headers["content-type"] == "text/plain; charset=utf-8"
                assert headers["via"] == "1.1 gslb-edge" and "gslb-edge" in headers["cache-status"]
                assert body.endswith(b"\n") and b"<" not in body
    dead = free_port()
    async with Edge({"customers": [{"directory": "t", "cnames": ["www.test.com"],
                                    "origin": {"http": [f"127.0.0.1:{dead}"]}}]}) as edge:
        status, headers, body = await exchange(edge.port, get("/gone"))
        assert status.startswith(b"HTTP/1.1 502") and headers["via"] == "1.1 gslb-edge"
        assert headers["cache-status"].startswith("gslb-edge; fwd=uri-miss")
        assert headers["content-type"] == "text/plain; charset=utf-8"
