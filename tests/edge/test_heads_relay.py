"""The pass-through shortcut reading origin heads with edge._heads, against an origin
that writes its bytes exactly as told: the head and body in one write or spread over
several, more than Content-Length, a close or a stall mid-body. Each scenario runs
with edge._heads and with llhttp alone (EDGE_HEADS=0): the client must get the same
answers and the origin see the same connections either way."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.edge.test_passthrough import heads, pass_cfg, run
from tests.edge.test_proxy import Edge
from tests.edge.wire import RawOrigin, read_request

BODY = bytes(range(256)) * 20                 # 5120 bytes


def head(length: int, status: str = "200 OK", extra: bytes = b"",
         shield: bool = True) -> bytes:
    """`shield`: with the Via and Cache-Status a shield in front of the origin adds."""
    mark = b"Via: 1.1 shield\r\nCache-Status: shield; fwd=miss\r\n" if shield else b""
    return (b"HTTP/1.1 %s\r\nServer: raw\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n%s%s\r\n" % (status.encode(), length, mark, extra))


def script(method: str, path: str) -> list:
    """What the origin writes for a request: bytes, pauses (floats) and "close"."""
    if path.startswith("/whole") or path == "/warm":
        return [head(len(BODY)) + (BODY if method == "GET" else b"")]
    if path.startswith("/plain"):
        return [head(len(BODY), shield=False) + (BODY if method == "GET" else b"")]
    if path == "/gone":
        return [head(len(BODY), "410 Gone", shield=False) + BODY]
    if path == "/split":
        return [head(len(BODY)), 0.05, BODY[:1000], 0.05, BODY[1000:3000], 0.05, BODY[3000:]]
    if path == "/headsplit":
        whole = head(len(BODY)) + BODY
        return [whole[:30], 0.05, whole[30:]]
    if path == "/extra":
        return [head(5) + b"hello" + b"NOT PART OF IT"]
    if path == "/empty":
        return [head(0)]
    if path == "/nocontent":
        return [b"HTTP/1.1 204 No Content\r\nServer: raw\r\n\r\n"]
    if path == "/cut":
        return [head(100_000) + BODY[:1000], 0.05, "close"]
    if path == "/stall":
        return [head(100_000) + BODY[:1000], 3.0]
    if path == "/closing":
        return [head(len(BODY), extra=b"Connection: close\r\n") + BODY, "close"]
    return [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"]


async def scripted_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          n: int) -> None:
    """wire.RawOrigin's handler: every request on the connection answered by `script`."""
    while True:
        line, _, _ = await read_request(reader)
        method, path = line.decode().split(" ")[:2]
        for step in script(method, path):
            if step == "close":
                return
            if isinstance(step, float):
                await writer.drain()
                await asyncio.sleep(step)
            else:
                writer.write(step)
        await writer.drain()


async def ask(edge, path: str, method: str = "GET") -> tuple:
    try:
        async with edge.client.request(method, edge.base + path,
                                       headers={"Host": "www.pass.test"}) as r:
            body = await r.read()
            kept = {k: v for k, v in r.headers.items() if k != "Date"}
            return r.status, body, kept
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        return "cut", type(exc).__name__


async def scripted(origin: RawOrigin, paths: list[tuple[str, str]]) -> tuple:
    """Every answer, and the origin's connections, with and without edge._heads."""
    results = []
    for read_heads in (True, False):
        origin.connections = 0
        with heads(read_heads) as counted:
            async def scenario(edge):
                return [await ask(edge, path, method) for method, path in paths]
            got, relayed = await run([origin], True, scenario)
        results.append((got, relayed, origin.connections, counted.responses))
    (got, relayed, conns, taken), (by_llhttp, relayed2, conns2, _) = results
    assert (got, relayed, conns) == (by_llhttp, relayed2, conns2)
    return got, relayed, conns, taken


@pytest.fixture
async def origin():
    async with RawOrigin(scripted_origin, "127.0.0.45") as started:
        yield started


async def test_bodies_whole_or_in_pieces_and_the_connection_kept(origin):
    paths = [("GET", "/warm"), ("GET", "/whole1"), ("GET", "/split"), ("HEAD", "/whole2"),
             ("GET", "/headsplit"), ("GET", "/empty"), ("GET", "/nocontent"),
             ("GET", "/whole3")]
    got, relayed, conns, taken = await scripted(origin, paths)
    assert [g[0] for g in got] == [200, 200, 200, 200, 200, 200, 204, 200]
    assert [len(g[1]) for g in got] == [5120, 5120, 5120, 0, 5120, 0, 0, 5120]
    assert got[2][1] == BODY and got[4][1] == BODY
    assert got[3][2]["Content-Length"] == "5120"               # HEAD: the GET's length
    assert got[1][2]["Via"] == "1.1 shield, 1.1 gslb-edge"
    assert got[1][2]["Cache-Status"] == ("shield; fwd=miss, gslb-edge; fwd=bypass; "
                                         "fwd-status=200")
    assert relayed == 7 and conns == 1                       # one origin connection for all
    assert taken == 6                                        # all but /headsplit


async def test_the_edge_s_own_lines_with_and_without_the_origin_s(origin):
    # Direct.whole keeps the edge's own lines per status and version when the origin
    # sent no Via or Cache-Status: a later response that has them must still get them
    # combined, and another status its own fwd-status.
    paths = [("GET", "/warm"), ("GET", "/plain1"), ("HEAD", "/plain2"), ("GET", "/whole1"),
             ("GET", "/plain3"), ("GET", "/gone"), ("GET", "/plain4")]
    got, relayed, conns, taken = await scripted(origin, paths)
    assert [g[0] for g in got] == [200, 200, 200, 200, 200, 410, 200]
    assert [len(g[1]) for g in got] == [5120, 5120, 0, 5120, 5120, 5120, 5120]
    edge_only = "gslb-edge; fwd=bypass; fwd-status=200"
    for n in (1, 2, 4, 6):
        assert (got[n][2]["Via"], got[n][2]["Cache-Status"]) == ("1.1 gslb-edge", edge_only)
    assert got[3][2]["Via"] == "1.1 shield, 1.1 gslb-edge"
    assert got[3][2]["Cache-Status"] == "shield; fwd=miss, " + edge_only
    assert got[5][2]["Cache-Status"] == "gslb-edge; fwd=bypass; fwd-status=410"
    assert relayed == 6 and conns == 1 and taken == 6


async def test_more_than_content_length_is_dropped_and_the_connection_closed(origin):
    got, relayed, conns, taken = await scripted(
        origin, [("GET", "/warm"), ("GET", "/extra"), ("GET", "/whole")])
    assert [g[:2] for g in got[1:]] == [(200, b"hello"), (200, BODY)]
    assert relayed == 1 and taken == 1                       # /whole: no idle connection
    assert conns == 2


async def test_an_origin_that_closes_mid_body_cuts_the_client_off(origin):
    got, relayed, conns, taken = await scripted(
        origin, [("GET", "/warm"), ("GET", "/cut"), ("GET", "/whole"), ("GET", "/closing"),
                 ("GET", "/whole")])
    assert got[1] == ("cut", "ClientPayloadError")
    assert got[2][:2] == got[3][:2] == got[4][:2] == (200, BODY)
    assert relayed == 2 and taken == 2 and conns == 3       # /cut, /closing: not kept


async def test_an_origin_that_stalls_mid_body_times_out(origin):
    # pass_cfg's origin timeout is 1 s: the client is cut off, the edge serves on.
    got, relayed, conns, taken = await scripted(
        origin, [("GET", "/warm"), ("GET", "/stall"), ("GET", "/whole")])
    assert got[1] == ("cut", "ClientPayloadError")
    assert got[2][:2] == (200, BODY)
    assert relayed == 1 and taken == 1 and conns == 2


async def test_a_lane_is_one_client_s_one_host_s_one_version_s():
    # Passes.lanes keeps, per (Host, scheme, client address, HTTP version), what the
    # origin is sent besides the target: each client must still be named in its own
    # X-Forwarded-For, each version in its own Via, each Host sent as its own, however
    # the requests interleave; and a customer with two servers (whose order changes
    # with their health) never gets a lane.
    seen: list[tuple[str, str, str, str]] = []

    async def recording(reader, writer, n: int) -> None:
        while True:
            line, fields, _ = await read_request(reader)
            seen.append((line.decode().split(" ")[1], fields["host"],
                         fields["x-forwarded-for"], fields["via"]))
            writer.write(head(len(BODY), shield=False) + BODY)
            await writer.drain()

    async def ask_raw(edge, client: str, host: str, version: str, path: str) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port,
                                                       local_addr=(client, 0))
        try:
            writer.write(f"GET {path} HTTP/{version}\r\nHost: {host}\r\n\r\n".encode())
            status = await reader.readuntil(b"\r\n")
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(len(BODY))
            return int(status.split()[1])
        finally:
            writer.close()

    async with RawOrigin(recording, "127.0.0.46") as one, \
            RawOrigin(recording, "127.0.0.47") as other:
        cfg = pass_cfg([one])
        cfg["customers"][0]["cnames"].append("alt.pass.test")
        cfg["customers"].append({"directory": "two", "cnames": ["www.two.test"],
                                 "origin": {"http": [f"{one.host}:{one.port}",
                                                     f"{other.host}:{other.port}"]},
                                 "cache": {"enabled": False}})
        async with Edge(cfg) as edge:
            asked = []
            for n in range(3):                  # the first pools, the second makes lanes
                for client, host, version in (("127.0.0.1", "www.pass.test", "1.1"),
                                              ("127.0.0.2", "www.pass.test", "1.1"),
                                              ("127.0.0.1", "alt.pass.test", "1.1"),
                                              ("127.0.0.1", "www.pass.test", "1.0"),
                                              ("127.0.0.2", "www.two.test", "1.1")):
                    path = f"/{n}/{client}/{host}/{version}"
                    asked.append((path, host, client, f"{version} gslb-edge"))
                    assert await ask_raw(edge, client, host, version, path) == 200
            lanes = edge.listeners.passes.lanes
            assert {key[0] for key in lanes} == {b"www.pass.test", b"alt.pass.test"}
            assert edge.listeners.passes.relayed >= 8
    assert seen == asked
