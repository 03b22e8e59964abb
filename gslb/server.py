"""Where a DNS query becomes an answer: `Responder.answer(bytes) -> bytes`.

The common query (one question, class IN, optionally one OPT with optional
ECS) is parsed inline and answered from precomputed bytes: the ID, flags and
the question (exactly as received, so 0x20 case survives) are patched around
a body built when config or health last changed. Everything else goes
through the strict parser in query.py.

`DnsServer` owns the sockets: UDP through `loop.add_reader` with a drain loop
(asyncio's datagram transport allocates 256 KiB per packet; see
anchors/performance.md), TCP through asyncio streams (RFC 7766).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import resource
import socket
import struct
import time
from dataclasses import dataclass

from cdnkit.listen import Listener

from . import cookies
from .answers import AnswerTable, Dynamic, Reply
from .config import Config
from .gate import OPEN, Gate
from .geo import Decision, Locator, open_database
from .health import HealthView
from .query import Opt, Query, parse_query, salvage, validate_ecs
from .rrl import DROP, RateLimiter
from .wire import (
    CLASS_IN,
    QTYPE_AXFR,
    QTYPE_IXFR,
    RCODE_BADVERS,
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_REFUSED,
    FormError,
    counts,
)
from .zone import ZoneIndex

log = logging.getLogger("gslb.server")

UDP_PLAIN_LIMIT = 512
TCP_LIMIT = 65535
QD1_AN0_NS0 = b"\x00\x01\x00\x00\x00\x00"
AR0, AR1 = b"\x00\x00", b"\x00\x01"
OPT_HEAD = b"\x00\x00\x29"
CLASS_IN_BYTES = b"\x00\x01"
DECISION_CACHE_LIMIT = 200_000
WIRE_CACHE_LIMIT = 50_000
CACHE_NONE, CACHE_SHARED, CACHE_PER_CLIENT = 0, 1, 2
RECV_SIZE = 4096
DRAIN_BATCH = 64
EMPTY_COUNTS = counts(0, 0, 0, 0)
SLIP_COUNTS = counts(1, 0, 0, 0)

# A computed response: (bytes after the ID, counter slot, RRL identity or None
# for exempt, length of the question) -- what the UDP cache stores.
Entry = tuple[bytes, int, object, int]


def decode_qkey(qkey: bytes) -> tuple[str, int]:
    """Lower-cased wire question -> (text name, qtype). Dots inside labels are escaped."""
    labels, i = [], 0
    while qkey[i]:
        n = qkey[i]
        labels.append(qkey[i + 1:i + 1 + n].decode("latin-1").replace(".", "\\."))
        i += n + 1
    name = ".".join(labels) + "." if labels else "."
    return name, int.from_bytes(qkey[i + 1:i + 3], "big")


@dataclass(frozen=True)
class Engine:
    """Everything the query path reads for one config; replaced whole on reload."""

    config: Config
    zones: ZoneIndex
    locator: Locator


def build_engine(config: Config) -> Engine:
    reader = open_database(config.geoip_database) if config.geoip_database else None
    return Engine(config, ZoneIndex(config), Locator(reader, config.nets))


class Responder:
    """Bytes in, bytes out. Holds the current engine, answer table and caches."""

    def __init__(self, config: Config, health: HealthView | None = None):
        self.engine = build_engine(config)
        self.health = health or HealthView()
        self.gate = OPEN
        self.table = AnswerTable(config, self.engine.zones, self.health)
        self.decisions: dict[object, Decision] = {}
        self._new_wire_caches()
        self._own_secret = os.urandom(16)
        self.rrl: RateLimiter | None = None
        self._server_settings(config)
        self._rotor = 0
        # Queries by (rcode, service): a list slot per pair, so counting a cached
        # answer is one index increment.
        self._stat_slots: dict[tuple[int, str], int] = {}
        self.counters: list[int] = []
        self.errors = 0

    def _slot(self, rcode: int, service: str | None) -> int:
        key = (rcode, service or "")
        slot = self._stat_slots.get(key)
        if slot is None:
            slot = self._stat_slots[key] = len(self.counters)
            self.counters.append(0)
        return slot

    def query_counts(self) -> dict[tuple[int, str], int]:
        """Queries answered so far by (rcode, service name or "" for zone data)."""
        return {key: self.counters[slot] for key, slot in self._stat_slots.items()}

    # --- changes (off the query path) ------------------------------------------------

    def _new_wire_caches(self) -> None:
        # Whole responses (minus the ID) keyed by the query bytes after the ID:
        # flags, counts, the question with its case, and the OPT with any ECS.
        # Everything a response depends on is in that key, except the client
        # address for client-dependent answers without usable ECS, which use
        # the second map. Both are dropped whenever the answer table changes.
        self._wire: dict[bytes, tuple[bytes, int]] = {}
        self._wire_by_client: dict[tuple[bytes, str], tuple[bytes, int]] = {}

    def set_health(self, view: HealthView) -> None:
        """A new health snapshot: rebuild the answers now, off the query path."""
        self.health = view
        self.table = AnswerTable(self.engine.config, self.engine.zones, view, self.table,
                                 self.gate)
        self._new_wire_caches()

    def set_gate(self, gate: Gate) -> None:
        """Which edges may answer each customer name (gate.py): a fresh table, now."""
        self.gate = gate
        self.table = AnswerTable(self.engine.config, self.engine.zones, self.health,
                                 gate=gate)
        self._new_wire_caches()

    def swap_config(self, config: Config) -> None:
        """Install a validated config atomically: queries see old or new, never a mix."""
        engine = build_engine(config)
        old = self.engine
        table = AnswerTable(config, engine.zones, self.health, gate=self.gate)
        self.engine, self.table, self.decisions = engine, table, {}
        self._new_wire_caches()
        self._server_settings(config)
        old.locator.close()

    def _server_settings(self, config: Config) -> None:
        server = config.server
        self.payload = server.edns_payload
        self._payload_bytes = struct.pack("!H", self.payload)
        # The supervisor hands every worker the same secret; alone, we make our own.
        self.cookie_secret = (server.cookie_secret or self._own_secret) if server.cookies else b""
        self.nsid = server.nsid
        self._nsid_option = struct.pack("!HH", 3, len(self.nsid)) + self.nsid
        limits = server.rate_limit
        if not limits.enabled:
            self.rrl = None
        elif self.rrl is None or self.rrl.settings != limits:
            self.rrl = RateLimiter(limits)     # a reload keeps the buckets when unchanged

    # --- the query path ----------------------------------------------------------------

    def locate(self, ecs: bytes | None, client: str) -> tuple[Decision, bool]:
        """Decision for the ECS option (if usable) or the client address; (decision, used_ecs)."""
        key: object = ecs if ecs is not None and ecs[2] else client
        decision = self.decisions.get(key)
        if decision is None:
            if key is client:
                addr = ipaddress.ip_address(client.split("%", 1)[0])
            else:
                family, source, raw = validate_ecs(ecs)       # FormError -> FORMERR
                width = 4 if family == 1 else 16
                addr = ipaddress.ip_address(raw.ljust(width, b"\x00"))
            decision = self.engine.locator.locate(addr)
            if len(self.decisions) >= DECISION_CACHE_LIMIT:
                self.decisions.clear()
            self.decisions[key] = decision
        return decision, key is not client

    def answer(self, data: bytes, client: str, limit: int) -> bytes | None:
        """The response to one query, or None to drop it. Never raises for any input.

        ``limit`` is the transport's size cap: 512 for UDP (raised by EDNS), 65535 for TCP.
        Only UDP responses are cached and rate limited.
        """
        if limit != UDP_PLAIN_LIMIT:
            entry = self._compute(data, client, limit)
            return None if entry is None else data[:2] + entry[0]
        tail = data[2:]
        entry = self._wire.get(tail)
        if entry is None:
            entry = self._wire_by_client.get((tail, client))
        if entry is not None:
            self.counters[entry[1]] += 1
        else:
            entry = self._compute(data, client, limit)
            if entry is None:
                return None
        rrl = self.rrl
        if rrl is not None and entry[2] is not None:
            verdict = rrl.check(client, entry[2])
            if verdict:
                if verdict == DROP:
                    return None
                # Slip: a truncated answer, so a real resolver retries over TCP.
                payload, qlen = entry[0], entry[3]
                return (data[:2] + bytes((payload[0] | 0x02, payload[1]))
                        + (SLIP_COUNTS if qlen else EMPTY_COUNTS) + data[12:12 + qlen])
        return data[:2] + entry[0]

    def _compute(self, data: bytes, client: str, limit: int) -> Entry | None:
        """Parse the common query shape inline; anything unusual goes to the slow path."""
        n = len(data)
        if n < 17 or data[2] & 0xF8 or data[4:10] != QD1_AN0_NS0:
            return self._slow(data, client, limit)
        i = 12
        length = data[12]
        while length:
            if length > 63:
                return self._slow(data, client, limit)
            i += length + 1
            if i >= n:
                return self._slow(data, client, limit)
            length = data[i]
        qend = i + 5
        if qend > n or i > 266 or data[qend - 2:qend] != CLASS_IN_BYTES:   # name > 255 octets
            return self._slow(data, client, limit)
        arcount = data[10:12]
        ecs = cookie = None
        nsid = False
        if arcount == AR0:
            if qend != n:
                return self._slow(data, client, limit)
            opt = None
        elif arcount == AR1 and data[qend:qend + 3] == OPT_HEAD:
            rdlen = int.from_bytes(data[qend + 9:qend + 11], "big")
            if qend + 11 + rdlen != n or data[qend + 6] != 0:   # length, EDNS version
                return self._slow(data, client, limit)
            j = qend + 11
            while j < n:
                if j + 4 > n:
                    return self._slow(data, client, limit)
                olen = int.from_bytes(data[j + 2:j + 4], "big")
                if j + 4 + olen > n:
                    return self._slow(data, client, limit)
                code = data[j:j + 2]
                if code == b"\x00\x08":
                    if ecs is not None:
                        return self._slow(data, client, limit)
                    ecs = data[j + 4:j + 4 + olen]
                elif code == b"\x00\x0a":
                    if cookie is not None:
                        return self._slow(data, client, limit)
                    cookie = data[j + 4:j + 4 + olen]
                elif code == b"\x00\x03":
                    nsid = True
                j += 4 + olen
            opt = Opt(max(512, int.from_bytes(data[qend + 3:qend + 5], "big")),
                      bool(data[qend + 7] & 0x80), ecs, 0, cookie, nsid)
        else:
            return self._slow(data, client, limit)
        qtype = (data[qend - 4] << 8) | data[qend - 3]
        if qtype == 0 or qtype == 41 or 128 <= qtype <= 254:   # meta types, OPT, AXFR/IXFR
            return self._slow(data, client, limit)
        try:
            if ecs is not None and ecs not in self.decisions:
                validate_ecs(ecs)          # malformed ECS -> FORMERR (RFC 7871 7.1.1)
            out, kind, slot, identity = self._respond(data[:2], data[2], data[3], data[12:qend],
                                                      opt, client, limit)
        except FormError:
            return self._error(data[:2], data[2], RCODE_FORMERR, data[12:qend], opt)
        entry = (out[2:], slot, identity, qend - 12)
        if kind and limit == UDP_PLAIN_LIMIT:
            if len(self._wire) + len(self._wire_by_client) >= WIRE_CACHE_LIMIT:
                self._new_wire_caches()
            if kind == CACHE_SHARED:
                self._wire[data[2:]] = entry
            else:
                self._wire_by_client[(data[2:], client)] = entry
        return entry

    def _respond(self, qid: bytes, f1: int, f2: int, question: bytes, opt: Opt | None,
                 client: str, limit: int) -> tuple[bytes, int, int, object]:
        """The response, how it may be cached (CACHE_*), its counter slot and RRL identity."""
        qkey = question.lower()
        table = self.table
        entry = table.entries.get(qkey)
        if entry is None:
            entry = table.entry(qkey, decode_qkey)
        scope = 0
        kind = CACHE_SHARED
        ecs = opt.ecs if opt is not None else None
        if type(entry) is Dynamic:
            decision, used_ecs = self.locate(ecs, client)
            reply: Reply = table.service(entry, decision)
            if reply.client_dependent:
                if used_ecs:
                    scope = decision.network.prefixlen
                else:
                    kind = CACHE_PER_CLIENT
        else:
            reply = entry  # type: ignore[assignment]
        variants = reply.variants
        if len(variants) == 1:
            variant = variants[0]
        else:
            self._rotor += 1
            variant = variants[self._rotor % len(variants)]
            kind = CACHE_NONE        # rotation: every query must pick again
        # Identical responses share a rate-limit bucket: the body is the answer
        # RRset, or the zone's SOA for every negative answer of that zone.
        identity: object = (reply.rcode, variant.body)
        flags = bytes(((0x84 if reply.aa else 0x80) | (f1 & 0x01), (f2 & 0x10) | reply.rcode))
        slot = self._slot(reply.rcode, reply.service)
        self.counters[slot] += 1
        if opt is None:
            out = qid + flags + variant.counts + question + variant.body
            if len(out) > limit:
                out = qid + bytes((flags[0] | 0x02, flags[1])) + counts(1, 0, 0, 0) + question
            return out, kind, slot, identity
        extra = b""
        if opt.cookie is not None and self.cookie_secret:
            client_cookie, server = cookies.split(opt.cookie)      # FormError if malformed
            now = int(time.time())
            if server and cookies.valid(self.cookie_secret, client_cookie, server, client, now):
                identity = None      # a returning client: its address is not spoofed
            extra = cookies.option(client_cookie,
                                   cookies.server_cookie(self.cookie_secret, client_cookie,
                                                         client, now))
            kind = CACHE_NONE
        if opt.nsid and self.nsid:
            extra += self._nsid_option
        opt_rr = self._opt_rr(opt.do, ecs, scope, 0, extra)
        out = qid + flags + variant.counts_opt + question + variant.body + opt_rr
        if limit == UDP_PLAIN_LIMIT:
            limit = min(max(opt.payload, UDP_PLAIN_LIMIT), self.payload)
        if len(out) > limit:
            out = qid + bytes((flags[0] | 0x02, flags[1])) + counts(1, 0, 0, 1) + question + opt_rr
        return out, kind, slot, identity

    def _opt_rr(self, do: bool, ecs: bytes | None, scope: int, ext_rcode: int = 0,
                extra: bytes = b"") -> bytes:
        flags = b"\x80\x00" if do else b"\x00\x00"
        options = extra
        if ecs is not None:
            # RFC 7871 7.2.1: echo family, source prefix and address; set the scope.
            options = (b"\x00\x08" + struct.pack("!H", len(ecs)) + ecs[:3] + bytes((scope,))
                       + ecs[4:] + extra)
        return (OPT_HEAD + self._payload_bytes + bytes((ext_rcode, 0)) + flags
                + struct.pack("!H", len(options)) + options)

    def _error(self, qid: bytes, f1: int, rcode: int, question: bytes, opt: Opt | None) -> Entry:
        """An error response: opcode and RD copied, question echoed when we have one."""
        slot = self._slot(rcode, None)
        self.counters[slot] += 1
        flags = bytes((0x80 | (f1 & 0x79), rcode & 0x0F))
        extra = b""
        if opt is not None:
            extra = self._opt_rr(opt.do, None, 0, rcode >> 4)
        out = flags + counts(1 if question else 0, 0, 0, 1 if extra else 0) + question + extra
        return out, slot, (rcode, b""), len(question)

    def _slow(self, data: bytes, client: str, limit: int) -> Entry | None:
        if len(data) < 12 or data[2] & 0x80:
            return None   # no header, or a response: never answer (no reflection loops)
        qid, f1 = data[:2], data[2]
        try:
            q: Query = parse_query(data)
        except (FormError, IndexError, ValueError):
            question, opt = salvage(data)
            # RFC 8906 3.1.4: an opcode we do not implement is NOTIMP, whatever follows.
            rcode = RCODE_NOTIMP if (f1 >> 3) & 0x0F else RCODE_FORMERR
            return self._error(qid, f1, rcode, question, opt)
        if q.opcode != 0:
            return self._error(qid, f1, RCODE_NOTIMP, q.question, q.opt)
        if q.opt is not None and q.opt.version != 0:
            return self._error(qid, f1, RCODE_BADVERS, q.question, q.opt)
        if not q.question:
            return self._no_question(qid, f1, q.opt, client)
        if q.qclass != CLASS_IN or q.qtype in (QTYPE_AXFR, QTYPE_IXFR):
            return self._error(qid, f1, RCODE_REFUSED, q.question, q.opt)
        if 128 <= q.qtype <= 254 or q.qtype == 0:
            return self._error(qid, f1, RCODE_NOTIMP, q.question, q.opt)
        try:
            out, _, slot, identity = self._respond(qid, f1, data[3], q.question, q.opt, client,
                                                   limit)
        except FormError:
            return self._error(qid, f1, RCODE_FORMERR, q.question, q.opt)
        return out[2:], slot, identity, len(q.question)

    def _no_question(self, qid: bytes, f1: int, opt: Opt | None, client: str) -> Entry:
        """QDCOUNT 0: only a request for a server cookie is answered (RFC 7873 5.4)."""
        if opt is None or opt.cookie is None or not self.cookie_secret:
            return self._error(qid, f1, RCODE_FORMERR, b"", opt)
        client_cookie, _ = cookies.split(opt.cookie)        # validated by the parser
        option = cookies.option(client_cookie, cookies.server_cookie(
            self.cookie_secret, client_cookie, client, int(time.time())))
        slot = self._slot(0, None)
        self.counters[slot] += 1
        out = (bytes((0x80 | (f1 & 0x01), 0)) + counts(0, 0, 0, 1)
               + self._opt_rr(opt.do, None, 0, 0, option))
        return out, slot, (0, b"cookie"), 0


# --- sockets -----------------------------------------------------------------------------


def _bind_udp(listener: Listener, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((listener.host, listener.port))
    sock.setblocking(False)
    return sock


def _bind_tcp(listener: Listener, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((listener.host, listener.port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _raise_fd_limit() -> None:
    """Thousands of TCP clients need thousands of descriptors: use the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class DnsServer:
    """UDP and TCP listeners around one Responder."""

    def __init__(self, config: Config, listeners: tuple[Listener, ...], reuse_port: bool = False,
                 health: HealthView | None = None):
        self.responder = Responder(config, health)
        self.listeners = listeners
        self.reuse_port = reuse_port
        self._udp: list[socket.socket] = []
        self._tcp: list[asyncio.base_events.Server] = []
        self._conns: dict[asyncio.Task, list] = {}       # task -> [client, last activity]
        self._per_client: dict[str, int] = {}
        self.tcp_refused = self.tcp_evicted = 0

    async def start(self) -> None:
        _raise_fd_limit()
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            sock = _bind_udp(listener, self.reuse_port)
            self._udp.append(sock)
            loop.add_reader(sock.fileno(), self._drain_udp, sock)
            tcp = _bind_tcp(listener, self.reuse_port)
            self._tcp.append(await asyncio.start_server(self._tcp_client, sock=tcp))

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

    def apply_config(self, config: Config) -> None:
        """Serve a new, already validated config (listeners stay as they are)."""
        self.responder.swap_config(config)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
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
