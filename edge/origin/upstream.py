"""Upstream: pulling from the origin (or a shield) and relaying the answer to the client.

`pull` asks the origin servers in balancing order (skipping those in back-off,
retrying the next while that is safe), after the customer's shields when it has
any; `relay` streams an origin response to the client without holding it whole,
and aborts the client if the origin cuts the body short.
"""
from __future__ import annotations

import logging
import time

from edge.cache import ranges
from edge.origin.bucket import CLIENT_TEXT, Bucket, error_code
from edge.http.client import OriginError, OriginTimeout, Response, Upload
from edge.http.headers import cache_status, targeted_drop, to_client, via
from edge.model import Customer, Origin, Server
from edge.origin.order import OriginPool
from edge.origin.resolve import ResolveError
from edge.route import host_name
from edge.http.reply import Reply
from edge.http.server import Request
from edge.state import EdgeState

log = logging.getLogger("edge.origin.upstream")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_TIERS = 4      # edges a request may have passed (CDN-Loop entries) before it is refused


class Unreachable(Exception):
    """No upstream server gave a usable answer: the client gets 502 (504 on timeouts)."""

    def __init__(self, status: int = 502):
        super().__init__(status)
        self.status = status
        self.text = ("the origin did not answer in time\n" if status == 504
                     else "no origin server answered\n")


def own_headers(state: EdgeState, version: str, fwd: str = "bypass") -> list[tuple[str, str]]:
    """Via and Cache-Status for the edge's own answers (errors, /healthz, the admin API)."""
    config = state.config
    return [("Via", via(None, version, config.via)),
            ("Cache-Status", cache_status(config.name, fwd=fwd))]


def own_error(reply: Reply, request: Request, state: EdgeState, status: int, text: str,
              fwd: str = "bypass", directory: str = "") -> None:
    """The edge's own answers (400, 404, 502, 504, 508): plain text, Via, Cache-Status."""
    if directory:
        state.metrics.requests.labels(directory, str(status)).inc()
    reply.simple(status, text, own_headers(state, request.version, fwd))


def describe(exc: BaseException) -> str:
    if isinstance(exc, ResolveError):
        return "dns"
    if isinstance(exc, OriginError):
        return exc.reason
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "error"


def tls_name(host: str) -> str:
    """The TLS server name for a Host: its name, or "" for an IP literal in brackets."""
    return "" if host.startswith("[") else host.rsplit(":", 1)[0]


async def pull(state: EdgeState, customer: Customer, pool: OriginPool, scheme: str, host: str,
               method: str, path: str, headers: list[tuple[str, str]], body: Upload | None,
               retryable: bool, interim=None, shields: bool = True) -> Response:
    """Ask the origin servers in balancing order; the first usable response.

    A server that fails (connect, timeout, 5xx when retry_5xx) goes into back-off,
    and the next one is tried when that is safe (`retryable`). Unreachable when
    none answered.
    """
    origin = customer.origin
    servers = pool.order()
    label = customer.directory
    if customer.shields and retryable and shields:
        resp = await through_shields(state, customer, method, path, headers, interim)
        if resp is not None:
            return resp
    bucket = origin.bucket
    if bucket is not None:
        path = bucket.object_path(path)
        headers = bucket.request_headers(headers, host)
    timed_out = False
    for attempt, server in enumerate(servers):
        last = attempt == len(servers) - 1 or not retryable
        try:
            sent = bucket.sign(method, host, path, headers) if bucket is not None else headers
            resp = await _send(state, server, origin, scheme, method, path, sent, body,
                               interim, tls_name(host))
        except (OriginError, OSError) as exc:
            timed_out = isinstance(exc, OriginTimeout)
            server_failed(state, pool, server, label, exc)
            if last:
                break
            continue
        if resp.status >= 500 and origin.retry_5xx:
            server_answered_5xx(state, pool, server, label, resp.status)
            if not last:
                resp.close()
                continue
        else:
            pool.succeeded(server)
        return resp
    raise Unreachable(504 if timed_out else 502)


def server_failed(state: EdgeState, pool: OriginPool, server: Server, label: str,
                  exc: BaseException) -> None:
    """An origin server failed an exchange: back-off, counted, one log line."""
    reason = describe(exc)
    period = pool.failed(server, f"{reason}: {exc}")
    state.metrics.origin_errors.labels(label, server.host, reason).inc()
    log.warning("origin %s for %s failed (%s); skipping it for %.1f s", server.host,
                label, reason, period)


def server_answered_5xx(state: EdgeState, pool: OriginPool, server: Server, label: str,
                        status: int) -> None:
    """A 5xx from a customer with retry_5xx: a failure of that server (back-off, counted)."""
    pool.failed(server, f"HTTP {status}")
    state.metrics.origin_errors.labels(label, server.host, f"http_{status}").inc()


async def _send(state: EdgeState, server: Server, origin: Origin, scheme: str, method: str,
                path: str, headers: list[tuple[str, str]], body: Upload | None = None,
                interim=None, tls_name: str = "") -> Response:
    """One request to one upstream server (origin or shield), its name resolved by the
    customer's IP-version policy, with the customer's timeouts."""
    resolver = state.resolver
    address = server.host if resolver.literal(server.host) else (
        await resolver.resolve(server.host, origin.ip_version))[0]
    https = scheme == "https"
    port = server.port or (443 if https else 80)
    # The path goes out exactly as given (a signature covers it byte for byte).
    return await state.client.request(address, port, tls_name if https else None, method,
                                      path, headers, body, origin.timeout, interim)


async def through_shields(state: EdgeState, customer: Customer, method: str, path: str,
                          headers: list[tuple[str, str]], interim=None) -> Response | None:
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
            resp = await _send(state, shield.server, customer.origin, "http", method, path,
                               sent, None, interim)
        except (OriginError, OSError) as exc:
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


def _relayed_headers(request: Request, resp: Response, customer: Customer, state: EdgeState,
                     cache_label: str, entry: str) -> list[tuple[str, str]]:
    headers = to_client(resp.headers, version=request.version,
                        via_name=state.config.via, alt_svc=customer.alt_svc,
                        drop=targeted_drop(request, customer), status_entry=entry)
    if cache_label:
        headers.append(("X-Cache", cache_label))
    return headers


async def relay(request: Request, reply: Reply, resp: Response, customer: Customer,
                state: EdgeState, cache_label: str = "", entry: str = "",
                tee: list[bytes] | None = None) -> bool:
    """Stream the origin's response to the client, never holding the body whole; True
    when all of it went out (`tee` gets a copy of the body)."""
    label = customer.directory
    bucket = customer.origin.bucket
    if bucket is not None and resp.status >= 400:
        await bucket_error(request, reply, resp, customer, state, bucket, cache_label, entry)
        return False
    metrics = state.metrics
    metrics.requests.labels(label, str(resp.status)).inc()
    headers = _relayed_headers(request, resp, customer, state, cache_label, entry)
    length = resp.content_length
    reply.start(resp.status, resp.reason, headers, length)   # on HEAD too: what a GET sends
    body = resp.buffered_body()
    if body is not None:                         # small: it is all here already
        if request.method != "HEAD":
            metrics.from_origin.labels(label).inc(len(body))
            reply.write_now(body)
            metrics.to_clients.labels(label).inc(len(body))
            if tee is not None:
                tee.append(body)
        reply.end()
        resp.release()
        return True
    try:
        if request.method != "HEAD":
            from_origin, to_clients = metrics.from_origin.labels(label), \
                metrics.to_clients.labels(label)
            async for chunk in resp.chunks():
                from_origin.inc(len(chunk))
                await reply.write(chunk)
                to_clients.inc(len(chunk))
                if tee is not None:
                    tee.append(chunk)
        reply.end()
        return True
    except OriginError:
        # The origin cut the body short: the client must see an aborted response,
        # never a short one that looks complete.
        metrics.origin_errors.labels(label, "?", "truncated").inc()
        reply.abort()
    except ConnectionError:
        reply.abort()        # the client went away: stop pulling from the origin
    finally:
        resp.release() if resp.done else resp.close()
    return False


async def relay_range(ex, resp: Response, entry: str) -> None:
    """The client's range cut from a whole response streaming from the origin (one that
    will not be stored): bytes before it are skipped, the connection closed after it."""
    request, reply = ex.request, ex.reply
    size = resp.content_length
    wanted = ranges.parse(request.headers.get("Range"), size) if size is not None else None
    if wanted is None or len(wanted) != 1:
        return await relay(request, reply, resp, ex.customer, ex.state, "PASS", entry)
    headers = _relayed_headers(request, resp, ex.customer, ex.state, "PASS", entry)
    metrics, label = ex.state.metrics, ex.customer.directory
    if not wanted:
        resp.close()
        metrics.requests.labels(label, "416").inc()
        reply.start(416, "", headers + [("Content-Range", f"bytes */{size}")], 0)
        reply.end()
        return
    first, last = wanted[0]
    metrics.requests.labels(label, "206").inc()
    reply.start(206, "", headers + [("Content-Range", f"bytes {first}-{last}/{size}")],
                last - first + 1)
    offset = 0
    try:
        async for chunk in resp.chunks():
            end = offset + len(chunk)
            if end > first:
                piece = chunk[max(0, first - offset):last + 1 - offset]
                await reply.write(piece)
                metrics.to_clients.labels(label).inc(len(piece))
            offset = end
            if offset > last:
                break
        if offset <= last:
            raise OriginError("origin closed early")
        reply.end()
    except OriginError:
        metrics.origin_errors.labels(label, "?", "truncated").inc()
        reply.abort()
    except ConnectionError:
        reply.abort()
    finally:
        resp.release() if resp.done else resp.close()


async def bucket_error(request: Request, reply: Reply, resp: Response, customer: Customer,
                       state: EdgeState, bucket: Bucket, cache_label: str, entry: str) -> None:
    """A bucket's 4xx/5xx: logged and counted with the provider's error code; the client
    sees the status and a plain line, not the XML with request IDs (unless exposed)."""
    label = customer.directory
    try:
        body = await resp.read(65536)
    except OriginError:
        body = b""
    finally:
        resp.close()
    code = error_code(body)
    state.metrics.origin_errors.labels(label, bucket.address,
                                       f"bucket_{code or resp.status}").inc()
    state.metrics.requests.labels(label, str(resp.status)).inc()
    log.warning("%s bucket %s answered %d %s for %s", bucket.kind, bucket.name, resp.status,
                code or "(no error code)", request.path)
    headers = [("Via", via(None, request.version, state.config.via))]
    if entry:
        headers.append(("Cache-Status", entry))
    if cache_label:
        headers.append(("X-Cache", cache_label))
    if bucket.expose_errors:
        typed = [("Content-Type", resp.headers["Content-Type"])] if (
            "Content-Type" in resp.headers) else []
        reply.start(resp.status, "", headers + typed, len(body))
        reply.write_now(body)
        reply.end()
        return
    text = CLIENT_TEXT.get(resp.status, "the origin bucket could not answer\n")
    reply.simple(resp.status, text, headers)
