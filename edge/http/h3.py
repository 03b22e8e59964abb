"""The edge's HTTP/3 server (RFC 9114): QUIC on the UDP side of every TLS listener.

aioquic does QUIC (RFC 9000-9002: packets, TLS 1.3, loss recovery, congestion
control, the 3x anti-amplification limit) and HTTP/3 framing with QPACK, sans-IO.
This module owns the datagram loop, and so admission: `H3Server` is one
asyncio DatagramProtocol per worker socket (each worker has its own SO_REUSEPORT
socket, and the kernel's 4-tuple hash keeps a client's datagrams on one worker).
Each request stream becomes an h2stream `StreamRequest` / `StreamReply` pair for
the same handler, cache, coalescing, ranges, purge and metrics as HTTP/1.1 and
HTTP/2; fresh memory-tier hits are answered at once (`Hits.answer_h2`).

Defences (docs/edge.md "HTTP/3"):
- malformed or unknown datagrams are dropped: only an Initial of at least 1200
  bytes (RFC 9000 14.1) with a known version creates state, and only if aioquic
  can decrypt it (else it is forgotten at once); any exception while
  handling a datagram closes that one connection, never the worker.
- anti-amplification: aioquic sends at most 3x the bytes received to an address
  it has not validated (RFC 9000 8.1), tested in tests/edge/test_h3_attacks.py.
- Retry: with more than `RETRY_ABOVE` handshakes in progress in this worker (or
  always, `--h3-retry`), a new Initial gets a stateless Retry whose token
  (quictoken.py: HMAC, address-bound, `quictoken.LIFETIME` s) the client must echo
  before any state is kept for it.
- at most `MAX_CONNECTIONS` connections per worker (Initials past it are dropped),
  a handshake must finish in `HANDSHAKE_TIMEOUT` s, idle connections close after
  `IDLE_TIMEOUT` s, at most `MAX_STREAMS` concurrent request streams each.
- 0-RTT is off: no session tickets are issued, so nothing can be replayed.
- migration: a connection ID seen from a new address is answered only after
  aioquic's path validation, under the same 3x limit; a path whose datagrams hash
  to another worker is not followed there (the connection times out: docs).
- request bodies: aioquic gives the client flow-control credit as bytes arrive, not
  as the handler reads them, so a stream buffering more than `BODY_BUFFER` is reset.
- responses: bytes go to aioquic only while a stream has under `SEND_HIGH` unacked
  bytes; a stream that cannot move for h2stream.STALL_TIMEOUT s is reset.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

from aioquic.buffer import Buffer
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnectionState
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)

from edge.http import h2stream
from edge.http.h2stream import (
    CANCEL,
    INTERNAL_ERROR,
    Malformed,
    Multiplexed,
    Stream,
    StreamReply,
    parse_head,
)
from edge.http.quiccert import CertTable, SniQuic
from edge.http.quictoken import RetryTokens, TokenError
from edge.http.wire import call_handler

log = logging.getLogger("edge.http.h3")
# aioquic logs every connection's version and close at INFO: not on the edge's hot path.
logging.getLogger("quic").setLevel(logging.WARNING)

MAX_CONNECTIONS = 4096        # per worker; Initials past it are dropped
RETRY_ABOVE = 64              # handshakes in progress past which new clients get a Retry
HANDSHAKE_TIMEOUT = 10.0      # seconds from the first Initial to a finished handshake
IDLE_TIMEOUT = 75.0           # as HTTP/1.1 keep-alive and HTTP/2
MAX_STREAMS = 100             # concurrent request streams per connection (as h2)
SEND_HIGH = 256 * 1024        # unacked response bytes per stream before write() waits
BODY_BUFFER = 8 * 1024 * 1024   # request body bytes buffered per stream at most
MIN_INITIAL = 1200            # RFC 9000 14.1: smaller client Initials are dropped
CID_LENGTH = 8

# HTTP/2 reset codes (h2stream) as their HTTP/3 counterparts (RFC 9114 8.1).
_CODES = {CANCEL: ErrorCode.H3_REQUEST_CANCELLED, INTERNAL_ERROR: ErrorCode.H3_INTERNAL_ERROR,
          0: ErrorCode.H3_NO_ERROR, 0x7: ErrorCode.H3_REQUEST_REJECTED}


class H3Conn(Multiplexed):
    """One QUIC connection carrying HTTP/3; the `conn` of its StreamRequests/Replies."""

    version = "3"
    scheme = "https"
    alt_svc = b""                    # HTTP/3 answers advertise nothing more
    paused = False                   # UDP never pushes back: SEND_HIGH bounds instead

    def __init__(self, server: "H3Server", quic: SniQuic, addr: tuple):
        self.server, self.quic, self.addr = server, quic, addr
        self.peer = addr[0]
        self.h3: H3Connection | None = None
        self.cids: set[bytes] = set()
        self.established = False
        self.closing = False
        self.gone = False
        self.started = time.monotonic()
        self.busy_since = 0.0
        self._streams: dict[int, Stream] = {}
        self._blocked: dict[int, StreamReply] = {}
        self._later: list[StreamReply] = []
        self._flush_soon = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._moved = time.monotonic()

    # --- datagrams ----------------------------------------------------------------------

    def received(self, data: bytes, addr: tuple, now: float) -> None:
        self.quic.receive_datagram(data, addr, now)
        self._events()
        if self._blocked:
            self._unblock()              # ACKs may have freed send buffer space
        # Once per loop turn, not per datagram: a turn that reads several datagrams of
        # this connection (and frames the answers) packs them into as few as fit.
        self.dirty()

    def transmit(self) -> None:
        """Send what aioquic has packed; re-arm its timer."""
        self._flush_soon = False
        if self._later:
            later, self._later = self._later, []
            for reply in later:
                reply.pump()
        loop = asyncio.get_running_loop()
        sendto = self.server.transport.sendto if self.server.transport is not None else None
        if sendto is not None:
            for data, addr in self.quic.datagrams_to_send(now=loop.time()):
                sendto(data, addr)
        at = self.quic.get_timer()
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(at, self._on_timer) if at is not None else None
            self._timer_at = at
        if self.quic._state in (QuicConnectionState.TERMINATED,) and not self.gone:
            self._lost()

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        try:
            self.quic.handle_timer(now=asyncio.get_running_loop().time())
            self._events()
            self.transmit()
        except Exception:
            log.exception("h3 timer of %s failed", self.peer)
            self._lost()

    def dirty(self) -> None:
        if not self._flush_soon and not self.gone:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self.transmit)

    # --- QUIC and HTTP/3 events ---------------------------------------------------------

    def _events(self) -> None:
        quic = self.quic
        while (event := quic.next_event()) is not None:
            kind = type(event)
            if kind is qe.ProtocolNegotiated:
                if event.alpn_protocol in H3_ALPN and self.h3 is None:
                    self.h3 = H3Connection(quic)
                continue
            if kind is qe.HandshakeCompleted:
                self.established = True
                self.server.handshaking.discard(self)
            elif kind is qe.ConnectionIdIssued:
                self.server.add_cid(self, event.connection_id)
            elif kind is qe.ConnectionIdRetired:
                self.server.drop_cid(event.connection_id)
            elif kind is qe.ConnectionTerminated:
                self._lost()
                return
            elif kind is qe.StreamReset:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    self._gone(stream, ConnectionResetError("stream reset by the client"))
                    if stream.task is None:
                        self._forget(event.stream_id)
            if self.h3 is None:
                continue
            for h3event in self.h3.handle_event(event):
                if type(h3event) is HeadersReceived:
                    self._request(h3event)
                elif type(h3event) is DataReceived:
                    self._data(h3event)

    def _request(self, event: HeadersReceived) -> None:
        sid = event.stream_id
        if sid in self._streams:
            return                               # trailers: not passed on
        try:
            pseudo, regular = parse_head(event.headers)
        except Malformed:
            self.server.bad_requests.labels("h3_malformed").inc()
            return self._refuse(sid, ErrorCode.H3_MESSAGE_ERROR)
        if self.closing or len(self._streams) >= MAX_STREAMS:
            return self._refuse(sid, ErrorCode.H3_REQUEST_REJECTED)
        ended = event.stream_ended
        hits = self.server.hits
        if ended and hits is not None:
            answer = hits.answer_h2(pseudo[b":method"], pseudo.get(b":path", b""), regular,
                                    "https", version="3")
            if answer is not None:
                return self._answer_now(sid, answer)
        stream = self._open(sid, pseudo, regular, ended)
        if stream is None:
            return
        stream.task = asyncio.get_running_loop().create_task(self._run(stream))

    def _refuse(self, sid: int, code: int) -> None:
        try:
            self.quic.reset_stream(sid, code)
            self.quic.stop_stream(sid, code)
        except Exception:                        # already closed by the client
            pass

    def _data(self, event: DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        body = stream.request.body if stream is not None and stream.request else None
        if body is None or body.done or body.error is not None:
            return
        if event.data:
            if body.unread() + len(event.data) > BODY_BUFFER:
                self.server.bad_requests.labels("h3_body_buffer").inc()
                self._gone(stream, ConnectionResetError("request body over the buffer"))
                self._refuse(event.stream_id, ErrorCode.H3_REQUEST_CANCELLED)
                return
            body.feed(event.data)
        if event.stream_ended:
            body.end()

    def consumed(self, stream_id: int, size: int) -> None:
        """aioquic extends the client's credit as bytes arrive (BODY_BUFFER bounds it)."""

    # --- frames out ---------------------------------------------------------------------

    def send_interim(self, stream_id: int, head: list) -> None:
        if self.h3 is not None and not self.gone:
            try:
                self.h3.send_headers(stream_id, head)
            except Exception:
                return
            self.dirty()

    def _unacked(self, sid: int) -> int:
        stream = self.quic._streams.get(sid)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start

    def frame(self, reply: StreamReply) -> bool:
        """Give aioquic `reply`'s head and queued bytes while the stream's unacked bytes
        are under SEND_HIGH (aioquic itself obeys the client's flow control)."""
        if self.h3 is None or self.gone:
            reply.reset = True
            return False
        h3, sid, pending = self.h3, reply.stream_id, reply._pending
        moved = False
        try:
            if reply._head is not None:
                head, reply._head = reply._head, None
                if reply._no_body:
                    pending.clear()
                end = reply._ended and not pending
                h3.send_headers(sid, head, end_stream=end)
                reply.out_done = end
                moved = True
            while pending and self._unacked(sid) < SEND_HIGH:
                view = pending.popleft()
                room = SEND_HIGH
                if len(view) > room:
                    view, rest = view[:room], view[room:]
                    pending.appendleft(rest)
                end = reply._ended and not pending
                h3.send_data(sid, bytes(view), end_stream=end)
                reply.out_done = end
                moved = True
            if reply._ended and not pending and not reply.out_done and reply.started:
                h3.send_data(sid, b"", end_stream=True)
                reply.out_done = moved = True
        except Exception:                        # the stream is closed or reset
            reply.reset = True
            pending.clear()
        return self._framed(reply, moved)

    def reset(self, reply: StreamReply, code: int) -> None:
        """Reset a stream from our side (an aborted response, a stalled client)."""
        reply.reset = True
        reply._pending.clear()
        self._blocked.pop(reply.stream_id, None)
        reply.wake()
        if not self.gone:
            self._refuse(reply.stream_id, _CODES.get(code, ErrorCode.H3_INTERNAL_ERROR))
            self.dirty()
        stream = self._streams.get(reply.stream_id)
        if stream is not None and stream.task is None:
            self._forget(reply.stream_id)

    # --- answering ----------------------------------------------------------------------

    async def _run(self, stream: Stream) -> None:
        request, reply = stream.request, stream.reply
        try:
            await call_handler(self.server.handler, request, reply, log)
        finally:
            stream.task = None
            if not reply.finished:
                reply.abort()
            body = request.body
            if body is not None and not body.done and not reply.reset and not self.gone:
                self._refuse(reply.stream_id, ErrorCode.H3_NO_ERROR)   # stop the upload
            if reply.reset or reply.out_done:
                self._forget(reply.stream_id)

    def _all_forgotten(self) -> None:
        if self.closing and not self.gone:
            self.quic.close(error_code=ErrorCode.H3_NO_ERROR)
            self.dirty()

    # --- ending -------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """The periodic check: handshake deadline, stalled streams."""
        if not self.established and now - self.started > HANDSHAKE_TIMEOUT:
            self.server.bad_requests.labels("h3_handshake_timeout").inc()
            self._lost()
            return
        if self._blocked and now - self._moved > h2stream.STALL_TIMEOUT:
            for reply in list(self._blocked.values()):
                self.reset(reply, CANCEL)

    def close(self) -> None:
        """GOAWAY-like: new streams refused; closed when the ones in progress end."""
        self.closing = True
        if not self._streams and not self.gone:
            self.quic.close(error_code=ErrorCode.H3_NO_ERROR)
            self.dirty()

    def abort(self) -> None:
        if not self.gone:
            self.quic.close(error_code=ErrorCode.H3_INTERNAL_ERROR)
            self.transmit()
        self._lost()

    def _lost(self) -> None:
        if self.gone:
            return
        self.gone = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        gone = ConnectionResetError("connection closed")
        for stream in self._streams.values():
            self._gone(stream, gone)
        self.server.forget(self)


class H3Server:
    """The asyncio DatagramProtocol of one worker's UDP socket (module docstring)."""

    def __init__(self, handler, hits, certificates, conns: set, bad_requests,
                 retry_always: bool = False, max_connections: int = MAX_CONNECTIONS):
        """`certificates()` gives the config's CertSpecs (re-read when a reload changes
        them); `retry_always` sends every new client a Retry first."""
        self.max_connections = max_connections
        self.handler, self.hits, self.conns = handler, hits, conns
        self.bad_requests = bad_requests
        self.retry_always = retry_always
        self.transport: asyncio.DatagramTransport | None = None
        self.tokens = RetryTokens()
        self.certs = CertTable()
        self._specs = certificates
        self.certs.update(certificates())
        self.by_cid: dict[bytes, H3Conn] = {}
        self.handshaking: set[H3Conn] = set()
        self.all: set[H3Conn] = set()
        self.dropped = 0                          # datagrams dropped (tests read it via logs)
        self._config = QuicConfiguration(
            is_client=False, alpn_protocols=H3_ALPN, idle_timeout=IDLE_TIMEOUT,
            max_datagram_frame_size=None, connection_id_length=CID_LENGTH)
        self._config.certificate = self.certs.default.certificate
        self._config.certificate_chain = self.certs.default.certificate_chain
        self._config.private_key = self.certs.default.private_key
        self._sweeper: asyncio.TimerHandle | None = None

    # --- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self._sweeper is not None:
            self._sweeper.cancel()

    def error_received(self, exc) -> None:
        pass                                      # ICMP unreachable from a gone client

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except Exception:
            self.dropped += 1                     # not QUIC: dropped
            return
        conn = self.by_cid.get(header.destination_cid)
        new = conn is None
        if new:
            conn = self._admit(data, addr, header)
            if conn is None:
                return
        try:
            conn.received(data, addr, asyncio.get_running_loop().time())
            if new and conn.quic._state is QuicConnectionState.FIRSTFLIGHT:
                # The Initial did not decrypt (aioquic moves to CONNECTED on the first
                # packet it can open): junk with a fresh CID keeps no state.
                self.dropped += 1
                conn._lost()
        except Exception:
            # aioquic drops what it cannot parse itself; anything else ends this
            # connection only.
            log.exception("h3 datagram from %s failed; connection closed", addr[0])
            conn.abort()

    def _admit(self, data: bytes, addr: tuple, header) -> "H3Conn | None":
        """A connection for a new client's Initial, a Retry, or None (dropped)."""
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
            return None
        if header.version is not None and header.version not in self._config.supported_versions:
            if len(data) >= MIN_INITIAL:          # never answer more than we got
                self.transport.sendto(encode_quic_version_negotiation(
                    source_cid=header.destination_cid, destination_cid=header.source_cid,
                    supported_versions=self._config.supported_versions), addr)
            return None
        if header.packet_type != QuicPacketType.INITIAL or len(data) < MIN_INITIAL:
            self.dropped += 1
            return None
        if len(self.all) >= self.max_connections:
            self.bad_requests.labels("h3_connections_full").inc()
            return None
        self.certs.update(self._specs())           # the same tuple unless reloaded
        original, retry_scid = header.destination_cid, None
        if header.token:
            try:
                original = self.tokens.check(header.token, addr, header.destination_cid)
            except TokenError:
                self.bad_requests.labels("h3_bad_token").inc()
                return None                       # RFC 9000 8.1.3: may be dropped
            retry_scid = header.destination_cid
        elif self.retry_always or len(self.handshaking) >= RETRY_ABOVE:
            scid = os.urandom(CID_LENGTH)
            self.transport.sendto(encode_quic_retry(
                version=header.version, source_cid=scid, destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=self.tokens.issue(addr, header.destination_cid, scid)), addr)
            return None
        quic = SniQuic(configuration=self._config, original_destination_connection_id=original,
                     retry_source_connection_id=retry_scid)
        quic.certs = self.certs
        conn = H3Conn(self, quic, addr)
        self.all.add(conn)
        self.conns.add(conn)
        self.handshaking.add(conn)
        self.add_cid(conn, header.destination_cid)
        self.add_cid(conn, quic.host_cid)         # what the client uses after our Initial
        return conn

    # --- bookkeeping --------------------------------------------------------------------

    def add_cid(self, conn: H3Conn, cid: bytes) -> None:
        self.by_cid[cid] = conn
        conn.cids.add(cid)

    def drop_cid(self, cid: bytes) -> None:
        conn = self.by_cid.pop(cid, None)
        if conn is not None:
            conn.cids.discard(cid)

    def forget(self, conn: H3Conn) -> None:
        for cid in conn.cids:
            if self.by_cid.get(cid) is conn:
                del self.by_cid[cid]
        conn.cids.clear()
        self.all.discard(conn)
        self.handshaking.discard(conn)
        self.conns.discard(conn)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.all):
            conn.sweep(now)
        if self.transport is not None:
            self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def close(self) -> None:
        for conn in list(self.all):
            conn.close()
