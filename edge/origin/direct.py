"""Pass-through requests relayed by callbacks: no task, no future, no Response object.

A GET or HEAD for a customer that does not cache, carrying nothing the long way
(proxy.proxy) treats specially, is written to a pooled origin connection from the
client connection's parser callback (server.Connection._start), and the origin's
answer is relayed from the origin connection's parser callbacks
(client.Upstream.send_direct). It is the pass-through twin of the hit shortcut
(front.Hits): the request the origin sees and the response the client sees are
the ones the long way makes, built by the same functions (forward.to_origin's
headers, headers.to_client, Reply), with the same metrics and back-off. Both heads
are read in one call each by edge._heads when it is built and they are plain (a
whole GET/HEAD head; a whole final head framed by Content-Length), else by llhttp's
callbacks; the bytes either way are the same (tests/edge/test_heads.py). A Host
that routes alone (a CNAME) to a customer with one server gets a `Lane` per client
address and HTTP version: its next requests skip the hit shortcut and the routing,
and only their target is looked at.

What it leaves to the long way, which retries, fails over and answers errors:
a request with a body or an upgrade; hop-by-hop, forwarding, override, Via or
CDN-Loop request headers; customers with a cache, shields, a bucket or an origin
name to resolve; no idle pooled connection; the pooled connection found closed
(the keep-alive race); and a server that fails before its response head when the
customer has another to try (that failure is recorded first, as `pull` would).
With one server a failure is answered here as `pull` + `proxy` answer it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from edge.http.client import Disconnected, OriginTimeout, Upstream
from edge.http.headers import SPECIAL_RAW, cache_status, own_lines, to_client_raw, via
from edge.http.reply import Reply
from edge.http.server import Connection, Request, reads_heads
from edge.http.wire import field_lines
from edge.metrics import Count
from edge.model import Customer, Protocol
from edge.origin.forward import FORWARDING, HOP_BY_HOP, OVERRIDES, forwarding
from edge.origin.order import OriginPool
from edge.origin.upstream import (Unreachable, own_error, server_answered_5xx, server_failed,
                                  tls_name)
from edge.route import BadPath, cname_customer, origin_host, route
from edge.state import EdgeState

log = logging.getLogger("edge.origin.direct")

# Request headers the long way reads or rewrites: their requests go that way.
LONG_WAY = frozenset(name.encode() for name in HOP_BY_HOP | FORWARDING | OVERRIDES | {
    "via", "cdn-loop", "content-length", "expect"})
# The same, for edge._heads, which flags them in the heads it reads (server.Connection),
# and the response fields the edge writes itself, which it leaves out of the client's.
FLAGGED = tuple(sorted(LONG_WAY))
SPECIAL = tuple(sorted(SPECIAL_RAW))
OWN_PATHS = ("/healthz", "/metrics")          # EdgeApp.handle's own; "/." paths too
_FIRST_LETTERS = frozenset(path[1] for path in OWN_PATHS)   # the only ones to look at
TAILS_MAX = 10_000                            # (client, host) pairs per plan whose tail is kept
_UNKNOWN = object()                           # no plan made yet (None: no plan possible)


def _edge_s_own(target: str) -> bool:
    """Whether an origin-form target is one EdgeApp.handle answers itself (/healthz,
    /metrics, "/." paths): those go the long way."""
    second = target[1:2]
    return second == "." or (second in _FIRST_LETTERS and target.startswith(OWN_PATHS))


@dataclass
class Plan:
    """What a customer's pass-through requests over one edge scheme need, worked out
    once per config."""

    customer: Customer
    pool: OriginPool
    https: bool                     # to the origin
    port: int                       # the origin's default port
    from_origin: Count
    to_clients: Count
    drop: frozenset[bytes]          # the targeted cache fields, kept from clients
    # What edge._heads needs to build the client's head from the origin's: the names the
    # edge writes itself and `drop`, as tuples; None: llhttp reads every response.
    scan: tuple[tuple[bytes, ...], tuple[bytes, ...]] | None
    # By status: its requests counter and this edge's Cache-Status entry.
    statuses: dict[int, tuple[Count, str]] = field(default_factory=dict)
    # By (status, HTTP version): the edge's own lines when the origin sent no Via and
    # no Cache-Status (Direct._own_lines').
    own: dict[tuple[int, str], bytes] = field(default_factory=dict)
    # By (client address, Host, HTTP version): Passes._tail's.
    tails: dict[tuple[str, str, str], tuple[str | None, bytes]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lane:
    """Everything a pass-through request needs but its target, for one client address,
    Host and HTTP version over one edge scheme, when the Host alone routes it (a CNAME)
    to a customer with one server: Connection._scanned looks its lane up and skips the
    hit shortcut (its customer never caches) and Passes.take's routing."""

    config: object                  # the EdgeConfig it was made under
    host: str                       # the client's Host
    customer: Customer
    plan: Plan
    server: object                  # the plan's one server
    key: tuple                      # its pooled connections' (address, port, TLS name)
    tail: bytes                     # Passes._tail's lines


class Passes:
    """Takes the pass-through requests it can relay by callbacks (module docstring)."""

    def __init__(self, state: EdgeState):
        self.state = state
        self._plans: dict[tuple[str, str], Plan | None] = {}
        self._config = None
        # By (Host, scheme, client address, HTTP version): for Connection._scanned.
        self.lanes: dict[tuple[bytes, str, str, str], Lane] = {}
        self.relayed = 0                 # requests taken (the tests see which way went)

    def take(self, conn: Connection, request: Request, reply: Reply,
             lane: Lane | None = None) -> "Direct | None":
        """The relay now under way for `request`, or None: take the long way. `lane`: the
        request's (Connection._scanned found it; edge._heads read a plain GET/HEAD)."""
        if lane is not None:
            return self._take_lane(conn, request, reply, lane)
        if request.method not in ("GET", "HEAD") or request.body is not None or request.upgrade:
            return None
        target = request.target
        if target[:1] != "/" or _edge_s_own(target):
            return None
        scanned = request.scanned
        if scanned is not None:                  # edge._heads read the head
            host, flagged, fields = scanned
            if flagged:
                return None
        else:
            host = None
            lines = []
            for name, value in request.raw_headers:
                lower = name.lower()
                if lower == b"host":
                    host = value
                elif lower in LONG_WAY and (lower != b"connection"
                                            or value.strip().lower() != b"keep-alive"):
                    return None
                else:
                    lines.append(b"%s: %s\r\n" % (name, value))
            fields = b"".join(lines)
        if host is None:
            return None
        state = self.state
        config = state.config
        if config is not self._config:
            self._plans.clear()
            self.lanes.clear()
            self._config = config
        client_host = host.decode("latin-1")
        try:
            customer, path = route(config, client_host, target)
        except BadPath:
            return None
        if customer is None:
            return None
        # Both lookups inline, then made once each (_plan, _tail): this runs per request.
        plan = self._plans.get((customer.directory, request.scheme), _UNKNOWN)
        if plan is _UNKNOWN:
            plan = self._plan(customer, request.scheme)
        if plan is None:
            return None
        pool = plan.pool
        server = pool.servers[0] if len(pool.servers) == 1 else pool.order()[0]
        known = plan.tails.get((request.peer, client_host, request.version))
        name, tail = known if known is not None else self._tail(plan, request, client_host)
        key = (server.host, server.port or plan.port, name)
        if (scanned is not None and len(pool.servers) == 1
                and cname_customer(config, client_host) is customer):
            if len(self.lanes) >= TAILS_MAX:
                self.lanes.clear()
            self.lanes[(host, request.scheme, request.peer, request.version)] = Lane(
                config, client_host, customer, plan, server, key, tail)
        upstream = state.client.idle(key)
        if upstream is None:
            return None                      # the long way connects (and pools it)
        return self._send(conn, request, reply, plan, server, upstream, path, fields, tail)

    def _take_lane(self, conn: Connection, request: Request, reply: Reply,
                   lane: Lane) -> "Direct | None":
        """take for a request on a known lane: only its target is looked at."""
        target = request.target
        if _edge_s_own(target):
            return None
        try:
            customer, path = route(lane.config, lane.host, target)
        except BadPath:
            return None
        if customer is not lane.customer:
            return None
        upstream = self.state.client.idle(lane.key)
        if upstream is None:
            return None
        return self._send(conn, request, reply, lane.plan, lane.server, upstream, path,
                          request.scanned[2], lane.tail)

    def _send(self, conn: Connection, request: Request, reply: Reply, plan: Plan, server,
              upstream: Upstream, path: str, fields: bytes, tail: bytes) -> "Direct":
        """The request sent to the origin on `upstream` (its request line for `path`,
        the client's `fields`, the edge's `tail`); its answer is relayed."""
        relay = Direct(self, conn, request, reply, plan, server, upstream)
        self.relayed += 1
        head = b"".join((f"{request.method} {path} HTTP/1.1\r\n".encode("latin-1", "replace"),
                         fields, tail))
        upstream.send_direct(relay, request.method, head, plan.customer.origin.timeout,
                             reply.interim, plan.scan)
        return relay

    def _tail(self, plan: Plan, request: Request, client_host: str) -> tuple[str | None, bytes]:
        """(TLS name, header lines): the origin connection's TLS name (None: plain) and
        the lines the edge adds (forwarding, Host, Via, CDN-Loop) with the blank line,
        what forward.to_origin's caller adds: the same for every request of one client
        to one host, so made once: take looks in plan.tails first, this makes and keeps it."""
        config = self.state.config
        origin_name = origin_host(plan.customer, client_host)
        headers = forwarding(request.peer, request.scheme, client_host) + [
            ("Host", origin_name), ("Via", via(None, request.version, config.via)),
            ("CDN-Loop", config.name)]
        tail = field_lines(headers) + b"\r\n"
        if len(plan.tails) >= TAILS_MAX:
            plan.tails.clear()
        known = plan.tails[(request.peer, client_host, request.version)] = (
            tls_name(origin_name) if plan.https else None, tail)
        return known

    def _plan(self, customer: Customer, scheme: str) -> Plan | None:
        """The customer's Plan over `scheme` (None: the long way only), made and kept in
        _plans; take looks there first."""
        key = (customer.directory, scheme)
        plan = None
        origin = customer.origin
        state = self.state
        if (not customer.cache.enabled and origin.bucket is None and not customer.shields):
            pool = state.pool_for(customer, scheme)
            wanted = scheme if origin.protocol is Protocol.FOLLOW else origin.protocol.value
            if all(state.resolver.literal(s.host) for s in pool.servers):
                metrics, label = state.metrics, customer.directory
                drop = frozenset(name.encode() for name in customer.cache.targeted)
                scan = (SPECIAL, tuple(sorted(drop))) if reads_heads() else None
                plan = Plan(customer, pool, wanted == "https", 443 if wanted == "https" else 80,
                            metrics.from_origin.labels(label), metrics.to_clients.labels(label),
                            drop, scan)
        self._plans[key] = plan
        return plan


class Direct:
    """One pass-through request in flight: the origin connection's parser calls `head`,
    `body`, then `end` or `fail`; the client connection calls `client_gone`,
    `pause` and `resume`."""

    __slots__ = ("passes", "conn", "request", "reply", "plan", "server", "upstream", "headed")

    def __init__(self, passes: Passes, conn: Connection, request: Request, reply: Reply,
                 plan: Plan, server, upstream: Upstream):
        self.passes, self.conn, self.request, self.reply = passes, conn, request, reply
        self.plan, self.server, self.upstream = plan, server, upstream
        self.headed = False

    # --- from the origin connection -----------------------------------------------------

    def head(self, status: int, phrase: str, raw: list, length: int | None) -> None:
        """The origin's final head as llhttp read it: fields as (name, value) bytes."""
        try:
            known = self._status(status)
            if known is None:
                return
            block, dated = to_client_raw(raw, version=self.request.version,
                                         via_name=self.passes.state.config.via,
                                         alt_svc=self.plan.customer.alt_svc, drop=self.plan.drop,
                                         status_entry=known[1])
            self.reply.start_block(status, phrase, block, dated, length)
        except Exception:
            self._broken()

    def head_lines(self, status: int, phrase: str, lines: bytes, dated: bool,
                   incoming_via: bytes | None, statuses: tuple[bytes, ...],
                   length: int | None) -> None:
        """The origin's final head as edge._heads read it: its end-to-end fields as
        lines already (what to_client_raw keeps), the Via and Cache-Status values."""
        try:
            known = self._status(status)
            if known is None:
                return
            lines += self._own_lines(status, known[1], incoming_via, statuses)
            self.reply.start_block(status, phrase, lines, dated, length)
        except Exception:
            self._broken()

    def whole(self, status: int, phrase: str, lines: bytes, dated: bool,
              incoming_via: bytes | None, statuses: tuple[bytes, ...], length: int,
              body: bytes) -> None:
        """head_lines, body and end in one: a whole response edge._heads read, not a 5xx,
        its origin connection already free again (client.Upstream._scanned)."""
        plan = self.plan
        request, reply = self.request, self.reply
        try:
            known = self._status(status)          # never None: not a 5xx
            reply.whole(status, phrase,
                        lines + self._own_lines(status, known[1], incoming_via, statuses),
                        dated, length, body)
        except Exception:
            return self._broken()
        size = len(body)
        plan.from_origin.value += size
        plan.to_clients.value += size
        self.conn.relay_done(request, reply)

    def _own_lines(self, status: int, entry: str, incoming_via: bytes | None,
                   statuses: tuple[bytes, ...]) -> bytes:
        """The edge's Via, Alt-Svc and Cache-Status lines (`entry`: its Cache-Status
        entry) after an origin head edge._heads read; made once per status and HTTP
        version when the origin sent no Via or Cache-Status of its own."""
        plan, version = self.plan, self.request.version
        plain = incoming_via is None and not statuses
        own = plan.own.get((status, version)) if plain else None
        if own is None:
            own = own_lines(incoming_via, statuses, version, self.passes.state.config.via,
                            plan.customer.alt_svc, entry)
            if plain:
                plan.own[(status, version)] = own
        return own

    def _status(self, status: int) -> tuple[Count, str] | None:
        """(requests counter, Cache-Status entry) for a response with `status`, counted;
        None: a 5xx the long way retries on the next server."""
        plan = self.plan
        customer, state = plan.customer, self.passes.state
        if status >= 500 and customer.origin.retry_5xx:
            server_answered_5xx(state, plan.pool, self.server, customer.directory, status)
            if len(plan.pool.servers) > 1:
                self.upstream.detach()          # the long way asks the next server
                self._long_way()
                return None
        else:
            plan.pool.succeeded(self.server)
        self.headed = True
        known = plan.statuses.get(status)
        if known is None:
            known = plan.statuses[status] = (
                state.metrics.requests.labels(customer.directory, str(status)),
                cache_status(state.config.name, fwd="bypass", fwd_status=status))
        known[0].value += 1
        return known

    def body(self, data: bytes) -> None:
        plan = self.plan
        size = len(data)
        plan.from_origin.value += size          # Count.inc, without a call per chunk
        try:
            self.reply.write_now(data)
        except Exception:
            return self._broken()
        plan.to_clients.value += size

    def end(self, keep_alive: bool) -> None:
        """The response is all here; the origin connection goes back to the pool when it
        can be used again."""
        if keep_alive:
            self.upstream.pool.put(self.upstream)
        if not self.headed:
            return
        try:
            self.reply.end()
        except Exception:
            return self._broken()
        self.conn.relay_done(self.request, self.reply)

    def fail(self, exc: Exception) -> None:
        """The exchange failed (the origin connection is closed already)."""
        state, plan = self.passes.state, self.plan
        label = plan.customer.directory
        if self.headed:
            # The origin cut the body short: the client must see an aborted response.
            state.metrics.origin_errors.labels(label, "?", "truncated").inc()
            self.reply.abort()
            self.conn.relay_done(self.request, self.reply)
            return
        if isinstance(exc, Disconnected) and exc.nothing_received:
            state.client.retried += 1           # the keep-alive race: no origin failure
            return self._long_way()
        server_failed(state, plan.pool, self.server, label, exc)
        if len(plan.pool.servers) > 1:
            return self._long_way()
        gone = Unreachable(504 if isinstance(exc, OriginTimeout) else 502)
        own_error(self.reply, self.request, state, gone.status, gone.text, "uri-miss", label)
        self.conn.relay_done(self.request, self.reply)

    # --- from the client connection -----------------------------------------------------

    def client_gone(self) -> None:
        if self.upstream.sink is self:
            self.upstream.detach()              # stop pulling from the origin
        self.reply.abort()

    def pause(self) -> None:
        self.upstream.hold()

    def resume(self) -> None:
        self.upstream.unhold()

    # --- the rest -----------------------------------------------------------------------

    def _long_way(self) -> None:
        self.conn.relay_long_way(self.request, self.reply)

    def _broken(self) -> None:
        """A bug of ours, not the origin's: logged once, 500 (or an abort), as
        wire.call_handler does for the long way."""
        log.exception("relaying %s %s failed", self.request.method, self.request.target)
        if self.upstream.sink is self:
            self.upstream.detach()
        if not self.reply.started:
            self.reply.simple(500, "internal error\n")
        else:
            self.reply.abort()
        self.conn.relay_done(self.request, self.reply)
