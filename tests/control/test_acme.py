"""Certificates from ACME, end to end: `cdnctl serve` orders from Debian's pebble (a real
ACME CA on loopback), the edge answers the CA's HTTP-01 request from the store, and
serves the certificate it gets by SNI, without a restart; failures, renewals and
removal show in the API and in `cdnctl certs`."""
from __future__ import annotations

import socket
import ssl
import sys
import subprocess
import time

import pytest
import yaml

from cdnkit.seal import new_key
from tests.conftest import ROOT, free_port
from tests.control.fleet import EdgeProc, Origin, cdnctl, customer, start_ctl, wait_for, \
    wait_healthy
from tests.pebble import Pebble
from tests.tlsutil import CA


class Recording(Origin):
    """The customer's origin, noting every path it is asked for."""

    def routes(self, app) -> None:
        from aiohttp import web

        self.paths: list[str] = []

        async def handle(request: web.Request) -> web.Response:
            self.paths.append(request.path)
            return web.Response(text=f"{self.label} {request.path}",
                                headers={"Cache-Control": "no-store"})

        app.router.add_get("/{tail:.*}", handle)


@pytest.fixture
def origin():
    server = Recording("shop")
    yield server
    server.close()


def served_cert(port: int, name: str, roots: str | None = None) -> ssl.SSLObject:
    """The leaf the edge presents for SNI `name` (checked against `roots` when given)."""
    ctx = ssl.create_default_context(cadata=roots) if roots else ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            from cryptography import x509
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def start_tls_edge(tmp, store: str, key_file, http_port: int, tls_port: int) -> EdgeProc:
    """An edge at the default worker count with a plain listener (the CA's HTTP-01
    requests) and a TLS one whose default certificate is the operator's."""
    home = tmp / "edge-a"
    home.mkdir()
    operator = CA(home, "operator CA")
    cert, key = operator.issue("*.cdn.example.net")
    path = home / "edge.yaml"
    path.write_text(yaml.safe_dump({
        "listen": [f"127.0.0.1:{http_port}"], "name": "edge-a", "state_dir": str(home / "st"),
        "tls": {"listen": [f"127.0.0.1:{tls_port}"], "h3": False, "certificates": [
            {"names": ["*.cdn.example.net"], "cert": str(cert), "key": str(key)}]}}))
    log = home / "edge.log"
    cmd = [sys.executable, "-m", "edge.cli", "serve", "-c", str(path), "--store", store,
           "--node-id", "edge-a", "--key-file", str(key_file)]
    edge = EdgeProc("edge-a", http_port, subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"),
                                                           stderr=subprocess.STDOUT), log, cmd)
    wait_healthy(edge)
    return edge


def cert_of(ctl, directory: str) -> dict:
    found = [c for c in ctl.call("GET", "/api/certificates")[1]["certificates"]
             if c["directory"] == directory]
    return found[0] if found else {}


def test_https_auto_is_ordered_validated_by_the_edge_served_renewed_and_removed(
        etcd, tmp_path, origin):
    key_file = tmp_path / "seal.key"
    key_file.write_text(new_key())
    http_port, tls_port = free_port(), free_port()
    pebble = Pebble(tmp_path / "pebble", http_port).start()
    edge = ctl = None
    try:
        edge = start_tls_edge(tmp_path, etcd.url, key_file, http_port, tls_port)
        ctl = start_ctl(tmp_path, etcd.url, "--key-file", str(key_file),
                        "--acme-directory", pebble.directory_url,
                        "--acme-ca-file", str(pebble.listener_ca), "--acme-interval", "0.5",
                        "--acme-retry", "3600")
        roots = pebble.roots()
        doc = customer("shop", origin.address, "www.shop.test", "img.shop.test")
        doc["https"] = "auto"
        assert ctl.call("POST", "/api/customers", doc)[0] == 201
        active = wait_for(lambda: (c := cert_of(ctl, "shop")).get("state") == "active" and c,
                          timeout=60, every=0.2, what="an active certificate")
        assert sorted(active["names"]) == ["img.shop.test", "www.shop.test"]
        assert active["expires"] > time.strftime("%Y-%m-%d")
        # the edge serves it for both names, verified against the CA's root, and the
        # request goes on to the origin over it
        leaf = wait_for(lambda: (c := served_cert(tls_port, "www.shop.test", roots))
                        and format(c.serial_number, "x") == active["serial"] and c,
                        timeout=20, what="the edge serving the ACME certificate")
        assert format(served_cert(tls_port, "img.shop.test", roots).serial_number, "x") == \
            active["serial"]
        assert leaf.issuer != leaf.subject
        ctx = ssl.create_default_context(cadata=roots)
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="www.shop.test") as tls:
            tls.sendall(b"GET /a.txt HTTP/1.1\r\nHost: www.shop.test\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"shop /a.txt"), answer
        # other names keep the operator's certificate
        assert served_cert(tls_port, "x.cdn.example.net").subject.rfc4514_string() == \
            "CN=*.cdn.example.net"
        # the challenges are gone once the order is done; the CA asked the edge, the
        # origin never saw /.well-known/acme-challenge/
        assert "/cdn/config/acme/" not in etcd.dump()
        assert origin.paths == ["/a.txt"]

        # a name the CA cannot reach at an edge fails, with the CA's reason, backs off,
        # and leaves the working certificate of the other customer alone
        pebble.point("www.broken.test", "127.0.0.2")
        bad = customer("broken", origin.address, "www.broken.test")
        bad["https"] = "auto"
        assert ctl.call("POST", "/api/customers", bad)[0] == 201
        failed = wait_for(lambda: (c := cert_of(ctl, "broken")).get("state") == "failed"
                          and c, timeout=60, every=0.2, what="a failed order")
        assert "www.broken.test" in failed["reason"] and failed["attempts"] == 1
        assert failed["next_attempt"] > time.time() + 3000          # --acme-retry 3600
        listing = cdnctl(etcd.url, "certs")
        assert listing.returncode == 0
        line = [row for row in listing.stdout.splitlines() if row.startswith("broken")][0]
        assert "failed" in line and "www.broken.test" in line and "next attempt in" in line
        assert cdnctl(etcd.url, "certs", "--check").returncode == 5
        assert cert_of(ctl, "shop")["state"] == "active"
        # fixed (the name now reaches the edge): asking to renew retries at once
        pebble.point("www.broken.test", None)
        assert ctl.call("POST", "/api/customers/broken/certificate/renew")[0] == 202
        wait_for(lambda: cert_of(ctl, "broken").get("state") == "active", timeout=60,
                 every=0.2, what="the retried order")

        # a renewal: a new certificate, served to new connections without a restart
        pid = edge.proc.pid
        assert cdnctl(etcd.url, "certs", "--renew", "shop").returncode == 0
        renewed = wait_for(lambda: (c := cert_of(ctl, "shop")).get("state") == "active" and
                           c["serial"] != active["serial"] and c, timeout=60, every=0.2,
                           what="a renewed certificate")
        wait_for(lambda: format(served_cert(tls_port, "www.shop.test", roots).serial_number,
                                "x") == renewed["serial"], timeout=20, what="the new one served")
        assert edge.proc.pid == pid and edge.proc.poll() is None

        # no longer https: auto: its certificate leaves the store and the edges
        plain = customer("shop", origin.address, "www.shop.test", "img.shop.test")
        revision = ctl.call("GET", "/api/customers/shop")[1]["revision"]
        assert ctl.call("PUT", "/api/customers/shop", plain,
                        headers={"If-Match": str(revision)})[0] == 200
        wait_for(lambda: etcd.get("/cdn/config/certs/shop") == "", timeout=20,
                 what="the certificate deleted")
        wait_for(lambda: served_cert(tls_port, "www.shop.test").subject.rfc4514_string() ==
                 "CN=*.cdn.example.net", timeout=20, what="the edge back on its default")
        assert cert_of(ctl, "shop") == {}
    finally:
        for proc in (ctl, edge):
            if proc is not None:
                proc.stop()
        pebble.stop()



def test_when_the_issuer_orders():
    from control.acme import DAY, AcmeOptions, backoff, due

    now = time.time()
    opts = AcmeOptions(renew_before=30 * DAY, retry=60, retry_max=3600)
    doc = {"https": "auto", "cnames": ["www.a.test", "A.test."]}

    def iso(seconds: float) -> str:
        import datetime
        return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat()

    cert = {"names": ["a.test", "www.a.test"], "not_after": iso(now + 80 * DAY)}
    active = {"state": "active", "issued": now - 10 * DAY}
    assert due("a", doc, None, {}, now, opts).why == "new"
    assert due("a", doc, cert, active, now, opts) is None
    assert due("a", {**doc, "cnames": ["a.test"]}, cert, active, now, opts).why == \
        "names changed"
    ending = {**cert, "not_after": iso(now + 20 * DAY)}
    assert due("a", doc, ending, {**active, "issued": now - 70 * DAY}, now, opts).why == \
        "renewal"
    # a setting longer than half the lifetime does not make it order at every look
    long = AcmeOptions(renew_before=120 * DAY)
    assert due("a", doc, cert, {**active, "issued": now - DAY}, now, long) is None
    assert due("a", doc, cert, {**active, "renew": True}, now, opts).why == "asked"
    # someone is on it; a failure waits for its back-off, then retries
    assert due("a", doc, None, {"state": "issuing", "since": now - 5}, now, opts) is None
    assert due("a", doc, None, {"state": "issuing", "since": now - 3600}, now, opts).why == \
        "new"
    failed = {"state": "failed", "next_attempt": now + 30, "attempts": 2}
    assert due("a", doc, None, failed, now, opts) is None
    assert due("a", doc, None, failed, now + 31, opts).why == "retry"
    assert [backoff(n, opts) for n in (1, 2, 3, 7, 20)] == [60, 120, 240, 3600, 3600]
    assert due("a", {"https": "auto", "cnames": []}, None, {}, now, opts) is None
