"""Probing edge addresses: one check of one target, and a loop per target.

`Prober` only reports raw results (passed, what was seen) to the `HealthBoard`,
which applies rise/fall and decides states (gdnsd's split of monitoring from
state). A failure is described in a short, stable vocabulary (`describe_error`)
that the dashboard, the API and the logs share.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
import ssl

import aiohttp

from gslb.health import BODY_LIMIT, HealthBoard, Target, targets, url_host
from gslb.model import CheckKind, Config

log = logging.getLogger("gslb.probe")


_OS_REASONS = {errno.ECONNREFUSED: "connection refused", errno.ECONNRESET: "connection reset",
               errno.EPIPE: "connection closed by the edge", errno.ETIMEDOUT: "timed out",
               errno.EHOSTUNREACH: "host unreachable", errno.ENETUNREACH: "network unreachable",
               errno.EADDRNOTAVAIL: "address not available here",
               errno.EACCES: "not permitted", errno.EPERM: "not permitted"}


def _os_reason(exc: OSError | None) -> str:
    if isinstance(exc, socket.gaierror):
        return "DNS lookup failed"
    code = getattr(exc, "errno", None)
    return _OS_REASONS.get(code, f"connect failed ({errno.errorcode.get(code, 'unknown')})"
                           if code else "connect failed")


def describe_error(exc: BaseException) -> str:
    """A short, stable reason for a failed check: the dashboard, the API and the logs show
    it, and alerts may match on it, so it carries no library wording or addresses."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        why = getattr(error, "verify_message", "") or getattr(error, "reason", "") or "invalid"
        return f"TLS certificate rejected: {why}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "DNS lookup failed"
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _os_reason(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by the edge"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "bad HTTP response"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "bad HTTP body"
    if isinstance(exc, OSError):
        return _os_reason(exc)
    log.debug("check failed with an unexpected error: %r", exc)
    return "check failed (unexpected error; see the debug log)"


class Prober:
    """Probes every target on its own jittered schedule, in one event loop."""

    def __init__(self, board: HealthBoard):
        self.board = board
        self._tasks: dict[Target, asyncio.Task] = {}
        self._session: aiohttp.ClientSession | None = None
        self._sem = asyncio.Semaphore(board.config.health.max_concurrent)
        self._insecure = ssl.create_default_context()
        self._insecure.check_hostname = False
        self._insecure.verify_mode = ssl.CERT_NONE
        self._first_deadline: asyncio.TimerHandle | None = None
        self._stopping = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True, ttl_dns_cache=10),
            auto_decompress=False)
        self.retarget(self.board.config)

    def retarget(self, config: Config) -> None:
        """Start, keep or stop probe loops to match `config` (after a reload)."""
        wanted = set(targets(config))
        for target in set(self._tasks) - wanted:
            self._tasks.pop(target).cancel()
        for target in wanted - set(self._tasks):
            self._tasks[target] = asyncio.get_running_loop().create_task(self._loop(target))
        if wanted and not self.board.first_round_done:
            # A target that never answers (a hanging check) must not hold the
            # first round open for ever: close it after the slowest check's
            # first attempt could have finished.
            slowest = max(min(t.spec.interval, 1.0) + t.spec.timeout for t in wanted)
            if self._first_deadline is not None:
                self._first_deadline.cancel()
            self._first_deadline = asyncio.get_running_loop().call_later(
                slowest + 1.0, self.board.end_first_round)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks.values():
            task.cancel()
        await asyncio.wait(list(self._tasks.values()), timeout=5) if self._tasks else None
        self._tasks.clear()
        if self._first_deadline is not None:
            self._first_deadline.cancel()
        if self._session is not None:
            await self._session.close()

    async def _loop(self, target: Target) -> None:
        spec = target.spec
        loop = asyncio.get_running_loop()
        # Spread the first checks over up to a second so they do not all fire at once.
        await asyncio.sleep(random.uniform(0, min(spec.interval, 1.0)))
        while not self._stopping:
            start = loop.time()
            ok, detail = await self.probe(target)
            self.board.record(target, ok, detail, loop.time() - start)
            # +-10 % jitter keeps thousands of checks from aligning.
            await asyncio.sleep(spec.interval * random.uniform(0.9, 1.1))

    async def probe(self, target: Target) -> tuple[bool, str]:
        """One check of one target: (passed, what was seen)."""
        spec = target.spec
        async with self._sem:
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                # cancellation that lands as the probe finishes.
                async with asyncio.timeout(spec.timeout):
                    return await self._probe(target)
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:
                return False, f"timed out after {spec.timeout:g} s"
            except Exception as exc:  # every failure is a result, never a crash
                return False, describe_error(exc)

    async def _probe(self, target: Target) -> tuple[bool, str]:
        spec = target.spec
        if spec.kind is CheckKind.TCP:
            _, writer = await asyncio.open_connection(target.host, target.port)
            writer.close()
            return True, f"TCP connect to port {target.port} ok"
        assert self._session is not None
        scheme = "https" if spec.kind is CheckKind.HTTPS else "http"
        url = f"{scheme}://{url_host(target.host)}:{target.port}{spec.path}"
        headers = {"Host": spec.host} if spec.host else {}
        kwargs: dict = {}
        if spec.kind is CheckKind.HTTPS:
            kwargs["ssl"] = None if spec.verify_tls else self._insecure
            if spec.host:
                kwargs["server_hostname"] = spec.host
        async with self._session.get(url, headers=headers, allow_redirects=False,
                                     **kwargs) as resp:
            body = await resp.content.read(BODY_LIMIT) if spec.body else b""
            if resp.status not in spec.expect:
                return False, f"HTTP {resp.status} (expected {', '.join(map(str, spec.expect))})"
            if spec.body and spec.body.encode() not in body:
                return False, f"HTTP {resp.status} but the body lacks {spec.body!r}"
            return True, f"HTTP {resp.status}"
