"""gslb._udpbatch.Batch giving the CPU away before it sleeps (yield_first in the C).

Real UDP sockets on loopback and the compiled helper, driven from this thread the
way a worker's UDP thread drives it: recv (waits without the GIL), reply (sendmmsg).
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from gslb import server

pytestmark = pytest.mark.skipif(not server.batching(),
                                reason="gslb._udpbatch is built by pip install -e .")

WAIT_MS = 5             # SO_RCVTIMEO: how long an empty recv blocks here


def echo(data: bytes, client: str, limit: int) -> bytes:
    """Stands in for Responder.answer: the query back."""
    return data


def on_error(data: bytes, exc: BaseException) -> None:
    raise AssertionError(f"answer failed: {exc!r}")


@pytest.fixture
def pair():
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, WAIT_MS * 1000))
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli.settimeout(3)
    yield srv, cli
    srv.close()
    cli.close()


def serve_burst(batch, srv: socket.socket, cli: socket.socket, count: int) -> int:
    """Send `count` datagrams at once, answer them in one batch, then ask for the next
    batch while the socket is empty (this is where a loaded batch yields). Returns
    what that next recv read."""
    for i in range(count):
        cli.sendto(struct.pack("!H", i) + b"q" * 30, srv.getsockname())
    # loopback queues each datagram before sendto returns: one recvmmsg takes them all
    assert batch.recv(srv.fileno()) == count
    batch.reply(srv.fileno(), echo, on_error)
    assert sorted(struct.unpack("!H", cli.recv(64)[:2])[0] for _ in range(count)) \
        == list(range(count))
    return batch.recv(srv.fileno())


def test_only_a_loaded_batch_yields_and_only_when_asked(pair):
    srv, cli = pair
    batch = server._udpbatch.Batch(yield_cpu=True)
    assert serve_burst(batch, srv, cli, 3) == 0
    assert batch.stats()["yields"] == 0, "a light batch sleeps at once"
    assert serve_burst(batch, srv, cli, 10) == 0
    assert batch.stats()["yields"] == 1
    # more already waiting after a loaded batch: read at once, no yield
    for i in range(10):
        cli.sendto(b"\x00\x01" + b"q" * 30, srv.getsockname())
    assert batch.recv(srv.fileno()) == 10
    batch.reply(srv.fileno(), echo, on_error)
    for _ in range(10):
        cli.recv(64)
    for i in range(4):
        cli.sendto(b"\x00\x02" + b"q" * 30, srv.getsockname())
    assert batch.recv(srv.fileno()) == 4
    assert batch.stats()["yields"] == 1
    plain = server._udpbatch.Batch()
    assert serve_burst(plain, srv, cli, 10) == 0
    assert plain.stats()["yields"] == 0


def test_a_cpu_bound_neighbour_pauses_the_yields(pair):
    """With a busy loop on the same CPU, each yield waits out its time slice: the
    batch stops yielding for a while instead of making every loaded batch wait."""
    srv, cli = pair
    cpus = os.sched_getaffinity(0)
    cpu = min(cpus)
    hog = subprocess.Popen([sys.executable, "-c",
                            f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        os.sched_setaffinity(0, {cpu})      # this thread only: the recv/yield runs here
        time.sleep(0.3)                     # the neighbour is running
        batch = server._udpbatch.Batch(yield_cpu=True, slow_us=200)
        rounds = 40
        for _ in range(rounds):
            assert serve_burst(batch, srv, cli, 10) == 0
        stats = batch.stats()
    finally:
        os.sched_setaffinity(0, cpus)
        hog.kill()
        hog.wait(5)
    assert stats["pauses"] >= 1, stats
    assert stats["yields"] < rounds, stats
    assert stats["yield_avg_us"] > 200, stats
