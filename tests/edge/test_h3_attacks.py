"""HTTP/3 defences against real datagrams on loopback: anti-amplification, Retry with
validated tokens, an Initial flood from many sources, malformed datagrams. `edge serve`
at the default worker count, a real aioquic client checking it still answers."""
from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from edge.http.quictoken import RetryTokens, TokenError
from tests.edge.h3client import h3_connect
from tests.edge.test_h2_attacks import rss
from tests.edge.test_h3 import QuickTls, origin  # noqa: F401  (the origin fixture)
from tests.tlsutil import CA


def initial(port: int, token: bytes = b"") -> bytes:
    """A real client's first datagram (a padded Initial with its ClientHello)."""
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                               server_name="www.test.com")
    config.token = token
    quic = QuicConnection(configuration=config)
    quic.connect(("127.0.0.1", port), now=time.monotonic())
    return b"".join(data for data, _ in quic.datagrams_to_send(now=time.monotonic()))


def received_for(sock: socket.socket, seconds: float) -> int:
    """Bytes that arrive on `sock` in `seconds`, never answered."""
    sock.settimeout(0.2)
    total, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            total += len(sock.recv(65536))
        except TimeoutError:
            pass
    return total


async def still_answers(edge, **kw) -> None:
    auth = f"www.test.com:{edge.tls_port}"
    async with h3_connect(edge.tls_port, edge.ca.path, **kw) as client:
        answer = await client.request("GET", "/still", auth, timeout=20)
        assert answer.status == 200 and bytes(answer.body).startswith(b"object /still")


@pytest.fixture
async def edge(origin, tmp_path):  # noqa: F811
    url, _ = origin
    async with QuickTls(url, CA(tmp_path)) as served:
        await still_answers(served)
        served.rss0 = rss(served.proc.pid)
        yield served


async def test_an_unvalidated_address_gets_at_most_three_times_what_it_sent(edge):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        hello = initial(edge.tls_port)
        sock.sendto(hello, ("127.0.0.1", edge.tls_port))
        # the edge retransmits on its timers; the client never ACKs or speaks again
        got = await asyncio.to_thread(received_for, sock, 4.0)
    finally:
        sock.close()
    assert 0 < got <= 3 * len(hello), (got, len(hello))


async def test_retry_forced_real_client_passes_and_forged_tokens_get_nothing(origin, tmp_path):  # noqa: F811
    url, _ = origin
    async with QuickTls(url, CA(tmp_path), "--h3-retry") as edge:
        await still_answers(edge)              # aioquic's client follows the Retry
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        try:
            sock.sendto(initial(edge.tls_port), ("127.0.0.1", edge.tls_port))
            retry = await asyncio.to_thread(received_for, sock, 1.0)
            assert 0 < retry < 200                 # one small Retry, no handshake
            forged = initial(edge.tls_port, token=os.urandom(60))
            sock.sendto(forged, ("127.0.0.1", edge.tls_port))
            assert await asyncio.to_thread(received_for, sock, 1.5) == 0
        finally:
            sock.close()


def test_retry_tokens_are_address_bound_time_limited_and_cid_bound():
    tokens = RetryTokens(lifetime=10)
    addr, now = ("127.0.0.9", 4433), 1_000_000.0
    token = tokens.issue(addr, b"original", b"retrycid", now=now)
    assert tokens.check(token, addr, b"retrycid", now=now + 1) == b"original"
    bad = [(token, ("127.0.0.10", 4433), b"retrycid", now),        # another address
           (token, ("127.0.0.9", 4434), b"retrycid", now),         # another port
           (token, addr, b"othercid", now),                        # another CID
           (token, addr, b"retrycid", now + 11),                   # expired
           (token[:-1] + bytes([token[-1] ^ 1]), addr, b"retrycid", now),   # forged MAC
           (RetryTokens().issue(addr, b"original", b"retrycid", now=now),   # another key
            addr, b"retrycid", now),
           (b"short", addr, b"retrycid", now)]
    for args in bad:
        with pytest.raises(TokenError):
            tokens.check(args[0], args[1], args[2], now=args[3])


def _flood(port: int, sources: int, per_source: int) -> int:
    """Initials from `sources` addresses 127.1.x.y, each from a fresh port; the
    datagrams are real ClientHellos, each with its own connection ID (a new
    connection to the edge), half of them real, half garbled after the header (new
    CIDs the edge cannot decrypt: no state may stay for those)."""
    sent = 0
    for i in range(sources):
        host = f"127.1.{i // 250}.{i % 250 + 1}"
        for j in range(per_source):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((host, 0))
                hello = initial(port)
                if j % 2:
                    hello = hello[:30] + os.urandom(len(hello) - 30)
                sock.sendto(hello, ("127.0.0.1", port))
                sent += 1
            finally:
                sock.close()
    return sent


async def test_an_initial_flood_from_many_sources_does_not_take_the_edge_down(edge):
    flood = asyncio.create_task(asyncio.to_thread(_flood, edge.tls_port, 600, 4))
    await asyncio.sleep(0.3)
    await still_answers(edge)                   # during the flood
    assert await flood == 2400
    # the flood's handshakes (never finished) are still in progress: a new client is
    # asked to prove its address first, with a Retry (long header, type 3) and no state
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.3.0.1", 0))
        sock.settimeout(5)
        sock.sendto(initial(edge.tls_port), ("127.0.0.1", edge.tls_port))
        first = await asyncio.to_thread(sock.recv, 65536)
    finally:
        sock.close()
    assert first[0] & 0xf0 == 0xf0 and len(first) < 200, first[:8]
    await still_answers(edge)                   # after it
    assert edge.proc.poll() is None
    assert rss(edge.proc.pid) - edge.rss0 < 96 * 1024 * 1024
    text = edge.log.read_text()
    assert "Traceback" not in text


async def test_malformed_datagrams_are_dropped_and_never_crash_a_worker(edge):
    hello = initial(edge.tls_port)
    junk = [b"", b"\x00", os.urandom(40), b"\xc0" + os.urandom(1300),      # long header junk
            b"\x40" + os.urandom(30), hello[:100], hello[:1199],            # short, truncated
            hello[:7] + os.urandom(len(hello) - 7),                         # a garbled Initial
            bytes([hello[0]]) + b"\x00\x00\x00\x00" + os.urandom(1300),     # version negotiation
            bytes([hello[0]]) + b"\xfa\xfa\xfa\xfa" + hello[5:]]            # unknown version
    for i in range(300):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((f"127.2.0.{i % 200 + 1}", 0))
            for data in junk:
                sock.sendto(data, ("127.0.0.1", edge.tls_port))
        finally:
            sock.close()
    await still_answers(edge)
    assert edge.proc.poll() is None and "Traceback" not in edge.log.read_text()


async def test_connections_per_worker_are_bounded(tmp_path):
    """One H3Server on a real UDP socket with room for 3 connections: real clients'
    Initials past that get nothing and are counted; freed room is used again."""
    from prometheus_client import CollectorRegistry, Counter

    from edge.http.h3 import H3Server
    from edge.http.tls import CertSpec

    cert, key = CA(tmp_path).issue("www.test.com")
    registry = CollectorRegistry()
    bad = Counter("bad", "bad", ["reason"], registry=registry)

    async def handler(request, reply) -> None:
        reply.simple(200, "ok\n")

    server = H3Server(handler, None, lambda: (CertSpec(("www.test.com",), str(cert),
                                                       str(key)),), set(), bad,
                      max_connections=3)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: server,
                                                       local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    socks = []
    try:
        for i in range(5):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"127.4.0.{i + 1}", 0))
            sock.setblocking(False)
            socks.append(sock)
            sock.sendto(initial(port), ("127.0.0.1", port))
        await asyncio.sleep(0.5)
        answered = []
        for sock in socks:
            try:
                answered.append(len(sock.recv(65536)) > 0)
            except BlockingIOError:
                answered.append(False)
        assert answered == [True, True, True, False, False]
        assert len(server.all) == 3
        assert registry.get_sample_value("bad_total", {"reason": "h3_connections_full"}) == 2
        for conn in list(server.all):
            conn.abort()
        assert not server.all and not server.by_cid
        socks[3].sendto(initial(port), ("127.0.0.1", port))
        await asyncio.sleep(0.3)
        assert len(socks[3].recv(65536)) > 0 and len(server.all) == 1
    finally:
        for conn in list(server.all):
            conn.abort()
        transport.close()
        for sock in socks:
            sock.close()
