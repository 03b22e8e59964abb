"""A real etcd (Debian's etcd-server) on loopback for the tests: free ports, a temp
data dir, started and stopped by the test; kill() and start() again keep the data."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def _port() -> int:
    from tests.conftest import free_port       # below the ephemeral range, never twice

    return free_port("127.0.0.1")


class Etcd:
    """One etcd member; `url` is its --store value."""

    def __init__(self, directory: Path, tls: tuple[Path, Path] | None = None,
                 args: tuple[str, ...] = ()):
        if not Path(ETCD).exists():
            raise pytest.UsageError("etcd is missing: run the tests with ./dev test "
                                    "(it installs etcd-server)")
        self.dir = directory
        self.client, self.peer = _port(), _port()
        self.tls = tls
        self.args = args            # extra etcd flags, e.g. the demo's --max-txn-ops
        self.proc: subprocess.Popen | None = None
        self.log = directory / "etcd.log"
        scheme = "https" if tls else "http"
        self.endpoint = f"127.0.0.1:{self.client}"
        self.client_url = f"{scheme}://{self.endpoint}"

    @property
    def url(self) -> str:
        return f"etcd://{self.endpoint}"

    def start(self, timeout: float = 20.0) -> "Etcd":
        peer = f"http://127.0.0.1:{self.peer}"
        cmd = [ETCD, "--name", "t", "--data-dir", str(self.dir / "data"),
               "--listen-client-urls", self.client_url, "--advertise-client-urls",
               self.client_url, "--listen-peer-urls", peer, "--initial-advertise-peer-urls",
               peer, "--initial-cluster", f"t={peer}", "--logger", "zap",
               "--log-level", "warn", "--snapshot-count", "100000", *self.args]
        if self.tls:
            cmd += ["--cert-file", str(self.tls[0]), "--key-file", str(self.tls[1])]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {self.log.read_text()[-2000:]}")
            if self.tls is None and self.ctl("endpoint", "health", check=False) == 0:
                return self
            if self.tls is not None:
                try:
                    with socket.create_connection(("127.0.0.1", self.client), 0.2):
                        return self
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("etcd did not become healthy")

    def ctl(self, *args: str, check: bool = True) -> int:
        out = subprocess.run([ETCDCTL, f"--endpoints={self.client_url}", *args],
                             capture_output=True, text=True, timeout=10,
                             env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        if check and out.returncode:
            raise RuntimeError(out.stderr)
        return out.returncode

    def get(self, key: str) -> str:
        out = subprocess.run([ETCDCTL, f"--endpoints={self.client_url}", "get", "--print-value-only",
                              key], capture_output=True, text=True, timeout=10,
                             env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        return out.stdout.strip()

    def dump(self) -> str:
        """Every key and value, as an operator's `etcdctl get --prefix ''` shows them."""
        out = subprocess.run([ETCDCTL, f"--endpoints={self.client_url}", "get", "--prefix", ""],
                             capture_output=True, text=True, timeout=10,
                             env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        return out.stdout

    def kill(self) -> None:
        """SIGKILL, as a crash: no clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
