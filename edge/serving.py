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
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from typing import Any, Callable

from cdnkit.ports import TCP, Owned, own_all

from .config import ConfigError, EdgeConfig
from .front import Listeners
from .proxy import EdgeApp
from .server import Request
from .state import EdgeState

log = logging.getLogger("edge")

DRAIN_TIMEOUT = 5.0


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


def _describe(in_flight: list[tuple[Request, float]]) -> str:
    now = time.monotonic()
    shown = [f"{r.method} {r.host}{r.path} ({now - t:.1f} s)" for r, t in in_flight[:5]]
    more = len(in_flight) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


async def serve(cfg: EdgeConfig, plain: list[socket.socket], tls: list[socket.socket],
                reload: Callable[[], EdgeConfig | None], drain_timeout: float = DRAIN_TIMEOUT,
                follower: Callable[[EdgeState], Any] | None = None) -> int:
    """Serve `cfg` on already bound sockets until SIGTERM/SIGINT, then drain and return 0.

    ``reload`` returns the new config on SIGHUP (None to keep the current one).
    ``follower`` makes the store follower (edge/fleet.py) of a fleet edge: its
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
        await listeners.serve(sock, ssl=context)
    reporter = None
    if fleet is not None:            # load, verdict and drain to the fleet (report.py)
        from .report import Reporter
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
        app.draining = on
        log.info("draining: /healthz answers %s", 503 if on else 200)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGUSR1, lambda: drain(True))
    loop.add_signal_handler(signal.SIGUSR2, lambda: drain(False))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    log.info("ready: %d customers on %s", len(cfg.customers),
             ", ".join([str(l) for l in cfg.listen] + [f"{l} (TLS)" for l in cfg.tls_listen]))
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
    children = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
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

    def relay(sig: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, relay)
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


__all__ = ["ConfigError", "DRAIN_TIMEOUT", "bind", "fork_workers", "serve"]
