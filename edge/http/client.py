"""The edge's HTTP/1.1 client for origins and shields: pooled keep-alive connections.

One `Upstream` protocol per connection, httptools (llhttp) reading responses
(a parser that read a whole response reads the next). What a proxy needs that
general clients get wrong:

- 1xx interim responses (103 Early Hints, 100 Continue) go to a callback, so
  the edge forwards them; the request body is sent as the client sends it,
  never held back for (or answered with) a 100 of our own;
- a request on a pooled connection that the origin had closed meanwhile (the
  keep-alive race) is sent again on a new connection when nothing of the
  response came back and the body can be replayed; it is no origin failure;
- an origin that sends more than its Content-Length: the response is what
  Content-Length says, the connection is closed, the rest discarded;
- one idle/between-bytes timeout per exchange (`timeout`), paused while our
  own reader holds the origin back.

An exchange either makes a `Response` that a task reads (`exchange`), or, for the
pass-through shortcut (edge/origin/direct.py), hands the response to a sink's
callbacks as the parser reads it (`send_direct`): no future, no queue, no task.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

import httptools
from multidict import CIMultiDict

from edge.http.wire import NO_BODY_STATUSES, ChunkQueue, multidict, request_head

try:
    from edge import _heads                  # optional C helper (setup.py)
except ImportError:                          # pragma: no cover - llhttp reads every head
    _heads = None

READ_HIGH = 256 * 1024     # response bytes buffered above this: stop reading the origin
REPLAY_MAX = 1024 * 1024   # request body bytes kept for a replay on a fresh connection

Interim = Callable[[int, "list[tuple[str, str]]"], None]


class OriginError(OSError):
    """An exchange with an upstream server failed; `reason` labels it in /metrics."""

    reason = "error"


class ConnectFailed(OriginError):
    reason = "connect"


class Disconnected(OriginError):
    """The server closed the connection before the response ended."""

    reason = "disconnected"

    def __init__(self, text: str, nothing_received: bool = False):
        super().__init__(text)
        self.nothing_received = nothing_received


class BadResponse(OriginError):
    reason = "bad_response"


class OriginTimeout(OriginError, TimeoutError):
    reason = "timeout"


class Response(ChunkQueue):
    """A response arriving from an upstream server; the body is read once, in order."""

    __slots__ = ("status", "reason", "raw_headers", "_headers", "content_length", "conn",
                 "keep_alive", "upload")

    def __init__(self, conn: "Upstream", status: int, reason: str, raw_headers: list):
        super().__init__(READ_HIGH)
        self.conn, self.status, self.reason, self.raw_headers = conn, status, reason, raw_headers
        self._headers: CIMultiDict | None = None
        self.content_length: int | None = None
        self.keep_alive = False
        self.upload: asyncio.Task | None = None

    @property
    def headers(self) -> CIMultiDict:
        if self._headers is None:
            self._headers = multidict(self.raw_headers)
        return self._headers

    def hold(self) -> None:
        self.conn.hold()

    def unhold(self) -> None:
        self.conn.unhold()

    def _finish(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.conn.exchange_over()
        self.end()

    def _fail(self, exc: Exception) -> None:
        if not self.done and self.error is None:
            self.conn.exchange_over()
            self.fail(exc)

    def buffered_body(self) -> bytes | None:
        """The whole body if it has already arrived (small responses), else None."""
        if not self.done or self.error is not None:
            return None
        return self.take_all()

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body (the rest is not read)."""
        parts, size = [], 0
        async for data in self.chunks():
            parts.append(data)
            size += len(data)
            if size >= limit:
                break
        return b"".join(parts)[:limit]

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if it is reusable."""
        if self.upload is not None and not self.upload.done():
            self.upload.cancel()
            self.conn.close()
            return
        if self.done and self.keep_alive and self.error is None:
            self.conn.pool.put(self.conn)
        else:
            self.conn.close()

    def close(self) -> None:
        if self.upload is not None:
            self.upload.cancel()
        self.conn.close()

    def take_over(self, sink: Callable[[bytes], None]) -> asyncio.Transport:
        """After a 101: the connection is a byte pipe; origin bytes go to `sink`."""
        return self.conn.become_pipe(sink)


class Upstream(asyncio.Protocol):
    """One connection to one upstream server, one exchange at a time."""

    def __init__(self, pool, key: tuple):      # pool: edge.http.pool.Pool, which imports this
        self.pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.spare: httptools.HttpResponseParser | None = None   # kept by Pool.put
        self.response: Response | None = None
        self._head: asyncio.Future | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._method = "GET"
        self._interim: Interim | None = None
        self._reason = ""
        self._body_allowed = True
        self._close_delimited = False
        self.got_bytes = False
        self.held = False
        self.paused = False
        self._drain: asyncio.Future | None = None
        self._pipe: Callable[[bytes], None] | None = None
        self._held_bytes = b""
        self.idle_since = 0.0           # in the pool since (loop time); 0 = in use
        self._timeout = 10.0
        self._last = 0.0
        self.sink = None                # send_direct's receiver of this response
        self._headed = False            # the sink has its response head
        self._done: bool | None = None  # the sink's response ended (keep-alive?)
        self._extra = False             # bytes after that end
        self._complete = False          # the parser saw a whole response: reusable
        self._scan = None               # send_direct's: edge._heads reads the head
        self._left = 0                  # body bytes still due when it did
        self._keep = False              # and whether the connection stays open after
        self.loop = asyncio.get_running_loop()   # the one it runs on (Pool uses it too)

    # --- transport ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport            # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        self.exchange_over()
        if self._pipe is not None:
            self._pipe(b"")
            return
        self._lost(exc)

    def eof_received(self) -> bool | None:
        if self._pipe is not None:
            self._pipe(b"")
            return True
        return None

    def _lost(self, exc: Exception | None) -> None:
        if self.sink is not None:
            if self._done is not None:
                return self._direct_end()
            if self._headed and self._close_delimited and exc is None:
                self._done = False                 # the close is the end of this body
                return self._direct_end()
            return self._direct_fail(Disconnected(
                f"connection closed before the response{f': {exc}' if exc else ''}"
                if not self._headed else "connection closed during the body",
                nothing_received=not self.got_bytes))
        resp, head = self.response, self._head
        if head is not None and not head.done():
            head.set_exception(Disconnected(f"connection closed before the response"
                                            f"{f': {exc}' if exc else ''}",
                                            nothing_received=not self.got_bytes))
        elif resp is not None and not resp.done:
            if self._close_delimited and exc is None:
                resp._finish(False)               # the close is the end of this body
            else:
                resp._fail(Disconnected(f"connection closed {resp.received} bytes into "
                                        f"the body"))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiter, self._drain = self._drain, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        if self.transport is None:
            raise Disconnected("connection closed while sending the request")
        if self.paused:
            if self._drain is None:
                self._drain = self.loop.create_future()
            await asyncio.shield(self._drain)

    def hold(self) -> None:
        """Our reader is behind: stop reading the origin (and do not time it out)."""
        if not self.held and self.transport is not None:
            self.held = True
            self.transport.pause_reading()

    def unhold(self) -> None:
        if self.held and self.transport is not None:
            self.held = False
            self._last = self.loop.time()
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # --- one exchange -------------------------------------------------------------------

    async def exchange(self, method: str, target: str, headers: list[tuple[str, str]],
                       body, timeout: float, interim: Interim | None) -> Response:
        """Send a request, wait for its response head (interim ones go to `interim`)."""
        loop = self.loop
        self.parser = self._parser()
        self.response, self._headers = None, []
        self._method, self._interim, self.got_bytes = method, interim, False
        self.sink, self._done = None, None
        self._head = head = loop.create_future()
        if self.transport is None or self.transport.is_closing():
            raise Disconnected("the pooled connection was closed", nothing_received=True)
        self._timeout, self._last = timeout, loop.time()
        self.pool.watch(self)
        upload = None
        data = request_head(method, target, headers)
        if isinstance(body, bytes):
            data += body
        elif body is not None:
            upload = loop.create_task(self._upload(body))
        self.transport.write(data)
        try:
            response = await head
        except BaseException:
            if upload is not None:
                upload.cancel()
            self.exchange_over()
            raise
        response.upload = upload
        return response

    def send_direct(self, sink, method: str, data: bytes, timeout: float,
                    interim: Interim | None, scan: tuple | None = None) -> None:
        """Send a request without a body whose response goes to `sink` as it is parsed:
        head(status, reason, raw_headers, length), body(data), end(keep_alive) with
        the connection free again, or fail(exc) with it closed. `scan`: (special, drop)
        name tuples; a final head that arrives whole in the first read is then read by
        edge._heads and given to sink.head_lines(status, reason, lines, dated, via,
        statuses, length) instead, or, with the whole body (not a 5xx) and the connection
        already free again, to sink.whole(..., body) (see _scanned)."""
        loop = self.loop
        self.parser = self._parser()
        self.response = self._head = None   # (_headers: on_message_begin's, if llhttp reads)
        self._method, self._interim, self.got_bytes = method, interim, False
        self.sink, self._headed, self._done, self._extra = sink, False, None, False
        self._scan, self._left = scan, 0
        self._timeout, self._last = timeout, loop.time()
        self.pool.watch(self)
        self.transport.write(data)

    def _parser(self) -> httptools.HttpResponseParser:
        """The last exchange's parser when it read a whole response (it is then at the
        start of the next), else a new one (after a HEAD it still waits for a body)."""
        spare, self.spare = self.spare, None
        if spare is not None and self._complete:
            return spare
        return httptools.HttpResponseParser(self)

    def detach(self) -> None:
        """The sink wants no more of this response: the connection is closed."""
        self.sink, self._done, self._left = None, None, 0
        self.exchange_over()
        self.close()

    def _direct_end(self) -> None:
        sink, self.sink = self.sink, None
        self._left = 0
        self.exchange_over()
        keep_alive = bool(self._done) and not self._extra
        self._done = None               # the next exchange may be a Response's
        if not keep_alive:
            self.close()
        sink.end(keep_alive)

    def _direct_fail(self, exc: Exception) -> None:
        sink, self.sink, self._done, self._left = self.sink, None, None, 0
        self.exchange_over()
        self.close()
        sink.fail(exc)

    async def _upload(self, body) -> None:
        """Stream a request body (chunked when its length is unknown) as it comes."""
        chunked = body.chunked
        try:
            async for data in body.stream():
                if self.transport is None:
                    return
                self.transport.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
                self._last = self.loop.time()
                await self.drain()
            if chunked and self.transport is not None:
                self.transport.write(b"0\r\n\r\n")
        except (ConnectionError, OriginError):
            if self.transport is not None:
                self.transport.abort()        # the client went: the origin must not see a
                                              # body that looks complete

    def check(self, now: float) -> None:
        """Called by the pool's ticker while an exchange is on: time it out if it is idle
        (not when our own reader is holding the origin back)."""
        if self.held:
            self._last = now
            return
        if now - self._last < self._timeout:
            return
        self.exchange_over()
        exc = OriginTimeout(f"no byte from the origin for {self._timeout:g} s")
        if self.sink is not None:
            return self._direct_fail(exc)
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        elif self.response is not None:
            self.response._fail(exc)
        if self.transport is not None:
            self.transport.abort()

    def exchange_over(self) -> None:
        self.pool.unwatch(self)

    # --- parser callbacks ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._left:
            return self._more(data)
        if self._pipe is not None:
            self._pipe(data)
            return
        if self.parser is None or (self.response is not None and self.response.done):
            self.close()                    # bytes nobody asked for (after Content-Length)
            return
        self.got_bytes = True
        if self._scan is not None:
            special, drop = self._scan
            self._scan = None               # the first read only: later ones are llhttp's
            got = _heads.response(data, special, drop, self._method == "HEAD")
            if got is not None and self.sink is not None and self._done is None:
                return self._scanned(got, data)
        self._last = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._held_bytes = data[exc.args[0]:] if exc.args else b""
        except httptools.HttpParserError as exc:
            if self.sink is not None:
                if self._done is not None:      # more than Content-Length: drop the rest
                    self._extra = True
                    return self._direct_end()
                return self._direct_fail(BadResponse(f"unparsable response: {exc}"))
            resp = self.response
            if resp is not None and resp.done:
                self.close()                # more than Content-Length: take CL, drop the rest
                return
            error = BadResponse(f"unparsable response: {exc}")
            if self._head is not None and not self._head.done():
                self._head.set_exception(error)
            elif resp is not None:
                resp._fail(error)
            self.close()
            return
        if self.sink is not None and self._done is not None:
            self._direct_end()

    def _scanned(self, got: tuple, data: bytes) -> None:
        """A final head edge._heads read from the first bytes of the response: the sink
        has it; the body (Content-Length bytes) is counted here, not parsed, and llhttp
        never sees this response (its parser is still at the start, so reusable)."""
        size, status, phrase, length, keep_alive, lines, dated, via, statuses = got
        sink = self.sink
        self._complete = True
        due = length if (self._method != "HEAD" and status not in NO_BODY_STATUSES) else 0
        rest = len(data) - size
        if rest == due and status < 500:
            # The usual pass-through: the whole response in this one read. The exchange
            # is over before the client sees it, as _direct_end would end it (_done is
            # None already: data_received looked).
            self.sink = None
            pool = self.pool
            pool.unwatch(self)
            if keep_alive:
                pool.put(self)
            else:
                self.close()
            return sink.whole(status, phrase, lines, dated, via, statuses, length,
                              data[size:] if due else b"")
        self._headed = True
        self._close_delimited = False       # framed by Content-Length: a close cuts it short
        self._last = self.loop.time()
        sink.head_lines(status, phrase, lines, dated, via, statuses, length)
        if self.sink is not sink:
            return                          # detached (a 5xx retried elsewhere, a fault)
        if rest > due:
            self._extra = True              # more than Content-Length: dropped, and closed
        if due and rest:
            body = data[size:size + due]
            self._left = due - len(body)
            sink.body(body)
            if self.sink is not sink:
                return                      # the client went, or a fault of ours
        else:
            self._left = due
        if self._left:
            self._keep = keep_alive
        else:
            self._done = keep_alive
            self._direct_end()

    def _more(self, data: bytes) -> None:
        """Body bytes after a head edge._heads read (self._left of them still due)."""
        self._last = self.loop.time()
        left = self._left
        if len(data) > left:
            self._extra = True
            data = data[:left]
        self._left = left - len(data)
        sink = self.sink
        if sink is None:                    # detached: nobody wants the rest
            self._left = 0
            return self.close()
        sink.body(data)
        if not self._left and self.sink is sink:
            self._done = self._keep
            self._direct_end()

    def on_message_begin(self) -> None:
        if self._done is not None:
            self._extra = True              # a second response nobody asked for
        self._headers = []
        self._complete = False

    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("latin-1", "replace")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        headers = self._headers
        if self._done is not None:
            return                          # after the sink's response: dropped
        if 100 <= status < 200 and status != 101:
            if self._interim is not None:
                self._interim(status, [(n.decode("latin-1"), v.decode("latin-1"))
                                       for n, v in headers])
            return
        length, chunked = None, False
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
            elif lower == b"transfer-encoding":
                chunked = True
        self._body_allowed = (self._method != "HEAD" and status not in NO_BODY_STATUSES
                              and status != 101)
        self._close_delimited = self._body_allowed and length is None and not chunked
        if self.sink is not None:
            self._headed = True
            self.sink.head(status, self._reason, headers, length if not chunked else None)
            if not self._body_allowed and self.sink is not None:
                self._done = parser.should_keep_alive()
            return
        resp = Response(self, status, self._reason, headers)
        resp.content_length = length if not chunked else None
        self.response = resp
        if not self._body_allowed:
            resp._finish(parser.should_keep_alive() and status != 101)
        if self._head is not None and not self._head.done():
            self._head.set_result(resp)

    def on_body(self, data: bytes) -> None:
        if self.sink is not None:
            if self._body_allowed and self._done is None:
                self.sink.body(data)
        elif self.response is not None and self._body_allowed:
            self.response.feed(data)

    def on_message_complete(self) -> None:
        self._complete = True
        if self.sink is not None:
            if self._headed and self._done is None:
                self._done = self.parser.should_keep_alive()
            return
        resp = self.response
        if resp is not None and not resp.done and self.parser is not None:
            resp._finish(self.parser.should_keep_alive())

    def become_pipe(self, sink: Callable[[bytes], None]) -> asyncio.Transport:
        assert self.transport is not None
        self.exchange_over()
        self._pipe = sink
        held, self._held_bytes = self._held_bytes, b""
        if held:       # after the caller has joined both ends
            self.loop.call_soon(sink, held)
        return self.transport


class Upload:
    """A request body to stream to the origin, replayable while it is small enough."""

    def __init__(self, source: AsyncIterator[bytes] | None, chunked: bool,
                 data: bytes | None = None):
        self.source, self.chunked = source, chunked
        self.kept: list[bytes] = [data] if data else []
        self.kept_bytes = len(data) if data else 0
        self.started = False
        self.overflow = False

    @property
    def replayable(self) -> bool:
        return not self.overflow

    async def stream(self) -> AsyncIterator[bytes]:
        replay = self.started
        self.started = True
        for data in list(self.kept) if replay or self.source is None else ():
            yield data
        if self.source is None:
            return
        async for data in self.source:
            if not self.overflow:
                self.kept.append(data)
                self.kept_bytes += len(data)
                if self.kept_bytes > REPLAY_MAX:
                    self.overflow, self.kept = True, []
            yield data
