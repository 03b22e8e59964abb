"""Where a DNS query becomes an answer: `Responder.answer(bytes) -> bytes`.

The common query (one question, class IN, optionally one OPT with optional
ECS) is parsed inline and answered from precomputed bytes: the ID, flags and
the question (exactly as received, so 0x20 case survives) are patched around
a body built when config, health or signing keys last changed. Everything
else goes through the strict parser in query.py. Whole responses are cached
by the query bytes after the ID, so a repeated query costs one dict lookup.
"""
from __future__ import annotations

import ipaddress
import os
import struct
import threading
import time
from dataclasses import dataclass

from cdnkit.gcpause import gc_paused

from gslb import cookies
from gslb.dnssec import sign as dnssec
from gslb.answers import AnswerTable, Dynamic, Reply
from gslb.config import Config
from gslb.fleet.gate import OPEN, Gate
from gslb.geo import Decision, Locator, open_database
from gslb.health import HealthView
from gslb.query import Opt, Query, parse_query, salvage, validate_ecs
from gslb.rrl import DROP, RateLimiter
from gslb.wire import (
    CLASS_IN,
    QTYPE_AXFR,
    QTYPE_IXFR,
    QTYPE_NXNAME,
    RCODE_BADVERS,
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    FormError,
    counts,
    decode_qkey,
)
from gslb.zone import ZoneIndex

UDP_PLAIN_LIMIT = 512
TCP_LIMIT = 65535
QD1_AN0_NS0 = b"\x00\x01\x00\x00\x00\x00"
AR0, AR1 = b"\x00\x00", b"\x00\x01"
OPT_HEAD = b"\x00\x00\x29"
CLASS_IN_BYTES = b"\x00\x01"
DECISION_CACHE_LIMIT = 200_000
WIRE_CACHE_LIMIT = 50_000
CACHE_NONE, CACHE_SHARED, CACHE_PER_CLIENT = 0, 1, 2
EMPTY_COUNTS = counts(0, 0, 0, 0)
SLIP_COUNTS = counts(1, 0, 0, 0)

# A computed response: (bytes after the ID, counter slot, RRL identity or None
# for exempt, length of the question) -- what the UDP cache stores.
Entry = tuple[bytes, int, object, int]


@dataclass(frozen=True)
class Engine:
    """Everything the query path reads for one config; replaced whole on reload."""

    config: Config
    zones: ZoneIndex
    locator: Locator


def build_engine(config: Config) -> Engine:
    reader = open_database(config.geoip_database) if config.geoip_database else None
    return Engine(config, ZoneIndex(config), Locator(reader, config.nets))


Signatures = dict[str, tuple[tuple, bytes]]     # zone -> a ZoneSigner's export()


@gc_paused()     # tables of new objects: see cdnkit.gcpause
def signed_zones(config: Config, processes: int = 1,
                 previous: Signatures | None = None) -> dict[str, dnssec.ZoneSigner]:
    """Signers of every signed zone with all its answers signed ahead (the supervisor).

    `previous` (an earlier export) is reused where keys and period are unchanged.
    """
    signers = dnssec.signers(config.zones, time.time())
    if signers:
        Responder._adopt(signers, previous)
        AnswerTable(config, ZoneIndex(config), HealthView(), signers=signers,
                    processes=processes)
    return signers


def exported(signers: dict[str, dnssec.ZoneSigner]) -> Signatures:
    """The signatures of `signers`, for workers to adopt."""
    return {origin: signer.export() for origin, signer in signers.items()}


def presigned(config: Config, processes: int = 1,
              previous: Signatures | None = None) -> Signatures:
    """Sign every signed zone's answers ahead, once, for workers to adopt (supervisor)."""
    return exported(signed_zones(config, processes, previous))


class Responder:
    """Bytes in, bytes out. Holds the current engine, answer table and caches."""

    @gc_paused()
    def __init__(self, config: Config, health: HealthView | None = None,
                 signatures: Signatures | None = None,
                 signers: dict[str, dnssec.ZoneSigner] | None = None):
        """`signatures`: exported by the supervisor, adopted; `signers`: its signers
        themselves, inherited by a forked worker (kept while their state holds)."""
        self.engine = build_engine(config)
        self.health = health or HealthView()
        self.gate = OPEN
        self.signers = dnssec.signers(config.zones, time.time(), signers)
        inherited = bool(signers) and all(
            signer is signers.get(origin) for origin, signer in self.signers.items())
        self.table = AnswerTable(config, self.engine.zones, self.health, signers=self.signers,
                                 presign=not (inherited or self._adopt(self.signers, signatures)))
        self.decisions: dict[object, Decision] = {}
        self._new_wire_caches()
        self._own_secret = os.urandom(16)
        self.rrl: RateLimiter | None = None
        self._server_settings(config)
        self._rotor = 0
        # Queries by (rcode, service, site answered from): a list slot per triple,
        # so counting a cached answer is one index increment.
        self._stat_slots: dict[tuple[int, str, str], int] = {}
        self.counters: list[int] = []
        self.errors = 0
        # Held while a UDP thread (server.py) answers a batch and while a change is
        # installed, so no answer mixes an old table with a new cache; changes are built
        # outside it, off the query path.
        self.lock = threading.Lock()

    def _slot(self, rcode: int, service: str | None, site: str | None = None) -> int:
        key = (rcode, service or "", site or "")
        slot = self._stat_slots.get(key)
        if slot is None:
            slot = self._stat_slots[key] = len(self.counters)
            self.counters.append(0)
        return slot

    def query_counts(self) -> dict[tuple[int, str, str], int]:
        """Queries answered so far by (rcode, service name or "" for zone data, the site
        the answer came from or "")."""
        with self.lock:              # a UDP thread may add a slot meanwhile
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

    @gc_paused()
    def set_health(self, view: HealthView) -> None:
        """A new health snapshot: rebuild the answers now, off the query path."""
        table = AnswerTable(self.engine.config, self.engine.zones, view, self.table,
                            self.signers, gate=self.gate)
        with self.lock:
            self.health, self.table = view, table
            self._new_wire_caches()

    @gc_paused()
    def set_gate(self, gate: Gate) -> None:
        """Which edges may answer each customer name (gate.py): a fresh table, now."""
        table = AnswerTable(self.engine.config, self.engine.zones, self.health,
                            signers=self.signers, gate=gate)
        with self.lock:
            self.gate, self.table = gate, table
            self._new_wire_caches()

    def next_signing_event(self) -> float | None:
        """When signatures must be re-made (period end, key timing); None if nothing is signed."""
        return min((s.next_event for s in self.signers.values()), default=None)

    @gc_paused()
    def resign(self, now: float | None = None) -> bool:
        """New signers if a signing period ended or a key changed state; rebuild the answers."""
        signers = dnssec.signers(self.engine.config.zones, time.time() if now is None else now,
                                 self.signers)
        if signers == self.signers:
            return False
        table = AnswerTable(self.engine.config, self.engine.zones, self.health, self.table,
                            signers, gate=self.gate)
        with self.lock:
            self.signers, self.table = signers, table
            self._new_wire_caches()
        return True

    @staticmethod
    def _adopt(signers: dict[str, dnssec.ZoneSigner], signatures: Signatures | None) -> bool:
        """Take signatures made ahead elsewhere (the supervisor); True if all zones had them."""
        if not signers or signatures is None:
            return False
        return all(signer.adopt(signatures.get(origin)) for origin, signer in signers.items())

    @gc_paused()
    def swap_config(self, config: Config, signatures: Signatures | None = None) -> None:
        """Install a validated config atomically: queries see old or new, never a mix."""
        engine = build_engine(config)
        old = self.engine
        signers = dnssec.signers(config.zones, time.time(), self.signers)
        table = AnswerTable(config, engine.zones, self.health, signers=signers,
                            presign=not self._adopt(signers, signatures), gate=self.gate)
        with self.lock:
            self.engine, self.table, self.decisions, self.signers = engine, table, {}, signers
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
                      bool(data[qend + 7] & 0x80), ecs, 0, cookie, nsid,
                      bool(data[qend + 7] & 0x40))
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
        dynamic = type(entry) is Dynamic
        if dynamic:
            decision, used_ecs = self.locate(ecs, client)
            reply: Reply = table.service(entry, decision)
            if reply.client_dependent:
                if used_ecs:
                    scope = decision.network.prefixlen
                else:
                    kind = CACHE_PER_CLIENT
        else:
            reply = entry  # type: ignore[assignment]
        rcode = reply.rcode
        signed = opt is not None and opt.do and reply.signed is not None
        variants = reply.signed if signed else reply.variants
        co = False
        if signed:
            if reply.rcode_do is not None:
                rcode = reply.rcode_do
            if opt.co:      # RFC 9824 5.1: the resolver takes NXDOMAIN with a compact denial
                co = True
                if reply.nxname:
                    rcode = RCODE_NXDOMAIN
        if len(variants) == 1:
            variant = variants[0]
        else:
            self._rotor += 1
            variant = variants[self._rotor % len(variants)]
            kind = CACHE_NONE        # rotation: every query must pick again
        body = variant.body
        if dynamic and entry.composed:   # a CNAME chain before, or wildcard proofs after
            body, an, ns, ar = entry.compose(variant, signed)
            head_counts, head_counts_opt = counts(1, an, ns, ar), counts(1, an, ns, ar + 1)
        else:
            head_counts, head_counts_opt = variant.counts, variant.counts_opt
        # Identical responses share a rate-limit bucket: the answer RRset, or the
        # zone's SOA for every negative answer of that zone (not the compressed
        # body, whose pointers differ with the question's length).
        identity: object = (rcode, variant.key or variant.body)
        flags = bytes(((0x84 if reply.aa else 0x80) | (f1 & 0x01), (f2 & 0x10) | rcode))
        slot = self._slot(rcode, reply.service,
                          reply.selection.site if reply.selection is not None else None)
        self.counters[slot] += 1
        if opt is None:
            out = qid + flags + head_counts + question + body
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
        opt_rr = self._opt_rr(opt.do, ecs, scope, 0, extra, co)
        out = qid + flags + head_counts_opt + question + body + opt_rr
        if limit == UDP_PLAIN_LIMIT:
            limit = min(max(opt.payload, UDP_PLAIN_LIMIT), self.payload)
        if len(out) > limit:
            out = qid + bytes((flags[0] | 0x02, flags[1])) + counts(1, 0, 0, 1) + question + opt_rr
        return out, kind, slot, identity

    def _opt_rr(self, do: bool, ecs: bytes | None, scope: int, ext_rcode: int = 0,
                extra: bytes = b"", co: bool = False) -> bytes:
        flags = bytes(((0x80 if do else 0) | (0x40 if co else 0), 0))
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
        if q.qtype == QTYPE_NXNAME:     # RFC 9824 3.5: a meta type nobody may ask for
            return self._error(qid, f1, RCODE_FORMERR, q.question, q.opt)
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
