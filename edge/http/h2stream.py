"""One HTTP/2 stream as the edge's handler sees it: a `StreamRequest` and a `StreamReply`
with the interface of server.py's `Request` and `Reply`, so a stream goes through the
same routing, cache, coalescing, ranges, purge and metrics as an HTTP/1.1 request.

The request head is checked here (RFC 9113 8.2, 8.3), not by the h2 library, so a
malformed request is a stream error -- that stream refused, the connection's others
go on -- and so nothing that could split a header when forwarded over HTTP/1.1 (CR,
LF, NUL, upper case, connection-specific fields) reaches an origin.

Bytes out wait for the client's flow-control window and for the socket: `write`
returns only when its bytes are framed, so a client that never opens its window
holds one chunk per stream, and its stream is reset after `STALL_TIMEOUT`
seconds without progress.
"""
from __future__ import annotations

import asyncio
import collections
import os
import re
import time
from typing import AsyncIterator

from multidict import CIMultiDict

from edge.http.wire import DATE, NO_BODY_STATUSES, ChunkQueue

# `conn` below is the stream's h2.H2Connection (not imported: that module imports this).

STALL_TIMEOUT = 30.0          # a stream whose bytes cannot move this long is reset
FILE_CHUNK = 64 * 1024        # sendfile over h2: pread this much, frame it, wait
CANCEL, INTERNAL_ERROR, PROTOCOL_ERROR = 0x8, 0x2, 0x1

_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
# RFC 9113 8.2.2: meaningless in HTTP/2; a request carrying one is malformed.
CONNECTION_SPECIFIC = frozenset({b"connection", b"proxy-connection", b"keep-alive",
                                 b"transfer-encoding", b"upgrade"})
_OUT_DROPPED = frozenset({"connection", "proxy-connection", "keep-alive", "transfer-encoding",
                          "upgrade"})
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})


class Malformed(ValueError):
    """A request head RFC 9113 calls malformed: a stream error of type PROTOCOL_ERROR."""


def parse_head(headers) -> tuple[dict[bytes, bytes], list[tuple[bytes, bytes]]]:
    """(pseudo-headers, regular fields) of a request HEADERS block; Malformed if bad.
    Cookie fields are joined into one (RFC 9113 8.2.3: what an HTTP/1.1 origin expects),
    and Host is set from :authority (8.3.1)."""
    pseudo: dict[bytes, bytes] = {}
    regular: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    host = None
    for name, value in headers:
        if _BAD_VALUE.search(value) is not None:
            raise Malformed(f"bad value of {name!r}")
        if name[:1] == b":":
            if regular or cookies or host is not None or name not in _PSEUDO or name in pseudo:
                raise Malformed(f"pseudo-header {name!r} misplaced, unknown or repeated")
            pseudo[name] = value
            continue
        if _NAME.match(name) is None:
            raise Malformed(f"bad field name {name!r}")
        if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            raise Malformed(f"connection-specific field {name!r}")
        if name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            if host is not None:
                raise Malformed("two Host fields")
            host = value
        else:
            regular.append((name, value))
    method = pseudo.get(b":method")
    if method is None:
        raise Malformed("no :method")
    if method == b"CONNECT":
        if b":scheme" in pseudo or b":path" in pseudo or b":authority" not in pseudo:
            raise Malformed("CONNECT needs :authority only")
    elif b":scheme" not in pseudo or not pseudo.get(b":path"):
        raise Malformed("no :scheme or :path")
    authority = pseudo.get(b":authority")
    if authority is not None and host is not None and host != authority:
        raise Malformed("Host differs from :authority")
    host = authority if authority is not None else host
    if host is not None:
        regular.insert(0, (b"host", host))
    if cookies:
        regular.append((b"cookie", b"; ".join(cookies)))
    return pseudo, regular


class StreamBody(ChunkQueue):
    """A request body arriving in DATA frames. The stream's window is opened again only
    as the handler takes the bytes, so a slow reader holds the client back."""

    __slots__ = ("_conn", "_stream_id", "length")

    def __init__(self, conn, stream_id: int, length: int | None):
        super().__init__(1 << 62)           # bounded by the flow-control window instead
        self._conn, self._stream_id, self.length = conn, stream_id, length

    async def chunks(self) -> "AsyncIterator[bytes]":
        async for data in super().chunks():
            self._conn.consumed(self._stream_id, len(data))
            yield data

    def unread(self) -> int:
        """Bytes received but not taken (given back to the window when the stream ends)."""
        return self._buffered


class StreamRequest:
    """A request on one stream, duck-typing server.Request (`version` the connection's,
    "2" or "3"; never an upgrade: neither has Upgrade, and extended CONNECT is not
    offered). `conn` is an h2.H2Connection or an h3.H3Conn: both frame, reset and
    credit streams with the same methods."""

    __slots__ = ("method", "target", "version", "raw_headers", "scheme", "peer", "body",
                 "keep_alive", "upgrade", "conn", "stream_id", "_headers", "host")

    def __init__(self, conn, stream_id: int, pseudo: dict[bytes, bytes],
                 regular: list[tuple[bytes, bytes]], body: StreamBody | None):
        self.conn, self.stream_id, self.body = conn, stream_id, body
        self.method = pseudo[b":method"].decode("latin-1")
        self.target = pseudo.get(b":path", b"").decode("latin-1")
        self.host = (regular[0][1] if regular and regular[0][0] == b"host" else b""
                     ).decode("latin-1")
        self.version, self.keep_alive, self.upgrade = conn.version, True, False
        self.raw_headers = regular
        self.scheme, self.peer = conn.scheme, conn.peer
        self._headers: CIMultiDict | None = None

    @property
    def headers(self) -> CIMultiDict:
        if self._headers is None:
            self._headers = CIMultiDict([(n.decode("latin-1"), v.decode("latin-1"))
                                         for n, v in self.raw_headers])
        return self._headers

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


def response_head(status: int, headers, length: int | None) -> list[tuple[bytes, bytes]]:
    """An HTTP/2 response header block: lower-case names, connection-specific fields
    dropped (RFC 9113 8.2.2), Date and content-length added."""
    out = [(b":status", b"%d" % status)]
    dated = False
    for name, value in headers:
        lower = name.lower()
        if lower in _OUT_DROPPED or lower == "content-length":
            continue
        dated = dated or lower == "date"
        out.append((lower.encode("latin-1"), value.encode("latin-1", "replace")))
    if not dated:
        out.append((b"date", DATE.now().encode()))
    if length is not None and status not in NO_BODY_STATUSES:
        out.append((b"content-length", b"%d" % length))
    return out


class StreamReply:
    """How a handler answers a stream, duck-typing reply.Reply."""

    __slots__ = ("conn", "request", "stream_id", "started", "finished", "status", "close",
                 "sent", "_no_body", "_head", "_pending", "_ended", "_waiter", "reset", "out_done")

    def __init__(self, conn, request: StreamRequest | None, stream_id: int):
        self.conn, self.request, self.stream_id = conn, request, stream_id
        self.started = self.finished = self.close = self._no_body = self._ended = False
        self.reset = False                 # the stream is gone (either side reset it)
        self.out_done = False              # END_STREAM framed
        self.status = self.sent = 0
        self._head: list | None = None     # sent with the first bytes (or the end)
        self._pending: collections.deque = collections.deque()   # memoryviews to frame
        self._waiter: asyncio.Future | None = None

    def interim(self, status: int, headers: "list[tuple[str, str]]") -> None:
        """A 1xx (103 Early Hints) before the final response; 101 has no HTTP/2 form."""
        if not self.started and not self.reset and 100 <= status < 200 and status != 101:
            self.conn.send_interim(self.stream_id, response_head(status, headers, None))

    def start(self, status: int, phrase: str, headers: "list[tuple[str, str]]",
              length: int | None) -> None:
        """The response head (HTTP/2 has no reason phrase); framed with the first bytes."""
        self.started, self.status = True, status
        method = self.request.method if self.request is not None else "GET"
        self._no_body = method == "HEAD" or status in NO_BODY_STATUSES
        self._head = response_head(status, headers, length)
        if self.conn.alt_svc:
            self._head.append((b"alt-svc", self.conn.alt_svc))

    def start_raw(self, head: list[tuple[bytes, bytes]], no_body: bool) -> None:
        """`start` with a header block rendered already (hits)."""
        self.started, self.status, self._no_body, self._head = True, 200, no_body, head

    def pump(self) -> bool:
        """Frame what the windows allow; True when anything moved."""
        if self.reset:
            return False
        moved = self.conn.frame(self)
        if moved and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        return moved

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _queue(self, data) -> None:
        self._pending.append(memoryview(data))
        self.pump()

    async def _wait(self) -> None:
        """Until every queued byte is framed and the socket takes more."""
        conn = self.conn
        loop = asyncio.get_running_loop()
        while (self._pending or conn.paused) and not self.reset:
            self._waiter = loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, STALL_TIMEOUT)
            except TimeoutError:
                conn.reset(self, CANCEL)            # no progress: free the stream
            finally:
                self._waiter = None
        if self.reset:
            raise ConnectionResetError("stream reset")

    async def write(self, data: bytes) -> None:
        if self._no_body or not data:
            return
        if self.reset:
            raise ConnectionResetError("stream reset")
        self.sent += len(data)
        self._queue(data)
        if self._pending or self.conn.paused:
            await self._wait()

    def write_now(self, data: bytes) -> None:
        """`write` for callers that cannot wait: queued for the window (small bodies),
        framed at the end of the loop turn (with the END_STREAM of an `end` that follows)."""
        if not self._no_body and data and not self.reset:
            self.sent += len(data)
            self._pending.append(memoryview(data))
            self.conn.later(self)

    async def sendfile(self, file, offset: int, count: int, kernel: bool = False) -> None:
        """`count` bytes of an open file from `offset`, one bounded chunk at a time (no
        sendfile(2) under TLS framing)."""
        if self._no_body or count <= 0:
            return
        fd = file.fileno()
        while count > 0:
            data = os.pread(fd, min(count, FILE_CHUNK), offset)
            if not data:
                raise ConnectionResetError("file shorter than its object")
            offset, count = offset + len(data), count - len(data)
            await self.write(data)

    def end(self) -> None:
        if self.finished:
            return
        self.finished = self._ended = True
        self.conn.later(self)

    def abort(self) -> None:
        """Reset the stream: the client must see that the response is incomplete."""
        self.finished = self.close = True
        self._pending.clear()
        if not self.reset:
            self.conn.reset(self, INTERNAL_ERROR)

    def simple(self, status: int, text: str, headers: "list[tuple[str, str]]" = ()) -> None:
        """A whole small plain-text response (the edge's own errors and answers)."""
        body = text.encode()
        self.start(status, "", [("Content-Type", "text/plain; charset=utf-8"), *headers],
                   len(body))
        self.write_now(body)
        self.end()

    def switch(self, headers: "list[tuple[str, str]]") -> None:
        raise ConnectionResetError("no protocol switch over HTTP/2")

    def take_over(self, sink) -> "asyncio.Transport":
        raise ConnectionResetError("no protocol switch over HTTP/2")


class Stream:
    """One request stream of a multiplexed connection: its request (None for a hit
    answered at once), its reply and the handler's task while it runs."""

    __slots__ = ("request", "reply", "task", "since")

    def __init__(self, request: StreamRequest | None, reply: StreamReply):
        self.request, self.reply, self.task = request, reply, None
        self.since = time.monotonic()


class Multiplexed:
    """The stream bookkeeping the HTTP/2 and HTTP/3 connections share: which streams are
    open, which replies wait for the peer's window, and when a stream can be forgotten.

    The subclass sets `_streams`, `_blocked`, `_later`, `_moved` and `busy_since`,
    and defines `dirty()` (send what is framed at the end of this loop turn) and
    `_all_forgotten()` (the last stream is gone: a closing connection may end).
    """

    _streams: dict[int, Stream]
    _blocked: dict[int, StreamReply]
    _later: list[StreamReply]
    _moved: float
    busy_since: float

    def dirty(self) -> None:
        raise NotImplementedError

    def _all_forgotten(self) -> None:
        raise NotImplementedError

    def later(self, reply: StreamReply) -> None:
        """Frame `reply` at the end of this loop turn: its head, body and end of stream
        go in as few frames as they fit."""
        self._later.append(reply)
        self.dirty()

    @property
    def in_flight(self) -> StreamRequest | None:
        """The oldest request being answered (None when idle)."""
        for stream in self._streams.values():
            if stream.request is not None and stream.task is not None:
                self.busy_since = stream.since
                return stream.request
        return None

    def _answer_now(self, sid: int, answer: tuple) -> None:
        """A fresh memory hit, answered without a handler: (head, body) as made ahead."""
        head, body = answer
        reply = StreamReply(self, None, sid)
        self._streams[sid] = Stream(None, reply)
        reply.start_raw(head, not body)
        reply.write_now(body)
        reply.end()

    def _open(self, sid: int, pseudo: dict, regular: list, ended: bool) -> Stream | None:
        """The stream of a checked request head, for a handler; None when it was answered
        here (CONNECT, which the edge does not tunnel over h2/h3)."""
        body = None
        if not ended:
            length = None
            for name, value in regular:
                if name == b"content-length":     # the protocol library checked it
                    length = int(value) if value.isdigit() else None
            body = StreamBody(self, sid, length)
        request = StreamRequest(self, sid, pseudo, regular, body)
        reply = StreamReply(self, request, sid)
        stream = Stream(request, reply)
        self._streams[sid] = stream
        if request.method == "CONNECT":
            reply.simple(501, "CONNECT is not supported\n")
            return None
        return stream

    def _gone(self, stream: Stream, exc: Exception) -> None:
        """The stream ended under its handler (reset, connection lost): no more bytes
        out, and a body still being read fails with `exc`."""
        reply = stream.reply
        reply.reset = True
        reply._pending.clear()
        reply.wake()
        self._blocked.pop(reply.stream_id, None)
        body = stream.request.body if stream.request is not None else None
        if body is not None and not body.done:
            body.fail(exc)

    def _framed(self, reply: StreamReply, moved: bool) -> bool:
        """After framing `reply`: held for the window if bytes are left, forgotten when
        it is all out (unless its handler still runs); `moved` says bytes went out."""
        sid = reply.stream_id
        if reply._pending:
            self._blocked[sid] = reply
        else:
            self._blocked.pop(sid, None)
            if reply.out_done:
                self._forget(sid)
        if moved:
            self._moved = time.monotonic()
            self.dirty()
        return moved

    def _unblock(self) -> None:
        """A window opened: frame what waited for it."""
        for reply in list(self._blocked.values()):
            reply.pump()

    def _forget(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.task is not None:
            return
        if stream.reply._pending and not stream.reply.reset:
            return                           # bytes still waiting for the window
        del self._streams[stream_id]
        self._blocked.pop(stream_id, None)
        if not self._streams:
            self._all_forgotten()
