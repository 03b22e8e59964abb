"""Answering from the cache: a stored object (from memory, or from its file on the
disk tier), a fill that is still arriving, byte ranges of either, and the 304s
for a client's own conditionals.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from edge.cache import ranges
from edge.cache.store import Fill, Stored, header
from edge.cache.freshness import http_date
from edge.http.headers import cache_status, targeted_drop, to_client
from edge.model import Customer, EdgeConfig
from edge.origin.order import OriginPool
from edge.cache.parts import Partial
from edge.http.reply import Reply
from edge.http.server import Request
from edge.state import EdgeState

CHUNK = 64 * 1024


@dataclass(slots=True)
class Exchange:
    """One request on its way through the cache, and what is needed to pull it."""

    request: Request
    reply: Reply
    state: EdgeState
    customer: Customer
    pool: OriginPool
    scheme: str
    host: str
    path: str
    headers: list[tuple[str, str]]
    key: str = ""                  # its cache key (the variant's)

    @property
    def config(self) -> EdgeConfig:
        return self.state.config

    def count(self, result: str, status: int) -> None:
        label = self.customer.directory
        self.state.metrics.cache.labels(label, result).inc()
        self.state.metrics.requests.labels(label, str(status)).inc()


@dataclass(slots=True)
class OpenBody:
    """An on-disk body being sent (edge/http/filesend.py); the open file survives eviction and
    renames."""

    file: object
    offset: int


def client_headers(ex: Exchange, headers, age: float, result: str,
                   entry: str) -> list[tuple[str, str]]:
    """What a client gets with a cached (or caching) response: the stored headers for it,
    Age, X-Cache and this edge's Cache-Status entry."""
    out = to_client(headers, version=ex.request.version, via_name=ex.config.via,
                    alt_svc=ex.customer.alt_svc, drop=targeted_drop(ex.request, ex.customer),
                    status_entry=entry, checked=True)
    out += [("Age", str(int(age))), ("X-Cache", result)]
    return out


def stored_entry(ex: Exchange, stored: Stored, result: str, now: float,
                 fwd_status: int = 0) -> str:
    """The Cache-Status entry of an answer from a stored object."""
    ttl = stored.policy.ttl - stored.age(now)
    if result == "REVALIDATED":
        return cache_status(ex.config.name, fwd="stale", fwd_status=304, ttl=ttl, stored=True)
    if result == "STALE" and fwd_status:
        return cache_status(ex.config.name, fwd="stale", fwd_status=fwd_status, ttl=ttl)
    return cache_status(ex.config.name, hit=True, ttl=ttl)


async def serve_stored(ex: Exchange, stored: Stored, result: str,
                       body: OpenBody | None = None, entry: str = "") -> None:
    """A cache hit: headers rendered from the stored object, body from memory or, for
    objects kept on disk only, from the open file `body` (edge/http/filesend.py)."""
    request, reply = ex.request, ex.reply
    now = time.time()
    entry = entry or stored_entry(ex, stored, result, now)
    if not_modified(request, stored):
        headers = [(k, v) for k, v in stored.headers if k.lower() in NOT_MODIFIED_HEADERS]
        ex.count(result, 304)
        reply.start(304, "", client_headers(ex, headers, stored.age(now), result, entry), None)
        reply.end()
        return
    wanted = wanted_ranges(request, stored.status, stored.size, stored.header("ETag"),
                           stored.header("Last-Modified"))
    if wanted is not None:
        return await serve_ranges(ex, wanted, stored.size, stored.headers, stored.age(now),
                                  result, entry, body if body is not None else stored.chunks)
    ex.count(result, stored.status)
    headers = client_headers(ex, stored.headers, stored.age(now), result, entry)
    reply.start(stored.status, stored.reason, headers + [("Accept-Ranges", "bytes")],
                stored.size)
    if request.method != "HEAD":
        if body is not None:
            await reply.sendfile(body.file, body.offset, stored.size, ex.config.sendfile)
        else:
            for chunk in stored.chunks:
                await reply.write(chunk)
        ex.state.metrics.to_clients.labels(ex.customer.directory).inc(stored.size)
    reply.end()


async def serve_fill(ex: Exchange, fill: Fill, result: str, entry: str) -> None:
    """A response still arriving from the origin, streamed as its bytes come."""
    request, reply = ex.request, ex.reply
    wanted = wanted_ranges(request, fill.status, fill.length or 0,
                           fill.header("ETag"), fill.header("Last-Modified"))
    if wanted is not None and fill.length is not None:
        # A range on a miss: the whole object is being fetched into the cache; this
        # client gets its bytes as soon as they are there.
        return await serve_ranges(ex, wanted, fill.length, fill.headers, fill.initial_age,
                                  result, entry, fill)
    ex.count(result, fill.status)
    reply.start(fill.status, fill.reason,
                client_headers(ex, fill.headers, fill.initial_age, result, entry), fill.length)
    if request.method == "HEAD":
        reply.end()                   # the fill goes on for the cache
        return
    sent = 0
    to_clients = ex.state.metrics.to_clients.labels(ex.customer.directory)
    while True:
        while sent < fill.received:
            piece = fill.read(sent, CHUNK)
            sent += len(piece)
            await reply.write(piece)
            to_clients.inc(len(piece))
        if fill.failed:
            reply.abort()             # never a short response that looks whole
            return
        if fill.done:
            break
        await fill.more()
    reply.end()


def wanted_ranges(request: Request, status: int, size: int, etag: str | None,
                  last_modified: str | None) -> list[tuple[int, int]] | None:
    if status != 200 or request.method != "GET":
        return None
    headers = request.headers
    if "Range" not in headers:
        return None
    if not ranges.if_range_holds(headers.get("If-Range"), etag, last_modified):
        return None
    return ranges.parse(headers.get("Range"), size)


async def serve_ranges(ex: Exchange, wanted: list[tuple[int, int]], size: int, headers,
                       age: float, result: str, entry: str, chunks) -> None:
    """206 with one range or multipart/byteranges; 416 when none is satisfiable.

    `chunks` is the body: a stored tuple, an open file, or a fill that is still
    arriving, in which case `_await_bytes` waits for the bytes a range needs.
    """
    reply = ex.reply
    base = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-range")]
    content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
    out = client_headers(ex, base, age, result, entry)
    if not wanted:
        ex.count(result, 416)
        reply.start(416, "", out + [("Content-Range", f"bytes */{size}")], 0)
        reply.end()
        return
    ex.count(result, 206)
    out.append(("Accept-Ranges", "bytes"))
    if len(wanted) == 1:
        first, last = wanted[0]
        typed = [("Content-Type", content_type)] if content_type else []
        reply.start(206, "", out + typed + [("Content-Range", f"bytes {first}-{last}/{size}")],
                    last - first + 1)
        await write_range(ex, chunks, first, last)
        reply.end()
        return
    boundary = "gslb-edge-" + format(id(reply), "x")
    part_type = f"Content-Type: {content_type}\r\n" if content_type else ""
    parts = [(f"--{boundary}\r\n{part_type}"
              f"Content-Range: bytes {a}-{b}/{size}\r\n\r\n").encode() for a, b in wanted]
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = (sum(len(p) for p in parts) + sum(b - a + 1 for a, b in wanted)
              + 2 * (len(wanted) - 1) + len(tail))
    reply.start(206, "", out + [("Content-Type", f"multipart/byteranges; boundary={boundary}")],
                length)
    for index, ((first, last), head) in enumerate(zip(wanted, parts)):
        await reply.write((b"\r\n" if index else b"") + head)
        await write_range(ex, chunks, first, last)
    await reply.write(tail)
    reply.end()


async def serve_part(ex: Exchange, part: Partial, now: float) -> bool:
    """Ranges answered from stored partial content; False unless it holds them all."""
    wanted = wanted_ranges(ex.request, 200, part.size, header(part.headers, "ETag"),
                           header(part.headers, "Last-Modified"))
    if not wanted or any(part.covering(a, b) is None for a, b in wanted):
        return False
    entry = cache_status(ex.config.name, hit=True, ttl=part.policy.ttl - part.age(now))
    await serve_ranges(ex, wanted, part.size, part.headers, part.age(now), "HIT", entry, part)
    return True


async def write_range(ex: Exchange, chunks, first: int, last: int) -> None:
    reply = ex.reply
    to_clients = ex.state.metrics.to_clients.labels(ex.customer.directory)
    if isinstance(chunks, Partial):
        data = chunks.covering(first, last)
        assert data is not None
        await reply.write(data)
        to_clients.inc(len(data))
        return
    if isinstance(chunks, OpenBody):
        await reply.sendfile(chunks.file, chunks.offset + first, last - first + 1,
                             ex.config.sendfile)
        to_clients.inc(last - first + 1)
        return
    if isinstance(chunks, Fill):
        fill = chunks
        await await_bytes(fill, last + 1)
        offset = first
        while offset <= last:
            piece = fill.read(offset, last + 1 - offset)
            offset += len(piece)
            await reply.write(piece)
            to_clients.inc(len(piece))
        return
    for piece in ranges.slice_chunks(chunks, first, last):
        await reply.write(piece)
        to_clients.inc(len(piece))


async def await_bytes(fill: Fill, needed: int) -> None:
    """Wait until a fill holds `needed` bytes (or ends); a failed fill aborts the client."""
    while fill.received < needed and not fill.done and not fill.failed:
        await fill.more()
    if fill.failed:
        raise ConnectionResetError("origin fetch failed")


NOT_MODIFIED_HEADERS = frozenset({"cache-control", "content-location", "date", "etag",
                                  "expires", "vary", "last-modified"})


def not_modified(request: Request, stored: Stored) -> bool:
    """RFC 9110 13.1: answer a client's conditional GET from the cache with 304."""
    if stored.status != 200:
        return False
    headers = request.headers
    inm = headers.get("If-None-Match")
    if inm is not None:
        etag = stored.header("ETag")
        if not etag:
            return False
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or etag.removeprefix("W/") in tags      # weak comparison
    ims = http_date(headers.get("If-Modified-Since"))
    modified = http_date(stored.header("Last-Modified"))
    return ims is not None and modified is not None and modified <= ims


def stale_on_error(stale: Stored, customer: Customer) -> bool:
    """RFC 5861 stale-if-error, or the customer's grace period, covers this copy."""
    staleness = stale.age(time.time()) - stale.policy.ttl
    window = max(stale.policy.stale_if_error, customer.cache.grace)
    return stale.policy.stale_allowed(staleness, window)


async def wait_headers(fill: Fill, timeout: float | None) -> bool | None:
    """True/False when the fill has its response head (or failed); None on timeout."""
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(fill.headers_ready)
    except TimeoutError:
        return None
