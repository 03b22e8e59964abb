"""The edge proxy: route a request to its customer, pull from the origin, stream back.

`EdgeApp.handle` is what the server (server.py) calls for every request the hit
shortcut did not answer: /healthz and /metrics, then `proxy` -- `route` (Host =
edge CNAME, or the CDN URL `/<account>/<directory>/`), then `cached`
(cached.py) for GET/HEAD, a tunnel for WebSocket upgrades, or `pull` and
`relay` (upstream.py) for everything else. Anything that routes nowhere is
404: this is never an open proxy and never fetches a URL the client chose.
ACME HTTP-01 challenges are answered from the store's (EdgeConfig.acme_challenges)
before any routing, on any Host (a customer's name is what ACME asks for).
Also here: purge, and the edge's background tasks.
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from prometheus_client import generate_latest

from edge.cache.cached import cache_eligible, cached, invalidate
from edge.http.client import Upload
from edge.cache.disk import DiskStore
from edge.origin.forward import to_origin, trusted
from edge.http.headers import cache_status, via
from edge.model import Protocol
from edge.route import BadPath, origin_host, route, split_target
from edge.http.reply import Reply
from edge.http.server import Request
from edge.state import EdgeState
from edge.http.tunnel import wants_upgrade, websocket
from edge.origin.upstream import MAX_TIERS, SAFE_METHODS, Unreachable, own_error, own_headers, pull, relay

log = logging.getLogger("edge.proxy")

SCHEMES = {p: p.value for p in Protocol}      # enum .value is slow to reach per request


async def proxy(app: "EdgeApp", request: Request, reply: Reply) -> None:
    state = app.state
    config = state.config
    client_host = request.host
    try:
        customer, path = route(config, client_host, request.target)
        if request.target[:1] != "/":
            client_host, target = split_target(client_host, request.target)
            if target.startswith(ACME_PATH) and request.method in ("GET", "HEAD"):
                return app.challenge(reply, target[len(ACME_PATH):].split("?", 1)[0])
    except BadPath:
        return own_error(reply, request, state, 400, "bad request\n")
    if customer is None:
        if request.path == PURGE_PATH and request.method == "POST":
            return await _purge(request, reply, state)      # only where no customer routes
        if request.path == VALIDATE_PATH and request.method == "POST":
            from edge.fleet.watch import validate_request  # the control plane's Validate button
            status, answer = await validate_request(request, state, app.sealer)
            if "error" in answer:
                return own_error(reply, request, state, status, f"{answer['error']}\n")
            return send_json(reply, state, status, answer)
        return own_error(reply, request, state, 404, "no such CDN host or directory\n")
    passed = [e.split(";", 1)[0].strip() for v in request.headers.getall("CDN-Loop", [])
              for e in v.split(",")]
    if config.name in passed or len(passed) > MAX_TIERS:
        # RFC 8586: this request has been through us already; forwarding it again would
        # start a storm between misconfigured tiers.
        log.warning("request loop for %s%s via %s", client_host, request.path, passed)
        return own_error(reply, request, state, 508, f"loop detected at {config.name}: "
                         f"{', '.join(passed)}\n", directory=customer.directory)
    origin = customer.origin
    edge_scheme = request.scheme
    scheme = edge_scheme if origin.protocol is Protocol.FOLLOW else SCHEMES[origin.protocol]
    pool = state.pool_for(customer, edge_scheme)
    host = origin_host(customer, client_host)
    peer = request.peer
    headers = to_origin(request.headers, peer=peer, scheme=edge_scheme,
                        host=client_host, keyed=customer.cache.key_headers,
                        trust=trusted(peer, config.trusted_proxies))
    headers += [("Host", host), ("Via", via(request.headers.get("Via"), request.version,
                                            config.via)),
                ("CDN-Loop", ", ".join(passed + [config.name]))]
    if request.upgrade and wants_upgrade(request):
        if await websocket(request, reply, state, customer, scheme, pool, host, path,
                           headers):
            return
        # The origin would not upgrade: it answered as plain HTTP, and so do we.
    if cache_eligible(request, customer):
        return await cached(request, reply, state, customer, pool, scheme, host, path,
                            headers)
    body = request.body
    upload = None
    if body is not None:
        upload = Upload(body.chunks(), body.length is None)
        if body.length is None:
            headers.append(("Transfer-Encoding", "chunked"))
    fwd = "method" if request.method not in ("GET", "HEAD") else "bypass"
    try:
        resp = await pull(state, customer, pool, scheme, host, request.method, path, headers,
                          upload, request.method in SAFE_METHODS and body is None,
                          reply.interim)
    except Unreachable as exc:
        return own_error(reply, request, state, exc.status, exc.text, "uri-miss" if
                         fwd == "bypass" else fwd, customer.directory)
    unsafe = request.method not in SAFE_METHODS and request.method != "TRACE"
    if unsafe and resp.status < 400:
        # RFC 9111 4.4: a successful unsafe request invalidates what we hold for the URL.
        invalidate(state, customer, path, host, resp.headers)
    await relay(request, reply, resp, customer, state, "", cache_status(
        config.name, fwd=fwd, fwd_status=resp.status))


PURGE_PATH = "/.edge/purge"
ACME_PATH = "/.well-known/acme-challenge/"
VALIDATE_PATH = "/.edge/validate"
BAN_POLL = 0.2


async def _purge(request: Request, reply: Reply, state: EdgeState) -> None:
    """POST /.edge/purge {"url": U} | {"prefix": P} | {"customer": D}, with the admin token."""
    import hmac

    from edge.cache.purge import append, ban_for

    token = state.config.admin_token
    if not token:
        return own_error(reply, request, state, 403, "purge is disabled: set EDGE_ADMIN_TOKEN\n")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        return own_error(reply, request, state, 401, "a valid admin token is needed\n")
    try:
        raw = await request.body.read(65536) if request.body is not None else b""
        body = json.loads(raw)
        ban = ban_for(state.config, body.get("url"), body.get("prefix"), body.get("customer"))
    except (ValueError, AttributeError) as exc:
        return own_error(reply, request, state, 400, f"{exc}\n")
    purged = state.cache.purge(ban.matches)
    if state.config.state_dir:
        append(Path(state.config.state_dir) / "bans.jsonl", ban)   # for the other workers
    send_json(reply, state, 200, {"purged_here": purged, "directory": ban.directory,
                                  "path": ban.path, "prefix": ban.prefix})


def send_json(reply: Reply, state: EdgeState, status: int, value: object) -> None:
    body = json.dumps(value).encode()
    reply.start(status, "", [("Content-Type", "application/json; charset=utf-8"),
                             *own_headers(state, reply.request.version)], len(body))
    reply.write_now(body)
    reply.end()


async def _follow_bans(state: EdgeState) -> None:
    from edge.cache.purge import BanFollower, Invalidation

    follower = BanFollower(Path(state.config.state_dir) / "bans.jsonl")
    while True:
        await asyncio.sleep(BAN_POLL)
        for ban in follower.new():
            if isinstance(ban, Invalidation):
                state.cache.invalidate(ban.url, list(ban.keys), ban.at)
            else:
                state.cache.purge(ban.matches)


SWEEP_INTERVAL = 10.0


async def _sweep_forever(disk: DiskStore) -> None:
    """Keep the disk tier under its cap: every few seconds, sooner after many writes.

    A sweep that fails is one log line, repeated only when the reason changes; a
    cache directory that vanished (removed by hand) is made again, empty.
    """
    waited = 0.0
    trouble = ""
    while True:
        await asyncio.sleep(0.5)
        waited += 0.5
        if waited < SWEEP_INTERVAL and not disk.wants_sweep():
            continue
        waited = 0.0
        disk.written_since_sweep = 0
        try:
            disk.forget(await asyncio.to_thread(disk.sweep))
        except OSError as exc:
            why = _remake(disk)
            if why == "":
                trouble = ""          # made again: the next sweep will tell
                continue
            why = why or f"{exc.strerror or exc}: {exc.filename or disk.root}"
            if why != trouble:
                log.warning("disk cache %s: sweep failed: %s (logged again when this changes)",
                            disk.root, why)
                trouble = why
            continue
        if trouble:
            log.info("disk cache %s: sweeping works again", disk.root)
            trouble = ""


def _remake(disk: DiskStore) -> str | None:
    """Make a vanished cache directory again: None when it was there, "" when it was made
    again, else why it cannot be."""
    objects, tmp = disk.root / "objects", disk.root / "tmp"
    if objects.is_dir() and tmp.is_dir():
        return None
    try:
        objects.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(exist_ok=True)
    except OSError as exc:
        return f"the directory is gone and cannot be made again ({exc.strerror or exc})"
    log.warning("disk cache %s had vanished: made it again (what it held is gone)", disk.root)
    return ""


RANK_INTERVAL = 60.0


async def rank_once(state: EdgeState) -> None:
    """Measure every ranked customer's validation path; fastest 200 becomes primary."""
    from edge.tools import ranked, validate

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


class EdgeApp:
    """One edge process's request handler and background tasks around its `EdgeState`."""

    def __init__(self, state: EdgeState):
        self.state = state
        self.draining = False
        self.sealer = None                 # opens sealed bucket secrets (edge serve --store)
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """The origin client and the background tasks (ranking, bans, disk sweep)."""
        state = self.state
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(_rank_forever(state))]
        if state.config.state_dir:
            self._tasks.append(loop.create_task(_follow_bans(state)))
        if state.cache.disk is not None:
            self._tasks.append(loop.create_task(_sweep_forever(state.cache.disk)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.state.client.close()

    async def handle(self, request: Request, reply: Reply) -> None:
        path = request.path
        if request.method in ("GET", "HEAD"):
            if path in ("/healthz", "/metrics"):
                return self._healthz(reply) if path == "/healthz" else self._metrics(reply)
            # Any Host, a customer's too, before routing; the slice first keeps the cost
            # for every other path to one compare (absolute-form: in proxy()).
            if path[1:2] == "." and path.startswith(ACME_PATH):
                return self.challenge(reply, path[len(ACME_PATH):])
        await proxy(self, request, reply)

    def challenge(self, reply: Reply, token: str) -> None:
        """ACME HTTP-01 (RFC 8555 8.3): the key authorization the control plane put in the
        store for `token`, else 404; never cached, never asked of an origin."""
        state = self.state
        answer = state.config.acme_challenges.get(token)
        status, body = (200, answer.encode()) if answer is not None else (
            404, b"no such ACME challenge\n")
        reply.start(status, "", [("Content-Type", "text/plain"), ("Cache-Control", "no-store"),
                                 *own_headers(state, reply.request.version)], len(body))
        reply.write_now(body)
        reply.end()

    def _healthz(self, reply: Reply) -> None:
        state = self.state
        status = 503 if self.draining else 200
        origins = {f"{d}/{s}": pool.summary() for (d, s), pool in state.pools.items()}
        send_json(reply, state, status, {"status": "draining" if status == 503 else "ok",
                              "name": state.config.name, "config": state.config.source,
                              "customers": len(state.config.customers), "origins": origins,
                              "shields": state.shield_pool.summary()})

    def _metrics(self, reply: Reply) -> None:
        body = generate_latest(self.state.metrics.registry)
        reply.start(200, "", [("Content-Type", "text/plain; version=0.0.4"),
                              *own_headers(self.state, reply.request.version)], len(body))
        reply.write_now(body)
        reply.end()
