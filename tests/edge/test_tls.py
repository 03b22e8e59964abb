"""HTTPS to clients: a certificate per edge CNAME by SNI, reload, and `follow` over HTTPS."""
from __future__ import annotations

import asyncio
import socket
import ssl

import aiohttp
import pytest
import yaml
from aiohttp import web

from cdnkit.yamlsrc import load_yaml_text
from edge import config as edge_config
from edge.http.front import Listeners
from edge.proxy import EdgeApp
from edge.state import EdgeState
from tests.conftest import free_port
from tests.tlsutil import CA


def peer_cert(port: int, ctx: ssl.SSLContext, name: str) -> dict:
    """The certificate the edge presents for SNI `name` (verified against the test CA)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_sni_picks_the_certificate_and_follow_pulls_over_https(tmp_path):
    ca = CA(tmp_path)
    www_cert, www_key = ca.issue("www.test.com")
    img_cert, img_key = ca.issue("*.img.example.com")
    origin_cert, origin_key = ca.issue("origin.test.com", "127.0.0.51")
    seen = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.scheme, request.headers["Host"]))
        return web.Response(text=f"origin saw {request.scheme}")

    origin_app = web.Application()
    origin_app.router.add_get("/{tail:.*}", handler)
    origin_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    origin_tls.load_cert_chain(origin_cert, origin_key)
    oport = free_port()
    origin_runner = web.AppRunner(origin_app)
    await origin_runner.setup()
    await web.TCPSite(origin_runner, "127.0.0.51", oport).start()
    tls_port = free_port()
    await web.TCPSite(origin_runner, "127.0.0.51", tls_port, ssl_context=origin_tls).start()

    cfg = {"origin_ca_file": str(ca.path),
           "tls": {"certificates": [
               {"names": ["www.test.com"], "cert": str(www_cert), "key": str(www_key)},
               {"names": ["*.img.example.com"], "cert": str(img_cert), "key": str(img_key)}]},
           "customers": [{"directory": "t", "cnames": ["www.test.com", "a.img.example.com"],
                          "origin": {"protocol": "follow", "host_header": "origin.test.com",
                                     "http": [f"127.0.0.51:{oport}"],
                                     "https": [f"127.0.0.51:{tls_port}"]}}]}
    raw = load_yaml_text(yaml.safe_dump(cfg), "edge.yaml")
    state = EdgeState(edge_config.build(raw, "edge.yaml"))
    app = EdgeApp(state)
    await app.start()
    eport, hport = free_port(), free_port()
    listeners = Listeners(state, app.handle)       # as `edge serve` listens
    await listeners.add("127.0.0.1", eport, ssl=state.certs.server_context())
    await listeners.add("127.0.0.1", hport)
    client_tls = ssl.create_default_context(cafile=str(ca.path))
    try:
        async with aiohttp.ClientSession() as s:
            for name in ("www.test.com", "a.img.example.com"):
                async with s.get(f"https://127.0.0.1:{eport}/x", ssl=client_tls,
                                 server_hostname=name, headers={"Host": name}) as r:
                    assert r.status == 200 and await r.text() == "origin saw https"
                peer = await asyncio.to_thread(peer_cert, eport, client_tls, name)
                assert dict(x[0] for x in peer["subject"])["commonName"] == (
                    "www.test.com" if name == "www.test.com" else "*.img.example.com")
            async with s.get(f"http://127.0.0.1:{hport}/x", headers={"Host": "www.test.com"}) as r:
                assert await r.text() == "origin saw http"      # follow: same as the client
            assert seen == [("https", "origin.test.com"), ("https", "origin.test.com"),
                            ("http", "origin.test.com")]
            # a client that only speaks TLS 1.1 is refused
            old = ssl.create_default_context(cafile=str(ca.path))
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"https://127.0.0.1:{eport}/x", ssl=old,
                                 server_hostname="www.test.com") as r:
                    await r.read()
            # reload: a new certificate for www.test.com is served to new connections
            new_cert, new_key = ca.issue("www.test.com", "renewed.test.com")
            cfg["tls"]["certificates"][0].update(cert=str(new_cert), key=str(new_key))
            state.apply(edge_config.build(load_yaml_text(yaml.safe_dump(cfg), "e.yaml"), "e.yaml"))
        async with aiohttp.ClientSession() as s:
            peer = await asyncio.to_thread(peer_cert, eport, client_tls, "www.test.com")
            assert "renewed.test.com" in [v for _, v in peer["subjectAltName"]]
    finally:
        listeners.close()
        await listeners.wait_closed(1.0)
        await app.stop()
        await origin_runner.cleanup()


def test_tls_config_errors(tmp_path):
    ca = CA(tmp_path)
    cert, _ = ca.issue("www.test.com")
    _, other_key = ca.issue("other.test.com")
    cfg = {"tls": {"certificates": [{"names": ["www.test.com"], "cert": str(cert),
                                     "key": str(other_key)}]},
           "customers": [{"directory": "t", "origin": {"http": ["127.0.0.1"]}}]}
    with pytest.raises(edge_config.ConfigError) as info:
        edge_config.build(load_yaml_text(yaml.safe_dump(cfg), "e.yaml"), "e.yaml")
    assert "cannot load the certificates" in info.value.problems[0]
    cfg["tls"]["certificates"][0]["key"] = str(tmp_path / "missing.key")
    with pytest.raises(edge_config.ConfigError) as info:
        edge_config.build(load_yaml_text(yaml.safe_dump(cfg), "e.yaml"), "e.yaml")
    assert "does not exist" in info.value.problems[0]


def test_a_load_keeps_the_contexts_of_unchanged_files_and_rebuilds_changed_ones(tmp_path):
    """A store revision with many customers must not rebuild every SSL context (nor
    every QUIC certificate); a file replaced under the same name is loaded again."""
    import os
    from pathlib import Path

    from edge.http.quiccert import CertTable
    from edge.http.tls import CertSpec, CertStore

    ca = CA(tmp_path)
    specs = tuple(CertSpec((f"www.{n}.com",), *map(str, ca.issue(f"www.{n}.com")))
                  for n in ("a", "b"))
    store, quic = CertStore(specs), CertTable()
    quic.update(specs)
    before = [store.context_for(f"www.{n}.com") for n in ("a", "b")]
    quic_before = [quic.pick(f"www.{n}.com") for n in ("a", "b")]
    assert before[0] is not before[1]
    again = tuple(CertSpec(s.names + ("img.x.com",), s.cert, s.key) for s in specs)
    store.load(again)
    quic.update(again)
    assert [store.context_for(f"www.{n}.com") for n in ("a", "b")] == before
    assert [quic.pick(f"www.{n}.com") for n in ("a", "b")] == quic_before
    # the operator replaces b's files (as `tls: certificates` on a SIGHUP): b is new
    texts = [Path(p).read_bytes() for p in ca.issue("www.b.com")]    # (in place)
    for path, text in zip((specs[1].cert, specs[1].key), texts):
        (tmp_path / "new").write_bytes(text)
        os.replace(tmp_path / "new", path)          # as an editor or certbot does
    again = tuple(list(again))                      # a new config's tuple (a SIGHUP)
    store.load(again)
    quic.update(again)
    assert store.context_for("www.a.com") is before[0]
    assert store.context_for("www.b.com") is not before[1]
    assert quic.pick("www.b.com") is not quic_before[1]
