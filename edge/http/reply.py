"""How a handler answers its HTTP/1.1 request: one `Reply` per request (server.py).

A head is written with the first body bytes (one send, not two); the framing
(Content-Length, chunked, or to the close for HTTP/1.0), Connection and the
listener's Alt-Svc are added here, so every answer -- the handler's, the
pass-through shortcut's, the edge's own errors -- is framed by the same rules.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from edge.http.filesend import send_file
from edge.http.wire import (DATE, LAST_CHUNK, NO_BODY_STATUSES, chunk, field_lines, has_date,
                            head, reason, status_line)


class Reply:
    """How a handler answers its request: `start`, `write`..., `end` (or `abort`)."""

    __slots__ = ("conn", "request", "started", "finished", "status", "_chunked", "_no_body",
                 "close", "sent", "_head")

    # conn, request: server.Connection and server.Request (server.py imports this module)
    def __init__(self, conn, request):
        self.conn, self.request = conn, request
        self.started = self.finished = self.close = False
        self.status = 0
        self._chunked = self._no_body = False
        self.sent = 0
        self._head = b""          # written with the first body bytes: one send, not two

    def interim(self, status: int, headers: "list[tuple[str, str]]") -> None:
        """Forward a 1xx response (103 Early Hints, 100 Continue) before the final one."""
        if not self.started and self.request.version != "1.0":
            self.conn.write(head(status, reason(status), headers))

    def start(self, status: int, phrase: str, headers: "list[tuple[str, str]]",
              length: int | None) -> None:
        """Send the status line and headers; `length` None: chunked (or to the close)."""
        self.start_block(status, phrase, field_lines(headers), has_date(headers), length)

    def start_block(self, status: int, phrase: str, block: bytes, dated: bool,
                    length: int | None) -> None:
        """`start` with the header lines already encoded (CRLF after each); `dated`:
        they hold a Date. The framing, Connection and Alt-Svc lines are added here."""
        self._head = b"".join(self._head_parts(status, phrase, block, dated, length))

    def _head_parts(self, status: int, phrase: str, block: bytes, dated: bool,
                    length: int | None) -> list[bytes]:
        """start_block's head, in pieces to join (whole joins its body with them)."""
        request = self.request
        self.started, self.status = True, status
        self._no_body = request.method == "HEAD" or status in NO_BODY_STATUSES
        out = [status_line(status, phrase), block]
        if not dated:
            out.append(DATE.line())
        if length is not None:
            if status not in NO_BODY_STATUSES:
                out.append(b"Content-Length: %d\r\n" % length)
        elif not self._no_body:
            if request.version == "1.0":
                self.close = True                # the end of the body is the close
            else:
                self._chunked = True
                out.append(b"Transfer-Encoding: chunked\r\n")
        if self.close or not request.keep_alive or self.conn.closing:
            self.close = True
            out.append(b"Connection: close\r\n")
        elif request.version == "1.0":
            out.append(b"Connection: keep-alive\r\n")
        if self.conn.alt_svc:
            out.append(self.conn.alt_svc_line)
        out.append(b"\r\n")
        return out

    def whole(self, status: int, phrase: str, block: bytes, dated: bool, length: int,
              body: bytes) -> None:
        """start_block, write_now(body) and end in one: a whole response framed by
        Content-Length, in one write (head and body joined once)."""
        out = self._head_parts(status, phrase, block, dated, length)
        if body and not self._no_body:
            self.sent += len(body)
            out.append(body)
        self.finished = True
        self.conn.write(b"".join(out))

    def _flush(self, data: bytes = b"") -> None:
        if self._head:
            data, self._head = self._head + data, b""
        if data:
            self.conn.write(data)

    async def write(self, data: bytes) -> None:
        if self._no_body or not data:
            return
        if self.conn.transport is None:
            raise ConnectionResetError("client gone")
        self.sent += len(data)
        self._flush(chunk(data) if self._chunked else data)
        if self.conn.paused:
            await self.conn.drain()

    def write_now(self, data: bytes) -> None:
        """`write` for callers that cannot wait: no flow control (small bodies only)."""
        if not self._no_body and data:
            self.sent += len(data)
            self._flush(chunk(data) if self._chunked else data)

    async def sendfile(self, file, offset: int, count: int, kernel: bool = False) -> None:
        """`count` bytes of an open file from `offset` (edge/http/filesend.py); `kernel`: by
        sendfile(2), else copied through one buffer per worker."""
        if self._no_body or count <= 0:
            return
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client gone")
        self._flush()
        self.sent += count
        await send_file(transport, self.conn.drain, file, offset, count, kernel)

    def end(self) -> None:
        if self.finished:
            return
        if self._chunked or self._head:
            self._flush(LAST_CHUNK if self._chunked and not self._no_body else b"")
        self.finished = True

    def abort(self) -> None:
        """Cut the connection: the client must see that the response is incomplete."""
        self._head = b""
        self.finished = True
        self.close = True
        self.conn.abort()

    def simple(self, status: int, text: str, headers: "list[tuple[str, str]]" = ()) -> None:
        """A whole small plain-text response (the edge's own errors and answers)."""
        body = text.encode()
        self.start(status, "", [("Content-Type", "text/plain; charset=utf-8"), *headers],
                   len(body))
        self.write_now(body)
        self.end()

    def switch(self, headers: "list[tuple[str, str]]") -> None:
        """101 Switching Protocols (then `take_over`)."""
        self.started = True
        self._flush(head(101, reason(101), headers))

    def take_over(self, sink: Callable[[bytes], None]) -> "asyncio.Transport":
        """After a 101: the connection is a byte pipe; client bytes go to `sink` from now
        on (those that came with the request first). Returns the client transport."""
        self.started = self.finished = self.close = True
        return self.conn.become_pipe(sink)
