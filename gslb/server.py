"""The DNS server's sockets around one `Responder` (responder.py).

`DnsServer` serves the sockets the supervisor bound (`bind_sockets`, one
SO_REUSEPORT socket per worker: cdnkit.ports keeps any other process off the
port). UDP is read with `loop.add_reader` and a drain loop (asyncio's datagram
transport allocates 256 KiB per packet; see anchors/performance.md); when the
optional C helper `gslb._udpbatch` is built, each wake-up reads and answers
up to 64 datagrams with one recvmmsg and one sendmmsg, else with recvfrom and
sendto per datagram (set GSLB_UDP_BATCH=0 to force that). TCP goes through
asyncio streams (RFC 7766).
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import time

from cdnkit.listen import Listener
from cdnkit.ports import TCP, UDP, Owned, own_all

from gslb.config import Config
from gslb.dnssec.sign import ZoneSigner
from gslb.health import HealthView
from gslb.responder import TCP_LIMIT, UDP_PLAIN_LIMIT, Responder, Signatures

try:
    from gslb import _udpbatch
except ImportError:                 # not compiled here: recvfrom/sendto per datagram
    _udpbatch = None

__all__ = ["DnsServer", "Responder", "TCP_LIMIT", "UDP_PLAIN_LIMIT"]

log = logging.getLogger("gslb.server")

RECV_SIZE = 4096
DRAIN_BATCH = 64
DRAIN_ROUNDS = 8          # batches per wake-up before epoll is asked again


def batching() -> bool:
    """Whether UDP goes through the recvmmsg/sendmmsg helper."""
    return _udpbatch is not None and os.environ.get("GSLB_UDP_BATCH", "1") != "0"


# --- sockets -----------------------------------------------------------------------------

UDP_RCVBUF = 4 << 20


def bind_sockets(listeners: tuple[Listener, ...], workers: int) -> list[tuple[Owned, Owned]]:
    """Own UDP and TCP on every listener, one socket of each per worker.

    Called by the supervisor before any worker exists, so a second server on
    the same address fails here (`cdnkit.ports.AddressInUse`) instead of
    sharing the port with SO_REUSEPORT.
    """
    owned = own_all(listeners, (UDP, TCP), workers)
    for item in owned:
        if item.kind == UDP:
            for sock in item.sockets:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
    return [(owned[i], owned[i + 1]) for i in range(0, len(owned), 2)]


def _raise_fd_limit() -> None:
    """Thousands of TCP clients need thousands of descriptors: use the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class DnsServer:
    """UDP and TCP listeners around one Responder."""

    def __init__(self, config: Config, sockets: list[tuple[socket.socket, socket.socket]],
                 health: HealthView | None = None, signatures: Signatures | None = None,
                 signers: dict[str, ZoneSigner] | None = None):
        """``sockets``: a bound UDP socket and a listening TCP socket per listener;
        ``signatures``/``signers``: what `Responder` takes."""
        self.responder = Responder(config, health, signatures, signers)
        self.sockets = sockets
        self._udp: list[socket.socket] = []
        self._tcp: list[asyncio.base_events.Server] = []
        self._conns: dict[asyncio.Task, list] = {}       # task -> [client, last activity]
        self._per_client: dict[str, int] = {}
        self.tcp_refused = self.tcp_evicted = 0
        self._resign_timer: asyncio.TimerHandle | None = None

    def _schedule_signing(self) -> None:
        """Re-sign at the next period boundary or key event (none for unsigned zones)."""
        if self._resign_timer is not None:
            self._resign_timer.cancel()
            self._resign_timer = None
        when = self.responder.next_signing_event()
        if when is not None:
            delay = min(max(1.0, when - time.time() + 0.5), 86400.0)
            self._resign_timer = asyncio.get_running_loop().call_later(delay, self._resign)

    def _resign(self) -> None:
        self._resign_timer = None
        try:
            if self.responder.resign():
                log.info("DNSSEC: signing state changed; answers re-signed")
        finally:
            self._schedule_signing()

    async def start(self) -> None:
        _raise_fd_limit()
        loop = asyncio.get_running_loop()
        for udp, tcp in self.sockets:
            udp.setblocking(False)
            tcp.setblocking(False)
            self._udp.append(udp)
            drain = self._drain_batched if batching() else self._drain_udp
            loop.add_reader(udp.fileno(), drain, udp)
            self._tcp.append(await asyncio.start_server(self._tcp_client, sock=tcp,
                                                        backlog=1024))
        self._schedule_signing()

    def _drain_udp(self, sock: socket.socket) -> None:
        # Several datagrams per wake-up: one readiness callback costs more than a recvfrom.
        recv, send, answer = sock.recvfrom, sock.sendto, self.responder.answer
        if self.responder.rrl is not None:
            self.responder.rrl.now = time.monotonic()
        for _ in range(DRAIN_BATCH):
            try:
                data, addr = recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                out = answer(data, addr[0], UDP_PLAIN_LIMIT)
            except Exception:   # last line of defence: one bad packet never stops the server
                self.responder.errors += 1
                log.exception("unexpected error answering a %d-byte query", len(data))
                continue
            if out is not None:
                try:
                    send(out, addr)
                except OSError:
                    pass

    def _drain_batched(self, sock: socket.socket) -> None:
        # recvmmsg, answer each, sendmmsg: two system calls per 64 datagrams.
        responder = self.responder
        if responder.rrl is not None:
            responder.rrl.now = time.monotonic()
        fd, answer, failed = sock.fileno(), responder.answer, self._answer_failed
        # Response-cache hits are answered inside the helper (ID + cached bytes, the
        # counter bumped), unless rate limiting must see every response; so are
        # hits of the per-client cache (answers that depend on the client address).
        limited = responder.rrl is not None
        try:
            # Under load more queries arrive while a batch is answered: read again
            # before going back to epoll, until the socket is empty (bounded).
            for _ in range(DRAIN_ROUNDS):
                # Read each round: an answer table swap replaces the caches.
                if not _udpbatch.serve(fd, answer, failed, None if limited else responder._wire,
                                       responder.counters,
                                       None if limited else responder._wire_by_client):
                    break
        except OSError:
            pass

    def _answer_failed(self, data: bytes, exc: BaseException) -> None:
        """Last line of defence: one bad packet never stops the server."""
        self.responder.errors += 1
        log.error("unexpected error answering a %d-byte query", len(data), exc_info=exc)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else "0.0.0.0"
        settings = self.responder.engine.config.server
        task = asyncio.current_task()
        if self._per_client.get(client, 0) >= settings.tcp_max_per_client or task is None:
            self.tcp_refused += 1
            writer.close()
            return
        if len(self._conns) >= settings.tcp_max_connections:
            # Full: make room by closing the connection that has been idle longest
            # (RFC 7766 6.2.3), so slow or idle clients cannot lock others out.
            oldest = min(self._conns, key=lambda t: self._conns[t][1])
            oldest.cancel()
            self._conns.pop(oldest, None)
            self.tcp_evicted += 1
        self._conns[task] = [client, time.monotonic()]
        self._per_client[client] = self._per_client.get(client, 0) + 1
        # Responses queue in the transport while the client does not read; past
        # this many bytes drain() waits, and we stop reading further queries.
        writer.transport.set_write_buffer_limits(high=settings.tcp_max_queued * 512)
        try:
            while True:
                async with asyncio.timeout(settings.tcp_idle_timeout):
                    head = await reader.readexactly(2)
                async with asyncio.timeout(settings.tcp_read_timeout):
                    data = await reader.readexactly(int.from_bytes(head, "big"))
                self._conns[task][1] = time.monotonic()
                try:
                    out = self.responder.answer(data, client, TCP_LIMIT)
                except Exception:
                    self.responder.errors += 1
                    log.exception("unexpected error answering a TCP query")
                    break
                if out is None:
                    break
                writer.write(len(out).to_bytes(2, "big") + out)
                async with asyncio.timeout(settings.tcp_idle_timeout):
                    await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError,
                asyncio.CancelledError):
            pass
        finally:
            self._conns.pop(task, None)
            left = self._per_client.get(client, 1) - 1
            if left:
                self._per_client[client] = left
            else:
                self._per_client.pop(client, None)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()     # a client that stopped reading: do not wait for it
            else:
                writer.close()

    def apply_config(self, config: Config, signatures: Signatures | None = None) -> None:
        """Serve a new, already validated config (listeners stay as they are)."""
        self.responder.swap_config(config, signatures)
        self._schedule_signing()

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._resign_timer is not None:
            self._resign_timer.cancel()
        for sock in self._udp:
            loop.remove_reader(sock.fileno())
            sock.close()
        for server in self._tcp:
            server.close()
        for task in list(self._conns):
            task.cancel()
        for server in self._tcp:
            await server.wait_closed()
        self._udp.clear()
        self._tcp.clear()
