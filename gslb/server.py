"""The DNS server's sockets around one `Responder` (responder.py).

`DnsServer` serves the sockets the supervisor bound (`bind_sockets`, one
SO_REUSEPORT socket per worker: cdnkit.ports keeps any other process off the
port). When the optional C helper `gslb._udpbatch` is built, each UDP socket
has a thread of its own that waits in recvmmsg without the GIL and answers up
to 64 datagrams with one sendmmsg: two system calls per batch, as gdnsd's
threads make; after a loaded batch the thread gives the CPU away once before it
sleeps, so the next batch is bigger (GSLB_UDP_YIELD=0: never). GSLB_UDP_THREAD=0 reads the same batches from the event loop
(`loop.add_reader`, then recvmmsg until the socket is empty); GSLB_UDP_BATCH=0
uses recvfrom and sendto per datagram, as a server without the helper does
(asyncio's datagram transport allocates 256 KiB per packet; see
anchors/performance.md). TCP goes through asyncio streams (RFC 7766).
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import struct
import threading
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
WAKE_EVERY = 0.25         # seconds: how soon a UDP thread sees that the server stops


def batching() -> bool:
    """Whether UDP goes through the recvmmsg/sendmmsg helper."""
    return _udpbatch is not None and os.environ.get("GSLB_UDP_BATCH", "1") != "0"


def threaded() -> bool:
    """Whether each UDP socket is read by a thread waiting in recvmmsg."""
    return batching() and os.environ.get("GSLB_UDP_THREAD", "1") != "0"


def yielding() -> bool:
    """Whether a UDP thread gives the CPU away once before sleeping after a loaded
    batch (gslb/_udpbatch.c, yield_first)."""
    return os.environ.get("GSLB_UDP_YIELD", "1") != "0"


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
        self._threads: list[threading.Thread] = []
        self._readers: list[int] = []
        self._stopping = False
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
            tcp.setblocking(False)
            self._udp.append(udp)
            if threaded():
                self._start_thread(udp)
            else:
                udp.setblocking(False)
                drain = self._drain_batched if batching() else self._drain_udp
                loop.add_reader(udp.fileno(), drain, udp)
                self._readers.append(udp.fileno())
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

    def _batch_args(self) -> tuple:
        """What the helper answers a batch with: (answer, on_error, cache, counters,
        by_client). Read per batch: a change replaces the caches."""
        responder = self.responder
        rrl = responder.rrl
        if rrl is not None:
            # Rate limiting must see every response: no hits answered in the helper.
            rrl.now = time.monotonic()
            return responder.answer, self._answer_failed, None, responder.counters, None
        # Response-cache hits are answered inside the helper (ID + cached bytes, the
        # counter bumped); so are hits of the per-client cache (answers that depend on
        # the client address).
        return (responder.answer, self._answer_failed, responder._wire, responder.counters,
                responder._wire_by_client)

    def _drain_batched(self, sock: socket.socket) -> None:
        # recvmmsg, answer each, sendmmsg: two system calls per 64 datagrams.
        fd = sock.fileno()
        try:
            # Under load more queries arrive while a batch is answered: read again
            # before going back to epoll, until the socket is empty (bounded).
            for _ in range(DRAIN_ROUNDS):
                if not _udpbatch.serve(fd, *self._batch_args()):
                    break
        except OSError:
            pass

    def _start_thread(self, sock: socket.socket) -> None:
        # Blocking, but never for longer than WAKE_EVERY (socket.settimeout would make
        # the socket non-blocking and poll, which is the system call this saves).
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", 0, int(WAKE_EVERY * 1e6)))
        thread = threading.Thread(target=self._serve_udp, args=(sock,), daemon=True,
                                  name=f"dns-udp-{sock.fileno()}")
        self._threads.append(thread)
        thread.start()

    def _serve_udp(self, sock: socket.socket) -> None:
        """A UDP socket's thread: wait for a batch without the GIL, answer it under the
        responder's lock (a health or config change is never half seen), send it."""
        batch = _udpbatch.Batch(yield_cpu=yielding())
        fd, lock = sock.fileno(), self.responder.lock
        while not self._stopping:
            try:
                if not batch.recv(fd):
                    continue                    # SO_RCVTIMEO: look at _stopping again
            except OSError:
                if self._stopping:
                    break
                time.sleep(0.01)                # not seen here; never spin on it
                continue
            with lock:
                try:
                    batch.reply(fd, *self._batch_args())
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
                    with self.responder.lock:
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
        self._stopping = True
        for thread in self._threads:
            await asyncio.to_thread(thread.join, WAKE_EVERY * 4)
        self._threads.clear()
        for fd in self._readers:
            loop.remove_reader(fd)
        self._readers.clear()
        for sock in self._udp:
            sock.close()
        for server in self._tcp:
            server.close()
        for task in list(self._conns):
            task.cancel()
        for server in self._tcp:
            await server.wait_closed()
        self._udp.clear()
        self._tcp.clear()
