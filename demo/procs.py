"""The demo's children: start one, check that it is really listening, stop it.

Each child writes to its own log in the demo's work directory. "Started" means
more than "spawned": the process is still alive, printed its ready line, and
every address it was given answers as that child (a stale process from an
earlier run that holds the same port is reported, not mistaken for ours).
"""
from __future__ import annotations

import ctypes
import json
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cdnkit.listen import host_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0


@dataclass
class Child:
    """One process of the demo CDN."""

    name: str                       # edge-fra, shield-fra, origin, gslb, ...
    role: str                       # what the banner calls it ("the fra edge")
    command: list[str]
    binds: list[str]                # TCP HOST:PORTs it must listen on
    log: Path
    ready_text: str = "ready"       # a line of its log that says it is up
    check: Callable[["Child"], str] | None = None   # "" when it answers as itself
    udp: list[str] = field(default_factory=list)    # UDP HOST:PORTs it must own too
    tls: list[str] = field(default_factory=list)    # TLS HOST:PORTs (TCP) it listens on too
    proc: subprocess.Popen | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the demo dies, even by SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def busy(binds: list[str], udp: list[str] = ()) -> list[str]:
    """The addresses among `binds` (TCP) and `udp` that some process already holds."""
    taken = []
    for kind, addresses in ((socket.SOCK_STREAM, binds), (socket.SOCK_DGRAM, udp)):
        for bind in addresses:
            host, port = host_port(bind)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, kind) as s:
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                except OSError:
                    taken.append(bind + ("/udp" if kind == socket.SOCK_DGRAM else ""))
    return taken


def start(child: Child) -> str:
    """Start `child` and wait until it serves; "" on success, else why not (it is stopped)."""
    taken = busy(child.binds + child.tls, child.udp)
    if taken:
        return f"{', '.join(taken)} already in use by another process (an earlier demo?)"
    child.log.parent.mkdir(parents=True, exist_ok=True)
    offset = child.log.stat().st_size if child.log.exists() else 0
    with open(child.log, "ab") as out:
        child.proc = subprocess.Popen(child.command, stdout=out, stderr=subprocess.STDOUT,
                                      cwd=ROOT, preexec_fn=_die_with_parent)
    why = _wait_ready(child, offset)
    if why:
        stop(child)
    return why


def _wait_ready(child: Child, offset: int) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not child.alive:
            return f"exited with status {child.proc.returncode}: {_tail(child.log, offset)}"
        if child.ready_text in _read(child.log, offset) and _listening(child.binds + child.tls):
            why = child.check(child) if child.check else ""
            if not why:
                return ""
            if time.monotonic() + 0.2 >= deadline:
                return why
        time.sleep(0.1)
    return f"not listening on {', '.join(child.binds)} after {START_TIMEOUT:.0f} s"


def _read(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(path: Path, offset: int) -> str:
    lines = [l for l in _read(path, offset).splitlines() if l.strip()]
    return lines[-1] if lines else "(no output)"


def _listening(binds: list[str]) -> bool:
    for bind in binds:
        try:
            with socket.create_connection(host_port(bind), timeout=0.5):
                pass
        except OSError:
            return False
    return True


def edge_answers_as(child: Child) -> str:
    """An edge's /healthz names the edge: proof that the port is held by this child."""
    for bind in child.binds:
        try:
            with urllib.request.urlopen(f"http://{bind}/healthz", timeout=2) as resp:
                name = json.load(resp).get("name")
        except (OSError, ValueError) as exc:
            return f"{bind}/healthz did not answer ({exc})"
        if name != child.name:
            return f"{bind} is answered by {name!r}, not {child.name!r} (an earlier demo?)"
    return ""


def stop(child: Child, timeout: float = 8.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; always reaps."""
    proc = child.proc
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_all(children: list[Child], timeout: float = 8.0) -> None:
    """Stop every child at once (SIGTERM to all, then wait, SIGKILL stragglers)."""
    for child in children:
        if child.alive:
            child.proc.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def pid_of(child: Child) -> int:
    return child.proc.pid if child.proc is not None else 0
