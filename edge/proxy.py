"""The edge proxy: route a request to its customer, pull from the origin, stream back.

Thin handlers: `route` (Host = edge CNAME, or the CDN URL `/<account>/<directory>/`),
then `cached` (cached.py) for GET/HEAD, or `pull` and `relay` (upstream.py) for
everything else. Anything that routes nowhere is 404: this is never an open
proxy and never fetches a URL the client chose. Also here: the app, WebSocket pass-through, purge, /healthz and /metrics.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest

from .cached import cache_eligible, cached
from .disk import DiskStore
from .forward import to_origin, trusted
from .model import Customer, Protocol, Server
from .origin import OriginPool
from .route import BadPath, origin_host, route, split_target
from .state import EdgeState
from .upstream import MAX_TIERS, SAFE_METHODS, describe, pull, relay, via_header

log = logging.getLogger("edge.proxy")

STATE = web.AppKey("state", EdgeState)


async def proxy(request: web.Request) -> web.StreamResponse:
    state: EdgeState = request.app[STATE]
    config = state.config
    client_host = request.headers.get("Host", "")
    try:
        customer, path = route(config, client_host, request.raw_path)
    except BadPath:
        raise web.HTTPBadRequest(text="bad request\n") from None
    if customer is None:
        if request.path == PURGE_PATH and request.method == "POST":
            return await _purge(request, state)      # only where no customer routes
        raise web.HTTPNotFound(text="no such CDN host or directory\n")
    if not request.raw_path.startswith("/"):
        client_host = split_target(client_host, request.raw_path)[0]
    passed = [e.split(";", 1)[0].strip() for v in request.headers.getall("CDN-Loop", [])
              for e in v.split(",")]
    if config.name in passed or len(passed) > MAX_TIERS:
        # RFC 8586: this request has been through us already; forwarding it again would
        # start a storm between misconfigured tiers.
        state.metrics.requests.labels(customer.directory, "508").inc()
        log.warning("request loop for %s%s via %s", request.host, request.path, passed)
        return web.Response(status=508, text=f"loop detected at {config.name}: "
                                             f"{', '.join(passed)}\n")
    origin = customer.origin
    edge_scheme = request.scheme
    scheme = edge_scheme if origin.protocol is Protocol.FOLLOW else origin.protocol.value
    pool = state.pool_for(customer, edge_scheme)
    host = origin_host(customer, client_host)
    peer = request.remote or ""
    headers = to_origin(request.headers.items(), peer=peer, scheme=edge_scheme,
                        host=client_host, keyed=customer.cache.key_headers,
                        trust=trusted(peer, config.trusted_proxies))
    headers += [("Host", host), ("Via", via_header(request.headers.get("Via"), request, config.via)),
                ("CDN-Loop", ", ".join(passed + [config.name]))]
    if _wants_websocket(request):
        upgraded = await _websocket(request, state, customer, scheme, pool, host, path, headers)
        if upgraded is not None:
            return upgraded
        # The origin would not upgrade: carry on over plain HTTP, as the seed says.
    if cache_eligible(request, customer):
        return await cached(request, state, customer, pool, scheme, host, path, headers)
    has_body = request.body_exists
    resp = await pull(state, customer, pool, scheme, host, request.method, path, headers,
                      request.content if has_body else None,
                      request.method in SAFE_METHODS and not has_body)
    if resp is None:
        state.metrics.requests.labels(customer.directory, "502").inc()
        raise web.HTTPBadGateway(text="no origin server answered\n")
    return await relay(request, resp, customer, state, config)


def _wants_websocket(request: web.Request) -> bool:
    return (request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in request.headers.get("Connection", "").lower())


WS_OWN = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                    "sec-websocket-protocol"})


async def _websocket(request: web.Request, state: EdgeState, customer: Customer, scheme: str,
                     pool: OriginPool, host: str, path: str,
                     headers: list[tuple[str, str]]) -> web.WebSocketResponse | None:
    """Open the same WebSocket to the origin and pump frames both ways; None if refused."""
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                 if p.strip()]
    upstream_headers = [(k, v) for k, v in headers if k.lower() not in WS_OWN]
    assert state.session is not None
    for server in pool.order():
        try:
            address = (await state.resolver.resolve(server.host, customer.origin.ip_version))[0]
            url = (f"{'wss' if scheme == 'https' else 'ws'}://"
                   f"{Server(address, server.port).authority(scheme)}{path}")
            extra = {"server_hostname": host.rsplit(":", 1)[0]} if scheme == "https" else {}
            upstream = await state.session.ws_connect(
                url, headers=upstream_headers, protocols=protocols, autoping=False,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10), **extra)
        except aiohttp.WSServerHandshakeError:
            pool.succeeded(server)        # it answered; it just does not speak WebSocket here
            return None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            pool.failed(server, f"{describe(exc)}: {exc}")
            state.metrics.origin_errors.labels(customer.directory, server.host,
                                               describe(exc)).inc()
            continue
        pool.succeeded(server)
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (),
                                       autoping=False)
        await client.prepare(request)
        state.metrics.requests.labels(customer.directory, "101").inc()
        await _pump(client, upstream)
        return client
    raise web.HTTPBadGateway(text="no origin server answered\n")


async def _pump(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    async def one_way(src, dst) -> None:
        async for msg in src:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.PING:
                await dst.ping(msg.data)
            elif msg.type == aiohttp.WSMsgType.PONG:
                await dst.pong(msg.data)
            else:
                break
        await dst.close(code=src.close_code or 1000)

    tasks = [asyncio.ensure_future(one_way(client, upstream)),
             asyncio.ensure_future(one_way(upstream, client))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
        await client.close()





PURGE_PATH = "/.edge/purge"
BAN_POLL = 0.2


async def _purge(request: web.Request, state: EdgeState) -> web.Response:
    """POST /.edge/purge {"url": U} | {"prefix": P} | {"customer": D}, with the admin token."""
    import hmac

    from .purge import append, ban_for

    token = state.config.admin_token
    if not token:
        raise web.HTTPForbidden(text="purge is disabled: set EDGE_ADMIN_TOKEN\n")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise web.HTTPUnauthorized(text="a valid admin token is needed\n")
    try:
        body = await request.json()
        ban = ban_for(state.config, body.get("url"), body.get("prefix"), body.get("customer"))
    except (ValueError, AttributeError) as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    purged = state.cache.purge(ban.matches)
    if state.config.state_dir:
        append(Path(state.config.state_dir) / "bans.jsonl", ban)   # for the other workers
    return web.json_response({"purged_here": purged, "directory": ban.directory,
                              "path": ban.path, "prefix": ban.prefix})


async def _follow_bans(state: EdgeState) -> None:
    from .purge import BanFollower

    follower = BanFollower(Path(state.config.state_dir) / "bans.jsonl")
    while True:
        await asyncio.sleep(BAN_POLL)
        for ban in follower.new():
            state.cache.purge(ban.matches)


SWEEP_INTERVAL = 10.0


async def _sweep_forever(disk: DiskStore) -> None:
    """Keep the disk tier under its cap: every few seconds, sooner after many writes."""
    waited = 0.0
    while True:
        await asyncio.sleep(0.5)
        waited += 0.5
        if waited < SWEEP_INTERVAL and not disk.wants_sweep():
            continue
        waited = 0.0
        disk.written_since_sweep = 0
        try:
            disk.forget(await asyncio.to_thread(disk.sweep))
        except OSError:
            log.exception("disk cache sweep failed")


RANK_INTERVAL = 60.0


async def rank_once(state: EdgeState) -> None:
    """Measure every ranked customer's validation path; fastest 200 becomes primary."""
    from .tools import ranked, validate

    for customer in state.config.customers:
        if not customer.origin.rank:
            continue
        probes = await validate(state.config, customer)
        for scheme in ("http", "https"):
            pool = state.pools.get((customer.directory, scheme))
            if pool is not None:
                pool.servers = ranked(probes, scheme) or pool.servers
                log.info("%s/%s failover order by validation time: %s", customer.directory,
                         scheme, ", ".join(s.host for s in pool.servers))


async def _rank_forever(state: EdgeState) -> None:
    while True:
        try:
            await rank_once(state)
        except Exception:   # ranking is advice; a failure must never stop the edge
            log.exception("ranking origins by validation time failed")
        await asyncio.sleep(RANK_INTERVAL)


async def healthz(request: web.Request) -> web.Response:
    state: EdgeState = request.app[STATE]
    status = 503 if request.app.get(DRAINING, False) else 200
    origins = {f"{d}/{s}": pool.summary() for (d, s), pool in state.pools.items()}
    return web.json_response({"status": "draining" if status == 503 else "ok",
                              "name": state.config.name, "config": state.config.source,
                              "customers": len(state.config.customers), "origins": origins,
                              "shields": state.shield_pool.summary()},
                             status=status)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


DRAINING = web.AppKey("draining", bool)


def make_app(state: EdgeState) -> web.Application:
    """A fresh edge app around `state`; the HTTP client lives in cleanup_ctx."""
    app = web.Application()
    app[STATE] = state
    app[DRAINING] = False

    async def client(app_: web.Application):
        trust = ssl.create_default_context()
        if state.config.origin_ca_file:
            trust.load_verify_locations(state.config.origin_ca_file)
        state.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=256, ttl_dns_cache=30,
                                           family=socket.AF_UNSPEC, ssl=trust),
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
        yield
        await state.session.close()

    async def ranking(app_: web.Application):
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(_rank_forever(state))]
        if state.config.state_dir:
            tasks.append(loop.create_task(_follow_bans(state)))
        if state.cache.disk is not None:
            tasks.append(loop.create_task(_sweep_forever(state.cache.disk)))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    app.cleanup_ctx.append(client)
    app.cleanup_ctx.append(ranking)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app
