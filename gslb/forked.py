"""Workers forked from the supervisor before its event loop runs.

A worker exec'd as `gslb worker` starts from nothing: Python and its imports,
then unpickling the config and every signature and adopting them -- about 1.3 s
each with 10k signed services, on the path to the first answer. A worker
forked once the supervisor has loaded the config and signed everything
inherits all of it (copy on write) and serves a few milliseconds after its
hello. Fork is only safe while the process has a single thread, so `gslb
serve` forks its first workers before the event loop starts (`fork_workers`);
a worker that dies later is replaced by exec, as before (supervisor.py).

A forked child keeps only what an exec'd worker would be handed: its end of
the control socketpair and its own share of the listening sockets. It closes
the port claims (cdnkit.ports), so that a supervisor that dies frees the
address even while a worker lives on, and the other workers' sockets.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Callable

from cdnkit.ports import Owned

log = logging.getLogger("gslb.supervisor")


@dataclass
class Forked:
    """A forked worker that has not had its hello yet."""

    pid: int
    control: socket.socket          # the supervisor's end of the socketpair


def fork_workers(count: int, owned: list[tuple[Owned, Owned]],
                 run: Callable[[int, int], int]) -> dict[int, Forked]:
    """Fork `count` workers; child i runs ``run(i, control_fd)`` and exits with its result.

    Returns {} (the caller execs its workers) when the process already has threads.
    """
    if threading.active_count() > 1:
        return {}
    # What exists now is shared with the children, copy on write: kept out of
    # their collector's scans, which would touch (and so copy) every page of it.
    gc.freeze()
    out: dict[int, Forked] = {}
    for index in range(count):
        ours, theirs = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:                                  # the worker: never returns
            code = 1
            try:
                ours.close()
                for other in out.values():
                    other.control.close()
                _keep_own_sockets(owned, index)
                gc.enable()                           # the parent may have paused it
                code = run(index, theirs.fileno())
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                os._exit(code)
        theirs.close()
        out[index] = Forked(pid, ours)
    return out


def _keep_own_sockets(owned: list[tuple[Owned, Owned]], index: int) -> None:
    for pair in owned:
        for item in pair:
            if item.claim is not None:
                item.claim.close()
            for i, sock in enumerate(item.sockets):
                if i != index:
                    sock.close()


class ForkedProcess:
    """What the supervisor uses of `asyncio.subprocess.Process`, for a forked worker.

    Its exit is seen through a pidfd in the event loop (asyncio's child watcher
    only knows the processes asyncio started).
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._reaped: asyncio.Future[int] | None = None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:            # reaped: the pid may be someone else's
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        """The exit code (minus the signal number when killed), as asyncio gives it."""
        if self._reaped is None:
            self._reaped = asyncio.ensure_future(self._reap())
        return await asyncio.shield(self._reaped)

    async def _reap(self) -> int:
        loop = asyncio.get_running_loop()
        fd = os.pidfd_open(self.pid)
        try:
            gone = loop.create_future()
            loop.add_reader(fd, lambda: gone.done() or gone.set_result(None))
            try:
                await gone
            finally:
                loop.remove_reader(fd)
        finally:
            os.close(fd)
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode
