"""cdnkit.ports: a server's workers share a port, a second server is refused by the kernel."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from cdnkit.listen import Listener
from cdnkit.ports import TCP, UDP, AddressInUse, CannotListen, own, own_all
from tests.conftest import ROOT, free_port

OTHER_PROCESS = """
import sys
from cdnkit.listen import Listener
from cdnkit.ports import own, AddressInUse
try:
    own(Listener("127.0.0.1", int(sys.argv[1])), sys.argv[2], int(sys.argv[3]))
    print("bound")
except AddressInUse as exc:
    print(f"refused: {exc}")
"""


def in_other_process(port: int, kind: str, copies: int) -> str:
    return subprocess.run([sys.executable, "-c", OTHER_PROCESS, str(port), kind, str(copies)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()


@pytest.mark.parametrize("kind", [UDP, TCP])
@pytest.mark.parametrize("copies", [1, 2])
def test_a_second_owner_is_refused_in_this_and_another_process(kind, copies):
    port = free_port()
    first = own(Listener("127.0.0.1", port), kind, copies)
    try:
        assert len(first.sockets) == copies
        assert {s.getsockname()[1] for s in first.sockets} == {port}
        with pytest.raises(AddressInUse) as info:
            own(Listener("127.0.0.1", port), kind, 2)
        assert str(info.value).startswith(f"127.0.0.1:{port} ({kind.upper()}): address in use")
        for other_copies in (1, 2):
            assert in_other_process(port, kind, other_copies).startswith("refused: ")
    finally:
        first.close()
    # Closed: the claim went with it, and the address is free again.
    again = own(Listener("127.0.0.1", port), kind, copies)
    again.close()


@pytest.mark.parametrize("kind", [UDP, TCP])
def test_another_programs_reuseport_socket_is_not_joined(kind):
    """A socket with SO_REUSEPORT of another program (same user) on the port: joining its
    group would split its traffic with us. The test bind without SO_REUSEPORT sees it."""
    port = free_port()
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == UDP
                             else socket.SOCK_STREAM)
    stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    stranger.bind(("127.0.0.1", port))
    if kind == TCP:
        stranger.listen(8)
    try:
        with pytest.raises(AddressInUse):
            own(Listener("127.0.0.1", port), kind, 2)
    finally:
        stranger.close()


def test_copies_share_the_traffic():
    """Two UDP copies in one SO_REUSEPORT group: datagrams from many source ports reach both."""
    port = free_port()
    owned = own(Listener("127.0.0.1", port), UDP, 2)
    try:
        for i in range(64):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"%d" % i, ("127.0.0.1", port))
        got = []
        for sock in owned.sockets:
            sock.settimeout(0.5)
            n = 0
            try:
                while True:
                    sock.recv(100)
                    n += 1
            except (TimeoutError, BlockingIOError):
                pass
            got.append(n)
        assert sum(got) == 64 and all(got), got
    finally:
        owned.close()


def test_all_or_nothing_and_other_bind_errors():
    port = free_port()
    taken = own(Listener("::1", port), TCP)
    try:
        with pytest.raises(AddressInUse):
            own_all([Listener("127.0.0.1", port), Listener("::1", port)], (UDP, TCP), 2)
        # The IPv4 sockets bound before the failure were given back.
        own(Listener("127.0.0.1", port), UDP, 2).close()
    finally:
        taken.close()
    with pytest.raises(CannotListen) as info:
        own(Listener("192.0.2.1", port), TCP)        # not an address of this machine
    assert str(info.value).startswith(f"192.0.2.1:{port} (TCP): ")
