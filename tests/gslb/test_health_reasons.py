"""What operators read: short stable reasons, no latency for a failed check, a fresh reason
and time in state after an override is cleared, the latest check result in the view."""
from __future__ import annotations

import asyncio
import re

from aiohttp import web

from gslb.health import HealthBoard, State, targets
from gslb.model import AdminState, CheckKind
from tests.conftest import free_port, serve_app
from tests.gslb.test_health import (
    app_with,
    config_with,
    probe_once,
    self_signed,
    spec,
    target,
)

# Nothing of Python's or aiohttp's own wording: no exception names, errno numbers,
# "Connect call failed ('127.0.0.1', 9)" tuples, or addresses the operator already sees.
RAW = re.compile(r"Errno|Error\b|Exception|call failed|\(['\"]|\d+\.\d+\.\d+\.\d+|\[|\]")


def clean(detail: str) -> str:
    assert not RAW.search(detail), detail
    return detail


async def test_failures_have_short_stable_reasons(tmp_path):
    ok, detail = await probe_once(target(spec(), free_port()))
    assert (ok, clean(detail)) == (False, "connection refused")
    ok, detail = await probe_once(target(spec(CheckKind.TCP, port=free_port()), free_port()))
    assert (ok, clean(detail)) == (False, "connection refused")

    async def garbage(reader, writer):
        writer.write(b"\x00\xffthis is not HTTP\r\n\r\n")
        await writer.drain()
        writer.close()

    async def hang_up(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    for handler, want in ((garbage, "bad HTTP response"),
                          (hang_up, "connection closed by the edge")):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        try:
            ok, detail = await probe_once(target(spec(), server.sockets[0].getsockname()[1]))
            assert (ok, clean(detail)) == (False, want)
        finally:
            server.close()
            await server.wait_closed()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    runner, port = await serve_app(app_with(ok), ssl_context=self_signed(tmp_path))
    try:
        ok, detail = await probe_once(target(spec(CheckKind.HTTPS, host="edge.test"), port))
        assert (ok, clean(detail)) == (False, "TLS certificate rejected: self-signed certificate")
        ok, detail = await probe_once(target(spec(CheckKind.HTTP), port))   # HTTP to TLS
        assert not ok and clean(detail) in ("bad HTTP response",
                                            "connection closed by the edge")
    finally:
        await runner.cleanup()
    ok, detail = await probe_once(target(spec(), 80, host="no-such-edge.invalid"))
    assert (ok, clean(detail)) == (False, "DNS lookup failed")


def board_and_clock():
    now = [1000.0]
    config = config_with({"web": {"type": "tcp", "port": 9, "rise": 2, "fall": 3}},
                         {"fra": "web", "nyc": "web", "sin": "web"})
    board = HealthBoard(config, clock=lambda: now[0])
    return board, {t.ip: t for t in targets(config)}, now


def test_a_failed_check_shows_no_latency():
    board, ts, now = board_and_clock()
    t = ts["127.0.0.12"]
    for each in ts.values():
        board.record(each, True, "TCP connect ok", 0.002)
    assert board.current().addresses[t.ip].last_latency_ms == 2.0
    board.record(t, False, "timed out after 2 s", 2.0)
    entry = board.current().addresses[t.ip]
    assert (entry.last_ok, entry.last_detail, entry.last_latency_ms) == (
        False, "timed out after 2 s", None)


def test_the_latest_check_result_is_shown_before_any_state_change():
    board, ts, now = board_and_clock()
    for each in ts.values():
        board.record(each, True, "TCP connect ok", 0.001)
    now[0] = 1010.0
    board.record(ts["127.0.0.12"], False, "connection refused", 0.001)   # 1 < fall 3
    entry = board.current().addresses["127.0.0.12"]
    assert entry.state is State.UP
    assert (entry.last_ok, entry.last_detail, entry.last_checked) == (
        False, "connection refused", 1010.0)


def test_clearing_an_override_gives_a_fresh_reason_and_time_in_state():
    board, ts, now = board_and_clock()
    for each in ts.values():
        board.record(each, True, "TCP connect ok", 0.001)
    up = board.view.addresses["127.0.0.12"]
    assert (up.state, up.since, up.reason) == (State.UP, 1000.0, "first check: TCP connect ok")

    now[0] = 2000.0
    board.set_address("127.0.0.12", AdminState.DOWN)
    assert board.view.addresses["127.0.0.12"].since == 2000.0
    now[0] = 3000.0
    board.set_address("127.0.0.12", None)
    cleared = board.view.addresses["127.0.0.12"]
    assert cleared.state is State.UP and cleared.since == 3000.0       # up again since now
    assert cleared.reason == "override cleared; the checks say up (last check: TCP connect ok)"
    now[0] = 3100.0
    board.set_site("nyc", AdminState.DRAIN)                  # another publication...
    assert board.view.addresses["127.0.0.12"].reason == cleared.reason    # ...keeps it
    assert board.view.addresses["127.0.0.12"].since == 3000.0

    # Forced up while the checks also say up: clearing changes the reason, not the time.
    board.set_site("sin", AdminState.UP)
    now[0] = 3200.0
    board.set_site("sin", None)
    sin = board.view.addresses["127.0.0.13"]
    assert sin.since == 1000.0 and sin.reason.startswith("override cleared; the checks say up")

    # Clearing while the checks say down: down since the clear, with the checks' reason.
    now[0] = 4000.0
    board.set_address("127.0.0.12", AdminState.UP)
    for _ in range(3):
        board.record(ts["127.0.0.12"], False, "connection refused", 0.001)
    assert board.view.addresses["127.0.0.12"].state is State.UP          # forced
    now[0] = 4100.0
    board.set_address("127.0.0.12", None)
    down = board.view.addresses["127.0.0.12"]
    assert (down.state, down.since) == (State.DOWN, 4100.0)
    assert down.reason == ("override cleared; the checks say down "
                           "(last check: connection refused)")
    # A state change by the checks themselves brings their own reason back.
    now[0] = 4200.0
    for _ in range(2):
        board.record(ts["127.0.0.12"], True, "TCP connect ok", 0.001)
    back = board.view.addresses["127.0.0.12"]
    assert (back.state, back.since) == (State.UP, 4200.0)
    assert back.reason == "2 successes in a row (rise 2): TCP connect ok"
