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
import os
import socket
import time
from email.utils import formatdate

from cdnkit.listen import Listener
from cdnkit.ports import TCP, Owned, own

from edge.cache.store import Stored
from edge.cache.cached import cache_key
from edge.http.headers import sf_name, to_client
from edge.route import BadPath, cname_customer, origin_host, route
from edge.http.h2 import H2Connection
from edge.http.h2stream import response_head
from edge.http.hpackblock import block as hpack_block, encoded, field
from edge.http.server import Connection, Handler, Request, reads_heads
from edge.origin.direct import FLAGGED, Passes
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
PASSING_MAX = 10_000      # Host values kept per config as never hits (Hits._passing)


class Hits:
    """Rendered hit responses per key, valid while the memory tier holds the same object."""

    def __init__(self, state: EdgeState):
        self.state = state
        self._rendered: dict[str, tuple[Stored, bytes, bytes, tuple]] = {}
        self._config = None
        # Host values routed by CNAME to a customer that does not cache, under _config:
        # their requests are never hits, whatever the target (the pass-through's).
        self._passing: set[bytes] = set()

    def answer(self, method: bytes, target: bytes, raw_headers: list,
               scheme: str, extra: bytes = b"", host: bytes | None = None) -> bytes | None:
        """The whole response to a parsed request, or None to take the long way.
        `extra`: header lines the connection adds to every answer (Alt-Svc); `host`:
        the one Host, when the caller knows it (edge._heads read the head)."""
        found = self._find(method, target, raw_headers, scheme, host)
        if found is None:
            return None
        rendered, stored, now = found
        prefix, body, counters = rendered[1], rendered[2], rendered[3]
        counters[0].inc()
        counters[1].inc()
        age = stored.age(now)
        left = stored.policy.ttl - age
        age = b"; hit; ttl=%d\r\nAge: %d\r\n%s\r\n" % (left, age, extra)
        if method == b"HEAD":
            return prefix + age
        counters[2].inc(stored.size)
        return prefix + age + body

    def answer_h2(self, method: bytes, target: bytes, raw_headers: list, scheme: str,
                  extra: bytes = b"", version: str = "2",
                  ) -> "tuple[list[tuple[bytes, bytes]], bytes] | None":
        """`answer` for an HTTP/2 or HTTP/3 (`version` "3") stream: (header block, body),
        or None. `raw_headers` carry :authority as their Host; `extra` is an Alt-Svc."""
        found = self._find(method, target, raw_headers, scheme)
        if found is None:
            return None
        rendered, stored, now = found
        body, counters = rendered[2], rendered[3]
        head, status_name = rendered[4][:2] if version == "2" else rendered[5]
        counters[0].inc()
        counters[1].inc()
        age = stored.age(now)
        head = head + [(b"cache-status", b"%s; hit; ttl=%d" % (status_name, stored.policy.ttl
                                                                - age)),
                       (b"age", b"%d" % age)]
        if extra:
            head.append((b"alt-svc", extra))
        if method == b"HEAD":
            return head, b""
        counters[2].inc(stored.size)
        return head, body

    def answer_hpack(self, method: bytes, target: bytes, raw_headers: list, scheme: str,
                     extra: bytes = b"") -> "tuple[list, bytes] | None":
        """`answer_h2` with the head as an HPACK block encoded once (hpackblock), for
        h2's send_headers: only Age, Cache-Status (and `extra`, an Alt-Svc value, as
        a literal) are encoded per answer."""
        found = self._find(method, target, raw_headers, scheme)
        if found is None:
            return None
        rendered, stored, now = found
        body, counters, (_, status_name, block) = rendered[2], rendered[3], rendered[4]
        counters[0].inc()
        counters[1].inc()
        age = stored.age(now)
        block += (field(b"cache-status", b"%s; hit; ttl=%d" % (status_name,
                                                               stored.policy.ttl - age))
                  + field(b"age", b"%d" % age))
        if extra:
            block += field(b"alt-svc", extra)
        if method == b"HEAD":
            return encoded(block), b""
        counters[2].inc(stored.size)
        return encoded(block), body

    def _find(self, method: bytes, target: bytes, raw_headers: list, scheme: str,
              host: bytes | None = None):
        """(rendered, stored, now) of a fresh hit the shortcut may answer, else None.
        With `host` given, the fields are looked at only for a customer that caches."""
        if method not in (b"GET", b"HEAD") or target[:1] != b"/" or target in OWN_PATHS:
            return None
        looked = host is None
        if looked:
            host = _plain_host(raw_headers)
            if host is False:
                return None
        state = self.state
        config = state.config
        if config is not self._config:
            self._rendered.clear()          # a reload may change Via or Alt-Svc
            self._passing.clear()
            self._config = config
        if host is None or host in self._passing:
            return None
        host_text = host.decode("latin-1")
        try:
            customer, path = route(config, host_text, target.decode("latin-1"))
        except BadPath:
            return None                     # the long way answers 400
        if customer is None:
            return None
        rules = customer.cache
        if not rules.enabled:
            if (cname_customer(config, host_text) is customer
                    and len(self._passing) < PASSING_MAX):
                self._passing.add(host)
            return None
        if rules.key_headers or (not looked and _plain_host(raw_headers) is False):
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
        return rendered, stored, now

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
        name = sf_name(config.name).encode("latin-1", "replace")
        head2, head3 = (response_head(stored.status, hit_headers(stored, customer, config.via,
                                                                 v), stored.size)
                        for v in ("2", "3"))
        h2, h3 = (head2, name, hpack_block(head2)), (head3, name)
        metrics, label = self.state.metrics, customer.directory
        counters = (metrics.cache.labels(label, "HIT"),
                    metrics.requests.labels(label, str(stored.status)),
                    metrics.to_clients.labels(label))
        if len(self._rendered) > 50_000:
            self._rendered.clear()
        rendered = (stored, prefix, body, counters, h2, h3)
        self._rendered[key] = rendered
        return rendered


def _plain_host(raw_headers: list) -> "bytes | None | bool":
    """The Host (None: none) of fields the hit shortcut may answer; False when they hold
    two Hosts or a field in LONG_WAY (but Connection: keep-alive)."""
    host = None
    for name, value in raw_headers:
        name = name.lower()
        if name == b"host":
            if host is not None:
                return False
            host = value
        elif name in LONG_WAY:
            if name != b"connection" or value.strip().lower() != b"keep-alive":
                return False
    return host


def hit_headers(stored: Stored, customer, via_name: str,
                version: str = "1.1") -> list[tuple[str, str]]:
    """A fresh hit's headers but Age, Cache-Status and framing (the shortcut's and the
    long way's alike)."""
    headers = to_client(stored.headers, version=version, via_name=via_name,
                        alt_svc=customer.alt_svc, drop=customer.cache.targeted, checked=True)
    if not any(k.lower() == "date" for k, _ in headers):
        headers.append(("Date", formatdate(stored.stored_at, usegmt=True)))
    return headers + [("X-Cache", "HIT"), ("Accept-Ranges", "bytes")]


class ByAlpn(asyncio.Protocol):
    """A TLS connection's first protocol: once the handshake is done (asyncio calls
    `connection_made` then), it hands the transport to the HTTP/2 protocol when ALPN
    agreed on "h2", else to the HTTP/1.1 one (no ALPN: HTTP/1.1, RFC 9113 3.3)."""

    def __init__(self, http1, http2):
        self.http1, self.http2 = http1, http2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tls = transport.get_extra_info("ssl_object")
        alpn = tls.selected_alpn_protocol() if tls is not None else None
        protocol = self.http2() if alpn == "h2" else self.http1()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class Listeners:
    """The edge's sockets: a `Connection` per client, hits answered by `Hits`, everything
    else by `handler`."""

    def __init__(self, state: EdgeState, handler: Handler):
        self.hits = Hits(state)
        # EDGE_PASS_SHORTCUT=0: every pass-through the long way (to compare the two).
        self.passes = Passes(state) if os.environ.get("EDGE_PASS_SHORTCUT", "1") != "0" else None
        self.flagged = FLAGGED if reads_heads() else None      # Connection's
        self.handler = handler
        self.state = state
        self.servers: list[asyncio.Server] = []
        self.conns: set[Connection] = set()
        self._owned: list[Owned] = []
        self.quic: list = []               # (H3Server, its DatagramTransport) per UDP socket

    async def add(self, host: str, port: int, ssl=None) -> None:
        """Own HOST:PORT (refused with `cdnkit.ports.AddressInUse` if another has it)
        and serve it."""
        owned = own(Listener(host, port), TCP)
        self._owned.append(owned)
        await self.serve(owned.sockets[0], ssl)

    async def serve(self, sock: socket.socket, ssl=None, alt_svc: str = "") -> None:
        """Serve an already bound, listening socket (`edge serve` binds them all first);
        with TLS, HTTP/2 or HTTP/1.1 as the handshake's ALPN agreed. `alt_svc` is sent
        on every answer (the listener's HTTP/3, rendered once here)."""
        scheme = "https" if ssl is not None else "http"
        bad = self.state.metrics.bad_requests
        line = f"Alt-Svc: {alt_svc}\r\n".encode("latin-1") if alt_svc else b""
        value = alt_svc.encode("latin-1")

        def http1() -> Connection:
            conn = Connection(self.handler, self.hits, scheme, self.conns, bad)
            conn.passes, conn.flagged = self.passes, self.flagged
            if alt_svc:
                conn.alt_svc, conn.alt_svc_line = alt_svc, line
            return conn

        def http2() -> H2Connection:
            conn = H2Connection(self.handler, self.hits, scheme, self.conns, bad)
            conn.alt_svc = value
            return conn

        factory = http1 if ssl is None else lambda: ByAlpn(http1, http2)
        self.servers.append(await asyncio.get_running_loop().create_server(
            factory, sock=sock, ssl=ssl, backlog=1024))

    async def serve_h3(self, sock: socket.socket, retry_always: bool = False) -> None:
        """HTTP/3 on an already bound UDP socket (this worker's own; edge/http/h3.py)."""
        from edge.http.h3 import H3Server

        state = self.state
        server = H3Server(self.handler, self.hits, lambda: state.config.certificates,
                          self.conns, state.metrics.bad_requests, retry_always)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: server, sock=sock)
        self.quic.append((server, transport))

    def close(self) -> None:
        """Stop accepting; close idle connections now and busy ones after their response."""
        for server in self.servers:
            server.close()
        for quic, _ in self.quic:
            quic.close()
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
        for _, transport in self.quic:
            transport.close()
