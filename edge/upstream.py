"""Upstream: pulling from the origin (or a shield) and relaying the answer to the client.

`pull` asks the origin servers in balancing order (skipping those in back-off,
retrying the next while that is safe), after the customer's shields when it has
any; `relay` streams an origin response to the client without holding it whole,
and aborts the client if the origin cuts the body short.
"""
from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web
from yarl import URL

from .bucket import CLIENT_TEXT, Bucket, error_code
from .forward import end_to_end
from .model import Customer, EdgeConfig, Origin, Server
from .origin import OriginPool
from .resolve import ResolveError
from .route import host_name
from .state import EdgeState

log = logging.getLogger("edge.upstream")

CHUNK = 64 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def describe(exc: BaseException) -> str:
    if isinstance(exc, ResolveError):
        return "dns"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    return "error"

async def pull(state: EdgeState, customer: Customer, pool: OriginPool, scheme: str, host: str,
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
        resp = await through_shields(state, customer, method, path, headers)
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
            sent = bucket.sign(method, host, path, headers) if bucket is not None else headers
            resp = await _send(state, server, origin, scheme, method, path, sent, data=body,
                               **kwargs)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            reason = describe(exc)
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


async def _send(state: EdgeState, server: Server, origin: Origin, scheme: str, method: str,
                path: str, headers: list[tuple[str, str]], **kwargs) -> aiohttp.ClientResponse:
    """One request to one upstream server (origin or shield), its name resolved by the
    customer's IP-version policy, with the customer's timeouts."""
    address = (await state.resolver.resolve(server.host, origin.ip_version))[0]
    # The path goes out exactly as it came in (a signature covers it byte for byte).
    url = URL(f"{scheme}://{Server(address, server.port).authority(scheme)}{path}", encoded=True)
    assert state.session is not None
    return await state.session.request(
        method, url, headers=headers, allow_redirects=False, auto_decompress=False,
        timeout=aiohttp.ClientTimeout(sock_connect=origin.timeout, sock_read=origin.timeout),
        **kwargs)


MAX_TIERS = 4      # edges a request may have passed (CDN-Loop entries) before it is refused


async def through_shields(state: EdgeState, customer: Customer, method: str, path: str,
                           headers: list[tuple[str, str]]) -> aiohttp.ClientResponse | None:
    """Ask the customer's shields in plan order; None when none answered (go to origin).

    A shield that cannot be reached backs off like an origin server (5 s, doubling)
    and is skipped meanwhile. Its HTTP answers, errors included, are the answer:
    it asked the origin for us.
    """
    pool, label = state.shield_pool, customer.directory
    # The shield routes by edge CNAME, as any edge does: the one the origin would see
    # (so it keys and asks as we would), else the first.
    host = next((v for k, v in headers if k.lower() == "host"), "")
    if host_name(host) not in customer.cnames:
        host = customer.cnames[0]
    sent = [(k, v) for k, v in headers if k.lower() != "host"] + [("Host", host)]
    now = time.monotonic()
    for shield in customer.shields:
        if pool.state[shield.server].until > now:
            state.metrics.shield.labels(label, shield.name, "skipped").inc()
            continue
        try:
            resp = await _send(state, shield.server, customer.origin, "http", method, path, sent)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            period = pool.failed(shield.server, f"{describe(exc)}: {exc}")
            state.metrics.shield.labels(label, shield.name, "failed").inc()
            log.warning("shield %s failed (%s); skipping it for %.1f s", shield.name,
                        describe(exc), period)
            continue
        pool.succeeded(shield.server)
        state.metrics.shield.labels(label, shield.name, "ok").inc()
        return resp
    state.metrics.shield.labels(label, "origin", "fallback").inc()
    return None

def via_header(incoming: str | None, request: web.Request, name: str) -> str:
    mine = f"{request.version.major}.{request.version.minor} {name}"
    return f"{incoming}, {mine}" if incoming else mine


async def relay(request: web.Request, resp: aiohttp.ClientResponse, customer: Customer,
                 state: EdgeState, config: EdgeConfig, cache_label: str = "") -> web.StreamResponse:
    """Stream the origin's response to the client, never holding the body whole."""
    label = customer.directory
    bucket = customer.origin.bucket
    if bucket is not None and resp.status >= 400:
        return await bucket_error(request, resp, customer, state, bucket, cache_label)
    out = web.StreamResponse(status=resp.status, reason=resp.reason)
    for key, value in end_to_end(resp.headers):
        if key.lower() != "content-length":
            out.headers.add(key, value)
    if resp.content_length is not None:
        out.content_length = resp.content_length      # on HEAD too: what a GET would send
    out.headers["Via"] = via_header(resp.headers.get("Via"), request, config.via)
    if customer.alt_svc:
        out.headers["Alt-Svc"] = customer.alt_svc
    if cache_label:
        out.headers["X-Cache"] = cache_label
    state.metrics.requests.labels(label, str(resp.status)).inc()
    try:
        await out.prepare(request)
        if request.method == "HEAD":
            await out.write_eof()     # a HEAD answered from a GET to the origin: no body
            return out
        async for chunk in resp.content.iter_chunked(CHUNK):
            state.metrics.from_origin.labels(label).inc(len(chunk))
            await out.write(chunk)
            state.metrics.to_clients.labels(label).inc(len(chunk))
        if (resp.status not in (204, 304) and resp.content_length is not None
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


async def bucket_error(request: web.Request, resp: aiohttp.ClientResponse, customer: Customer,
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
    headers = {"Via": via_header(None, request, state.config.via)}
    if cache_label:
        headers["X-Cache"] = cache_label
    if bucket.expose_errors:
        return web.Response(status=resp.status, body=body, headers={
            **headers, "Content-Type": resp.headers.get("Content-Type", "application/xml")})
    text = CLIENT_TEXT.get(resp.status, "the origin bucket could not answer\n")
    return web.Response(status=resp.status, text=text, headers=headers)
