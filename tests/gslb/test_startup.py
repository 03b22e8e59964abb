"""Starting `gslb serve`: workers forked with the signed config, replaced by exec."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dns.message
import dns.name
import dns.rdatatype

from tests.conftest import ROOT, free_port, load_default, stop, udp_query, wait_ready, write_config
from tests.gslb.signed import ZONE, check_signed, do_query, make_signed, signed_dict

SHOP = "www.shop.com.cdn.example.net."


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def signed_answer(port: int, name: str, qtype: str, ecs: str) -> bytes:
    wire = do_query(name, qtype, ecs)
    out = udp_query(port, wire)
    assert out is not None
    return out[2:]                                   # all but the ID


def wait_for(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_forked_workers_sign_alike_and_a_replacement_is_execd(start_server, tmp_path):
    make_signed(tmp_path)                                # the keys, in tmp_path/keys
    srv = start_server(signed_dict(tmp_path / "keys"), workers=1)
    first = children_of(srv.proc.pid)
    assert len(first) == 1
    assert "worker" not in cmdline(first[0]), "the first worker is forked, not exec'd"
    before = signed_answer(srv.port, SHOP, "A", "192.0.2.0/24")
    keys_wire = signed_answer(srv.port, ZONE, "DNSKEY", "192.0.2.0/24")
    os.kill(first[0], signal.SIGKILL)
    assert wait_for(lambda: [p for p in children_of(srv.proc.pid) if p != first[0]]), \
        srv.logtext()
    again = children_of(srv.proc.pid)[0]
    assert "worker" in cmdline(again), "a replacement is exec'd as `gslb worker`"
    wait_ready(srv.port, srv.proc, srv.log)
    after = signed_answer(srv.port, SHOP, "A", "192.0.2.0/24")
    # Deterministic ECDSA: the inherited and the adopted signatures are the same bytes.
    assert after == before
    keys = dns.message.from_wire(b"\0\0" + keys_wire)
    dnskeys = keys.find_rrset(keys.answer, dns.name.from_text(ZONE), 1, dns.rdatatype.DNSKEY)
    assert check_signed(dns.message.from_wire(b"\0\0" + after), dnskeys) == 2   # CNAME, A


DRIVER = textwrap.dedent("""
    import asyncio, subprocess, os, signal, sys
    from cdnkit.listen import listener_arg
    from cdnkit.logs import setup
    from gslb.config import load_config
    from gslb.supervisor import Supervisor

    setup()
    path, port = sys.argv[1], sys.argv[2]
    sup = Supervisor(path, load_config(path), (listener_arg(f"127.0.0.1:{port}"),), 2, None,
                     "ready: driver")
    sup.fork_workers()
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(os.getpid())],
                         capture_output=True, text=True)
    victim = int(out.stdout.split()[0])
    # No event loop has run: no worker has had its hello, none can be ready.
    os.kill(victim, signal.SIGKILL)
    print("victim", victim, flush=True)
    sys.exit(asyncio.run(sup.run()))
""")


def test_a_forked_worker_killed_before_its_hello_is_replaced(tmp_path):
    port = free_port()
    log = tmp_path / "driver.log"
    path = write_config(tmp_path, load_default())
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(path), str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_ready(port, proc, log)
        assert wait_for(lambda: "ready: driver" in log.read_text()), log.read_text()
        text = log.read_text()
        victim = int(text.split("victim ")[1].split()[0])
        assert f"worker {victim} exited with -9 before it was ready; starting a new one" in text
        now = children_of(proc.pid)
        assert len(now) == 2 and victim not in now
        assert sorted("worker" in cmdline(pid) for pid in now) == [False, True]
        assert proc.poll() is None
    finally:
        stop(proc)
