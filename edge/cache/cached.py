"""Requests through the cache: look up, serve a hit, or fill from the origin once for all.

`cached` is the entry: a fresh stored object is served (serve.py, from memory
or from its file on the disk tier); otherwise one `Fill` per key fetches it
(fill.py), or follows another worker's fetch through the disk tier, and every
waiting client is streamed the body as it arrives, ranges included. Stale
copies answer while a fill refreshes them, or when the origin fails, as RFC
5861 and the customer's grace allow. `invalidate` drops what a successful
unsafe request made obsolete (RFC 9111 4.4).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import AsyncIterator, Mapping
from urllib.parse import urljoin, urlsplit

from edge.cache.store import Cache, Fill, Stored, secondary_key, vary_names
from edge.cache.fill import COALESCE_TIMEOUT, FillJob, customer_policy, fill_or_follow, storable
from edge.origin.forward import end_to_end
from edge.cache.freshness import initial_age, request_wants_fresh
from edge.http.headers import cache_status
from edge.model import Customer
from edge.origin.order import OriginPool
from edge.cache.parts import content_range
from edge.route import BadPath, canonical, host_name, keys_host
from edge.cache.serve import (
    Exchange,
    OpenBody,
    serve_fill,
    serve_part,
    serve_stored,
    stale_on_error,
    wait_headers,
)
from edge.http.reply import Reply
from edge.http.server import Request
from edge.state import EdgeState
from edge.origin.upstream import Unreachable, own_error, pull, relay, relay_range


def cache_eligible(request: Request, customer: Customer) -> bool:
    return (customer.cache.enabled and request.method in ("GET", "HEAD")
            and request.body is None)


def cache_key(scheme: str, customer: Customer, path: str,
              request_headers: "Mapping[str, str]", host: str) -> str:
    """scheme + customer + path (+ query, + the origin's Host when it can vary, + chosen
    request headers), per the customer's rules."""
    rules = customer.cache
    if rules.ignore_query:
        path = path.split("?", 1)[0]
    key = f"{scheme}://{customer.directory}{path}"
    if keys_host(customer):
        key += f"\x00host={host.lower()}"
    for name in rules.key_headers:
        key += f"\x00{name}={request_headers.get(name, '')}"
    return key


def url_id(customer: Customer, path: str) -> str:
    """What an invalidation names: the customer and the path as the key holds it."""
    return customer.directory + (path.split("?", 1)[0] if customer.cache.ignore_query else path)


async def cached(request: Request, reply: Reply, state: EdgeState, customer: Customer,
                 pool: OriginPool, scheme: str, host: str, path: str,
                 headers: list[tuple[str, str]]) -> None:
    cache = state.cache
    primary = cache_key(request.scheme, customer, path, request.headers, host)
    key = cache.key_for(primary, request.headers)
    ex = Exchange(request, reply, state, customer, pool, scheme, host, path, headers, key)
    async with _opened(cache, key, url_id(customer, path)) as (stored, body):
        await _lookup_done(ex, primary, key, stored, body)


@contextlib.asynccontextmanager
async def _opened(cache: Cache, key: str,
                  url: str = "") -> AsyncIterator[tuple[Stored | None, OpenBody | None]]:
    """The stored object for `key` and, when its body is on disk only, that body opened
    (closed afterwards); (None, None) when there is none, its file is unusable, or a
    successful unsafe request invalidated it since it was stored."""
    stored = cache.get(key)
    if stored is not None and url and cache.invalidated_since(url, stored.stored_at):
        stored = None
    body = None
    if stored is not None and stored.file is not None:
        body = await _open_body(cache, key, stored)
        if body is None:
            stored = None
    try:
        yield stored, body
    finally:
        if body is not None:
            body.file.close()


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


async def _lookup_done(ex: Exchange, primary: str, key: str, stored: Stored | None,
                       body: OpenBody | None) -> None:
    request, state, customer = ex.request, ex.state, ex.customer
    cache = state.cache
    wants_fresh = request_wants_fresh(request.headers.getall("Cache-Control", []),
                                      customer.cache.honour_client_no_cache)
    now = time.time()
    if stored is not None and not wants_fresh and stored.fresh(now):
        return await serve_stored(ex, stored, "HIT", body)
    if stored is None and request.method == "GET" and "Range" in request.headers:
        part = cache.parts.get(key)       # an object too big to hold: ranges of it, maybe
        if part is not None and part.fresh(now) and await serve_part(ex, part, now):
            return
    # A HEAD miss fills the cache with a GET, as nginx's proxy_cache_convert_head does:
    # the next GET is a hit, and the origin sees one request either way.
    if cache.passing(key):
        return await _pass(ex, "PASS", "uri-miss")
    fill = cache.fills.get(key)
    leader = fill is None
    if fill is None:
        fill = Fill(key)
        fill.leader_headers = request.headers
        fill.interim = ex.reply.interim           # 1xx go to the client that asked
        fill.fwd = ("request" if wants_fresh else "stale" if stored is not None else
                    "vary-miss" if key != primary else "uri-miss")
        cache.fills[key] = fill
        job = FillJob(ex, stored, primary)
        fill.task = asyncio.get_running_loop().create_task(fill_or_follow(job, fill))
    if stored is not None and not wants_fresh and stored.policy.stale_allowed(
            stored.age(now) - stored.policy.ttl, stored.policy.stale_while_revalidate):
        # RFC 5861: answer now from the stale copy; the fill above refreshes it.
        fill.readers += 1
        fill.task.add_done_callback(lambda _task, f=fill: _background_done(f))
        return await serve_stored(ex, stored, "STALE", body)
    await _wait_fill(ex, fill, leader, stored)


async def _pass(ex: Exchange, result: str, fwd: str) -> None:
    request = ex.request
    sent = time.time()
    try:
        resp = await pull(ex.state, ex.customer, ex.pool, ex.scheme, ex.host,
                          request.method, ex.path, ex.headers, None, True, ex.reply.interim)
    except Unreachable as exc:
        return _unreachable(ex, exc, fwd)
    ex.state.metrics.cache.labels(ex.customer.directory, result).inc()
    # A range of an object not held whole: its 206 is kept as partial content.
    tee: list[bytes] | None = [] if (resp.status == 206 and ex.key and request.method == "GET"
                                     and ex.customer.origin.bucket is None) else None
    whole = await relay(request, ex.reply, resp, ex.customer, ex.state, result,
                        cache_status(ex.config.name, fwd=fwd, fwd_status=resp.status), tee)
    if tee is not None and whole:
        _keep_part(ex, resp.headers, b"".join(tee), sent)


def _keep_part(ex: Exchange, headers, data: bytes, sent: float) -> None:
    """Store a 206 from the origin as partial content (RFC 9111 3.3), when it has a strong
    validator to combine it by (3.4) and may be stored at all."""
    span = content_range(headers.get("Content-Range"))
    etag = headers.get("ETag")
    validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
    if span is None or not validator or len(data) != span[1] - span[0] + 1:
        return
    if len(data) > ex.customer.cache.max_object:
        return
    now = time.time()
    request = ex.request
    # 206 is heuristically cacheable as 200 is (RFC 9110 15.1).
    policy = customer_policy(ex.customer, ex.path, request.headers.getall("Cache-Control", []),
                             "Authorization" in request.headers, 200, headers, now)
    if not policy.store:
        return
    kept = tuple((k, v) for k, v in storable(end_to_end(headers), policy)
                 if k.lower() not in ("content-range", "content-length"))
    ex.state.cache.parts.add(ex.key, validator, span[0], data, span[2], kept, now,
                             initial_age(headers, now, sent), policy)


def _unreachable(ex: Exchange, exc: Unreachable, fwd: str) -> None:
    own_error(ex.reply, ex.request, ex.state, exc.status, exc.text, fwd, ex.customer.directory)


async def _wait_fill(ex: Exchange, fill: Fill, leader: bool, stale: Stored | None) -> None:
    """Serve a client from the fill of its key, once the fill has a response head."""
    request = ex.request
    fill.readers += 1
    try:
        ok = await wait_headers(fill, None if leader else COALESCE_TIMEOUT)
        if ok is None or (not leader and not fill.shareable and not fill.failed) or (
                not leader and ok and _other_variant(fill, request)):
            # The first fetch stalls, or its answer is not for us: go ourselves.
            return await _pass(ex, "MISS", "uri-miss")
        if not ok:
            if stale is not None and stale_on_error(stale, ex.customer):
                return await serve_stored(ex, stale, "STALE", entry=cache_status(
                    ex.config.name, fwd="stale", fwd_status=fill.failed_status,
                    ttl=stale.policy.ttl - stale.age(time.time())))
            return _unreachable(ex, Unreachable(fill.failed_status), fill.fwd or "uri-miss")
        if fill.from_cache:
            return await _serve_now_cached(ex, fill, leader)
        if fill.direct is not None:
            resp, fill.direct = fill.direct, None
            ex.state.metrics.cache.labels(ex.customer.directory, "PASS").inc()
            entry = cache_status(ex.config.name, fwd=fill.fwd, fwd_status=resp.status)
            if "Range" in request.headers and resp.status == 200:
                # Too big (or not ours) to cache: the range is cut from this response
                # rather than asked for again (one origin request per client request).
                return await relay_range(ex, resp, entry)
            return await relay(request, ex.reply, resp, ex.customer, ex.state, "PASS", entry)
        result = "REVALIDATED" if fill.revalidated else "MISS"
        ttl = fill.policy.ttl - fill.initial_age if fill.stored else None
        entry = cache_status(ex.config.name, fwd=fill.fwd,
                             fwd_status=304 if fill.revalidated else fill.status, ttl=ttl,
                             stored=fill.stored, collapsed=not leader)
        await serve_fill(ex, fill, result, entry)
    except ConnectionError:
        ex.reply.abort()                      # the client went away
    finally:
        fill.readers -= 1
        if fill.readers == 0 and not fill.done and fill.task is not None and not fill.shareable:
            # Nobody waits for the rest and it would not be stored: stop the origin
            # work. A cacheable object is fetched to the end (a range request on a
            # miss fills the cache for the next client).
            fill.task.cancel()


async def _serve_now_cached(ex: Exchange, fill: Fill, leader: bool) -> None:
    """A waiter whose fill put the object in the cache (revalidated, or another worker's)."""
    async with _opened(ex.state.cache, fill.key) as (stored, body):
        if stored is None:
            return await _pass(ex, "MISS", "uri-miss")
        result = "REVALIDATED" if fill.revalidated else "HIT"
        entry = ""
        if fill.revalidated:
            entry = cache_status(ex.config.name, fwd=fill.fwd, fwd_status=304, stored=True,
                                 ttl=stored.policy.ttl - stored.age(time.time()),
                                 collapsed=not leader)
        await serve_stored(ex, stored, result, body, entry)


def _other_variant(fill: Fill, request: Request) -> bool:
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


def invalidate(state: EdgeState, customer: Customer, path: str, host: str,
               response_headers: "Mapping[str, str]") -> None:
    """RFC 9111 4.4: after a successful unsafe request, the stored responses for its URL,
    and for a same-origin Location / Content-Location, are not used again."""
    paths = [path]
    base = f"http://{host}{path}"
    for name in ("Location", "Content-Location"):
        value = response_headers.get(name)
        if not value:
            continue
        target = urlsplit(urljoin(base, value))
        if host_name(target.netloc) != host_name(host) and (
                host_name(target.netloc) not in customer.cnames):
            continue                       # another origin: not ours to invalidate
        try:
            paths.append(canonical(customer, (target.path or "/") + (
                f"?{target.query}" if target.query else "")))
        except BadPath:
            continue
    cache = state.cache
    now = time.time()
    for p in dict.fromkeys(paths):
        keys = [cache_key(scheme, customer, p, {}, host) for scheme in ("http", "https")]
        cache.invalidate(url_id(customer, p), keys, now)
        state.tell_workers_invalidated(url_id(customer, p), keys, now)
