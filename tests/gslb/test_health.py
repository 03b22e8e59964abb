"""The prober against real servers, the rise/fall state machine, overrides on disk."""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import ssl
import time
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from cdnkit.yamlsrc import load_yaml_text
from gslb.config import build_config
from gslb.health import PUBLISH_DELAY, HealthBoard, State, Target, targets
from gslb.model import AdminState, CheckKind, CheckSpec
from gslb.probe import Prober
from tests.conftest import DATA, free_port, load_default, serve_app


def spec(kind=CheckKind.HTTP, **kw) -> CheckSpec:
    base = dict(name="t", kind=kind, port=0, interval=0.2, timeout=0.5, rise=2, fall=3)
    base.update(kw)
    return CheckSpec(**base)


def config_with(checks: dict, site_checks: dict | None = None):
    cfg = load_default(checks=False)
    cfg["geoip"] = {"database": str(DATA / "demo-city.mmdb")}
    cfg["checks"] = checks
    for site, check in (site_checks or {}).items():
        cfg["sites"][site]["check"] = check
    cfg["health"] = {"state_file": None}
    raw = load_yaml_text(yaml.safe_dump(cfg, sort_keys=False), "t.yaml")
    return build_config(raw, "t.yaml", Path("."))


def app_with(handler) -> web.Application:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


async def probe_once(target: Target) -> tuple[bool, str]:
    board = HealthBoard(config_with({}))
    prober = Prober(board)
    await prober.start()
    try:
        return await prober.probe(target)
    finally:
        await prober.stop()


def target(spec_: CheckSpec, port: int, host: str = "127.0.0.1") -> Target:
    return Target("127.0.0.12", "fra", spec_, host, port)


async def test_http_check_status_body_and_host_header():
    seen = {}

    async def handler(request):
        seen["host"] = request.headers["Host"]
        if request.path == "/bad":
            return web.Response(status=503, text="nope")
        return web.Response(text="edge ok")

    runner, port = await serve_app(app_with(handler))
    try:
        ok, detail = await probe_once(target(spec(path="/healthz", host="edge.example"), port))
        assert ok and detail == "HTTP 200" and seen["host"] == "edge.example"
        ok, detail = await probe_once(target(spec(path="/bad"), port))
        assert not ok and detail == "HTTP 503 (expected 200)"
        ok, _ = await probe_once(target(spec(path="/bad", expect=(503,)), port))
        assert ok
        ok, detail = await probe_once(target(spec(body="healthy"), port))
        assert not ok and "lacks 'healthy'" in detail
        ok, _ = await probe_once(target(spec(body="edge ok"), port))
        assert ok
    finally:
        await runner.cleanup()


async def test_hanging_server_times_out():
    async def handler(request):
        await asyncio.sleep(30)
        return web.Response()

    runner, port = await serve_app(app_with(handler))
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ok, detail = await probe_once(target(spec(timeout=0.3), port))
        assert not ok and detail == "timed out after 0.3 s"
        assert loop.time() - start < 2
    finally:
        await runner.cleanup()


async def test_garbage_response_and_refused_connection():
    async def garbage(reader, writer):
        writer.write(b"\x00\xffthis is not HTTP\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ok, detail = await probe_once(target(spec(), port))
        assert not ok and ("bad HTTP response" in detail or "closed" in detail)
    finally:
        server.close()
        await server.wait_closed()
    ok, detail = await probe_once(target(spec(), free_port()))
    assert not ok and detail == "connection refused"


def self_signed(tmp: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("edge.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return ctx


async def test_https_check_verifies_tls_unless_told_not_to(tmp_path):
    async def handler(request):
        return web.Response(text="ok")

    runner, port = await serve_app(app_with(handler), ssl_context=self_signed(tmp_path))
    try:
        ok, detail = await probe_once(target(spec(CheckKind.HTTPS, host="edge.test"), port))
        assert not ok and "certificate" in detail.lower()
        ok, detail = await probe_once(target(spec(CheckKind.HTTPS, verify_tls=False), port))
        assert ok and detail == "HTTP 200"
    finally:
        await runner.cleanup()


async def test_dns_failure_of_probe_target_and_tcp_check():
    ok, detail = await probe_once(target(spec(), 80, host="no-such-edge.invalid"))
    assert not ok and detail.startswith(("DNS lookup failed", "connect failed"))
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ok, detail = await probe_once(target(spec(CheckKind.TCP, port=port), port))
        assert ok and "TCP connect" in detail
    finally:
        server.close()
        await server.wait_closed()


def board_with_checks(fall=3, rise=2):
    config = config_with({"web": {"type": "http", "port": 9, "interval": 1, "timeout": 0.5,
                                  "rise": rise, "fall": fall}},
                         {"nyc": "web", "fra": "web", "sin": "web"})
    return HealthBoard(config), {t.ip: t for t in targets(config)}


def test_nothing_is_down_before_the_first_round_completes():
    board, ts = board_with_checks()
    views = []
    board.subscribe(views.append)
    items = list(ts.values())
    for t in items[:-1]:
        board.record(t, False, "connect failed", 0.01)
    assert not views                                       # no rebuild, nothing down yet
    assert all(h.state is State.UNKNOWN for h in board.view.addresses.values())
    board.record(items[-1], True, "HTTP 200", 0.01)
    assert len(views) == 1                                 # one rebuild for the whole round
    assert board.view.state(items[0].ip) is State.DOWN
    assert board.view.state(items[-1].ip) is State.UP


def test_rise_and_fall_hysteresis(caplog):
    board, ts = board_with_checks(fall=3, rise=2)
    for t in ts.values():
        board.record(t, True, "HTTP 200", 0.01)
    t = ts["127.0.0.12"]
    caplog.set_level(logging.INFO, "gslb.health")
    caplog.clear()
    for _ in range(2):
        board.record(t, False, "HTTP 503", 0.01)
    board.record(t, True, "HTTP 200", 0.01)               # a success resets the run
    for _ in range(2):
        board.record(t, False, "HTTP 503", 0.01)
    assert board.view.state(t.ip) is State.UP              # 2 < fall
    board.record(t, False, "HTTP 503", 0.01)
    assert board.view.state(t.ip) is State.DOWN
    assert "3 failures in a row (fall 3): HTTP 503" in board.view.addresses[t.ip].reason
    board.record(t, True, "HTTP 200", 0.01)
    assert board.view.state(t.ip) is State.DOWN            # 1 < rise
    board.record(t, True, "HTTP 200", 0.01)
    assert board.view.state(t.ip) is State.UP
    changes = [r for r in caplog.records if t.ip in r.getMessage()]
    assert len(changes) == 2                               # each change logged once
    assert [(c.old, c.new) for c in board.history if c.ip == t.ip] == [
        (State.UNKNOWN, State.UP), (State.UP, State.DOWN), (State.DOWN, State.UP)]


def test_overrides_beat_checks_and_survive_restart(tmp_path):
    state = tmp_path / "state" / "overrides.json"
    config = config_with({"web": {"type": "tcp", "port": 9}}, {"fra": "web"})
    board = HealthBoard(config, state_file=str(state))
    for t in targets(config):
        board.record(t, True, "ok", 0.001)
    board.set_site("fra", AdminState.DRAIN)
    board.set_address("127.0.0.11", AdminState.DOWN)
    assert board.view.state("127.0.0.12") is State.DRAIN
    assert board.view.addresses["127.0.0.12"].forced == "site"
    assert json.loads(state.read_text()) == {"sites": {"fra": "drain"},
                                             "addresses": {"127.0.0.11": "down"}}
    assert not list(state.parent.glob("*.tmp"))
    again = HealthBoard(config, state_file=str(state))
    assert again.view.state("127.0.0.12") is State.DRAIN
    assert again.view.state("127.0.0.11") is State.DOWN
    again.set_site("fra", None)
    assert json.loads(state.read_text())["sites"] == {}
    with pytest.raises(KeyError):
        again.set_site("atlantis", AdminState.DOWN)


async def test_many_flapping_checks_stay_bounded(caplog):
    """1500 targets, half of them flapping, probed with at most 50 in flight.

    In flight means checks the prober still waits for. Under load some checks time
    out: the prober then closes the connection and starts another check, while a
    plain handler would still be sleeping and be counted twice (the "59 <= 50" of
    a busy machine). So the handler is cancelled when its connection goes
    (aiohttp's handler_cancellation): the old connection's close reaches the
    server before the new connection's request can, so its count is exact.
    """
    flips = {"n": 0}
    in_flight = {"now": 0, "max": 0}

    async def handler(request):
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        try:
            await asyncio.sleep(0.01)
            flips["n"] += 1
            odd = int(request.path.strip("/")) % 2
            return web.Response(status=500 if odd and flips["n"] % 3 else 200)
        finally:
            in_flight["now"] -= 1

    runner = web.AppRunner(app_with(handler), handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    cfg = load_default(checks=False)
    cfg["geoip"] = {"database": str(DATA / "demo-city.mmdb")}
    cfg["health"] = {"state_file": None, "max_concurrent": 50}
    cfg["checks"] = {f"c{i}": {"type": "http", "port": port, "path": f"/{i}", "interval": 0.3,
                               "timeout": 0.25, "rise": 1, "fall": 1} for i in range(2)}
    cfg["sites"]["big"] = {"lat": 0, "lon": 0, "addresses": [
        {"address": f"10.{i // 250}.{i % 250}.1", "check": f"c{i % 2}", "probe": "127.0.0.1"}
        for i in range(1500)]}
    cfg["services"]["*.cdn.example.net."]["pool"].append("big")
    config = build_config(load_yaml_text(yaml.safe_dump(cfg), "t.yaml"), "t.yaml", Path("."))
    board = HealthBoard(config)
    views = []
    board.subscribe(views.append)
    prober = Prober(board)
    caplog.set_level(logging.INFO, "gslb.health")
    started = time.monotonic()
    await prober.start()
    try:
        # Until every target has been probed at least twice (bounded: 20 s).
        for _ in range(200):
            if flips["n"] >= 3000 and board.first_round_done:
                break
            await asyncio.sleep(0.1)
    finally:
        elapsed = time.monotonic() - started
        await prober.stop()
        await runner.cleanup()
    assert board.first_round_done
    assert in_flight["max"] <= 50
    # Hundreds of state changes a second are published to the answer builders (every
    # worker rebuilds its tables for each) at most once per PUBLISH_DELAY, not once each.
    changes = sum(board.change_counts.values())
    assert changes > 1000
    assert len(views) <= elapsed / PUBLISH_DELAY + 2, (len(views), changes, elapsed)
    logged = [r for r in caplog.records if "->" in r.getMessage()]
    assert len(logged) == len(board.history) or len(board.history) == board.history.maxlen
    assert sum(board.change_counts.values()) == len(logged)
    assert flips["n"] >= 3000
