"""The edge proxy: route a request to its customer, pull from the origin, stream back.

Thin handlers: `route` (Host = edge CNAME, or the CDN URL `/<account>/<directory>/`),
then `pull` (origin servers in balancing order, skipping ones in back-off,
retrying the next one while that is safe), then stream the response. Anything
that routes nowhere is 404: this is never an open proxy and never fetches a
URL the client chose. (The cache plugs in between route and pull.)
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from yarl import URL

from . import ranges
from .bucket import CLIENT_TEXT, Bucket, error_code
from .cache import Cache, Fill, Stored, header, secondary_key, vary_names
from .disk import DiskStore, PartWriter, digest, part_meta
from .config import Balancing, Customer, EdgeConfig, Origin, Protocol, Server
from .freshness import (Policy, http_date, initial_age, request_wants_fresh,
                        response_policy)
from .origin import OriginPool
from .resolve import ResolveError, Resolver
from .tls import CertStore

log = logging.getLogger("edge.proxy")

STATE = web.AppKey("state", object)
CHUNK = 64 * 1024
# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def end_to_end(headers: "aiohttp.typedefs.LooseHeaders") -> list[tuple[str, str]]:
    """Headers minus hop-by-hop ones, including those the Connection header names."""
    named = {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")}
    drop = HOP_BY_HOP | named
    return [(k, v) for k, v in headers.items() if k.lower() not in drop]


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("edge_requests", "Client requests", ["customer", "status"],
                                registry=r)
        self.to_clients = Counter("edge_bytes_to_clients", "Body bytes sent to clients "
                                  "(playback traffic)", ["customer"], registry=r)
        self.from_origin = Counter("edge_bytes_from_origin", "Body bytes pulled from origins "
                                   "(origin traffic)", ["customer"], registry=r)
        self.origin_errors = Counter("edge_origin_errors", "Failed origin attempts",
                                     ["customer", "server", "reason"], registry=r)
        self.cache = Counter("edge_cache_requests", "Requests by cache result",
                             ["customer", "result"], registry=r)
        self.shield = Counter("edge_shield_requests", "Misses sent to a shield, by outcome "
                              "(ok, failed, skipped while backing off, origin = none left)",
                              ["customer", "shield", "result"], registry=r)


class EdgeState:
    """The current config, its origin pools, the HTTP client and the counters."""

    def __init__(self, config: EdgeConfig):
        self.metrics = Metrics()
        self.session: aiohttp.ClientSession | None = None
        self.resolver = Resolver(list(config.nameservers) or None)
        self.certs = CertStore(config.certificates)
        disk = None
        if config.cache_disk:
            disk = DiskStore(config.cache_disk, config.cache_disk_size)
            disk.scan()
            log.info("disk cache %s: %d objects", config.cache_disk, len(disk))
        self.cache = Cache(config.cache_memory, disk)
        self.pools: dict[tuple[str, str], OriginPool] = {}
        self.apply(config)

    def apply(self, config: EdgeConfig) -> None:
        """Swap in a validated config; back-off state survives for unchanged servers."""
        old = self.pools
        pools: dict[tuple[str, str], OriginPool] = {}
        for customer in config.customers:
            for scheme, servers in (("http", customer.origin.http),
                                    ("https", customer.origin.https)):
                if not servers:
                    continue
                pool = OriginPool(customer.origin, servers)
                previous = old.get((customer.directory, scheme))
                if previous is not None and previous.servers == servers:
                    pool.state = previous.state
                pools[(customer.directory, scheme)] = pool
        shield_servers = tuple(s.server for s in config.shields)
        shields = OriginPool(Origin(balancing=Balancing.FAILOVER), shield_servers)
        previous = getattr(self, "shield_pool", None)
        if previous is not None:
            shields.state.update({k: v for k, v in previous.state.items() if k in shields.state})
        self.config, self.pools, self.shield_pool = config, pools, shields
        self.certs.load(config.certificates)       # new handshakes use the new files

    def pool_for(self, customer: Customer, edge_scheme: str) -> OriginPool:
        # The seed's HTTP/HTTPS edge protocols: requests arriving over HTTPS use the
        # HTTPS server list when there is one.
        return (self.pools.get((customer.directory, edge_scheme))
                or self.pools.get((customer.directory, "http"))
                or self.pools[(customer.directory, "https")])


def route(config: EdgeConfig, request: web.Request) -> tuple[Customer | None, str]:
    """(customer, path and query to request from the origin) or (None, "")."""
    host = (request.host or "").rsplit(":", 1)[0].lower().rstrip(".")
    if host.startswith("[") or host.count(":") > 1:
        host = (request.host or "").lower()
    customer = config.by_cname.get(host)
    if customer is not None:
        return customer, request.raw_path
    if config.source == "--origin":
        return config.customers[0], request.raw_path
    prefix = f"/{config.account}/"
    if request.raw_path.startswith(prefix):
        directory, _, rest = request.raw_path[len(prefix):].partition("/")
        customer = config.by_directory.get(directory)      # case-sensitive, as the seed says
        if customer is not None:
            return customer, "/" + rest
    return None, ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ResolveError):
        return "dns"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    return "error"


async def proxy(request: web.Request) -> web.StreamResponse:
    state: EdgeState = request.app[STATE]
    config = state.config
    customer, path = route(config, request)
    if customer is None:
        if request.path == PURGE_PATH and request.method == "POST":
            return await _purge(request, state)      # only where no customer routes
        raise web.HTTPNotFound(text="no such CDN host or directory\n")
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
    host = origin.host_header or request.host
    headers = end_to_end(request.headers)
    headers = [(k, v) for k, v in headers
               if k.lower() not in ("host", "via", "x-forwarded-for", "cdn-loop")]
    peer = request.remote or ""
    forwarded = request.headers.get("X-Forwarded-For")
    headers += [("Host", host), ("Via", _via(request.headers.get("Via"), request, config.via)),
                ("X-Forwarded-For", f"{forwarded}, {peer}" if forwarded else peer),
                ("X-Forwarded-Proto", edge_scheme),
                ("CDN-Loop", ", ".join(passed + [config.name]))]
    if _wants_websocket(request):
        upgraded = await _websocket(request, state, customer, scheme, pool, host, path, headers)
        if upgraded is not None:
            return upgraded
        # The origin would not upgrade: carry on over plain HTTP, as the seed says.
    if _cache_eligible(request, customer):
        return await _cached(request, state, customer, pool, scheme, host, path, headers)
    has_body = request.body_exists
    resp = await pull(state, customer, pool, scheme, host, request.method, path, headers,
                      request.content if has_body else None,
                      request.method in SAFE_METHODS and not has_body)
    if resp is None:
        state.metrics.requests.labels(customer.directory, "502").inc()
        raise web.HTTPBadGateway(text="no origin server answered\n")
    return await _relay(request, resp, customer, state, config)


async def pull(state: "EdgeState", customer: Customer, pool: OriginPool, scheme: str, host: str,
               method: str, path: str, headers: list[tuple[str, str]],
               body: "aiohttp.StreamReader | None", retryable: bool
               ) -> aiohttp.ClientResponse | None:
    """Ask the origin servers in balancing order; the first usable response, or None.

    A server that fails (connect, timeout, 5xx when retry_5xx) goes into back-off,
    and the next one is tried when that is safe (`retryable`).
    """
    origin = customer.origin
    servers = pool.order()
    label = customer.directory
    if customer.shields and retryable:
        resp = await _through_shields(state, customer, method, path, headers)
        if resp is not None:
            return resp
    bucket = origin.bucket
    if bucket is not None:
        path = bucket.object_path(path)
        headers = bucket.request_headers(headers, host)
    for attempt, server in enumerate(servers):
        last = attempt == len(servers) - 1 or not retryable
        kwargs = {}
        if scheme == "https":
            # SNI and certificate checks are for the name, not the address we dial.
            kwargs["server_hostname"] = host.rsplit(":", 1)[0] if not host.startswith("[") else None
        try:
            address = (await state.resolver.resolve(server.host, origin.ip_version))[0]
            # The path goes out exactly as it came in (a signature covers it byte for byte).
            url = URL(f"{scheme}://{Server(address, server.port).authority(scheme)}{path}",
                      encoded=True)
            sent = bucket.sign(method, host, path, headers) if bucket is not None else headers
            assert state.session is not None
            resp = await state.session.request(
                method, url, headers=sent, allow_redirects=False, data=body,
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(sock_connect=origin.timeout,
                                              sock_read=origin.timeout), **kwargs)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            reason = _describe(exc)
            period = pool.failed(server, f"{reason}: {exc}")
            state.metrics.origin_errors.labels(label, server.host, reason).inc()
            log.warning("origin %s for %s failed (%s); skipping it for %.1f s", server.host,
                        label, reason, period)
            if last:
                break
            continue
        if resp.status >= 500 and origin.retry_5xx:
            pool.failed(server, f"HTTP {resp.status}")
            state.metrics.origin_errors.labels(label, server.host, f"http_{resp.status}").inc()
            if not last:
                resp.release()
                continue
        else:
            pool.succeeded(server)
        return resp
    return None


MAX_TIERS = 4      # edges a request may have passed (CDN-Loop entries) before it is refused


async def _through_shields(state: "EdgeState", customer: Customer, method: str, path: str,
                           headers: list[tuple[str, str]]) -> aiohttp.ClientResponse | None:
    """Ask the customer's shields in plan order; None when none answered (go to origin).

    A shield that cannot be reached backs off like an origin server (5 s, doubling)
    and is skipped meanwhile. Its HTTP answers, errors included, are the answer:
    it asked the origin for us.
    """
    pool, label = state.shield_pool, customer.directory
    # The shield routes by edge CNAME, as any edge does.
    sent = [(k, v) for k, v in headers if k.lower() != "host"] + [("Host", customer.cnames[0])]
    timeout = aiohttp.ClientTimeout(sock_connect=customer.origin.timeout,
                                    sock_read=customer.origin.timeout)
    now = time.monotonic()
    for shield in customer.shields:
        if pool.state[shield.server].until > now:
            state.metrics.shield.labels(label, shield.name, "skipped").inc()
            continue
        try:
            address = (await state.resolver.resolve(shield.server.host,
                                                     customer.origin.ip_version))[0]
            url = URL(f"http://{Server(address, shield.server.port).authority('http')}{path}",
                      encoded=True)
            assert state.session is not None
            resp = await state.session.request(method, url, headers=sent, allow_redirects=False,
                                               auto_decompress=False, timeout=timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            period = pool.failed(shield.server, f"{_describe(exc)}: {exc}")
            state.metrics.shield.labels(label, shield.name, "failed").inc()
            log.warning("shield %s failed (%s); skipping it for %.1f s", shield.name,
                        _describe(exc), period)
            continue
        pool.succeeded(shield.server)
        state.metrics.shield.labels(label, shield.name, "ok").inc()
        return resp
    state.metrics.shield.labels(label, "origin", "fallback").inc()
    return None


# --- through the cache ---------------------------------------------------------------------

COALESCE_TIMEOUT = 10.0     # a waiter whose fill has no response headers by then goes itself


def _cache_eligible(request: web.Request, customer: Customer) -> bool:
    return (customer.cache.enabled and request.method in ("GET", "HEAD")
            and not request.body_exists)


def _cache_key(request: web.Request, customer: Customer, path: str) -> str:
    """scheme + customer + path (+ query, + chosen request headers), per the customer's rules."""
    rules = customer.cache
    if rules.ignore_query:
        path = path.split("?", 1)[0]
    key = f"{request.scheme}://{customer.directory}{path}"
    for name in rules.key_headers:
        key += f"\x00{name}={request.headers.get(name, '')}"
    return key


async def _cached(request: web.Request, state: "EdgeState", customer: Customer,
                  pool: OriginPool, scheme: str, host: str, path: str,
                  headers: list[tuple[str, str]]) -> web.StreamResponse:
    cache = state.cache
    primary = _cache_key(request, customer, path)
    key = cache.key_for(primary, request.headers)
    stored = cache.get(key)
    body = None
    if stored is not None and stored.file is not None:
        body = await _open_body(cache, key, stored)
        if body is None:
            stored = None
    try:
        return await _lookup_done(request, state, customer, pool, scheme, host, path, headers,
                                  primary, key, stored, body)
    finally:
        if body is not None:
            body.file.close()


@dataclass
class OpenBody:
    """An on-disk body opened for sendfile; the open file survives eviction and renames."""

    file: "object"
    offset: int


async def _open_body(cache: Cache, key: str, stored: Stored) -> OpenBody | None:
    """Open a disk-tier body, checked once per process against its CRC; None if unusable."""
    obj = stored.file
    assert obj is not None and cache.disk is not None
    try:
        f = open(obj.path, "rb")
    except OSError:
        cache.forget(key)
        return None
    st = os.fstat(f.fileno())
    if (st.st_ino, st.st_mtime_ns) != obj.inode:
        f.close()        # replaced by a newer copy (or evicted): re-read its metadata
        cache.forget(key)
        fresh = cache.get(key)
        if fresh is None or fresh.file is None or fresh.file.inode == obj.inode:
            return None
        return await _open_body(cache, key, fresh)
    if obj.inode not in cache.verified:
        if not await asyncio.to_thread(cache.disk.verify, obj):
            f.close()
            cache.forget(key)
            return None
        cache.verified.add(obj.inode)
    return OpenBody(f, obj.offset)


async def _lookup_done(request: web.Request, state: "EdgeState", customer: Customer,
                       pool: OriginPool, scheme: str, host: str, path: str,
                       headers: list[tuple[str, str]], primary: str, key: str,
                       stored: Stored | None, body: OpenBody | None) -> web.StreamResponse:
    cache = state.cache
    wants_fresh = request_wants_fresh(request.headers.getall("Cache-Control", []),
                                      customer.cache.honour_client_no_cache)
    now = time.time()
    if stored is not None and not wants_fresh and stored.fresh(now):
        return await _serve_stored(request, state, customer, stored, "HIT", body)
    if request.method == "HEAD" or cache.passing(key):
        return await _pass(request, state, customer, pool, scheme, host, path, headers, "PASS")
    fill = cache.fills.get(key)
    leader = fill is None
    if fill is None:
        fill = Fill(key)
        fill.leader_headers = request.headers
        cache.fills[key] = fill
        job = FillJob(state, customer, pool, scheme, host, path, headers, stored,
                      request.headers.getall("Cache-Control", []),
                      "Authorization" in request.headers, primary, request.headers)
        fill.task = asyncio.get_running_loop().create_task(_fill_or_follow(job, fill))
    if stored is not None and not wants_fresh and stored.policy.stale_allowed(
            stored.age(now) - stored.policy.ttl, stored.policy.stale_while_revalidate):
        # RFC 5861: answer now from the stale copy; the fill above refreshes it.
        fill.readers += 1
        fill.task.add_done_callback(lambda _task, f=fill: _background_done(f))
        return await _serve_stored(request, state, customer, stored, "STALE", body)
    return await _serve_fill(request, state, customer, pool, scheme, host, path, headers, fill,
                             leader, stored)


async def _pass(request: web.Request, state: "EdgeState", customer: Customer, pool: OriginPool,
                scheme: str, host: str, path: str, headers: list[tuple[str, str]],
                label: str) -> web.StreamResponse:
    resp = await pull(state, customer, pool, scheme, host, request.method, path, headers, None,
                      True)
    if resp is None:
        state.metrics.requests.labels(customer.directory, "502").inc()
        raise web.HTTPBadGateway(text="no origin server answered\n")
    state.metrics.cache.labels(customer.directory, label).inc()
    return await _relay(request, resp, customer, state, state.config, label)


@dataclass(frozen=True)
class FillJob:
    """What a fill needs to fetch one object for everyone waiting on it."""

    state: "EdgeState"
    customer: Customer
    pool: OriginPool
    scheme: str
    host: str
    path: str
    headers: list[tuple[str, str]]
    stale: Stored | None
    request_cc: list[str]
    authorization: bool
    primary: str
    request_headers: "Mapping"


FOLLOW_POLL = 0.005     # seconds between looks at another worker's growing part file


async def _fill_or_follow(job: FillJob, fill: Fill) -> None:
    """Fill from the origin, or, when another worker is filling this key, follow its file."""
    disk = job.state.cache.disk
    if disk is None:
        return await _fill(job, fill, None)
    name = digest(fill.key)
    try:
        if disk.try_lock(name):
            return await _fill(job, fill, disk)
        if await _follow(job, fill, disk, name):
            return
        # Not followable (it stalled, or was not storable): go to the origin ourselves.
        await _fill(job, fill, disk if disk.try_lock(name) else None)
    finally:
        disk.unlock(name)


async def _follow(job: FillJob, fill: Fill, disk: DiskStore, name: str) -> bool:
    """Stream another worker's fill from its part file; False if there is none to follow."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + COALESCE_TIMEOUT
    while True:
        try:
            f = open(disk.part_path(name), "rb")
            break
        except FileNotFoundError:
            if not disk.locked_elsewhere(name):
                # It ended in between: a stored object is served from the cache.
                if job.state.cache.get(fill.key) is None:
                    return False
                fill.from_cache = True
                fill.start(200, "", [], None, True, 0.0)
                fill.finish()
                return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(FOLLOW_POLL)
    with f:
        meta = None
        while meta is None:
            meta = part_meta(f)
            if meta is None:
                if not disk.locked_elsewhere(name) or loop.time() > deadline:
                    return False
                await asyncio.sleep(FOLLOW_POLL)
        meta, length = meta
        fill.start(meta.status, meta.reason, list(meta.headers), length, True, meta.initial_age)
        while fill.received < length:
            chunk = f.read(CHUNK)
            if chunk:
                fill.append(chunk)
                continue
            if not disk.locked_elsewhere(name):
                chunk = f.read(CHUNK)       # written just before the lock was let go?
                if not chunk:
                    fill.fail()             # the other worker's fetch failed mid-body
                    return True
                fill.append(chunk)
                continue
            await asyncio.sleep(FOLLOW_POLL)
    fill.finish()
    job.state.cache.put_variant(
        job.primary, job.request_headers,
        Stored(meta.status, meta.reason, meta.headers, tuple(fill.chunks), length,
               meta.stored_at, meta.initial_age, meta.policy), fill.key)
    return True


async def _fill(job: FillJob, fill: Fill, disk: DiskStore | None) -> None:
    """Fetch one object for every request waiting on `fill`; store it when allowed.

    With `disk` (this worker holds the key's lock) the body is also written to
    a part file as it arrives, renamed into the disk tier when complete.
    """
    state, customer, path = job.state, job.customer, job.path
    stale, primary, request_headers = job.stale, job.primary, job.request_headers
    cache, label = state.cache, customer.directory
    # The fill fetches the whole object for everyone; a client's range is cut from it.
    headers = [(k, v) for k, v in job.headers if k.lower() not in ("range", "if-range")]
    if stale is not None:
        # RFC 9111 4.3.1: revalidate with the validators we hold; without any,
        # this is an unconditional GET.
        etag, modified = stale.header("ETag"), stale.header("Last-Modified")
        if etag:
            headers = headers + [("If-None-Match", etag)]
        if modified:
            headers = headers + [("If-Modified-Since", modified)]
    resp = None
    part: PartWriter | None = None
    handed_over = False
    sent = time.time()
    try:
        resp = await pull(state, customer, job.pool, job.scheme, job.host, "GET", path, headers,
                          None, True)
        if resp is None or (resp.status >= 500 and stale is not None):
            fill.fail()          # with a stale copy, an origin error may be answered from it
            return
        now = time.time()
        age = initial_age(resp.headers, now, sent)
        if resp.status == 304 and stale is not None:
            merged = stale.revalidated(end_to_end(resp.headers), stale.policy, now, age)
            policy = _policy(customer, path, merged.status, dict(merged.headers),
                             [v for k, v in merged.headers if k.lower() == "cache-control"],
                             job.request_cc, job.authorization, now)
            fresh = replace(merged, policy=policy)
            if policy.store:
                cache.put_variant(primary, request_headers, fresh)
            else:
                cache.forget(fill.key)
            fill.revalidated = True
            if policy.store:
                fill.from_cache = True       # waiters are served the refreshed object
            fill.start(fresh.status, fresh.reason, list(fresh.headers), fresh.size, True, age)
            for chunk in fresh.chunks:
                fill.append(chunk)
            fill.finish()
            return
        policy = _policy(customer, path, resp.status, resp.headers,
                         resp.headers.getall("Cache-Control", []), job.request_cc, job.authorization, now)
        bucket = customer.origin.bucket
        if bucket is not None and resp.status >= 400 and not bucket.cache_errors:
            policy = replace(policy, store=False, reason="bucket error")
        length = resp.content_length
        shareable = (policy.store and length is not None
                     and length <= customer.cache.max_object)
        if not shareable:
            # Not ours to share (or too big to hold): the first client gets the
            # response directly; later ones go to the origin themselves.
            cache.remember_pass(fill.key)
            fill.direct = resp
            handed_over = True
            fill.start(resp.status, resp.reason, end_to_end(resp.headers), length, False, age)
            return
        fill.start(resp.status, resp.reason, end_to_end(resp.headers), length, True, age)
        stored = Stored(resp.status, resp.reason or "", tuple(fill.headers), (), length or 0,
                        now, age, policy)
        if disk is not None:
            part = disk.writer(stored.meta(fill.key), length or 0)   # None if unwritable
        size = 0
        from_origin = state.metrics.from_origin.labels(label)
        async for chunk in resp.content.iter_chunked(CHUNK):
            size += len(chunk)
            from_origin.inc(len(chunk))
            fill.append(chunk)
            if part is not None:
                part.append(chunk)
        if size != length:
            raise aiohttp.ClientPayloadError("origin closed early")
        on_disk = part is not None and part.commit()
        part = None
        fill.finish()
        cache.put_variant(primary, request_headers, replace(stored, chunks=tuple(fill.chunks)),
                          fill.key if on_disk else None)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        state.metrics.origin_errors.labels(label, "?", "truncated").inc()
        fill.fail()            # nothing is stored: an origin failure never corrupts the cache
    except asyncio.CancelledError:
        fill.fail()
        raise
    finally:
        if part is not None:
            part.abort()
        if resp is not None and not handed_over:
            resp.release() if fill.done else resp.close()
        if cache.fills.get(fill.key) is fill:
            del cache.fills[fill.key]


def _policy(customer: Customer, path: str, status: int, headers: Mapping[str, str],
            cache_control: list[str], request_cc: list[str], authorization: bool,
            now: float) -> Policy:
    """RFC 9111 freshness with the customer's default TTL and its first matching TTL rule."""
    rule = customer.cache.ttl_rule(path)
    default = rule.ttl if rule and not rule.override else customer.cache.default_ttl
    override = rule.ttl if rule and rule.override else None
    return response_policy("GET", status, headers, cache_control, request_cc, authorization,
                           now, default, override)


def _client_headers(out: web.StreamResponse, headers: "list[tuple[str, str]] | tuple",
                    age: float, label: str, request: web.Request, customer: Customer,
                    config: EdgeConfig) -> None:
    for key, value in headers:
        if key.lower() not in ("content-length", "age"):
            out.headers.add(key, value)
    out.headers["Age"] = str(int(age))
    out.headers["X-Cache"] = label
    out.headers["Via"] = _via(out.headers.get("Via"), request, config.via)
    if customer.alt_svc:
        out.headers["Alt-Svc"] = customer.alt_svc


async def _serve_fill(request: web.Request, state: "EdgeState", customer: Customer,
                      pool: OriginPool, scheme: str, host: str, path: str,
                      headers: list[tuple[str, str]], fill: Fill,
                      leader: bool, stale: Stored | None = None) -> web.StreamResponse:
    label = customer.directory
    fill.readers += 1
    try:
        try:
            async with asyncio.timeout(None if leader else COALESCE_TIMEOUT):
                ok = await asyncio.shield(fill.headers_ready)
        except TimeoutError:
            ok = None     # the first fetch stalls: this client goes to the origin itself
        if ok is None or (not leader and not fill.shareable and not fill.failed) or (
                not leader and ok and _other_variant(fill, request)):
            return await _pass(request, state, customer, pool, scheme, host, path, headers,
                               "MISS")
        if not ok:
            if stale is not None and _stale_on_error(stale, customer):
                return await _serve_stored(request, state, customer, stale, "STALE")
            state.metrics.requests.labels(label, "502").inc()
            raise web.HTTPBadGateway(text="no origin server answered\n")
        if fill.from_cache:
            return await _serve_now_cached(request, state, customer, pool, scheme, host, path,
                                           headers, fill)
        if fill.direct is not None:
            resp, fill.direct = fill.direct, None
            if "Range" in request.headers:
                # Too big (or not ours) to cache: ask the origin for just the range.
                resp.close()
                return await _pass(request, state, customer, pool, scheme, host, path, headers,
                                   "PASS")
            state.metrics.cache.labels(label, "PASS").inc()
            return await _relay(request, resp, customer, state, state.config, "PASS")
        result = "REVALIDATED" if fill.revalidated else "MISS"
        state.metrics.cache.labels(label, result).inc()
        wanted = _wanted_ranges(request, fill.status, fill.length or 0,
                                header(fill.headers, "ETag"), header(fill.headers, "Last-Modified"))
        if wanted is not None and fill.length is not None:
            # A range on a miss: the whole object is being fetched into the cache;
            # this client gets its bytes as soon as they are there.
            return await _serve_ranges(request, state, customer, wanted, fill.length,
                                       fill.headers, fill.initial_age, result, fill)
        state.metrics.requests.labels(label, str(fill.status)).inc()
        out = web.StreamResponse(status=fill.status, reason=fill.reason)
        _client_headers(out, fill.headers, fill.initial_age, result, request, customer,
                        state.config)
        if fill.length is not None:
            out.content_length = fill.length
        await out.prepare(request)
        sent = 0
        while True:
            while sent < len(fill.chunks):
                chunk = fill.chunks[sent]
                sent += 1
                await out.write(chunk)
                state.metrics.to_clients.labels(label).inc(len(chunk))
            if fill.failed:
                if request.transport is not None:
                    request.transport.abort()     # never a short response that looks whole
                return out
            if fill.done:
                break
            await fill.more()
        await out.write_eof()
        return out
    except (ConnectionResetError, ConnectionError):
        return web.Response(status=499)       # the client went away
    finally:
        fill.readers -= 1
        if fill.readers == 0 and not fill.done and fill.task is not None and not fill.shareable:
            # Nobody waits for the rest and it would not be stored: stop the origin
            # work. A cacheable object is fetched to the end (a range request on a
            # miss fills the cache for the next client).
            fill.task.cancel()


async def _serve_now_cached(request: web.Request, state: "EdgeState", customer: Customer,
                            pool: OriginPool, scheme: str, host: str, path: str,
                            headers: list[tuple[str, str]], fill: Fill) -> web.StreamResponse:
    """A waiter whose fill put the object in the cache (revalidated, or another worker's)."""
    cache = state.cache
    stored = cache.get(fill.key)
    body = None
    if stored is not None and stored.file is not None:
        body = await _open_body(cache, fill.key, stored)
        if body is None:
            stored = None
    if stored is None:
        return await _pass(request, state, customer, pool, scheme, host, path, headers, "MISS")
    try:
        return await _serve_stored(request, state, customer, stored,
                                   "REVALIDATED" if fill.revalidated else "HIT", body)
    finally:
        if body is not None:
            body.file.close()


async def _serve_stored(request: web.Request, state: "EdgeState", customer: Customer,
                        stored: Stored, result: str,
                        body: OpenBody | None = None) -> web.StreamResponse:
    """A cache hit: headers rendered from the stored object, body from memory or, for
    objects kept on disk only, with sendfile from the open file `body`."""
    label = customer.directory
    now = time.time()
    state.metrics.cache.labels(label, result).inc()
    if _not_modified(request, stored):
        out = web.StreamResponse(status=304)
        _client_headers(out, [(k, v) for k, v in stored.headers
                              if k.lower() in NOT_MODIFIED_HEADERS],
                        stored.age(now), result, request, customer, state.config)
        state.metrics.requests.labels(label, "304").inc()
        await out.prepare(request)
        await out.write_eof()
        return out
    wanted = _wanted_ranges(request, stored.status, stored.size, stored.header("ETag"),
                            stored.header("Last-Modified"))
    if wanted is not None:
        return await _serve_ranges(request, state, customer, wanted, stored.size,
                                   stored.headers, stored.age(now), result,
                                   body if body is not None else stored.chunks)
    out = web.StreamResponse(status=stored.status, reason=stored.reason)
    _client_headers(out, stored.headers, stored.age(now), result, request, customer,
                    state.config)
    out.headers["Accept-Ranges"] = "bytes"
    out.content_length = stored.size
    state.metrics.requests.labels(label, str(stored.status)).inc()
    await out.prepare(request)
    if request.method != "HEAD":
        if body is not None:
            await _sendfile(request, body, 0, stored.size)
        else:
            for chunk in stored.chunks:
                await out.write(chunk)
        state.metrics.to_clients.labels(label).inc(stored.size)
    await out.write_eof()
    return out


async def _sendfile(request: web.Request, body: OpenBody, first: int, count: int) -> None:
    """`count` bytes of an on-disk body from `first`, by the kernel (after the headers)."""
    if request.transport is None:
        raise ConnectionResetError("client gone")
    await asyncio.get_running_loop().sendfile(request.transport, body.file,
                                              body.offset + first, count)


def _wanted_ranges(request: web.Request, status: int, size: int, etag: str | None,
                   last_modified: str | None) -> list[tuple[int, int]] | None:
    if status != 200 or request.method != "GET":
        return None
    if not ranges.if_range_holds(request.headers.get("If-Range"), etag, last_modified):
        return None
    return ranges.parse(request.headers.get("Range"), size)


async def _serve_ranges(request: web.Request, state: "EdgeState", customer: Customer,
                        wanted: list[tuple[int, int]], size: int, headers, age: float,
                        result: str, chunks) -> web.StreamResponse:
    """206 with one range or multipart/byteranges; 416 when none is satisfiable.

    `chunks` is the body so far: a stored tuple, or a fill's growing list, in
    which case `_await_bytes` waits for the bytes a range needs.
    """
    label = customer.directory
    base = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-range")]
    content_type = next((v for k, v in headers if k.lower() == "content-type"),
                        "application/octet-stream")
    if not wanted:
        out = web.StreamResponse(status=416)
        _client_headers(out, base, age, result, request, customer, state.config)
        out.headers["Content-Range"] = f"bytes */{size}"
        out.content_length = 0
        state.metrics.requests.labels(label, "416").inc()
        await out.prepare(request)
        await out.write_eof()
        return out
    out = web.StreamResponse(status=206)
    _client_headers(out, base, age, result, request, customer, state.config)
    out.headers["Accept-Ranges"] = "bytes"
    state.metrics.requests.labels(label, "206").inc()
    if len(wanted) == 1:
        first, last = wanted[0]
        out.headers["Content-Type"] = content_type
        out.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        out.content_length = last - first + 1
        await out.prepare(request)
        await _write_range(request, out, state, label, chunks, first, last)
        await out.write_eof()
        return out
    boundary = "gslb-edge-" + format(id(out), "x")
    parts = [(f"--{boundary}\r\nContent-Type: {content_type}\r\n"
              f"Content-Range: bytes {a}-{b}/{size}\r\n\r\n").encode() for a, b in wanted]
    tail = f"\r\n--{boundary}--\r\n".encode()
    out.headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    out.content_length = (sum(len(p) for p in parts) + sum(b - a + 1 for a, b in wanted)
                          + 2 * (len(wanted) - 1) + len(tail))
    await out.prepare(request)
    for index, ((first, last), head) in enumerate(zip(wanted, parts)):
        await out.write((b"\r\n" if index else b"") + head)
        await _write_range(request, out, state, label, chunks, first, last)
    await out.write(tail)
    await out.write_eof()
    return out


async def _write_range(request: web.Request, out: web.StreamResponse, state: "EdgeState",
                       label: str, chunks,
                       first: int, last: int) -> None:
    if isinstance(chunks, OpenBody):
        await _sendfile(request, chunks, first, last - first + 1)
        state.metrics.to_clients.labels(label).inc(last - first + 1)
        return
    if isinstance(chunks, Fill):
        await _await_bytes(chunks, last + 1)
        chunks = chunks.chunks
    for piece in ranges.slice_chunks(chunks, first, last):
        await out.write(piece)
        state.metrics.to_clients.labels(label).inc(len(piece))


async def _await_bytes(fill: Fill, needed: int) -> None:
    """Wait until a fill holds `needed` bytes (or ends); a failed fill aborts the client."""
    while fill.received < needed and not fill.done and not fill.failed:
        await fill.more()
    if fill.failed:
        raise ConnectionResetError("origin fetch failed")


def _other_variant(fill: Fill, request: web.Request) -> bool:
    """Whether the response varies on a header in which this waiter differs from the leader."""
    names = vary_names(fill.headers)
    if not names or fill.leader_headers is None:
        return False
    return (secondary_key("", names, request.headers)
            != secondary_key("", names, fill.leader_headers))


def _background_done(fill: Fill) -> None:
    """A revalidation nobody waits for has ended: drop a response no one will read."""
    fill.readers -= 1
    if fill.direct is not None:
        fill.direct.close()
        fill.direct = None


def _stale_on_error(stale: Stored, customer: Customer) -> bool:
    """RFC 5861 stale-if-error, or the customer's grace period, covers this copy."""
    staleness = stale.age(time.time()) - stale.policy.ttl
    window = max(stale.policy.stale_if_error, customer.cache.grace)
    return stale.policy.stale_allowed(staleness, window)


NOT_MODIFIED_HEADERS = frozenset({"cache-control", "content-location", "date", "etag",
                                  "expires", "vary", "last-modified"})


def _not_modified(request: web.Request, stored: Stored) -> bool:
    """RFC 9110 13.1: answer a client's conditional GET from the cache with 304."""
    if stored.status != 200:
        return False
    etag = stored.header("ETag")
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        if not etag:
            return False
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or etag.removeprefix("W/") in tags      # weak comparison
    ims = http_date(request.headers.get("If-Modified-Since"))
    modified = http_date(stored.header("Last-Modified"))
    return ims is not None and modified is not None and modified <= ims


def _wants_websocket(request: web.Request) -> bool:
    return (request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in request.headers.get("Connection", "").lower())


WS_OWN = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                    "sec-websocket-protocol"})


async def _websocket(request: web.Request, state: "EdgeState", customer: Customer, scheme: str,
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
            pool.failed(server, f"{_describe(exc)}: {exc}")
            state.metrics.origin_errors.labels(customer.directory, server.host,
                                               _describe(exc)).inc()
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


def _via(incoming: str | None, request: web.Request, name: str) -> str:
    mine = f"{request.version.major}.{request.version.minor} {name}"
    return f"{incoming}, {mine}" if incoming else mine


async def _relay(request: web.Request, resp: aiohttp.ClientResponse, customer: Customer,
                 state: EdgeState, config: EdgeConfig, cache_label: str = "") -> web.StreamResponse:
    """Stream the origin's response to the client, never holding the body whole."""
    label = customer.directory
    bucket = customer.origin.bucket
    if bucket is not None and resp.status >= 400:
        return await _bucket_error(request, resp, customer, state, bucket, cache_label)
    out = web.StreamResponse(status=resp.status, reason=resp.reason)
    for key, value in end_to_end(resp.headers):
        if key.lower() != "content-length":
            out.headers.add(key, value)
    if resp.content_length is not None:
        out.content_length = resp.content_length      # on HEAD too: what a GET would send
    out.headers["Via"] = _via(resp.headers.get("Via"), request, config.via)
    if customer.alt_svc:
        out.headers["Alt-Svc"] = customer.alt_svc
    if cache_label:
        out.headers["X-Cache"] = cache_label
    state.metrics.requests.labels(label, str(resp.status)).inc()
    try:
        await out.prepare(request)
        async for chunk in resp.content.iter_chunked(CHUNK):
            state.metrics.from_origin.labels(label).inc(len(chunk))
            await out.write(chunk)
            state.metrics.to_clients.labels(label).inc(len(chunk))
        bodyless = request.method == "HEAD" or resp.status in (204, 304)
        if (not bodyless and resp.content_length is not None
                and resp.content.total_bytes < resp.content_length):
            raise aiohttp.ClientPayloadError("origin closed early")
        await out.write_eof()
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, asyncio.TimeoutError):
        # The origin cut the body short: the client must see an aborted response,
        # never a short one that looks complete.
        state.metrics.origin_errors.labels(label, "?", "truncated").inc()
        if request.transport is not None:
            request.transport.abort()
    except (ConnectionResetError, ConnectionError):
        pass   # the client went away: stop pulling from the origin
    finally:
        resp.release() if resp.content.at_eof() else resp.close()
    return out


async def _bucket_error(request: web.Request, resp: aiohttp.ClientResponse, customer: Customer,
                        state: EdgeState, bucket: Bucket, cache_label: str) -> web.Response:
    """A bucket's 4xx/5xx: logged and counted with the provider's error code; the client
    sees the status and a plain line, not the XML with request IDs (unless exposed)."""
    label = customer.directory
    try:
        body = await resp.content.read(65536)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        body = b""
    finally:
        resp.close()
    code = error_code(body)
    state.metrics.origin_errors.labels(label, bucket.address,
                                       f"bucket_{code or resp.status}").inc()
    state.metrics.requests.labels(label, str(resp.status)).inc()
    log.warning("%s bucket %s answered %d %s for %s", bucket.kind, bucket.name, resp.status,
                code or "(no error code)", request.path)
    headers = {"Via": _via(None, request, state.config.via)}
    if cache_label:
        headers["X-Cache"] = cache_label
    if bucket.expose_errors:
        return web.Response(status=resp.status, body=body, headers={
            **headers, "Content-Type": resp.headers.get("Content-Type", "application/xml")})
    text = CLIENT_TEXT.get(resp.status, "the origin bucket could not answer\n")
    return web.Response(status=resp.status, text=text, headers=headers)


PURGE_PATH = "/.edge/purge"
BAN_POLL = 0.2


async def _purge(request: web.Request, state: "EdgeState") -> web.Response:
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


async def _follow_bans(state: "EdgeState") -> None:
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
