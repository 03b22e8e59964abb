"""Origin host names resolved by IP-version policy, against the project's own DNS server."""
from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from edge.config import IPVersion
from edge.origin.resolve import ResolveError, Resolver
from tests.conftest import free_port, load_default
from tests.edge.test_proxy import Edge


@pytest.fixture
def dns(start_server):
    cfg = load_default(checks=False)
    records = cfg["zones"]["cdn.example.net."]["records"]
    records["v4"] = [{"type": "A", "value": "127.0.0.31", "ttl": 1}]
    records["v6"] = [{"type": "AAAA", "value": "::1", "ttl": 1}]
    records["dual"] = [{"type": "A", "value": "127.0.0.32", "ttl": 300},
                       {"type": "AAAA", "value": "::1", "ttl": 300}]
    records["alias"] = [{"type": "CNAME", "value": "dual.cdn.example.net."}]
    return start_server(cfg)


@pytest.mark.parametrize("name,policy,expected", [
    ("dual", IPVersion.DEFAULT, ["127.0.0.32"]),
    ("dual", IPVersion.V4_PREFERRED, ["127.0.0.32"]),
    ("dual", IPVersion.V6_PREFERRED, ["::1"]),
    ("dual", IPVersion.V6_ONLY, ["::1"]),
    ("v4", IPVersion.V6_PREFERRED, ["127.0.0.31"]),     # no AAAA: falls back to IPv4
    ("v6", IPVersion.V4_PREFERRED, ["::1"]),            # no A: falls back to IPv6
    ("v6", IPVersion.DEFAULT, None),                    # default is v4 only
    ("v4", IPVersion.V6_ONLY, None),
    ("missing.example.org", IPVersion.V4_PREFERRED, None),   # REFUSED: not a zone of that server
])
async def test_policies(dns, name, policy, expected):
    resolver = Resolver([("127.0.0.1", dns.port)])
    name = name if "." in name else f"{name}.cdn.example.net"
    if expected is None:
        with pytest.raises(ResolveError):
            await resolver.resolve(name, policy)
    else:
        assert await resolver.resolve(name, policy) == expected


async def test_ttl_is_respected_and_cname_followed(dns):
    resolver = Resolver([("127.0.0.1", dns.port)])
    assert await resolver.lookup("v4.cdn.example.net", 1) == ["127.0.0.31"]
    assert await resolver.lookup("v4.cdn.example.net", 1) == ["127.0.0.31"]
    assert resolver.queries == 1                        # cached within its 1 s TTL
    await asyncio.sleep(1.1)
    await resolver.lookup("v4.cdn.example.net", 1)
    assert resolver.queries == 2                        # asked again once it expired
    # NODATA is cached for the SOA minimum, not asked again at once
    assert await resolver.lookup("v4.cdn.example.net", 28) == []
    assert await resolver.lookup("v4.cdn.example.net", 28) == []
    assert resolver.queries == 3
    # concurrent lookups of one name share one query
    await asyncio.gather(*(resolver.lookup("dual.cdn.example.net", 1) for _ in range(20)))
    assert resolver.queries == 4


async def test_dead_name_server_then_a_live_one(dns):
    resolver = Resolver([("127.0.0.1", free_port()), ("127.0.0.1", dns.port)])
    assert await resolver.resolve("dual.cdn.example.net", IPVersion.DEFAULT) == ["127.0.0.32"]


async def test_edge_pulls_from_the_family_its_policy_picks(dns):
    port = free_port()
    seen = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.transport.get_extra_info("sockname")[0])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    for host in ("127.0.0.32", "::1"):
        await web.TCPSite(runner, host, port).start()
    try:
        for policy, family_addr in (("v4_preferred", "127.0.0.32"), ("v6_preferred", "::1")):
            cfg = {"resolver": [f"127.0.0.1:{dns.port}"], "customers": [{
                "directory": "t", "cnames": ["www.test.com"],
                "origin": {"http": [f"alias.cdn.example.net:{port}"], "ip_version": policy}}]}
            async with Edge(cfg) as edge:
                assert (await edge.get("/x"))[0] == 200
            assert seen[-1] == family_addr
    finally:
        await runner.cleanup()
