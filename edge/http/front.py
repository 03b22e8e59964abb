"""The listening side of the edge: its sockets, and fresh cache hits answered at once.

A hit needs no request object, no task and no header parsing beyond the
parser's own: `Hits.answer` is called from the connection's parser callback
(server.py) with the request line and raw headers and, when it is a plain
GET/HEAD for a fresh object in the memory tier, returns the whole response,
from bytes rendered once per stored object (only `Age` and the `ttl` of
`Cache-Status` change per hit). Anything else goes to the handler. Keeping
that decision conservative is what makes the shortcut safe: any header that
could change the answer sends the request the long way -- which on this
server costs tens of microseconds, not the aiohttp price.
"""
from __future__ import annotations

import asyncio
import socket
import time
from email.utils import formatdate

from cdnkit.listen import Listener
from cdnkit.ports import TCP, Owned, own

from edge.cache.store import Stored
from edge.cache.cached import cache_key
from edge.http.headers import sf_name, to_client
from edge.route import BadPath, origin_host, route
from edge.http.server import Connection, Handler, Request
from edge.state import EdgeState

FAST_MAX_BODY = 1024 * 1024   # larger hits are streamed with flow control, the long way
# Request headers that can change the answer, or that need the long way.
LONG_WAY = frozenset({b"range", b"if-range", b"if-none-match", b"if-modified-since",
                      b"if-match", b"if-unmodified-since", b"cache-control", b"pragma",
                      b"authorization", b"upgrade", b"expect", b"content-length",
                      b"transfer-encoding", b"connection",
                      b"cdn-loop"})         # another tier: it gets the targeted cache fields
OWN_PATHS = frozenset({b"/healthz", b"/metrics"})
NO_HEADERS: dict[str, str] = {}   # customers with key headers never take the shortcut


class Hits:
    """Rendered hit responses per key, valid while the memory tier holds the same object."""

    def __init__(self, state: EdgeState):
        self.state = state
        self._rendered: dict[str, tuple[Stored, bytes, bytes, tuple]] = {}
        self._config = None

    def answer(self, method: bytes, target: bytes, raw_headers: list,
               scheme: str) -> bytes | None:
        """The whole response to a parsed request, or None to take the long way."""
        if method not in (b"GET", b"HEAD") or target[:1] != b"/" or target in OWN_PATHS:
            return None
        host = None
        for name, value in raw_headers:
            name = name.lower()
            if name == b"host":
                if host is not None:
                    return None
                host = value
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
        if not rules.enabled or rules.key_headers:
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
        age = stored.age(now)
        left = stored.policy.ttl - age
        age = b"; hit; ttl=%d\r\nAge: %d\r\n\r\n" % (left, age)
        if method == b"HEAD":
            return prefix + age
        counters[2].inc(stored.size)
        return prefix + age + body

    def _render(self, key: str, stored: Stored, customer) -> tuple | None:
        if stored.size > FAST_MAX_BODY or stored.file is not None:
            return None
        config = self.state.config
        headers = hit_headers(stored, customer, config.via)
        lines = [f"HTTP/1.1 {stored.status} {stored.reason or 'OK'}"]
        lines += [f"{k}: {v}" for k, v in headers]
        lines += [f"Content-Length: {stored.size}", f"Cache-Status: {sf_name(config.name)}"]
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


def hit_headers(stored: Stored, customer, via_name: str) -> list[tuple[str, str]]:
    """A fresh hit's headers but Age, Cache-Status and framing (the shortcut's and the
    long way's alike)."""
    headers = to_client(stored.headers, version="1.1", via_name=via_name,
                        alt_svc=customer.alt_svc, drop=customer.cache.targeted, checked=True)
    if not any(k.lower() == "date" for k, _ in headers):
        headers.append(("Date", formatdate(stored.stored_at, usegmt=True)))
    return headers + [("X-Cache", "HIT"), ("Accept-Ranges", "bytes")]


class Listeners:
    """The edge's sockets: a `Connection` per client, hits answered by `Hits`, everything
    else by `handler`."""

    def __init__(self, state: EdgeState, handler: Handler):
        self.hits = Hits(state)
        self.handler = handler
        self.state = state
        self.servers: list[asyncio.Server] = []
        self.conns: set[Connection] = set()
        self._owned: list[Owned] = []

    async def add(self, host: str, port: int, ssl=None) -> None:
        """Own HOST:PORT (refused with `cdnkit.ports.AddressInUse` if another has it)
        and serve it."""
        owned = own(Listener(host, port), TCP)
        self._owned.append(owned)
        await self.serve(owned.sockets[0], ssl)

    async def serve(self, sock: socket.socket, ssl=None) -> None:
        """Serve an already bound, listening socket (`edge serve` binds them all first)."""
        scheme = "https" if ssl is not None else "http"
        bad = self.state.metrics.bad_requests
        self.servers.append(await asyncio.get_running_loop().create_server(
            lambda: Connection(self.handler, self.hits, scheme, self.conns, bad), sock=sock,
            ssl=ssl, backlog=1024))

    def close(self) -> None:
        """Stop accepting; close idle connections now and busy ones after their response."""
        for server in self.servers:
            server.close()
        for owned in self._owned:
            owned.close()
        self._owned.clear()
        for conn in list(self.conns):
            conn.close()

    def in_flight(self) -> list[tuple[Request, float]]:
        """(request, when it began) of every connection still answering one, oldest first."""
        busy = [(c.in_flight, c.busy_since) for c in self.conns if c.in_flight is not None]
        return sorted(busy, key=lambda item: item[1])

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait (at most `timeout`) for the connections to finish; abort what is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.conns and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.conns):
            conn.abort()
