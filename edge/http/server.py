"""The edge's HTTP/1.1 server: one `Connection` protocol per client connection.

httptools (llhttp) parses requests; a request the hit shortcut (`front.Hits`)
can answer is written out from the parser's callback, without a task or a
request object; anything else becomes a `Request` handed to the edge's handler
with a `Reply` (reply.py) to answer it on. Requests on one connection are
answered in order (pipelined ones wait in a queue), bodies stream both ways with
flow control, and an upgraded connection (WebSocket) becomes a byte pipe.

Malformed requests (smuggling attempts such as Content-Length with
Transfer-Encoding, duplicate Content-Length, oversized heads, bad syntax) get a
plain `400 Bad Request` and the connection is closed: one counter per reason
in /metrics and at most one log line every 10 s (edge/http/refused.py).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import Awaitable, Callable

import httptools
from multidict import CIMultiDict

try:
    from edge import _heads                  # optional C helper (setup.py)
except ImportError:                          # pragma: no cover - llhttp reads every head
    _heads = None

from edge.http.refused import BAD_LOG, BAD_REQUEST, classify
from edge.http.reply import Reply
from edge.http.wire import ChunkQueue, call_handler, multidict

log = logging.getLogger("edge.http.server")

MAX_HEAD = 64 * 1024          # request line + headers; more is refused (nginx: 4 x 8 KiB)
IDLE_TIMEOUT = 75.0           # keep-alive connections idle this long are closed
BODY_HIGH = 256 * 1024        # request body buffered above this: stop reading the socket
PIPELINE_MAX = 16             # queued pipelined requests above this: stop reading


class Body(ChunkQueue):
    """A request body arriving from the client, for one reader, with flow control."""

    __slots__ = ("_conn", "length")

    def __init__(self, conn: "Connection", length: int | None):
        super().__init__(BODY_HIGH)
        self._conn = conn
        self.length = length          # Content-Length, or None (chunked)

    def hold(self) -> None:
        self._conn.pause_reading()

    def unhold(self) -> None:
        self._conn.resume_reading()


class Request:
    """One parsed request. `headers` is built on first use (hits never need it)."""

    __slots__ = ("method", "target", "version", "raw_headers", "scheme", "peer", "body",
                 "keep_alive", "upgrade", "conn", "_headers", "scanned")

    def __init__(self, conn: "Connection", method: str, target: str, version: str,
                 raw_headers: list, keep_alive: bool, upgrade: bool, body: Body | None):
        self.conn, self.method, self.target, self.version = conn, method, target, version
        self.raw_headers, self.keep_alive, self.upgrade, self.body = (raw_headers, keep_alive,
                                                                      upgrade, body)
        self.scheme, self.peer = conn.scheme, conn.peer
        self._headers: CIMultiDict | None = None
        # A head read by edge._heads: (Host or None, a field the shortcut leaves to the
        # long way, every field but Host as lines), so the shortcut need not walk them.
        self.scanned: tuple[bytes | None, bool, bytes] | None = None

    @property
    def headers(self) -> CIMultiDict:
        if self._headers is None:
            self._headers = multidict(self.raw_headers)
        return self._headers

    @property
    def host(self) -> str:
        return self.headers.get("Host", "")

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


Handler = Callable[[Request, Reply], Awaitable[None]]


def reads_heads() -> bool:
    """Whether plain heads are read by edge._heads (built, and not EDGE_HEADS=0, which
    leaves every head to llhttp's callbacks, to compare the two)."""
    return _heads is not None and os.environ.get("EDGE_HEADS", "1") != "0"


class Connection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    # Alt-Svc on every answer of a TLS listener with HTTP/3 (front.Listeners sets it):
    # the value, and the header line the hit shortcut adds.
    alt_svc = ""
    alt_svc_line = b""
    # The pass-through shortcut (edge/origin/direct.py Passes), set by front.Listeners.
    passes = None
    # Lower-case names edge._heads flags for the long way (direct.LONG_WAY), or None:
    # every head goes through llhttp. Set with `passes`.
    flagged: tuple[bytes, ...] | None = None

    def __init__(self, handler: Handler, hits, scheme: str, conns: set, bad_requests):
        self.handler, self.hits, self.scheme, self.conns = handler, hits, scheme, conns
        self.bad_requests = bad_requests          # Counter(reason)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.parser = httptools.HttpRequestParser(self)
        self.paused = False            # the client reads slower than we write
        self.closing = False           # close after the response in progress
        self._drain: asyncio.Future | None = None
        self._reading = True
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_size = 0
        self._body: Body | None = None         # of the request being parsed
        self._answered = False                 # that request was a hit, already written
        self._busy: Request | None = None
        self._task: asyncio.Task | None = None     # the handler of that request
        self._relay = None                     # or the shortcut relaying it (direct.Direct)
        self.busy_since = 0.0                 # when the request in progress began
        self._queue: collections.deque = collections.deque()
        self._pipe: Callable[[bytes], None] | None = None
        self._held = b""                       # bytes after an upgrade request, not parsed
        self._upgrading = False
        self._dead = False
        self._eof = False
        self._why: tuple[str, str] | None = None   # our own reason to refuse a request
        self._active = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    # --- the transport ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport          # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.conns.add(self)
        self._timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self.transport = None
        gone = ConnectionResetError("client closed the connection")
        for body in (self._body, self._busy.body if self._busy is not None else None):
            if body is not None and not body.done:
                body.fail(gone)
        self._wake_drain(gone)
        if self._relay is not None:
            self._relay.client_gone()
        if self._pipe is not None:
            self._pipe(b"")                 # the other side of a pipe sees the end

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._pipe is not None:
            self._pipe(b"")                 # the other side of the pipe sees the end
            return True
        if self._busy is not None:
            return True                     # answer the request first, then close
        return None

    def pause_writing(self) -> None:
        self.paused = True
        if self._relay is not None:
            self._relay.pause()             # hold the origin back, as Reply.write's drain

    def resume_writing(self) -> None:
        self.paused = False
        if self._relay is not None:
            self._relay.resume()
        self._wake_drain(None)

    def _wake_drain(self, exc: Exception | None) -> None:
        waiter, self._drain = self._drain, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def drain(self) -> None:
        if self.transport is None:
            raise ConnectionResetError("client gone")
        if not self.paused:
            return
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drain)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
            self._active = time.monotonic()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading and self.transport is not None and len(self._queue) < PIPELINE_MAX:
            self._reading = True
            self.transport.resume_reading()

    @property
    def in_flight(self) -> Request | None:
        """The request being answered (None when idle)."""
        return self._busy

    def close(self) -> None:
        """Close when idle, else after the response in progress (shutdown)."""
        self.closing = True
        if self._busy is None and self.transport is not None:
            self.transport.close()

    def _idle(self) -> None:
        left = self._active + IDLE_TIMEOUT - time.monotonic()
        if self._busy is not None or self._pipe is not None:
            left = IDLE_TIMEOUT               # a request in flight has its own timeouts
        if left > 0:
            self._timer = asyncio.get_running_loop().call_later(left, self._idle)
        elif self.transport is not None:
            self.transport.close()

    # --- parsing ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._pipe is not None:
            self._pipe(data)
            return
        if self._dead:
            return
        if self._upgrading:
            self._held += data
            return
        self._active = time.monotonic()
        if self._in_head:
            self._head_size += len(data)
        elif (self.flagged is not None and self._body is None and self._busy is None
              and not self._queue):
            # Between requests, with nothing queued: a plain GET/HEAD head that is all of
            # `data` is read in one call; anything else is llhttp's (edge/_heads.c).
            got = _heads.request(data, self.flagged)
            if got is not None:
                return self._scanned(got)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrading = True
            self._held = data[exc.args[0]:] if exc.args else b""
            return
        except httptools.HttpParserError as exc:
            reason_, text = self._why or classify(exc)
            return self._refuse(reason_, text)
        if self._in_head and self._head_size > MAX_HEAD:
            self._refuse("too_large", f"request head over {MAX_HEAD} bytes")

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._in_head = True
        self._head_size = 0
        self._answered = False
        self._body = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        method = parser.get_method()
        version = parser.get_http_version()
        upgrade = parser.should_upgrade()
        if (self._busy is None and not self._queue and self.hits is not None and not upgrade
                and version == "1.1"):
            answer = self.hits.answer(method, self._url, self._headers, self.scheme,
                                      self.alt_svc_line)
            if answer is not None:
                self.write(answer)
                self._answered = True
                return
        length = None
        chunked = False
        hosts = 0
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"host":
                hosts += 1
            elif lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = True
        if hosts > 1 or (hosts == 0 and version == "1.1" and self._url[:1] == b"/"):
            # RFC 9112 3.2: an HTTP/1.1 request has exactly one Host.
            self._why = ("syntax", f"{hosts} Host headers")
            raise ValueError(self._why[1])
        body = Body(self, length) if (chunked or (length or 0) > 0) else None
        self._body = body
        request = Request(self, method.decode("latin-1"), self._url.decode("latin-1"), version,
                          self._headers, parser.should_keep_alive(), upgrade, body)
        if self._busy is None:
            self._start(request)
        else:
            self._queue.append(request)
            if len(self._queue) >= PIPELINE_MAX:
                self.pause_reading()

    def _scanned(self, got: tuple) -> None:
        """on_headers_complete for a head edge._heads read: no body, no upgrade, nothing
        queued, and its own Host count (llhttp never saw it, and is still between
        messages)."""
        method, target, version, fields, keep_alive, host, hosts, flagged, lines = got
        lane = None
        passes = self.passes
        if passes is not None and hosts == 1 and not flagged:
            # A lane take made under the config in force (looked up inline: per request).
            lane = passes.lanes.get((host, self.scheme, self.peer, version))
            if lane is not None and lane.config is not passes.state.config:
                lane = None
        if lane is None:          # (a lane's customer never caches: no hit to look for)
            if self.hits is not None and version == "1.1":
                answer = self.hits.answer(method, target, fields, self.scheme,
                                          self.alt_svc_line, host)
                if answer is not None:
                    self.write(answer)
                    return
            if hosts > 1 or (hosts == 0 and version == "1.1"):
                return self._refuse("syntax", f"{hosts} Host headers")
        request = Request(self, method.decode("latin-1"), target.decode("latin-1"), version,
                          fields, keep_alive, False, None)
        request.scanned = (host, flagged, lines)
        self._start(request, lane)

    def on_body(self, data: bytes) -> None:
        if self._body is not None:
            self._body.feed(data)

    def on_message_complete(self) -> None:
        if self._body is not None:
            self._body.end()
            self._body = None

    def _refuse(self, why: str, text: str) -> None:
        """A malformed request: counted, logged quietly, answered 400, connection closed."""
        self._dead = True
        self.bad_requests.labels(why).inc()
        BAD_LOG.note(self.peer or "?", text)
        if self._body is not None:
            self._body.fail(ConnectionResetError("malformed request body"))
        if self._busy is None:
            self.write(BAD_REQUEST)
            if self.transport is not None:
                self.transport.close()
        else:
            self._queue.append(None)          # after the response in progress
            self.pause_reading()

    # --- answering ----------------------------------------------------------------------

    def _start(self, request: Request, lane=None) -> None:
        """Answer `request`: by the pass-through shortcut if it takes it (on `lane`, a
        direct.Lane, when _scanned found one), else by the handler."""
        self._busy = request
        self.busy_since = time.monotonic()
        reply = Reply(self, request)
        if self.passes is not None:
            # A pass-through the shortcut relays by callbacks, without a task.
            try:
                self._relay = self.passes.take(self, request, reply, lane)
            except Exception:
                log.exception("the pass-through shortcut failed on %s %s; the long way "
                              "answers", request.method, request.target)
            if self._relay is not None:
                return
        self.relay_long_way(request, reply)

    def relay_done(self, request: Request, reply: Reply) -> None:
        """The shortcut has answered `request`."""
        self._relay = None
        self._finished(request, reply)

    def relay_long_way(self, request: Request, reply: Reply) -> None:
        """Hand `request` (its reply not started) to the handler, in a task."""
        self._relay = None
        # The loop holds tasks weakly: held by the connection (which its open transport
        # holds), a handler waiting on a future nothing else refers to is not destroyed
        # mid-request ("Task was destroyed but it is pending").
        self._task = asyncio.get_running_loop().create_task(self._run(request, reply))

    async def _run(self, request: Request, reply: Reply) -> None:
        try:
            await call_handler(self.handler, request, reply, log)
        finally:
            self._finished(request, reply)

    def _finished(self, request: Request, reply: Reply) -> None:
        if not reply.finished:
            reply.abort()                    # a handler that left its response unfinished
        self._busy = None
        if self._pipe is not None:
            return
        body = request.body
        if (reply.close or not request.keep_alive or self.closing or self._eof
                or (body is not None and not body.done)):
            if self.transport is not None:
                self.transport.close()
            return
        if self._upgrading:                  # an upgrade the origin refused: plain HTTP on
            self._upgrading = False
            self.parser = httptools.HttpRequestParser(self)
            held, self._held = self._held, b""
            if held:
                self.data_received(held)
        while self._queue and self._busy is None:
            nxt = self._queue.popleft()
            if nxt is None:
                self.write(BAD_REQUEST)
                if self.transport is not None:
                    self.transport.close()
                return
            answer = None
            if self.hits is not None and nxt.body is None and not nxt.upgrade:
                answer = self.hits.answer(nxt.method.encode("latin-1"),
                                          nxt.target.encode("latin-1"), nxt.raw_headers,
                                          self.scheme, self.alt_svc_line
                                          ) if nxt.version == "1.1" else None
            if answer is not None:
                self.write(answer)
                if not nxt.keep_alive:
                    self.transport.close() if self.transport is not None else None
                    return
                continue
            self._start(nxt)
        self.resume_reading()

    def become_pipe(self, sink: Callable[[bytes], None]) -> "asyncio.Transport":
        assert self.transport is not None
        self._pipe = sink
        held, self._held = self._held, b""
        if held:       # after the caller has joined both ends
            asyncio.get_running_loop().call_soon(sink, held)
        return self.transport
