"""Certificates and ACME HTTP-01 challenges from the store, at edges that follow it at
the default worker count: a handshake presents the store's certificate for the
customer's names without a restart (uploaded > ACME > the operator's), a certificate
that does not open is reported and the last good one kept, and a challenge is
answered by every worker on any Host, never by the customer's origin."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import time

from aiohttp import web
from cryptography import x509

from cdnkit.certs import inspect
from cdnkit.keys import Keys
from cdnkit.seal import Sealer, new_key
from tests.conftest import free_port
from tests.control.fleet import Origin, customer, node, start_edge, wait_for
from tests.edge.h3client import h3_connect
from tests.etcd import ETCDCTL
from tests.tlsutil import CA

KEYS = Keys()
WORKERS = os.cpu_count() or 1
CONNECTIONS = 4 * WORKERS            # new connections per check: the kernel spreads them


class CountingOrigin(Origin):
    """An origin that counts what it is asked, and would answer any challenge path."""

    def routes(self, app: web.Application) -> None:
        self.asked: list[str] = []

        async def handle(request: web.Request) -> web.Response:
            self.asked.append(request.path)
            return web.Response(text=f"{self.label} {request.path}",
                                headers={"Cache-Control": "max-age=600"})

        app.router.add_get("/{tail:.*}", handle)


def _etcd(etcd, *args: str) -> int:
    """etcdctl `args` -w json; the store revision it made."""
    out = subprocess.run([ETCDCTL, f"--endpoints={etcd.client_url}", *args, "-w", "json"],
                         capture_output=True, text=True, timeout=10, check=True,
                         env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    return int(json.loads(out.stdout)["header"]["revision"])


def put(etcd, key: str, value: dict) -> int:
    return _etcd(etcd, "put", key, json.dumps(value))


def applied(etcd, name: str, revision: int) -> None:
    """Until every worker's node record says it applied `revision`."""
    ids = [name] + [f"{name}~{i}" for i in range(1, WORKERS)]
    wait_for(lambda: all(node(etcd, i).get("applied", 0) >= revision for i in ids),
             timeout=15, what=f"all {WORKERS} workers at revision {revision}")


def pem(ca: CA, *names: str) -> tuple[str, str, str]:
    """(cert PEM, key PEM, serial hex) of a fresh certificate for `names`."""
    cert, key = ca.issue(*names)
    cert_text, key_text = cert.read_text(), key.read_text()
    return cert_text, key_text, inspect(cert_text, key_text).serial


def acme_doc(sealer: Sealer, cert: str, key: str, where: str) -> dict:
    info = inspect(cert, key)
    return {"cert": cert, "key": sealer.seal(key, where), "names": list(info.names),
            "not_after": info.not_after.isoformat(), "serial": info.serial}


def served_serial(port: int, name: str) -> str:
    """The serial of the certificate a new TLS connection with SNI `name` is shown."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), 3) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


def all_serve(etcd, rev: int, port: int, name: str, serial: str) -> None:
    """Once every worker applied `rev`: `name` gets `serial` over many new connections."""
    applied(etcd, "edge-a", rev)
    seen = {served_serial(port, name) for _ in range(CONNECTIONS)}
    assert seen == {serial}, seen


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "5", *args], capture_output=True,
                          text=True, timeout=15)


def tls_edge(tmp_path, etcd, ca: CA, key_file, name: str = "edge-a"):
    """An edge with a TLS listener whose YAML holds the operator's default certificate."""
    cert, key = ca.issue("edge.example.net")
    tls_port = free_port()
    edge = start_edge(tmp_path, etcd.url, name, "--key-file", str(key_file), workers=None,
                      config={"tls": {"listen": [f"127.0.0.1:{tls_port}"], "certificates": [
                          {"names": ["edge.example.net"], "cert": str(cert),
                           "key": str(key)}]}})
    operator = inspect(cert.read_text(), key.read_text()).serial
    return edge, tls_port, operator


def test_a_handshake_gets_the_stores_certificate_for_the_customers_names(etcd, tmp_path):
    ca = CA(tmp_path)
    key_file = tmp_path / "seal.key"
    key_file.write_text(new_key())
    sealer = Sealer.from_file(key_file)
    origin = Origin("cust")
    doc = {**customer("a", origin.address, "www.cust.com", "img.cust.com"), "https": "auto"}
    put(etcd, KEYS.customer("a"), doc)
    edge, port, operator = tls_edge(tmp_path, etcd, ca, key_file)
    try:
        assert served_serial(port, "www.cust.com") == operator       # nothing issued yet
        # an ACME certificate: served at once, for the customer's names, by every worker
        cert1, key1, serial1 = pem(ca, "www.cust.com", "img.cust.com")
        rev = put(etcd, KEYS.cert("a"), acme_doc(sealer, cert1, key1, KEYS.cert("a") + "/key"))
        all_serve(etcd, rev, port, "www.cust.com", serial1)
        all_serve(etcd, rev, port, "img.cust.com", serial1)
        assert served_serial(port, "elsewhere.example.org") == operator
        got = curl("--cacert", str(ca.path), "--resolve", f"www.cust.com:{port}:127.0.0.1",
                   f"https://www.cust.com:{port}/x")
        assert got.returncode == 0 and got.stdout == "cust /x", got     # the name checks
        asyncio.run(_h3_checks(port, ca))
        # renewed: new handshakes get the new one
        cert2, key2, serial2 = pem(ca, "www.cust.com", "img.cust.com")
        rev = put(etcd, KEYS.cert("a"), acme_doc(sealer, cert2, key2, KEYS.cert("a") + "/key"))
        all_serve(etcd, rev, port, "www.cust.com", serial2)
        # sealed for another place: left out, reported, the last good one kept
        cert3, key3, serial3 = pem(ca, "www.cust.com")
        rev = put(etcd, KEYS.cert("a"), acme_doc(sealer, cert3, key3, KEYS.cert("b") + "/key"))
        applied(etcd, "edge-a", rev)
        assert "does not open" in " ".join(node(etcd, "edge-a")["rejected"]["a"])
        assert {served_serial(port, "www.cust.com") for _ in range(CONNECTIONS)} == {serial2}
        # the customer's own certificate wins over the ACME one
        cert4, key4, serial4 = pem(ca, "www.cust.com", "img.cust.com")
        where = KEYS.customer("a") + "/https/key"
        upload = {**doc, "https": {"cert": cert4, "key": sealer.seal(key4, where)}}
        rev = put(etcd, KEYS.customer("a"), upload)
        all_serve(etcd, rev, port, "www.cust.com", serial4)
        assert "a" not in node(etcd, "edge-a")["rejected"]
        # an uploaded one sealed for another customer: rejected, the good one kept
        cert5, key5, _ = pem(ca, "www.cust.com")
        bad = {**doc, "https": {"cert": cert5, "key": sealer.seal(
            key5, KEYS.customer("b") + "/https/key")}}
        rev = put(etcd, KEYS.customer("a"), bad)
        applied(etcd, "edge-a", rev)
        assert "does not open" in " ".join(node(etcd, "edge-a")["rejected"]["a"])
        assert {served_serial(port, "www.cust.com") for _ in range(CONNECTIONS)} == {serial4}
        assert edge.get("/y", "www.cust.com") == (200, "cust /y")     # the customer stays
        assert served_serial(port, "elsewhere.example.org") == operator
        # files: keys readable by the edge alone, only the ones in use left
        state = tmp_path / "edge-a" / "state" / "certs"
        dirs = sorted(state.iterdir())
        assert len(dirs) == WORKERS
        for d in dirs:
            keys = list(d.glob("*.key"))
            assert len(keys) == 1 and len(list(d.glob("*.crt"))) == 1, list(d.iterdir())
            assert keys[0].stat().st_mode & 0o777 == 0o600
        # back to auto with no ACME document: the operator's again
        _etcd(etcd, "del", KEYS.cert("a"))
        rev = put(etcd, KEYS.customer("a"), doc)
        all_serve(etcd, rev, port, "www.cust.com", operator)
    finally:
        edge.stop()
        origin.close()


async def _h3_checks(port: int, ca: CA) -> None:
    """Over HTTP/3 too: the client checks the store's certificate against the name."""
    for _ in range(2 * WORKERS):
        async with h3_connect(port, ca.path, server_name="www.cust.com") as client:
            answer = await client.request("GET", "/h3", f"www.cust.com:{port}")
            assert answer.status == 200 and bytes(answer.body) == b"cust /h3", answer


def test_acme_challenges_are_answered_from_the_store_by_every_worker(etcd, tmp_path):
    ca = CA(tmp_path)
    key_file = tmp_path / "seal.key"
    key_file.write_text(new_key())
    origin = CountingOrigin("cust")
    put(etcd, KEYS.customer("a"), customer("a", origin.address, "www.cust.com"))
    edge, tls_port, _ = tls_edge(tmp_path, etcd, ca, key_file)
    token, answer = "tok-1_A", "tok-1_A.thumbprint_x-9"
    url = f"http://127.0.0.1:{edge.port}/.well-known/acme-challenge/"
    try:
        rev = put(etcd, KEYS.challenges + token, {"authorization": answer,
                                                  "names": ["www.cust.com"],
                                                  "expires": time.time() + 600})
        put(etcd, KEYS.challenges + "old", {"authorization": "old.t", "names": [],
                                            "expires": time.time() - 1})
        applied(etcd, "edge-a", rev + 1)
        for _ in range(CONNECTIONS):              # a new connection each: every worker
            got = curl("-i", url + token, "-H", "Host: www.cust.com")
            head, _, body = got.stdout.partition("\n\n")      # text mode: \r\n read as \n
            assert head.startswith("HTTP/1.1 200") and body == answer, got.stdout
            assert "content-type: text/plain\n" in head.lower() + "\n"
            assert "cache-control: no-store" in head.lower()
        for host in ("edge.example.net", "127.0.0.1"):          # any Host
            assert curl(url + token, "-H", f"Host: {host}").stdout == answer
        head = curl("-I", url + token, "-H", "Host: www.cust.com").stdout
        assert head.startswith("HTTP/1.1 200") and f"content-length: {len(answer)}" in \
            head.lower()
        # HTTPS, HTTP/2 and HTTP/1.1, on a customer's name
        for version in ("--http2", "--http1.1"):
            got = curl("-k", version, "-w", "\n%{http_version} %{http_code}", "--resolve",
                       f"www.cust.com:{tls_port}:127.0.0.1",
                       f"https://www.cust.com:{tls_port}/.well-known/acme-challenge/{token}")
            assert got.stdout == f"{answer}\n{version[6:]} 200", got
        # absolute-form, and HTTP/3
        got = curl("--request-target", f"http://www.cust.com/.well-known/acme-challenge/{token}",
                   f"http://127.0.0.1:{edge.port}/")
        assert got.stdout == answer, got
        assert asyncio.run(_h3_challenge(tls_port, ca, token)) == (200, answer.encode())
        for unknown in ("nope", "old", ""):
            got = curl("-o", "/dev/null", "-w", "%{http_code}", url + unknown,
                       "-H", "Host: www.cust.com")
            assert got.stdout == "404", (unknown, got)
        rev = _etcd(etcd, "del", KEYS.challenges + token)
        applied(etcd, "edge-a", rev)
        for _ in range(CONNECTIONS):
            got = curl("-o", "/dev/null", "-w", "%{http_code}", url + token,
                       "-H", "Host: www.cust.com")
            assert got.stdout == "404", got
        assert origin.asked == []                 # never asked of the origin
        assert edge.get("/.well-known/other", "www.cust.com") == (200,
                                                                   "cust /.well-known/other")
        assert origin.asked == ["/.well-known/other"]
    finally:
        edge.stop()
        origin.close()


async def _h3_challenge(port: int, ca: CA, token: str) -> tuple[int, bytes]:
    async with h3_connect(port, ca.path, server_name="edge.example.net") as client:
        answer = await client.request("GET", f"/.well-known/acme-challenge/{token}",
                                      f"www.cust.com:{port}")
        return answer.status, bytes(answer.body)
