"""The hit shortcut below aiohttp: same answers as the long way, never a wrong one."""
from __future__ import annotations

import asyncio

import yaml

from cdnkit.yamlsrc import load_yaml_text
from edge import config as edge_config
from edge.http import front
from edge.http import server
from tests.edge.test_cache import CountingOrigin, cfg, fetch
from tests.edge.test_proxy import Edge


async def raw(edge: Edge, *requests: bytes, read_until: int = 1) -> list[bytes]:
    """Send requests on one new connection (pipelined); the responses split apart."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"".join(requests))
    out = []
    try:
        for _ in range(read_until):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            is_head = requests[len(out)].startswith(b"HEAD")
            body = b"" if is_head or b" 304 " in head.split(b"\r\n")[0] else \
                await reader.readexactly(length)
            out.append(head + body)
    finally:
        writer.close()
    return out


def request(path: str, method: str = "GET", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: www.test.com", "User-Agent: t"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def headers_of(response: bytes) -> dict[str, str]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head)}


def answered_by_hits(monkeypatch) -> list[bool]:
    """From now on, whether each request was answered by the hit shortcut, in order."""
    served: list[bool] = []
    real = front.Hits.answer

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        served.append(out is not None)
        return out

    monkeypatch.setattr(front.Hits, "answer", spy)
    return served


async def test_shortcut_answers_like_the_long_way(monkeypatch):
    async with CountingOrigin() as origin:
        origin.routes["/a"] = {"headers": {"Cache-Control": "max-age=60", "ETag": '"1"',
                                           "Via": "1.1 upstream", "X-Origin": "o"}}
        async with Edge(cfg(origin)) as edge:
            await fetch(edge, "/a")                                  # MISS fills the cache
            served = answered_by_hits(monkeypatch)
            fast = (await raw(edge, request("/a")))[0]
            assert served == [True]
            slow = (await raw(edge, request("/a", Pragma="x")))[0]   # Pragma: the long way
            assert served == [True, False]
            assert fast.split(b"\r\n\r\n", 1)[1] == slow.split(b"\r\n\r\n", 1)[1] == b"body of /a #1"
            f, s = headers_of(fast), headers_of(slow)
            for name in ("etag", "cache-control", "x-origin", "via", "x-cache", "content-length",
                         "accept-ranges", "age"):
                assert f[name] == s[name], name
            assert f["via"] == "1.1 upstream, 1.1 gslb-edge" and f["x-cache"] == "HIT"
            assert fast.startswith(b"HTTP/1.1 200 OK\r\n") and origin.hits["/a"] == 1
            head = (await raw(edge, request("/a", "HEAD")))[0]
            assert head.endswith(b"\r\n\r\n") and headers_of(head)["content-length"] == "13"


async def test_pipelined_hits_then_a_miss_on_one_connection():
    async with CountingOrigin() as origin:
        origin.routes["/h"] = {"headers": {"Cache-Control": "max-age=60"}}
        origin.routes["/new"] = {"headers": {"Cache-Control": "max-age=60"}}
        async with Edge(cfg(origin)) as edge:
            await fetch(edge, "/h")
            out = await raw(edge, request("/h"), request("/h"), request("/new"), request("/h"),
                            read_until=4)
            bodies = [r.split(b"\r\n\r\n", 1)[1] for r in out]
            assert bodies == [b"body of /h #1", b"body of /h #1", b"body of /new #1",
                              b"body of /h #1"]
            assert [headers_of(r)["x-cache"] for r in out] == ["HIT", "HIT", "MISS", "HIT"]
            assert origin.hits == {"/h": 1, "/new": 1}


async def test_what_must_not_take_the_shortcut():
    async with CountingOrigin() as origin:
        origin.routes["/v"] = {"headers": {"Cache-Control": "max-age=60", "Vary": "Accept-Language",
                                           "ETag": '"e"'}}
        origin.routes["/stale"] = {"headers": {"Cache-Control": "max-age=1"}}
        origin.routes["/fresh"] = {"headers": {"Cache-Control": "max-age=60"}}
        async with Edge(cfg(origin)) as edge:
            await fetch(edge, "/fresh")
            await fetch(edge, "/v", **{"Accept-Language": "en"})
            await fetch(edge, "/stale")
            await asyncio.sleep(1.2)
            # another language is another variant: the shortcut must not answer the English one
            fr = (await raw(edge, request("/v", Accept_Language="fr")))[0]
            assert headers_of(fr)["x-cache"] == "MISS" and origin.hits["/v"] == 2
            # a stale object is revalidated, not served as a fresh hit
            stale = (await raw(edge, request("/stale")))[0]
            assert headers_of(stale)["x-cache"] != "HIT" and origin.hits["/stale"] == 2
            # conditionals and ranges get their proper answers
            cond = (await raw(edge, request("/v", Accept_Language="en", If_None_Match='"e"')))[0]
            assert cond.startswith(b"HTTP/1.1 304")
            rng = (await raw(edge, request("/v", Accept_Language="en", Range="bytes=0-3")))[0]
            assert rng.startswith(b"HTTP/1.1 206") and rng.endswith(b"\r\n\r\nbody")
            # an unknown host and the edge's own paths
            other = (await raw(edge, b"GET /v HTTP/1.1\r\nHost: evil.example\r\n\r\n"))[0]
            assert other.startswith(b"HTTP/1.1 404")
            # a header hidden in an obs-fold line is not for the shortcut to judge
            folded = (await raw(edge, b"GET /fresh HTTP/1.1\r\nHost: www.test.com\r\n"
                                      b"X-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n"))[0]
            assert folded.split(b" ")[1] == b"400"
            health = (await raw(edge, b"GET /healthz HTTP/1.1\r\nHost: www.test.com\r\n\r\n"))[0]
            assert b'"status": "ok"' in health


async def test_idle_connections_are_closed(monkeypatch):
    monkeypatch.setattr(server, "IDLE_TIMEOUT", 0.3)
    async with CountingOrigin() as origin:
        async with Edge(cfg(origin)) as edge:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            writer.write(b"GET /x HTTP/1.1\r\nHost: www.te")       # never finished
            assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the edge
            writer.close()


async def test_a_host_that_passes_through_is_a_hit_again_once_its_customer_caches(
        monkeypatch):
    # Hits keeps the Host values of customers that do not cache (they are never hits):
    # under a new config that caches them, and for the CDN URLs of the edge's own
    # name (routed by the path, not the Host), the hits must come back.
    async with CountingOrigin() as origin:
        origin.routes["/a"] = {"headers": {"Cache-Control": "max-age=60"}}
        config = {"account": "800001", "customers": [
            {"directory": "t", "cnames": ["www.test.com"], "cache": {"enabled": False},
             "origin": {"http": [f"127.0.0.81:{origin.port}"]}},
            {"directory": "c", "cnames": ["cached.test"],
             "origin": {"http": [f"127.0.0.81:{origin.port}"]}}]}
        async with Edge(config) as edge:
            for _ in range(3):
                assert b"X-Cache" not in (await raw(edge, request("/a")))[0]
            assert origin.hits["/a"] == 3
            assert edge.listeners.hits._passing == {b"www.test.com"}
            for directory in ("t", "c") * 2:          # t: twice from the origin; c: once
                await raw(edge, f"GET /800001/{directory}/a HTTP/1.1\r\n"
                                f"Host: cdn.example.net\r\n\r\n".encode())
            assert origin.hits["/a"] == 6
            assert edge.listeners.hits._passing == {b"www.test.com"}

            cached = {**config, "customers": [{**config["customers"][0], "cache": {}},
                                              config["customers"][1]]}
            edge.state.apply(edge_config.build(
                load_yaml_text(yaml.safe_dump(cached), "edge.yaml"), "edge.yaml"))
            served = answered_by_hits(monkeypatch)
            answers = [(await raw(edge, request("/a")))[0] for _ in range(3)]
            assert origin.hits["/a"] == 7              # one miss, then hits
            assert [headers_of(a).get("x-cache") for a in answers] == ["MISS", "HIT", "HIT"]
            assert served == [False, True, True]       # by the shortcut, not the long way
