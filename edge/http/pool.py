"""Keep-alive connections to upstream servers (origins, shields), per (address, port,
TLS name): one ticker for every exchange's timeout and every idle connection, and the
keep-alive race (a pooled connection the server closed as we sent) retried once on a
fresh connection. The connections themselves are client.Upstream.
"""
from __future__ import annotations

import asyncio
import ssl as ssl_module

from edge.http.client import ConnectFailed, Disconnected, Interim, Response, Upload, Upstream

POOL_IDLE = 30.0           # a pooled connection unused this long is closed
TICK = 0.25                # how often timeouts and idle connections are looked at
POOL_MAX_IDLE = 64         # idle connections kept per server


class Pool:
    """Keep-alive connections per (address, port, TLS name)."""

    def __init__(self, ca_file: str = ""):
        self.tls = _context(ca_file, True)
        self.tls_unnamed = _context(ca_file, False)
        self._idle: dict[tuple, list[Upstream]] = {}
        self._busy: set[Upstream] = set()     # exchanges whose timeout the ticker watches
        self._ticker: asyncio.TimerHandle | None = None
        self.now = 0.0                # loop time at the last tick (or when one was started)
        self.retried = 0              # requests replayed after the keep-alive race

    # One ticker for every timeout and idle connection: a timer per request costs more
    # than the request (heap work on every call_later and cancel).
    def watch(self, conn: Upstream) -> None:
        self._busy.add(conn)
        if self._ticker is None:
            self.now = conn.loop.time()
            self._ticker = conn.loop.call_later(TICK, self._tick)

    def unwatch(self, conn: Upstream) -> None:
        self._busy.discard(conn)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        self.now = now = loop.time()
        for conn in list(self._busy):
            conn.check(now)
        for idle in self._idle.values():
            for conn in [c for c in idle if now - c.idle_since > POOL_IDLE]:
                idle.remove(conn)
                conn.close()
        self._ticker = (loop.call_later(TICK, self._tick)
                        if self._busy or any(self._idle.values()) else None)

    def put(self, conn: Upstream) -> None:
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        elif len(idle) >= POOL_MAX_IDLE:
            conn.close()
            return
        conn.spare, conn.parser = conn.parser, None     # None: bytes now are unasked for
        conn.response = None
        idle.append(conn)
        if self._ticker is None:
            self.now = conn.loop.time()
            self._ticker = conn.loop.call_later(TICK, self._tick)
        # The ticker's clock, not the loop's: POOL_IDLE is 30 s, a tick a quarter second,
        # and this runs per pass-through request.
        conn.idle_since = self.now

    def forget(self, conn: Upstream) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def idle(self, key: tuple) -> Upstream | None:
        """A pooled connection to (address, port, TLS name) ready for a request, or None."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, key: tuple, timeout: float) -> Upstream:
        address, port, tls_name = key
        loop = asyncio.get_running_loop()
        extra = {}
        if tls_name is not None:
            # Without a name (an IPv6 literal Host) the chain is still verified.
            extra = {"ssl": self.tls if tls_name else self.tls_unnamed,
                     "server_hostname": tls_name or address}
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: Upstream(self, key), address,
                                                       port, **extra)
        except TimeoutError:
            raise ConnectFailed(f"connect to {address}:{port} timed out") from None
        except (OSError, ssl_module.SSLError) as exc:
            raise ConnectFailed(f"connect to {address}:{port}: {exc}") from None
        return conn

    async def request(self, address: str, port: int, tls_name: str | None, method: str,
                      target: str, headers: list[tuple[str, str]], body: Upload | None,
                      timeout: float, interim: Interim | None = None) -> Response:
        """One request to one server; `tls_name`: None for plain HTTP, else the TLS server
        name ("" = none). Raises OriginError (or its OriginTimeout)."""
        key = (address, port, tls_name)
        conn = self.idle(key)
        for fresh in (conn is None, True):
            if fresh:
                conn = await self._connect(key, timeout)
            assert conn is not None
            try:
                return await conn.exchange(method, target, headers, _payload(body), timeout,
                                           interim)
            except Disconnected as exc:
                conn.close()
                # The keep-alive race: the server closed the idle connection as we sent.
                if fresh or not exc.nothing_received or (body is not None
                                                         and not body.replayable):
                    raise
                self.retried += 1
        raise AssertionError("unreachable")

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None


def _payload(body: Upload | None):
    if body is None:
        return None
    if body.source is None and not body.chunked:
        return b"".join(body.kept)
    return body


def _context(ca_file: str, check_name: bool) -> ssl_module.SSLContext:
    """Origin certificates are verified against the system CAs and `ca_file`."""
    ctx = ssl_module.create_default_context()
    if ca_file:
        ctx.load_verify_locations(ca_file)
    ctx.check_hostname = check_name
    return ctx
