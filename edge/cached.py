"""Requests through the cache: look up, serve a hit, or fill from the origin once for all.

`cached` is the entry: a fresh stored object is served (`_serve_stored`, from
memory or with sendfile from the disk tier); otherwise one `Fill` per key
fetches it (`_fill`), or follows another worker's fetch through the disk tier
(`_follow`), and every waiting client is streamed the body as it arrives
(`_serve_fill`), ranges included. Stale copies answer while a fill refreshes
them, or when the origin fails, as RFC 5861 and the customer's grace allow.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import AsyncIterator, Mapping

from aiohttp import web

from . import ranges
from .cache import Cache, Fill, Stored, header, secondary_key, vary_names
from .fill import COALESCE_TIMEOUT, FillJob, fill_or_follow
from .freshness import http_date, request_wants_fresh
from .model import Customer, EdgeConfig
from .origin import OriginPool
from .route import keys_host
from .state import EdgeState
from .upstream import CHUNK, pull, relay, via_header


def cache_eligible(request: web.Request, customer: Customer) -> bool:
    return (customer.cache.enabled and request.method in ("GET", "HEAD")
            and not request.body_exists)


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


async def cached(request: web.Request, state: EdgeState, customer: Customer,
                  pool: OriginPool, scheme: str, host: str, path: str,
                  headers: list[tuple[str, str]]) -> web.StreamResponse:
    cache = state.cache
    primary = cache_key(request.scheme, customer, path, request.headers, host)
    key = cache.key_for(primary, request.headers)
    async with _opened(cache, key) as (stored, body):
        return await _lookup_done(request, state, customer, pool, scheme, host, path, headers,
                                  primary, key, stored, body)


@dataclass
class OpenBody:
    """An on-disk body opened for sendfile; the open file survives eviction and renames."""

    file: "object"
    offset: int


@contextlib.asynccontextmanager
async def _opened(cache: Cache, key: str) -> AsyncIterator[tuple[Stored | None, OpenBody | None]]:
    """The stored object for `key` and, when its body is on disk only, that body opened
    (closed afterwards); (None, None) when there is none or its file is unusable."""
    stored = cache.get(key)
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


async def _lookup_done(request: web.Request, state: EdgeState, customer: Customer,
                       pool: OriginPool, scheme: str, host: str, path: str,
                       headers: list[tuple[str, str]], primary: str, key: str,
                       stored: Stored | None, body: OpenBody | None) -> web.StreamResponse:
    cache = state.cache
    wants_fresh = request_wants_fresh(request.headers.getall("Cache-Control", []),
                                      customer.cache.honour_client_no_cache)
    now = time.time()
    if stored is not None and not wants_fresh and stored.fresh(now):
        return await _serve_stored(request, state, customer, stored, "HIT", body)
    # A HEAD miss fills the cache with a GET, as nginx's proxy_cache_convert_head does:
    # the next GET is a hit, and the origin sees one request either way.
    if cache.passing(key):
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
        fill.task = asyncio.get_running_loop().create_task(fill_or_follow(job, fill))
    if stored is not None and not wants_fresh and stored.policy.stale_allowed(
            stored.age(now) - stored.policy.ttl, stored.policy.stale_while_revalidate):
        # RFC 5861: answer now from the stale copy; the fill above refreshes it.
        fill.readers += 1
        fill.task.add_done_callback(lambda _task, f=fill: _background_done(f))
        return await _serve_stored(request, state, customer, stored, "STALE", body)
    return await _serve_fill(request, state, customer, pool, scheme, host, path, headers, fill,
                             leader, stored)


async def _pass(request: web.Request, state: EdgeState, customer: Customer, pool: OriginPool,
                scheme: str, host: str, path: str, headers: list[tuple[str, str]],
                label: str) -> web.StreamResponse:
    resp = await pull(state, customer, pool, scheme, host, request.method, path, headers, None,
                      True)
    if resp is None:
        state.metrics.requests.labels(customer.directory, "502").inc()
        raise web.HTTPBadGateway(text="no origin server answered\n")
    state.metrics.cache.labels(customer.directory, label).inc()
    return await relay(request, resp, customer, state, state.config, label)


def _client_headers(out: web.StreamResponse, headers: "list[tuple[str, str]] | tuple",
                    age: float, label: str, request: web.Request, customer: Customer,
                    config: EdgeConfig) -> None:
    for key, value in headers:
        if key.lower() not in ("content-length", "age"):
            out.headers.add(key, value)
    out.headers["Age"] = str(int(age))
    out.headers["X-Cache"] = label
    out.headers["Via"] = via_header(out.headers.get("Via"), request, config.via)
    if customer.alt_svc:
        out.headers["Alt-Svc"] = customer.alt_svc


async def _serve_fill(request: web.Request, state: EdgeState, customer: Customer,
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
            return await relay(request, resp, customer, state, state.config, "PASS")
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
        if request.method == "HEAD":
            await out.write_eof()     # the fill goes on for the cache
            return out
        sent = 0
        to_clients = state.metrics.to_clients.labels(label)
        while True:
            while sent < fill.received:
                piece = fill.read(sent, CHUNK)
                sent += len(piece)
                await out.write(piece)
                to_clients.inc(len(piece))
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


async def _serve_now_cached(request: web.Request, state: EdgeState, customer: Customer,
                            pool: OriginPool, scheme: str, host: str, path: str,
                            headers: list[tuple[str, str]], fill: Fill) -> web.StreamResponse:
    """A waiter whose fill put the object in the cache (revalidated, or another worker's)."""
    async with _opened(state.cache, fill.key) as (stored, body):
        if stored is None:
            return await _pass(request, state, customer, pool, scheme, host, path, headers,
                               "MISS")
        return await _serve_stored(request, state, customer, stored,
                                   "REVALIDATED" if fill.revalidated else "HIT", body)


async def _serve_stored(request: web.Request, state: EdgeState, customer: Customer,
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


async def _serve_ranges(request: web.Request, state: EdgeState, customer: Customer,
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


async def _write_range(request: web.Request, out: web.StreamResponse, state: EdgeState,
                       label: str, chunks,
                       first: int, last: int) -> None:
    if isinstance(chunks, OpenBody):
        await _sendfile(request, chunks, first, last - first + 1)
        state.metrics.to_clients.labels(label).inc(last - first + 1)
        return
    if isinstance(chunks, Fill):
        fill = chunks
        await _await_bytes(fill, last + 1)
        offset = first
        while offset <= last:
            piece = fill.read(offset, last + 1 - offset)
            offset += len(piece)
            await out.write(piece)
            state.metrics.to_clients.labels(label).inc(len(piece))
        return
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
