"""HTTP/1.1 on the wire, shared by the edge's server side (server.py) and its origin
client (client.py): status lines, header blocks, the Date header, field checks.

The edge speaks HTTP/1.1 itself on asyncio protocols, with httptools (the
llhttp parser Node.js uses) reading both requests and responses: aiohttp's
client and server cost ~200 us of CPU per proxied request, this ~40.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import AsyncIterator

from multidict import CIMultiDict

REASONS = {s.value: s.phrase for s in HTTPStatus}
REASONS.update({103: "Early Hints", 425: "Too Early", 499: "Client Closed Request"})
# RFC 9110 6.4.1: no content, whatever the headers say.
NO_BODY_STATUSES = frozenset({204, 304})


def reason(status: int, given: str = "") -> str:
    """The reason phrase to send: the origin's own if it is printable, else the standard one."""
    if given and given.isprintable() and "\r" not in given and "\n" not in given:
        return given
    return REASONS.get(status, "Unknown")


# Header names and values come from messages llhttp parsed (which refuses CR, LF and
# NUL in them) or from validated config, so they are joined as they are.

def head(status: int, phrase: str, headers: "list[tuple[str, str]] | tuple") -> bytes:
    """A response status line and header block, blank line included."""
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1", "replace")


def field_lines(headers: "list[tuple[str, str]] | tuple") -> bytes:
    """Header fields as `head` writes them, CRLF after each, for heads built as bytes."""
    return "".join([f"{k}: {v}\r\n" for k, v in headers]).encode("latin-1", "replace")


def has_date(headers: "list[tuple[str, str]] | tuple") -> bool:
    """Whether `headers` (name, value pairs) hold a Date: Reply adds one when not."""
    return any(k == "Date" or k.lower() == "date" for k, _ in headers)


@functools.lru_cache(maxsize=256)
def status_line(status: int, phrase: str) -> bytes:
    """`head`'s first line, CRLF included, for heads built as bytes (Reply.start_block)."""
    return f"HTTP/1.1 {status} {reason(status, phrase)}\r\n".encode("latin-1", "replace")


def request_head(method: str, target: str, headers: "list[tuple[str, str]]") -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1", "replace")


class _Clock:
    """The Date header value, formatted once per second."""

    __slots__ = ("second", "text", "_line")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""
        self._line = b""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second, self.text = second, formatdate(second, usegmt=True)
            self._line = f"Date: {self.text}\r\n".encode("latin-1")
        return self.text

    def line(self) -> bytes:
        """The whole header line, CRLF included."""
        self.now()
        return self._line


DATE = _Clock()


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def multidict(raw: "list[tuple[bytes, bytes]]") -> CIMultiDict:
    """Parsed header fields (bytes, as llhttp gives them) as a case-insensitive multidict."""
    return CIMultiDict([(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw])


class ChunkQueue:
    """Body bytes arriving on a connection, read once and in order by one reader.

    The connection is paused (`hold`) while more than `high` bytes wait, and
    resumed (`unhold`) when the reader has taken half of them: a slow reader
    holds the sender back instead of filling memory.
    """

    __slots__ = ("_chunks", "_buffered", "done", "error", "_waiter", "received", "_high")

    def __init__(self, high: int):
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self.done = False
        self.error: Exception | None = None
        self._waiter: asyncio.Future | None = None
        self.received = 0
        self._high = high

    def hold(self) -> None:
        """Stop reading the connection (subclasses say how)."""

    def unhold(self) -> None:
        """Read the connection again."""

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self.received += len(data)
        if self._buffered > self._high:
            self.hold()
        self._wake()

    def end(self) -> None:
        self.done = True
        self._wake()

    def fail(self, exc: Exception) -> None:
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def take_all(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return data

    async def read(self, limit: int) -> bytes:
        """The whole body, if it is at most `limit` bytes (ValueError otherwise)."""
        parts, size = [], 0
        async for data in self.chunks():
            size += len(data)
            if size > limit:
                raise ValueError(f"body over {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    async def chunks(self) -> "AsyncIterator[bytes]":
        """The body as it arrives; `error` (set by `fail`) if it ends before it should."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._buffered <= self._high // 2:
                    self.unhold()
                yield data
                continue
            if self.done:
                return
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


async def call_handler(handler, request, reply, log: logging.Logger) -> None:
    """Run the app's handler for one request, the same on HTTP/1.1, h2 and h3: a client
    gone (or a cancelled task) aborts the reply; any other error is logged once with the
    request and answered 500, or aborts a reply already started (its head is out)."""
    try:
        await handler(request, reply)
    except (ConnectionError, asyncio.CancelledError):
        reply.abort()
    except Exception:
        log.exception("handling %s %s failed", request.method, request.target)
        if not reply.started:
            reply.simple(500, "internal error\n")
        else:
            reply.abort()
