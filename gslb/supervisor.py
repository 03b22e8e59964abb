"""The serving process tree: one supervisor and N DNS workers.

The supervisor owns everything that must exist once: the config (parsed once
per reload), the health prober and its board, the dashboard, and the listening
sockets -- bound before any worker starts, one SO_REUSEPORT socket per worker
and listener, so the kernel spreads the load over the workers but refuses a
second server (cdnkit.ports). Workers serve the sockets they are handed with a
`Responder`. They talk over a socketpair with length-prefixed
pickles (both ends are this program): the supervisor sends the config, every
health snapshot and every reload; a worker sends "ready" and, each second,
its query counters. So every worker answers from the same health, and a
worker that dies is replaced with the current state.

`gslb serve` forks its first workers once the config is loaded and signed
(forked.py), so they inherit both instead of building them again; workers
started later (replacements) are exec'd as `gslb worker`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from cdnkit.check import ConfigError
from cdnkit.gcpause import gc_paused
from cdnkit.listen import Listener
from cdnkit.ports import Owned

from gslb import forked
from gslb.config import load_config
from gslb.dnssec.sign import ZoneSigner
from gslb.fleet.gate import OPEN, Gate
from gslb.health import HealthBoard, HealthView
from gslb.model import Config
from gslb.responder import Signatures, exported, signed_zones

log = logging.getLogger("gslb.supervisor")

EXIT_BIND_FAILED = 3
MAX_EARLY_DEATHS = 3        # a worker slot whose workers die this often before ready stops us
STATS_INTERVAL = 1.0
_LEN = struct.Struct("!I")


async def send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    writer.write(_LEN.pack(len(data)) + data)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> dict[str, Any]:
    size = _LEN.unpack(await reader.readexactly(_LEN.size))[0]
    return pickle.loads(await reader.readexactly(size))


# --- worker side -----------------------------------------------------------------------------


Inherited = tuple[Config, dict[str, ZoneSigner]]     # what a forked worker starts with


async def worker_main(fd: int, inherited: Inherited | None = None) -> int:
    """Run one DNS worker controlled through the socket ``fd``.

    A forked worker has `inherited` the config and signers; its hello carries a
    config only if the supervisor reloaded since the fork.
    """
    from gslb.server import DnsServer

    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    with gc_paused():                  # the config and signatures: many new objects
        hello = await receive(reader)
    signers = None
    if "config" in hello or inherited is None:
        config: Config = hello["config"]
    else:
        config, signers = inherited
    # The supervisor bound these (it owns the port); we only serve them.
    sockets = [(socket.socket(fileno=udp), socket.socket(fileno=tcp)) for udp, tcp in hello["fds"]]
    server = DnsServer(config, sockets, hello["health"], hello.get("signatures"), signers)
    if hello.get("gate") is not None:
        server.responder.set_gate(hello["gate"])
    try:
        await server.start()
    except OSError as exc:
        await send(writer, {"bind_error": str(exc)})
        return EXIT_BIND_FAILED
    await send(writer, {"ready": os.getpid()})
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)   # the supervisor reloads for us

    async def report() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            rrl = server.responder.rrl
            await send(writer, {"counts": server.responder.query_counts(),
                                "errors": server.responder.errors,
                                "rrl": rrl.counts() if rrl else {},
                                "tcp": {"refused": server.tcp_refused,
                                        "evicted": server.tcp_evicted}})

    async def listen() -> None:
        while True:
            message = await receive(reader)
            if "health" in message:
                server.responder.set_health(message["health"])
            if "config" in message:
                server.apply_config(message["config"], message.get("signatures"))
                log.info("worker %d: applied new config", os.getpid())
            if "gate" in message:
                server.responder.set_gate(message["gate"])
                await send(writer, {"gate_applied": message["gate"].revision,
                                    "gate_serving": message["gate"].serving})

    tasks = [loop.create_task(report()), loop.create_task(listen()),
             loop.create_task(stop.wait())]
    # Whichever ends first (a stop signal, or the supervisor's end of the pipe) ends us.
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.exception()        # the pipe's end is how a gone supervisor shows: no traceback
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await server.stop()
    writer.close()
    return 0


# --- supervisor side -------------------------------------------------------------------------


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | forked.ForkedProcess
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    ready: asyncio.Future
    counts: dict[tuple[int, str, str], int] = field(default_factory=dict)
    errors: int = 0
    extra: dict[str, dict[str, int]] = field(default_factory=dict)   # rrl, tcp counters
    gate_applied: int = 0          # the store revision this worker answers from (gate.py)
    gate_serving: int = 0          # every customer name given by then it answers (gate.py)


class Supervisor:
    """Starts workers, runs the prober and dashboard, relays config and health."""

    def __init__(self, config_path: str, config: Config, listeners: tuple[Listener, ...],
                 workers: int, http: Listener | None, ready_line: str = "",
                 state_file: str | None = None):
        self.config_path = config_path
        # One cookie secret for all workers, so a cookie issued by one is valid at all.
        self._secret = config.server.cookie_secret or os.urandom(16)
        config = self._with_secret(config)
        self.config = config
        # DNSSEC: sign once here, on every core (no threads yet: forking is safe); forked
        # workers inherit the signers, exec'd ones get their export (made when needed).
        self.signers = signed_zones(config, os.cpu_count() or 1)
        self._exported: Signatures | None = None
        self._forked: dict[int, forked.Forked] = {}
        self._forked_config: Config | None = None
        self.listeners = listeners
        self.n_workers = workers
        self.http = http
        self.ready_line = ready_line
        self.board = HealthBoard(config, state_file=state_file or config.health.state_file)
        self.view = self.board.view        # what the answers use (the fleet's, with a store)
        self.workers: dict[int, Worker] = {}
        self.retired: dict[tuple[int, str, str], int] = {}   # counts of workers that are gone
        self.retired_extra: dict[tuple[str, str], int] = {}
        self.rebuilds = {"health": 0, "config": 0}
        self.reloads = {"ok": 0, "rejected": 0}
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()
        self.owned: list[tuple[Owned, Owned]] = []
        self._slots: dict[int, asyncio.Future] = {}     # worker index -> ready at start
        self._early_deaths: dict[int, int] = {}
        self.gate = OPEN                   # the store's customer names (gslb/fleet/watch.py)
        self.on_gate_applied: Any = None
        self.fleet: Any = None             # a gslb.fleet.watch.Fleet with --store etcd://
        self.prober: Any = None            # a gslb.probe.Prober once running

    def fork_workers(self) -> None:
        """Bind the sockets and fork the first workers now, while this process has one
        thread, so they inherit the config and signatures (forked.py). Raises what
        `run` raises when a listener cannot be had. Without it `run` execs them all."""
        from gslb.server import bind_sockets

        if not self.owned:
            self.owned = bind_sockets(self.listeners, self.n_workers)
        inherited = (self.config, self.signers)
        self._forked_config = self.config
        self._forked = forked.fork_workers(
            self.n_workers, self.owned, lambda index, fd: asyncio.run(worker_main(fd, inherited)))

    def signatures(self) -> Signatures:
        """The signatures for an exec'd worker (exported once per signing)."""
        if self._exported is None:
            self._exported = exported(self.signers)
        return self._exported

    def _with_secret(self, config: Config) -> Config:
        if config.server.cookie_secret:
            return config
        return replace(config, server=replace(config.server, cookie_secret=self._secret))

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT. Raises OSError (`cdnkit.ports.AddressInUse` among
        them) when a listener cannot be had; nothing has started then."""
        from gslb.server import bind_sockets

        # Bound here, once, before any worker exists: only our workers share them.
        if not self.owned:
            self.owned = bind_sockets(self.listeners, self.n_workers)
        try:
            return await self._run()
        finally:
            for udp, tcp in self.owned:
                udp.close()
                tcp.close()
            for left in self._forked.values():      # forked, never greeted
                left.control.close()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn_task(self.reload()))
        runner = None
        try:
            if self.fleet is not None:
                await self.fleet.start(self)     # the gate first: no ungated answer
            else:
                self.board.subscribe(self.on_view)
            if self.http is not None:        # up before the first answer: scripts may rely on it
                from gslb.dashboard import start_dashboard
                runner = await start_dashboard(self, self.http)
            self._slots = {index: loop.create_future() for index in range(self.n_workers)}
            # Side by side: a big hello (10k signed services) takes a while to read,
            # and one worker after the other would add up their start-ups. Before the
            # prober: forked workers serve once greeted, while it loads.
            await asyncio.gather(*(self._spawn(index) for index in range(self.n_workers)))
            from gslb.probe import Prober
            self.prober = Prober(self.board)
            await self.prober.start()
            # Each slot is ready once one of its workers is (one that dies first is
            # replaced, as later on); a slot whose workers keep dying stops us.
            if not all(await asyncio.gather(*self._slots.values())):
                log.error("workers could not start (see above); stopping")
                return 1
            if self.ready_line:
                log.info("%s", self.ready_line)
            await stop.wait()
            return 0
        finally:
            self._stopping = True
            if self.fleet is not None:
                await self.fleet.stop()
            await self._stop_workers()
            if self.prober is not None:
                await self.prober.stop()
            if runner is not None:
                await runner.cleanup()
            for task in list(self._tasks):
                task.cancel()

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, index: int) -> Worker:
        # Worker i serves socket i of each listener (its own SO_REUSEPORT share); a
        # replacement gets the same sockets, with whatever queued while it was gone.
        fds = [(udp.sockets[index].fileno(), tcp.sockets[index].fileno())
               for udp, tcp in self.owned]
        hello: dict[str, Any] = {"fds": fds, "health": self.view, "gate": self.gate}
        child = self._forked.pop(index, None)
        if child is not None:                # forked with the config (forked.py)
            proc: Any = forked.ForkedProcess(child.pid)
            ours = child.control
            if self.config is not self._forked_config:       # reloaded since
                hello.update(config=self.config, signatures=self.signatures())
        else:
            ours, theirs = socket.socketpair()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gslb.cli", "worker", "--control-fd", str(theirs.fileno()),
                pass_fds=(theirs.fileno(), *(fd for pair in fds for fd in pair)))
            theirs.close()
            hello.update(config=self.config, signatures=self.signatures())
        reader, writer = await asyncio.open_connection(sock=ours)
        ready = asyncio.get_running_loop().create_future()
        worker = Worker(index, proc, writer, reader, ready)
        self.workers[proc.pid] = worker
        try:
            await send(writer, hello)
        except (ConnectionError, OSError):
            pass         # it died at once: _read_worker sees it go and replaces it
        worker.gate_applied = self.gate.revision
        worker.gate_serving = self.gate.serving
        self._spawn_task(self._read_worker(worker))
        return worker

    async def _read_worker(self, worker: Worker) -> None:
        try:
            while True:
                message = await receive(worker.reader)
                if "ready" in message and not worker.ready.done():
                    worker.ready.set_result(True)
                    self._slot_ready(worker.index, True)
                elif "bind_error" in message:
                    log.error("worker %d: %s", worker.proc.pid, message["bind_error"])
                    if not worker.ready.done():
                        worker.ready.set_result(False)
                    self._slot_ready(worker.index, False)
                elif "gate_applied" in message:
                    worker.gate_applied = message["gate_applied"]
                    worker.gate_serving = message.get("gate_serving", 0)
                    if self.on_gate_applied is not None:
                        self.on_gate_applied()
                elif "counts" in message:
                    worker.counts, worker.errors = message["counts"], message["errors"]
                    worker.extra = {"rrl": message.get("rrl", {}), "tcp": message.get("tcp", {})}
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        code = await worker.proc.wait()
        early = not worker.ready.done()
        if early:
            worker.ready.set_result(False)
            self._early_deaths[worker.index] = self._early_deaths.get(worker.index, 0) + 1
            if self._early_deaths[worker.index] >= MAX_EARLY_DEATHS:
                log.error("worker %d exited with %s before it was ready, the %d. time in a "
                          "row; not starting another", worker.proc.pid, code,
                          MAX_EARLY_DEATHS)
                self._slot_ready(worker.index, False)
                code = EXIT_BIND_FAILED          # do not replace it
        self.workers.pop(worker.proc.pid, None)
        for key, value in worker.counts.items():
            self.retired[key] = self.retired.get(key, 0) + value
        for group, values in worker.extra.items():
            for key, value in values.items():
                self.retired_extra[(group, key)] = self.retired_extra.get((group, key), 0) + value
        worker.writer.close()
        if self._stopping or code == EXIT_BIND_FAILED:
            return
        log.error("worker %d exited with %s%s; starting a new one", worker.proc.pid, code,
                  " before it was ready" if early else "")
        await asyncio.sleep(0.5)   # do not spin on a worker that dies at once
        if not self._stopping:
            await self._spawn(worker.index)

    def _slot_ready(self, index: int, ok: bool) -> None:
        slot = self._slots.get(index)
        if slot is not None and not slot.done():
            slot.set_result(ok)
        if ok:
            self._early_deaths.pop(index, None)

    async def _stop_workers(self) -> None:
        for worker in list(self.workers.values()):
            if worker.proc.returncode is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in list(self.workers.values()):
            try:
                async with asyncio.timeout(10):
                    await worker.proc.wait()
            except asyncio.TimeoutError:
                worker.proc.kill()
                await worker.proc.wait()

    # --- changes --------------------------------------------------------------------------

    def on_view(self, view: HealthView) -> None:
        """A new health view for the answers: every worker rebuilds from it."""
        self.view = view
        self.rebuilds["health"] += 1
        for worker in list(self.workers.values()):
            self._spawn_task(self._safe_send(worker, {"health": view}))

    async def _safe_send(self, worker: Worker, message: dict[str, Any]) -> None:
        try:
            await send(worker.writer, message)
        except (ConnectionError, OSError):
            pass   # the worker is gone; _read_worker replaces it

    async def reload(self) -> bool:
        """Re-read the config file; swap it in everywhere, or keep the old one and say why."""
        loop = asyncio.get_running_loop()
        try:
            config = self._with_secret(
                await loop.run_in_executor(None, load_config, self.config_path))
        except ConfigError as exc:
            self.reloads["rejected"] += 1
            log.error("reload of %s rejected, still serving the previous config:\n  %s",
                      self.config_path, "\n  ".join(exc.problems))
            return False
        self.signers, self._exported = await loop.run_in_executor(
            None, _sign_again, config, self.signatures())
        self.config = config
        self.rebuilds["config"] += 1
        for worker in list(self.workers.values()):
            await self._safe_send(worker, {"config": config, "signatures": self.signatures()})
        self.board.set_config(config)        # publishes a view, sent to every worker
        if self.fleet is not None:
            self.fleet.health.set_config(config)
            self.fleet.publish(save=False, force=True)   # the zones may have changed
        if self.prober is not None:          # else it starts with the board's new config
            self.prober.retarget(config)
        self.reloads["ok"] += 1
        log.info("config reloaded from %s: %d zones, %d services, %d sites", self.config_path,
                 len(config.zones), len(config.services), len(config.sites))
        return True

    def set_gate(self, gate: Gate) -> None:
        """Hand every worker a new gate; each says when it answers from it."""
        self.gate = gate
        for worker in list(self.workers.values()):
            self._spawn_task(self._safe_send(worker, {"gate": gate}))

    def gate_applied(self) -> int:
        """The store revision every worker answers from (0 before they all do)."""
        return min((w.gate_applied for w in self.workers.values()), default=0)

    def gate_serving(self) -> int:
        """The revision up to which every worker answers every customer name (0 before)."""
        return min((w.gate_serving for w in self.workers.values()), default=0)

    def extra_counts(self) -> dict[tuple[str, str], int]:
        """RRL and TCP counters of all workers, by (group, name)."""
        total = dict(self.retired_extra)
        for worker in self.workers.values():
            for group, values in worker.extra.items():
                for key, value in values.items():
                    total[(group, key)] = total.get((group, key), 0) + value
        return total

    def _counts(self) -> dict[tuple[int, str, str], int]:
        total = dict(self.retired)
        for worker in self.workers.values():
            for key, value in worker.counts.items():
                total[key] = total.get(key, 0) + value
        return total

    def query_counts(self) -> dict[tuple[int, str], int]:
        """Queries answered by all workers, by (rcode, service or "")."""
        total: dict[tuple[int, str], int] = {}
        for (rcode, service, _), value in self._counts().items():
            total[(rcode, service)] = total.get((rcode, service), 0) + value
        return total

    def site_counts(self) -> dict[str, int]:
        """Service answers by the site they sent clients to ("" when none or several)."""
        total: dict[str, int] = {}
        for (_, service, site), value in self._counts().items():
            if service:
                total[site] = total.get(site, 0) + value
        return total


def _sign_again(config: Config, previous: Signatures
                ) -> tuple[dict[str, ZoneSigner], Signatures]:
    """Fresh signers for a reloaded config, reusing `previous` where the keys allow,
    and their export (both off the event loop)."""
    signers = signed_zones(config, 1, previous)
    return signers, exported(signers)
