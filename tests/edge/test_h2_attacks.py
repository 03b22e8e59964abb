"""HTTP/2 attacks on the edge: each ends the attacker's connection (or stream), the edge
keeps serving other clients, and its memory stays bounded.

The attacker is a real HTTP/2 client over TLS: the `h2` library encodes its frames
(or hyperframe, for frames no well-behaved client sends), and what the edge answers
is read frame by frame off the socket.
"""
from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import yaml
from aiohttp import web
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

from cdnkit.yamlsrc import load_yaml_text
from edge import config as edge_config
from edge.http import h2stream
from edge.http.front import Listeners
from edge.http.h2 import H2Connection
from edge.proxy import EdgeApp
from edge.state import EdgeState
from tests.conftest import free_port, serve_app
from tests.edge.test_h2 import TlsEdge, curl, origin_app
from tests.tlsutil import CA

GOAWAY, RST_STREAM, DATA, HEADERS = 0x7, 0x3, 0x0, 0x1
ENHANCE_YOUR_CALM, PROTOCOL_ERROR, CANCEL = 0xB, 0x1, 0x8
REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"www.test.com")]


class Attacker:
    """A raw HTTP/2 client connection to the edge's TLS port."""

    def __init__(self, port: int, ca: Path, settings: dict | None = None):
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="www.test.com")
        assert self.sock.selected_alpn_protocol() == "h2"
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(cfg)
        if settings:
            self.h2.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.h2.initiate_connection()
        self.send()
        self.buffer = b""

    def send(self, data: bytes = b"") -> None:
        self.sock.sendall(data or self.h2.data_to_send())

    def get(self, path: bytes, end: bool = True, extra=()) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, REQUEST + [(b":path", path), *extra], end_stream=end)
        return sid

    def frames(self, until, timeout: float = 10.0) -> list[tuple[int, int, int, bytes]]:
        """(type, flags, stream, payload) of the frames the edge sends, until `until(frame)`
        is true for one, or the edge closes the connection."""
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) < 9 + length:
                    break
                kind, flags = self.buffer[3], self.buffer[4]
                sid = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
                frame = (kind, flags, sid, self.buffer[9:9 + length])
                self.buffer = self.buffer[9 + length:]
                out.append(frame)
                if until(frame):
                    return out
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLError, ConnectionError):
                break
            if not data:
                out.append((-1, 0, 0, b""))          # closed
                return out
            self.buffer += data
        return out

    def goaway(self, timeout: float = 10.0) -> int | None:
        """The error code of the edge's GOAWAY (None if none came)."""
        for kind, _, _, payload in self.frames(lambda f: f[0] in (GOAWAY, -1), timeout):
            if kind == GOAWAY:
                return struct.unpack("!II", payload[:8])[1]
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def rss(pid: int) -> int:
    """Resident bytes of `edge serve` and its workers."""
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


@pytest.fixture
async def edge(tmp_path):
    seen: list = []
    runner, oport = await serve_app(await origin_app(seen), "127.0.0.83")
    cfg = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                          "origin": {"http": [f"127.0.0.83:{oport}"]}}]}
    try:
        async with TlsEdge(cfg, CA(tmp_path)) as served:
            await asyncio.to_thread(curl, served, "/warm")
            served.rss0 = rss(served.proc.pid)
            yield served
    finally:
        await runner.cleanup()


async def still_serves(edge) -> None:
    """Another client gets its answer, and the edge grew by less than 64 MB."""
    info, body = await asyncio.to_thread(curl, edge, "/other")
    assert info["http_version"] == "2" and body.startswith(b"object /other")
    assert rss(edge.proc.pid) - edge.rss0 < 64 * 1024 * 1024


def attack(edge, run) -> object:
    return attack_with(edge, run, None)


def attack_with(edge, run, settings: dict | None) -> object:
    a = Attacker(edge.tls_port, edge.ca.path, settings)
    try:
        return run(a)
    finally:
        a.close()


async def test_rapid_reset_gets_goaway_enhance_your_calm(edge):
    def run(a: Attacker):
        for _ in range(50):
            for _ in range(20):
                sid = a.get(b"/reset-me")
                a.h2.reset_stream(sid)
            try:
                a.send()
            except OSError:
                break
        return a.goaway()

    assert await asyncio.to_thread(attack, edge, run) == ENHANCE_YOUR_CALM
    await still_serves(edge)


async def test_settings_and_ping_floods_get_goaway(edge):
    def flood(frame: bytes):
        def run(a: Attacker):
            try:
                for _ in range(20):
                    a.send(frame * 50)
            except OSError:
                pass
            return a.goaway()
        return run

    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    settings = SettingsFrame(0, settings={0x4: 65535}).serialize()
    for frame in (ping, settings):
        assert await asyncio.to_thread(attack, edge, flood(frame)) == ENHANCE_YOUR_CALM
    await still_serves(edge)


async def test_continuation_flood_and_huge_header_lists_end_the_connection(edge):
    def continuation_flood(a: Attacker):
        block = Encoder().encode([*REQUEST, (b":path", b"/")])
        a.send(HeadersFrame(1, data=block).serialize())             # no END_HEADERS
        filler = ContinuationFrame(1, data=b"\x00\x01a\x01b" * 3000).serialize()
        try:
            for _ in range(2000):                                    # ~30 MB if let in
                a.send(filler)
        except OSError:
            pass
        return a.goaway()

    def huge_list(a: Attacker):
        a.get(b"/", extra=[(b"x-big-%d" % i, b"v" * 4000) for i in range(40)])  # 160 KB
        try:
            a.send()
        except OSError:
            pass
        return a.goaway()

    def hpack_bomb(a: Attacker):
        # one 4 KB entry in the dynamic table, then thousands of 1-byte references to it
        enc = Encoder()
        block = enc.encode([*REQUEST, (b":path", b"/"), (b"x-bomb", b"b" * 4000)])
        a.send(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        refs = b"\xbe" * 16000                  # index 62: the newest dynamic entry
        base = enc.encode([*REQUEST, (b":path", b"/")])
        a.send(HeadersFrame(3, data=base + refs, flags=["END_HEADERS", "END_STREAM"])
               .serialize())
        return a.goaway()

    def table_too_big(a: Attacker):
        # a dynamic table size update over our SETTINGS_HEADER_TABLE_SIZE (4096)
        block = b"\x3f\xe1\x7f" + Encoder().encode([*REQUEST, (b":path", b"/")])
        a.send(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        return a.goaway()

    for run in (continuation_flood, huge_list, hpack_bomb, table_too_big):
        code = await asyncio.to_thread(attack, edge, run)
        assert code is not None and code != 0, run.__name__
        await still_serves(edge)


async def test_more_streams_than_allowed_end_the_connection(edge):
    def run(a: Attacker):
        a.frames(lambda f: f[0] == 0x4 and not f[1] & 1, 5)    # the edge's SETTINGS
        for _ in range(101):
            a.get(b"/held", end=False)          # open: the request body never comes
        a.send()
        return a.goaway()

    assert await asyncio.to_thread(attack, edge, run) == PROTOCOL_ERROR
    await still_serves(edge)


async def test_malformed_requests_are_stream_errors_and_the_connection_goes_on(edge):
    def run(a: Attacker):
        bad = [a.get(b"/x", extra=[(b"X-Upper", b"1")]),
               a.get(b"/x", extra=[(b"connection", b"keep-alive")]),
               a.get(b"/x", extra=[(b"x-split", b"a\r\nInjected: 1")]),
               a.get(b"/x", extra=[(b"host", b"other.example.com")]),
               a.get(b"/x", extra=[(b":protocol", b"websocket")])]
        good = a.get(b"/fine")
        a.send()
        resets, answered = {}, set()
        for kind, flags, sid, payload in a.frames(
                lambda f: f[0] == DATA and f[2] == good and f[1] & 1):
            if kind == RST_STREAM:
                resets[sid] = struct.unpack("!I", payload)[0]
            elif kind == HEADERS:
                answered.add(sid)
        return bad, good, resets, answered

    bad, good, resets, answered = await asyncio.to_thread(attack, edge, run)
    assert resets == {sid: PROTOCOL_ERROR for sid in bad}
    assert answered == {good}
    await still_serves(edge)


async def test_a_stream_reset_in_the_same_write_as_its_headers_costs_nothing(edge):
    """HEADERS then RST_STREAM in one read: h2 has closed the stream before the edge sees
    the request, so refusing it (malformed here) must not fail the connection."""
    def run(a: Attacker):
        for _ in range(3):
            sid = a.get(b"/x", extra=[(b"X-Upper", b"1")])
            a.h2.reset_stream(sid)
        good = a.get(b"/after-reset")
        a.send()
        return good, a.frames(lambda f: f[0] == DATA and f[2] == good and f[1] & 1)

    good, frames = await asyncio.to_thread(attack, edge, run)
    assert (-1, 0, 0, b"") not in frames and GOAWAY not in [f[0] for f in frames]
    assert any(f[0] == HEADERS and f[2] == good for f in frames)
    await still_serves(edge)


def exchange(a: Attacker, sid: int, timeout: float = 10.0) -> tuple[dict, bytes]:
    """The response headers and body of stream `sid`, decoded by the client's h2
    (a header block it cannot decode fails the connection: COMPRESSION_ERROR)."""
    a.send()
    head, body = None, b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        a.sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = a.sock.recv(65536)
        assert data, "the edge closed the connection"
        for event in a.h2.receive_data(data):
            assert not isinstance(event, h2.events.ConnectionTerminated), event
            if getattr(event, "stream_id", None) != sid:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                head = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                a.h2.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.StreamEnded):
                return head, body
        a.send()
    raise AssertionError(f"stream {sid} not answered")


@pytest.mark.parametrize("table", [0, 64, 4096])
async def test_pre_encoded_hit_heads_and_hpack_heads_mix_on_one_connection(edge, table):
    """Hits go out as header blocks encoded once (hpackblock.py), the long way through
    hpack's dynamic table; a client decoding both on one connection, whatever header
    table size it allows, sees every field of every answer."""
    def run(a: Attacker):
        out = []
        for extra in ([], [], [(b"range", b"bytes=0-9")], [], [(b"x-any", b"1")], []):
            out.append(exchange(a, a.get(b"/mixed", extra=extra)))
        head = a.h2.get_next_available_stream_id()
        a.h2.send_headers(head, [(b":method", b"HEAD"), *REQUEST[1:], (b":path", b"/mixed")],
                          end_stream=True)
        out.append(exchange(a, head))
        return out

    settings = {h2.settings.SettingCodes.HEADER_TABLE_SIZE: table}
    answers = await asyncio.to_thread(lambda: attack_with(edge, run, settings))
    full = answers[0][1]
    assert full.startswith(b"object /mixed") and len(full) > 10_000
    for (head, body), ranged in zip(answers, [0, 0, 1, 0, 0, 0, 0]):
        assert head[b":status"] == (b"206" if ranged else b"200")
        assert head[b"via"] == b"2 gslb-edge" and b"date" in head and b"age" in head
        assert body == (full[:10] if ranged else b"" if head is answers[-1][0] else full)
    statuses = [head[b"cache-status"] for head, _ in answers]
    assert b"stored" in statuses[0] and all(b"; hit; ttl=" in s for s in statuses[1:])
    assert [head[b"content-length"] for head, _ in answers[3:]] == [b"%d" % len(full)] * 4
    await still_serves(edge)


async def test_a_client_that_never_opens_its_window_is_cut_off(tmp_path, monkeypatch):
    """In process, so the stall bound can be short and the connection's state seen."""
    monkeypatch.setattr(h2stream, "STALL_TIMEOUT", 1.0)
    seen: list = []
    runner, oport = await serve_app(await origin_app(seen), "127.0.0.84")
    ca = CA(tmp_path)
    cert, key = ca.issue("www.test.com")
    cfg = {"tls": {"certificates": [{"names": ["www.test.com"], "cert": str(cert),
                                     "key": str(key)}]},
           "customers": [{"directory": "t", "cnames": ["www.test.com"],
                          "origin": {"http": [f"127.0.0.84:{oport}"]}}]}
    state = EdgeState(edge_config.build(load_yaml_text(yaml.safe_dump(cfg), "e.yaml"), "e.yaml"))
    app = EdgeApp(state)
    await app.start()
    port = free_port()
    listeners = Listeners(state, app.handle)
    await listeners.add("127.0.0.1", port, ssl=state.certs.server_context())
    served = type("E", (), {"ca": ca, "tls_port": port, "url": f"https://www.test.com:{port}"})
    try:
        await asyncio.to_thread(curl, served, "/small")          # a shortcut hit next
        await asyncio.to_thread(curl, served, "/big")            # 30 MB: the long way

        def run(a: Attacker):
            sids = [a.get(p) for p in (b"/small", b"/big", b"/small", b"/big")]
            a.send()
            resets = {}

            def note(frame) -> bool:
                if frame[0] == RST_STREAM:
                    resets[frame[2]] = struct.unpack("!I", frame[3])[0]
                return len(resets) == len(sids)

            a.frames(note, 10)
            return sids, resets

        attacker = await asyncio.to_thread(Attacker, port, ca.path, {0x4: 0})  # window 0
        try:
            task = asyncio.create_task(asyncio.to_thread(run, attacker))
            await asyncio.sleep(0.3)
            info, body = await asyncio.to_thread(curl, served, "/small")   # served meanwhile
            assert body.startswith(b"object /small")
            sids, resets = await task
            assert resets == {sid: CANCEL for sid in sids}
            conns = [c for c in listeners.conns if isinstance(c, H2Connection)]
            assert conns and all(not c._streams and not c._blocked for c in conns)
        finally:
            attacker.close()
    finally:
        listeners.close()
        await listeners.wait_closed(1.0)
        await app.stop()
        await runner.cleanup()
