"""Listening sockets that one server owns: its workers may share a port, nobody else may.

`SO_REUSEPORT` lets every worker have its own socket on the port, so the
kernel spreads queries and connections over them -- but it lets *any* process
of the same user join the group, and a second server started by mistake would
silently take a share of the traffic (possibly with another config). So the
process that starts the workers binds every socket itself, before any worker
exists, and hands them over (as nginx's master does):

1. it claims the address: an abstract Unix socket named after the protocol,
   address and port, which the kernel lets only one process bind and frees
   when that process dies (no lock file to go stale);
2. it test-binds the port *without* `SO_REUSEPORT`: the kernel refuses that
   while any socket holds the port, ours from another run, another program's,
   or a wildcard one that covers this address;
3. only then it binds the workers' sockets. With one worker there is no
   `SO_REUSEPORT` at all, and the kernel alone keeps the port exclusive.

A second server therefore fails at step 1 or 2 with `AddressInUse`, and the
caller prints one line and exits 1.
"""
from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass, field

from .listen import Listener

UDP, TCP = "udp", "tcp"


class AddressInUse(OSError):
    """Another process already listens on this address."""

    def __init__(self, listener: Listener, kind: str, detail: str = ""):
        self.listener, self.kind = listener, kind
        text = f"{listener} ({kind.upper()}): address in use"
        super().__init__(errno.EADDRINUSE, text + (f" ({detail})" if detail else ""))

    def __str__(self) -> str:
        return self.strerror


class CannotListen(OSError):
    """Binding failed for another reason (no such local address, no permission, ...)."""

    def __init__(self, listener: Listener, kind: str, exc: OSError):
        self.listener, self.kind = listener, kind
        super().__init__(exc.errno, f"{listener} ({kind.upper()}): {exc.strerror or exc}")

    def __str__(self) -> str:
        return self.strerror


@dataclass
class Owned:
    """The sockets of one listener and protocol: one per worker (or one in all)."""

    listener: Listener
    kind: str
    sockets: list[socket.socket]
    claim: socket.socket | None = field(default=None, repr=False)

    def close(self) -> None:
        """Close the sockets and give up the claim."""
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        if self.claim is not None:
            self.claim.close()
            self.claim = None

    def close_sockets(self) -> None:
        """Close only the listening sockets (the workers hold their own copies)."""
        for sock in self.sockets:
            sock.close()
        self.sockets = []


def _family(listener: Listener) -> int:
    return socket.AF_INET6 if ":" in listener.host else socket.AF_INET


def _claim(listener: Listener, kind: str) -> socket.socket:
    """Bind the abstract Unix name of (user, protocol, address, port); AddressInUse if taken."""
    name = f"\0cdnkit-port/{os.getuid()}/{kind}/{listener.host}/{listener.port}"
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        claim.bind(name)
    except OSError as exc:
        claim.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(listener, kind, "another gslb or edge server holds it") from None
        raise CannotListen(listener, kind, exc) from None
    claim.set_inheritable(False)
    return claim


def _socket(listener: Listener, kind: str, reuse_port: bool) -> socket.socket:
    sock = socket.socket(_family(listener), socket.SOCK_DGRAM if kind == UDP
                         else socket.SOCK_STREAM)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if kind == TCP:
        # Only to restart over TIME_WAIT: Linux refuses a second listener anyway.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _bind(sock: socket.socket, listener: Listener, kind: str, port: int) -> None:
    try:
        sock.bind((listener.host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(listener, kind) from None
        raise CannotListen(listener, kind, exc) from None


def own(listener: Listener, kind: str, copies: int = 1, backlog: int = 1024) -> Owned:
    """Claim `listener` for `kind` (UDP or TCP) and bind `copies` sockets to it.

    Raises AddressInUse when another process holds the address (or a wildcard
    address that covers it), CannotListen for any other bind error. TCP sockets
    are listening; all sockets are non-blocking.
    """
    # Port 0 asks the kernel for a free port: nothing to claim, nobody can share it.
    claim = _claim(listener, kind) if listener.port else None
    sockets: list[socket.socket] = []
    try:
        port = listener.port
        if copies > 1:
            probe = _socket(listener, kind, reuse_port=False)
            _bind(probe, listener, kind, port)
            port = probe.getsockname()[1]      # port 0: every copy on the one chosen
            probe.close()
        for _ in range(copies):
            sock = _socket(listener, kind, reuse_port=copies > 1)
            _bind(sock, listener, kind, port)
            port = sock.getsockname()[1]
            if kind == TCP:
                sock.listen(backlog)
            sock.setblocking(False)
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        if claim is not None:
            claim.close()
        raise
    return Owned(listener, kind, sockets, claim)


def own_all(listeners: tuple[Listener, ...] | list[Listener], kinds: tuple[str, ...],
            copies: int = 1, backlog: int = 1024) -> list[Owned]:
    """`own` for every listener and kind; all or nothing (the first error is raised)."""
    owned: list[Owned] = []
    try:
        for listener in listeners:
            for kind in kinds:
                owned.append(own(listener, kind, copies, backlog))
    except BaseException:
        for item in owned:
            item.close()
        raise
    return owned
