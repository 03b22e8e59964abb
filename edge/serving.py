"""`edge serve`'s process life: own the ports, fork the workers, serve, drain, exit.

The first process binds every listening socket before anything else exists
(cdnkit.ports): a second edge on the same address fails there with one line
and exit 1, with no session or worker to clean up. With several workers each
gets its own SO_REUSEPORT socket per listener, so the kernel spreads
connections over them, and nobody else can join the group.

On SIGTERM/SIGINT a worker stops accepting, closes idle connections at once
and gives the requests still in flight up to the drain bound
(`--drain-timeout`, 5 s by default), saying what it waits for; an idle edge
exits at once.

SIGUSR1 drains (/healthz answers 503) and SIGUSR2 ends the drain. With
several workers the parent writes the wanted state into a byte shared with
them before it relays the signal, and a worker reads that byte whichever of
the two signals wakes it: two signals sent close together can reach a busy
worker in either order, and the last one sent must win in every worker.
"""
from __future__ import annotations

import asyncio
import logging
import mmap
import os
import signal
import socket
import time
from typing import Any, Callable

from cdnkit.ports import TCP, UDP, Owned, own_all

from edge.config import ConfigError, EdgeConfig
from edge.http.front import Listeners
from edge.proxy import EdgeApp
from edge.http.server import Request
from edge.state import EdgeState

log = logging.getLogger("edge")

DRAIN_TIMEOUT = 5.0
RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

# The drain state the parent wants, shared with the workers it forks (None: one process).
_wanted: mmap.mmap | None = None


def bind(cfg: EdgeConfig, workers: int) -> tuple[list[Owned], list[Owned]]:
    """(plain, TLS) listeners of `cfg`, one socket per worker each; AddressInUse or
    CannotListen (both OSError) when one cannot be had."""
    plain = own_all(cfg.listen, (TCP,), workers)
    try:
        tls = own_all(cfg.tls_listen, (TCP,), workers)
    except OSError:
        for owned in plain:
            owned.close()
        raise
    return plain, tls


def bind_h3(cfg: EdgeConfig, workers: int) -> list[Owned]:
    """The UDP side of every TLS listener for HTTP/3: one SO_REUSEPORT socket per worker,
    bound here before the fork, so the kernel's 4-tuple hash keeps each client's
    datagrams on one worker (one shared socket would scatter a connection's packets
    over all of them). None when HTTP/3 is off."""
    return own_all(cfg.tls_listen, (UDP,), workers) if cfg.h3 and cfg.tls_listen else []


def alt_svc(cfg: EdgeConfig, sock: socket.socket) -> str:
    """The Alt-Svc a TLS listener sends on every answer: its port over HTTP/3."""
    return f'h3=":{sock.getsockname()[1]}"; ma=86400' if cfg.h3 else ""


def _describe(in_flight: list[tuple[Request, float]]) -> str:
    now = time.monotonic()
    shown = [f"{r.method} {r.host}{r.path} ({now - t:.1f} s)" for r, t in in_flight[:5]]
    more = len(in_flight) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


async def serve(cfg: EdgeConfig, plain: list[socket.socket], tls: list[socket.socket],
                reload: Callable[[], EdgeConfig | None], drain_timeout: float = DRAIN_TIMEOUT,
                follower: Callable[[EdgeState], Any] | None = None,
                quic: list[socket.socket] = (), retry_always: bool = False) -> int:
    """Serve `cfg` on already bound sockets until SIGTERM/SIGINT, then drain and return 0.

    ``reload`` returns the new config on SIGHUP (None to keep the current one).
    ``follower`` makes the store follower (edge/fleet/watch.py) of a fleet edge: its
    customers are the store's, and SIGHUP re-reads only the local part.
    """
    state = EdgeState(cfg)
    fleet = follower(state) if follower is not None else None
    if fleet is not None:
        await fleet.start()          # the store's customers (or the snapshot's) first
        cfg = state.config
    app = EdgeApp(state)
    if fleet is not None:
        app.sealer = fleet.sealer
    await app.start()
    listeners = Listeners(state, app.handle)
    for sock in plain:
        await listeners.serve(sock)
    context = state.certs.server_context()
    for sock in tls:
        await listeners.serve(sock, ssl=context, alt_svc=alt_svc(cfg, sock) if quic else "")
    for sock in quic:                # HTTP/3: the UDP twin of each TLS socket
        await listeners.serve_h3(sock, retry_always)
    reporter = None
    if fleet is not None:            # load, verdict and drain to the fleet (report.py)
        from edge.fleet.report import Reporter
        reporter = Reporter(fleet, app, listeners, fleet.opts.capacity)
        reporter.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_hup() -> None:
        if fleet is not None:        # the local part of the config; customers stay
            if fleet.snap is not None:
                fleet.apply(fleet.snap, save=False)
            return
        new = reload()
        if new is not None:
            state.apply(new)
            log.info("reloaded %s: %d customers", new.source, len(new.customers))

    def drain(on: bool) -> None:
        if _wanted is not None:
            on = bool(_wanted[0])
        if app.draining != on:
            app.draining = on
            log.info("draining: /healthz answers %s", 503 if on else 200)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGUSR1, lambda: drain(True))
    loop.add_signal_handler(signal.SIGUSR2, lambda: drain(False))
    if _wanted is not None and _wanted[0]:
        drain(True)                   # a drain asked for while this worker started
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    log.info("ready: %d customers on %s", len(cfg.customers),
             ", ".join([str(l) for l in cfg.listen] + [f"{l} (TLS{', HTTP/3' if quic else ''})"
                                                       for l in cfg.tls_listen]))
    await stop.wait()
    if reporter is not None:
        await reporter.stop()
    if fleet is not None:
        await fleet.stop()
    await _drain(listeners, drain_timeout)
    await app.stop()
    return 0


async def _drain(listeners: Listeners, bound: float) -> None:
    """Stop accepting, close idle connections, give requests in flight up to `bound` s."""
    started = time.monotonic()
    listeners.close()                 # keep-alive connections close after their request
    in_flight = listeners.in_flight()
    if in_flight:
        log.info("stopping: waiting up to %g s for %d request(s) in flight: %s",
                 bound, len(in_flight), _describe(in_flight))
    while listeners.conns and time.monotonic() - started < bound:
        await asyncio.sleep(0.05)
    cut = listeners.in_flight()
    if cut:
        log.warning("stopping: %d request(s) still in flight after %g s are cut off: %s",
                    len(cut), bound, _describe(cut))
    await listeners.wait_closed(0)    # aborts whatever is left
    log.info("stopped in %.1f s", time.monotonic() - started)


def fork_workers(run: Callable[[int], int], workers: int, owned: list[Owned]) -> int:
    """N processes, worker i on socket i of every listener; signals are relayed to them.

    Forked before any event loop exists, so each child starts clean. The parent
    keeps only the claims: a worker that dies takes its sockets with it, and the
    kernel sends new connections to the others.
    """
    global _wanted
    _wanted = mmap.mmap(-1, 1)        # shared with the workers: MAP_SHARED | MAP_ANONYMOUS
    parent, children = os.getpid(), []

    def relay(sig: int, _frame: object) -> None:
        if os.getpid() != parent:
            return                    # a worker before its loop takes the signal: its
                                      # loop reads the drain state from _wanted
        if sig in (signal.SIGUSR1, signal.SIGUSR2):
            _wanted[0] = sig == signal.SIGUSR1
        for child in children:
            try:
                os.kill(child, sig)
            except ProcessLookupError:
                pass

    # Installed before the forks, so a signal that comes while workers start is neither
    # lost in the parent nor fatal to a worker; a worker still stops on SIGTERM/SIGINT.
    for sig in RELAYED:
        signal.signal(sig, relay)
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            for item in owned:
                for i, sock in enumerate(item.sockets):
                    if i != index:
                        sock.close()
            code = 1
            try:
                code = run(index)
            finally:
                os._exit(code)
        children.append(pid)
    for item in owned:
        item.close_sockets()
    status = 0
    for child in children:
        while True:
            try:
                _, code = os.waitpid(child, 0)
                status = status or os.waitstatus_to_exitcode(code)
                break
            except InterruptedError:
                continue
    return status


__all__ = ["ConfigError", "DRAIN_TIMEOUT", "alt_svc", "bind", "bind_h3", "fork_workers", "serve"]
