"""The listening side of the edge: fresh cache hits answered below aiohttp.

aiohttp spends ~60 us of Python per request building Request and Response
objects; a hit needs none of that. `Front` reads each request head itself and,
when it is a plain GET/HEAD for a fresh object in the memory tier, writes the
response from bytes rendered once per stored object (only `Age` changes per
hit). Anything else -- a miss, a range, a conditional, a body, an unknown host,
TLS client quirks included -- hands the connection, with the bytes already
read, to aiohttp's own protocol, which serves it from then on. Keeping that
decision conservative is what makes the shortcut safe: any header that could
change the answer sends the request the long way.
"""
from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import Callable

from aiohttp import web

from .cache import Stored
from .cached import cache_key
from .forward import HOP_BY_HOP
from .route import BadPath, origin_host, route
from .state import EdgeState

MAX_HEAD = 16 * 1024          # a longer request head goes to aiohttp (which limits it itself)
FAST_MAX_BODY = 1024 * 1024   # larger hits are streamed by aiohttp with flow control
IDLE_TIMEOUT = 75.0           # as aiohttp's keep-alive timeout
# Request headers that can change the answer, or that aiohttp must see.
LONG_WAY = frozenset({b"range", b"if-range", b"if-none-match", b"if-modified-since",
                      b"if-match", b"if-unmodified-since", b"cache-control", b"pragma",
                      b"authorization", b"upgrade", b"expect", b"content-length",
                      b"transfer-encoding", b"connection"})
OWN_PATHS = frozenset({b"/healthz", b"/metrics"})
NO_HEADERS: dict[str, str] = {}   # customers with key headers never take the shortcut


class Hits:
    """Rendered hit responses per key, valid while the memory tier holds the same object."""

    def __init__(self, state: EdgeState):
        self.state = state
        self._rendered: dict[str, tuple[Stored, bytes, bytes, tuple]] = {}
        self._config = None

    def answer(self, head: bytes, scheme: str) -> bytes | None:
        """The whole response to a request head, or None to take the long way."""
        line_end = head.find(b"\r\n")
        try:
            method, target, version = head[:line_end].split(b" ")
        except ValueError:
            return None
        if version != b"HTTP/1.1" or method not in (b"GET", b"HEAD") or target[:1] != b"/":
            return None
        host = None
        for line in head[line_end + 2:].split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon or not name or name[-1:] in b" \t" or line[:1] in b" \t":
                return None        # obs-fold or a malformed field: aiohttp answers 400
            name = name.lower()
            if name == b"host":
                host = value.strip()
            elif name in LONG_WAY:
                if name != b"connection" or value.strip().lower() != b"keep-alive":
                    return None
        state = self.state
        config = state.config
        if config is not self._config:
            self._rendered.clear()          # a reload may change Via or Alt-Svc
            self._config = config
        if host is None:
            return None
        host_text = host.decode("latin-1")
        try:
            customer, path = route(config, host_text, target.decode("latin-1"))
        except BadPath:
            return None                     # the long way answers 400
        if customer is None:
            return None
        rules = customer.cache
        if not rules.enabled or rules.key_headers or target in OWN_PATHS:
            return None
        cache = state.cache
        key = cache_key(scheme, customer, path, NO_HEADERS, origin_host(customer, host_text))
        stored = cache.memory.get(key)
        if stored is None or key in cache.vary_keys:
            return None
        now = time.time()
        if not stored.fresh(now):
            return None
        rendered = self._rendered.get(key)
        if rendered is None or rendered[0] is not stored:
            rendered = self._render(key, stored, customer)
            if rendered is None:
                return None
        _, prefix, body, counters = rendered
        counters[0].inc()
        counters[1].inc()
        age = b"Age: %d\r\n\r\n" % int(stored.age(now))
        if method == b"HEAD":
            return prefix + age
        counters[2].inc(stored.size)
        return prefix + age + body

    def _render(self, key: str, stored: Stored, customer) -> tuple | None:
        if stored.size > FAST_MAX_BODY or stored.file is not None:
            return None
        config = self.state.config
        lines = [f"HTTP/1.1 {stored.status} {stored.reason or 'OK'}"]
        via = None
        has_date = False
        for k, v in stored.headers:
            lk = k.lower()
            if lk in ("content-length", "age") or lk in HOP_BY_HOP:
                continue
            if lk == "via":
                via = f"{via}, {v}" if via else v
                continue
            has_date = has_date or lk == "date"
            lines.append(f"{k}: {v}")
        mine = f"1.1 {config.via}"
        lines.append(f"Via: {via}, {mine}" if via else f"Via: {mine}")
        if customer.alt_svc:
            lines.append(f"Alt-Svc: {customer.alt_svc}")
        if not has_date:
            lines.append(f"Date: {formatdate(stored.stored_at, usegmt=True)}")
        lines += ["X-Cache: HIT", "Accept-Ranges: bytes", f"Content-Length: {stored.size}", ""]
        try:
            prefix = "\r\n".join(lines).encode("latin-1")
        except UnicodeEncodeError:
            return None
        body = stored.chunks[0] if len(stored.chunks) == 1 else b"".join(stored.chunks)
        metrics, label = self.state.metrics, customer.directory
        counters = (metrics.cache.labels(label, "HIT"),
                    metrics.requests.labels(label, str(stored.status)),
                    metrics.to_clients.labels(label))
        if len(self._rendered) > 50_000:
            self._rendered.clear()
        rendered = (stored, prefix, body, counters)
        self._rendered[key] = rendered
        return rendered


class Front(asyncio.Protocol):
    """One client connection: hits answered here until a request needs aiohttp."""

    __slots__ = ("hits", "handler_factory", "scheme", "transport", "buffer", "active",
                 "paused", "conns", "_timer")

    def __init__(self, hits: Hits, handler_factory: Callable[[], asyncio.Protocol],
                 scheme: str, conns: set):
        self.hits, self.handler_factory, self.scheme, self.conns = (hits, handler_factory,
                                                                    scheme, conns)
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.active = time.monotonic()
        self.paused = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport          # type: ignore[assignment]
        self.conns.add(self)
        self._timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._idle)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    return self._hand_over(buf)
                self.buffer = buf
                return
            if self.paused:
                return self._hand_over(buf)      # a slow reader: aiohttp does flow control
            response = self.hits.answer(buf[:end], self.scheme)
            if response is None:
                return self._hand_over(buf)
            self.transport.write(response)       # type: ignore[union-attr]
            self.active = time.monotonic()
            buf = buf[end + 4:]
            if not buf:
                self.buffer = b""
                return

    def _hand_over(self, buf: bytes) -> None:
        """aiohttp serves this connection from now on, starting with the bytes in `buf`."""
        self._stop()
        handler = self.handler_factory()
        transport = self.transport
        assert transport is not None
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.paused:
            handler.pause_writing()
        if buf:
            handler.data_received(buf)

    def _idle(self) -> None:
        left = self.active + IDLE_TIMEOUT - time.monotonic()
        if left > 0:
            self._timer = asyncio.get_running_loop().call_later(left, self._idle)
        elif self.transport is not None:
            self.transport.close()

    def _stop(self) -> None:
        self.conns.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        self.transport = None

    def eof_received(self) -> bool | None:
        return None          # close our side too


class Listeners:
    """The edge's sockets: `Front` on each, aiohttp behind them."""

    def __init__(self, state: EdgeState, runner: web.AppRunner):
        self.hits = Hits(state)
        self.runner = runner
        self.servers: list[asyncio.Server] = []
        self.conns: set[Front] = set()

    async def add(self, host: str, port: int, ssl=None, reuse_port: bool = False) -> None:
        server = self.runner.server
        assert server is not None, "runner.setup() first"
        scheme = "https" if ssl is not None else "http"
        self.servers.append(await asyncio.get_running_loop().create_server(
            lambda: Front(self.hits, server, scheme, self.conns), host, port, ssl=ssl,
            reuse_port=reuse_port, backlog=1024))

    def close(self) -> None:
        """Stop accepting and close the connections still on the shortcut (aiohttp's own
        are closed by the runner's cleanup)."""
        for server in self.servers:
            server.close()
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()
