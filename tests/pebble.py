"""Debian's pebble (an ACME CA for tests) on loopback, with pebble-challtestsrv as its DNS.

pebble validates HTTP-01 by looking the name up and fetching
http://<name>:<http_port>/.well-known/acme-challenge/<token>; challtestsrv answers
every A query with `address` (the edge under test) and no AAAA, so the CA reaches
the edge on loopback whatever the customer's names are.
"""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.conftest import free_port, stop
from tests.tlsutil import CA


class Pebble:
    def __init__(self, directory: Path, http_port: int, address: str = "127.0.0.1"):
        self.dir, self.http_port, self.address = directory, http_port, address
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.mgmt, self.dns = free_port(), free_port(), free_port()
        self.challtest = free_port()
        self.tls = CA(self.dir, "pebble listener CA")       # pebble's own HTTPS listener
        self.procs: list[subprocess.Popen] = []

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def listener_ca(self) -> Path:
        """Trust this to talk to pebble's ACME API."""
        return self.tls.path

    def start(self, timeout: float = 20.0) -> "Pebble":
        cert, key = self.tls.issue("127.0.0.1", "localhost")
        config = self.dir / "pebble.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": str(cert), "privateKey": str(key),
            "httpPort": self.http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        log = (self.dir / "pebble.log").open("w")
        self.procs.append(subprocess.Popen(
            ["pebble-challtestsrv", "-defaultIPv4", self.address, "-defaultIPv6", "",
             "-dns01", f"127.0.0.1:{self.dns}", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-management", f"127.0.0.1:{self.challtest}"],
            stdout=log, stderr=subprocess.STDOUT))
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
               "PEBBLE_AUTHZREUSE": "0"}
        self.procs.append(subprocess.Popen(
            ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{self.dns}"],
            stdout=log, stderr=subprocess.STDOUT, env=env))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.get(self.directory_url)
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("pebble did not start: " + (self.dir / "pebble.log").read_text())

    def get(self, url: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.tls.path))
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
            return resp.read()

    def point(self, host: str, address: str | None) -> None:
        """Make `host` resolve to `address` for the CA (None: back to the default)."""
        body = {"host": host, **({"addresses": [address]} if address else {})}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.challtest}/{'add-a' if address else 'clear-a'}",
            data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=2):
            pass

    def roots(self) -> str:
        """The PEM of the root pebble signs with (made anew at every start)."""
        return self.get(f"https://127.0.0.1:{self.mgmt}/roots/0").decode()

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)
        self.procs = []
