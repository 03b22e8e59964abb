"""The edge's HTTP/2 server (RFC 9113): one `H2Connection` protocol per TLS connection
whose ALPN agreed on "h2" (front.ByAlpn picks it).

python-hyper's `h2` does the framing, HPACK and the state machines (sans-IO);
this module feeds it the socket's bytes, turns each request stream into a
`StreamRequest` / `StreamReply` pair (h2stream.py) for the same handler the
HTTP/1.1 server calls, answers fresh memory-tier hits at once (`Hits.answer_hpack`,
their heads HPACK-encoded once: hpackblock.py), and sends what h2 has framed, once
per loop turn.

Defences, each bounded per connection (docs/edge.md "HTTP/2"):
- rapid reset (CVE-2023-44487): RST_STREAMs from the client are counted; past
  `RESETS_MAX` in `RESETS_PERIOD` s the connection gets GOAWAY ENHANCE_YOUR_CALM.
  Handlers still running for reset streams count against the stream limit, so
  resets cannot buy unbounded work: a stream past it is refused (REFUSED_STREAM).
- SETTINGS, PING and PRIORITY floods: counted per second, GOAWAY past a limit.
- header blocks: SETTINGS_MAX_HEADER_LIST_SIZE 64 KiB, enforced by h2's HPACK
  decoder (an HPACK bomb stops there), a 4 KiB dynamic table, and at most 64
  CONTINUATION frames of 16 KiB buffered (h2's own bound).
- SETTINGS_MAX_CONCURRENT_STREAMS 100 (h2 ends a connection that opens more).
- windows: bytes out wait for the client's window (h2stream.STALL_TIMEOUT resets
  a stream that cannot move), bytes in are acknowledged only as handlers read
  them, the connection's receive window is 1 MiB.
- idle connections are closed after IDLE_TIMEOUT s without a stream.
"""
from __future__ import annotations

import asyncio
import logging
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from edge.http import h2stream
from edge.http.hpackblock import Encoder
from edge.http.h2stream import (
    CANCEL,
    PROTOCOL_ERROR,
    Malformed,
    Multiplexed,
    Stream,
    StreamReply,
    parse_head,
)
from edge.http.wire import call_handler

log = logging.getLogger("edge.http.h2")

IDLE_TIMEOUT = 75.0               # as HTTP/1.1 keep-alive (server.py)
MAX_STREAMS = 100                 # SETTINGS_MAX_CONCURRENT_STREAMS
MAX_HANDLERS = 100                # handlers running, reset streams' included
MAX_HEADER_LIST = 64 * 1024       # SETTINGS_MAX_HEADER_LIST_SIZE (decoded, RFC 9113 6.5.2)
HEADER_TABLE = 4096               # SETTINGS_HEADER_TABLE_SIZE: the HPACK table we keep
STREAM_WINDOW = 256 * 1024        # per request body buffered at most (as server.BODY_HIGH)
CONN_WINDOW = 1024 * 1024         # all request bodies of a connection buffered at most
RESETS_MAX, RESETS_PERIOD = 200, 10.0
FLOOD_PER_SECOND = {"ping": 50, "settings": 50, "priority": 500}

_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                    validate_inbound_headers=False,   # h2stream.parse_head
                                    normalize_inbound_headers=False,
                                    validate_outbound_headers=False,  # response_head's own
                                    normalize_outbound_headers=False)


class _Rate:
    """Events per period; `over` says when a kind went past its limit."""

    __slots__ = ("counts", "since")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.since = time.monotonic()

    def over(self, kind: str, limit: int, period: float = 1.0) -> bool:
        now = time.monotonic()
        if now - self.since > period:
            self.counts.clear()
            self.since = now
        count = self.counts.get(kind, 0) + 1
        self.counts[kind] = count
        return count > limit


class H2Connection(Multiplexed, asyncio.Protocol):
    """One HTTP/2 client connection (see the module docstring)."""

    version = "2"
    alt_svc = b""                  # Alt-Svc on every answer (Listeners sets it: HTTP/3 on)

    def __init__(self, handler, hits, scheme: str, conns: set, bad_requests):
        self.handler, self.hits, self.scheme, self.conns = handler, hits, scheme, conns
        self.bad_requests = bad_requests
        self.h2 = h2.connection.H2Connection(config=_CONFIG)
        self.h2.encoder = Encoder()          # passes hits' pre-encoded heads through
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.paused = False
        self.closing = False
        self._streams: dict[int, Stream] = {}
        self._blocked: dict[int, StreamReply] = {}   # replies with bytes the window holds
        self._handlers = 0
        self._flush_soon = False
        self._later: list[StreamReply] = []
        self._moved = time.monotonic()         # bytes last framed
        self._resets = _Rate()
        self._floods = _Rate()
        self._active = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self.busy_since = 0.0

    # --- the transport ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport          # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.conns.add(self)
        h2c = self.h2
        # Our first SETTINGS (what initiate_connection sends), in force from the start.
        h2c.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            SettingCodes.HEADER_TABLE_SIZE: HEADER_TABLE,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        h2c.initiate_connection()
        h2c.increment_flow_control_window(CONN_WINDOW - 65535)
        self._flush()
        self._timer = asyncio.get_running_loop().call_later(
            min(IDLE_TIMEOUT, h2stream.STALL_TIMEOUT / 2), self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self.transport = None
        gone = ConnectionResetError("client closed the connection")
        for stream in self._streams.values():
            self._gone(stream, gone)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        for stream in list(self._streams.values()):
            stream.reply.wake()

    def _flush(self) -> None:
        self._flush_soon = False
        if self._later:
            later, self._later = self._later, []
            for reply in later:
                reply.pump()
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def dirty(self) -> None:
        """Send what h2 has framed at the end of this loop turn (one write for many)."""
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def close(self) -> None:
        """GOAWAY now; close when the streams in progress are answered (shutdown)."""
        if self.closing or self.transport is None:
            self.closing = True
            return
        self.closing = True
        self._flush()
        # Written past h2's state machine, which would refuse to frame the streams still
        # being answered after a GOAWAY of its own; new streams are refused (_request).
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self.h2.highest_inbound_stream_id
        self.transport.write(goaway.serialize())
        if not self._streams:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _goaway(self, code: ErrorCodes, why: str) -> None:
        """End the connection for misbehaviour: counted, GOAWAY with `code`, closed."""
        self.bad_requests.labels(f"h2_{why}").inc()
        if self.transport is not None:
            try:
                self.h2.close_connection(error_code=code)
            except h2.exceptions.ProtocolError:
                pass
            self._flush()
            self.transport.close()
            self.transport = None

    def _idle(self) -> None:
        now = time.monotonic()
        left = self._active + IDLE_TIMEOUT - now
        if self._streams:
            left = IDLE_TIMEOUT                # streams have their own timeouts, but:
            if self._blocked and now - self._moved > h2stream.STALL_TIMEOUT:
                # responses whose handlers are done, held by a window that never opens
                for reply in list(self._blocked.values()):
                    self.reset(reply, CANCEL)
        if left > 0:
            wait = min(left, h2stream.STALL_TIMEOUT / 2)
            self._timer = asyncio.get_running_loop().call_later(wait, self._idle)
        elif self.transport is not None:
            self.close()

    # --- frames in ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self._active = time.monotonic()
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY with the right code: a too-large header list, a
            # bad frame, more streams than allowed, a bad HPACK block...
            return self._goaway(getattr(exc, "error_code", None) or ErrorCodes.PROTOCOL_ERROR,
                                "protocol")
        for event in events:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                self._request(event)
            elif kind is h2.events.DataReceived:
                self._data(event)
            elif kind is h2.events.StreamEnded:
                stream = self._streams.get(event.stream_id)
                body = stream.request.body if stream and stream.request else None
                if body is not None:
                    body.end()
            elif kind is h2.events.WindowUpdated or kind is h2.events.RemoteSettingsChanged:
                if kind is h2.events.RemoteSettingsChanged and self._floods.over(
                        "settings", FLOOD_PER_SECOND["settings"]):
                    return self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, "settings_flood")
                self._unblock()
            elif kind is h2.events.StreamReset:
                self._reset_by_client(event)
            elif kind is h2.events.PingReceived:
                if self._floods.over("ping", FLOOD_PER_SECOND["ping"]):
                    return self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, "ping_flood")
            elif kind is h2.events.PriorityUpdated:
                if self._floods.over("priority", FLOOD_PER_SECOND["priority"]):
                    return self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, "priority_flood")
            elif kind is h2.events.ConnectionTerminated:
                # The client's GOAWAY: h2 frames nothing more after it.
                self.closing = True
                self._flush()
                self.transport.close()
                self.transport = None
            if self.transport is None:
                return
        self._flush()

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        ended = event.stream_ended is not None
        try:
            pseudo, regular = parse_head(event.headers)
        except Malformed:
            self.bad_requests.labels("h2_malformed").inc()
            return self._refuse(sid, PROTOCOL_ERROR)       # RFC 9113 8.1.1: a stream error
        if self.closing or self._handlers >= MAX_HANDLERS:
            return self._refuse(sid, ErrorCodes.REFUSED_STREAM)    # safe to retry
        hits = self.hits
        if ended and hits is not None:
            answer = hits.answer_hpack(pseudo[b":method"], pseudo.get(b":path", b""), regular,
                                       self.scheme, extra=self.alt_svc)
            if answer is not None:
                return self._answer_now(sid, answer)
        stream = self._open(sid, pseudo, regular, ended)
        if stream is None:
            return
        self._handlers += 1
        # Held by the stream (which the connection holds): see server.Connection._start.
        stream.task = asyncio.get_running_loop().create_task(self._run(stream))

    def _refuse(self, sid: int, code: int) -> None:
        # The client may have reset the stream in the same read (HEADERS then RST_STREAM,
        # as rapid reset does): h2 has closed it already and there is nothing to refuse.
        try:
            self.h2.reset_stream(sid, code)
        except h2.exceptions.ProtocolError:
            pass

    def _data(self, event: h2.events.DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        body = stream.request.body if stream is not None and stream.request else None
        padding = event.flow_controlled_length - len(event.data)
        if body is None or body.done or body.error is not None:
            # Nobody reads it (a hit, a finished handler): give the window back at once.
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        if padding:
            self.h2.acknowledge_received_data(padding, event.stream_id)
        if event.data:
            body.feed(event.data)

    def consumed(self, stream_id: int, size: int) -> None:
        """A handler took `size` body bytes: the client may send that many more."""
        if self.transport is None:
            return
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except h2.exceptions.ProtocolError:
            return
        self.dirty()

    def _reset_by_client(self, event: h2.events.StreamReset) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            self._gone(stream, ConnectionResetError("stream reset by the client"))
            if stream.task is None:
                self._forget(event.stream_id)
        if event.remote_reset and self._resets.over("reset", RESETS_MAX, RESETS_PERIOD):
            self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, "rapid_reset")

    # --- frames out ---------------------------------------------------------------------

    def send_interim(self, stream_id: int, head: list) -> None:
        try:
            self.h2.send_headers(stream_id, head)
        except h2.exceptions.ProtocolError:
            return
        self.dirty()

    def frame(self, reply: StreamReply) -> bool:
        """Frame `reply`'s head and as many queued bytes as the windows allow."""
        if self.transport is None:
            reply.reset = True
            return False
        h2c, sid = self.h2, reply.stream_id
        pending = reply._pending
        moved = False
        try:
            if reply._head is not None:
                head, reply._head = reply._head, None
                if reply._no_body:
                    pending.clear()
                end = reply._ended and not pending
                h2c.send_headers(sid, head, end_stream=end)
                reply.out_done = end
                moved = True
            while pending:
                window = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if window <= 0:
                    break
                view = pending[0]
                if len(view) <= window:
                    pending.popleft()
                else:
                    view, pending[0] = view[:window], view[window:]
                end = reply._ended and not pending
                h2c.send_data(sid, view, end_stream=end)
                reply.out_done = end
                moved = True
            if reply._ended and not pending and not reply.out_done and reply.started:
                h2c.end_stream(sid)
                reply.out_done = moved = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            reply.reset = True
            pending.clear()
        return self._framed(reply, moved)

    def reset(self, reply: StreamReply, code: int) -> None:
        """Reset a stream from our side (an aborted response, a stalled client)."""
        reply.reset = True
        reply._pending.clear()
        self._blocked.pop(reply.stream_id, None)
        reply.wake()
        if self.transport is None:
            return
        try:
            self.h2.reset_stream(reply.stream_id, code)
        except h2.exceptions.ProtocolError:
            pass
        stream = self._streams.get(reply.stream_id)
        if stream is not None and stream.task is None:
            self._forget(reply.stream_id)
        self.dirty()

    # --- answering ----------------------------------------------------------------------

    async def _run(self, stream: Stream) -> None:
        request, reply = stream.request, stream.reply
        try:
            await call_handler(self.handler, request, reply, log)
        finally:
            self._handlers -= 1
            stream.task = None
            self._finished(stream)

    def _finished(self, stream: Stream) -> None:
        reply = stream.reply
        if not reply.finished:
            reply.abort()                    # a handler that left its response unfinished
        body = stream.request.body if stream.request is not None else None
        if body is not None and self.transport is not None:
            left = body.unread()
            if left:
                body.take_all()
                self.consumed(reply.stream_id, left)
            if not body.done and not reply.reset:
                # The response is whole, the client still uploads: stop it (8.1).
                self.reset(reply, ErrorCodes.NO_ERROR)
        if reply.reset or reply.out_done:
            self._forget(reply.stream_id)

    def _all_forgotten(self) -> None:
        self._active = time.monotonic()
        if self.closing and self.transport is not None:
            self._flush()
            self.transport.close()
