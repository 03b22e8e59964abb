"""Throw a million random and mutated packets at a running gslb, over UDP and TCP.

    python bench/fuzz.py [--packets 1000000] [--tcp-share 0.05] [--seconds 600]

Starts `gslb serve` on the default config (loopback, free ports), sends the
packets (bounded in count and time), then checks the server is alive, still
answers a normal query correctly, logged no traceback, and did not grow its
memory without bound. Prints the counts; exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from dnsbench import free_port, query, rss_mb, tree, wait_up  # noqa: E402

NAME = "www.test.com.cdn.example.net"


def seeds() -> list[bytes]:
    out = []
    for name in (NAME, "cdn.example.net", "ns1.cdn.example.net", "x.example.org", "a.b.c.d.e"):
        for qtype in (1, 28, 6, 2, 255, 16):
            out.append(query(1, name, qtype, None))
            out.append(query(2, name, qtype, ipaddress.ip_network("198.51.100.0/24")))
    return out


def mutate(rng: random.Random, pool: list[bytes]) -> bytes:
    kind = rng.randrange(9)
    base = bytearray(rng.choice(pool))
    if kind == 0:                                        # random bytes
        return rng.randbytes(rng.randrange(0, 600))
    if kind == 1:                                        # bit flips
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(base))
            base[pos] ^= 1 << rng.randrange(8)
        return bytes(base)
    if kind == 2:                                        # wrong section counts
        struct.pack_into("!HHHH", base, 4, *(rng.choice((0, 1, 2, 255, 65535)) for _ in range(4)))
        return bytes(base)
    if kind == 3:                                        # compression loop / forward pointer
        ptr = rng.choice((12, len(base) - 2, 0x3FFF, len(base)))
        return bytes(base[:12]) + struct.pack("!H", 0xC000 | ptr) + b"\x00\x01\x00\x01"
    if kind == 4:                                        # oversized labels / names
        label = bytes([rng.choice((63, 64, 127, 191))]) + b"a" * rng.choice((63, 64, 100))
        return bytes(base[:12]) + label * rng.randint(1, 6) + b"\x00\x00\x01\x00\x01"
    if kind == 5:                                        # bad OPT / ECS
        family = rng.choice((0, 1, 2, 3))
        source = rng.randrange(0, 200)
        addr = rng.randbytes(rng.randrange(0, 20))
        ecs = struct.pack("!HBB", family, source, rng.randrange(256)) + addr
        option = struct.pack("!HH", 8, len(ecs) + rng.choice((0, 0, 1, -1))) + ecs
        opt = b"\x00" + struct.pack("!HHIH", 41, rng.randrange(65536),
                                    rng.getrandbits(32), len(option)) + option
        head = bytes(base[:10]) + b"\x00\x01"
        qend = base.index(b"\x00", 12) + 5
        return head + bytes(base[12:qend]) + opt
    if kind == 6:                                        # truncation
        return bytes(base[:rng.randrange(len(base))])
    if kind == 7:                                        # two OPTs / OPT in the wrong section
        qend = base.index(b"\x00", 12) + 5
        opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
        counts = rng.choice(((1, 1, 0, 1), (1, 0, 0, 2), (1, 0, 1, 1)))
        return bytes(base[:4]) + struct.pack("!HHHH", *counts) + bytes(base[12:qend]) + opt * 2
    return bytes(base[:2]) + bytes([rng.randrange(256), rng.randrange(256)]) + bytes(base[4:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--tcp-share", type=float, default=0.05)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gslb-fuzz-"))
    port, http = free_port(), free_port()
    log = (work / "gslb.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "gslb.cli", "serve", "-c",
                             str(ROOT / "data/gslb.yaml"), "--dns", f"127.0.0.1:{port}",
                             "--http", f"127.0.0.1:{http}", "--workers", str(args.workers)],
                            stdout=log, stderr=log, cwd=ROOT)
    rng = random.Random(20261124)
    pool = seeds()
    sent = Counter()
    rcodes: Counter = Counter()
    try:
        wait_up(port, proc)
        for wire in pool:                                   # warm caches, then measure
            udp_roundtrip(port, wire)
        time.sleep(1)
        pids = tree(proc.pid)
        rss_start = rss_mb(pids)
        deadline = time.monotonic() + args.seconds
        n_tcp = int(args.packets * args.tcp_share)
        n_udp = args.packets - n_tcp
        start = time.monotonic()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setblocking(False)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        while sent["udp"] < n_udp and time.monotonic() < deadline:
            for _ in range(256):
                try:
                    udp.sendto(mutate(rng, pool), ("127.0.0.1", port))
                    sent["udp"] += 1
                except BlockingIOError:
                    break
                except OSError:
                    sent["udp_send_error"] += 1
            # Pace at what the server can take (~50k/s), so packets are parsed by
            # it rather than dropped by the kernel's socket buffer.
            pause = time.monotonic() + 0.004
            while True:
                wait = pause - time.monotonic()
                if not select.select([udp], [], [], max(0.0, wait))[0]:
                    if wait <= 0:
                        break
                    continue
                try:
                    data = udp.recv(65535)
                except BlockingIOError:
                    continue
                rcodes[data[3] & 0x0F if len(data) > 3 else -1] += 1
        while sent["tcp"] < n_tcp and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as t:
                    batch = []
                    for _ in range(100):
                        wire = mutate(rng, pool)[:65535]
                        batch.append(struct.pack("!H", len(wire)) + wire)
                    if rng.random() < 0.1:                  # broken framing on some
                        batch.append(b"\xff\xff" + b"x" * rng.randrange(100))
                    t.sendall(b"".join(batch))
                    t.shutdown(socket.SHUT_WR)
                    t.settimeout(0.5)
                    while True:
                        try:
                            if not t.recv(65535):
                                break
                        except (socket.timeout, ConnectionError):
                            break
                    sent["tcp"] += 100
            except OSError:
                sent["tcp_connect_error"] += 1
        elapsed = time.monotonic() - start
        time.sleep(1)
        alive = proc.poll() is None and all(os.path.exists(f"/proc/{p}") for p in pids)
        answer = udp_roundtrip(port, query(77, NAME, 1, ipaddress.ip_network("203.0.113.0/24")))
        correct = answer is not None and bytes([127, 0, 0, 13]) in answer   # Singapore's edge
        rss_end = rss_mb(tree(proc.pid))
        tracebacks = (work / "gslb.log").read_text().count("Traceback")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    names = {0: "NOERROR", 1: "FORMERR", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", -1: "runt"}
    print(f"sent: {sent['udp']:,} UDP + {sent['tcp']:,} TCP packets in {elapsed:.0f} s "
          f"({(sent['udp'] + sent['tcp']) / elapsed:,.0f}/s); send errors "
          f"{sent['udp_send_error']}, TCP connect errors {sent['tcp_connect_error']}")
    print("UDP replies by rcode: " + ", ".join(f"{names.get(k, k)} {v:,}"
                                                for k, v in rcodes.most_common())
          + f" ({sum(rcodes.values()):,} replies; the rest dropped or lost)")
    print(f"server alive: {alive}; normal query answered correctly afterwards: {bool(correct)}; "
          f"tracebacks logged: {tracebacks}")
    print(f"RSS of the server processes: {rss_start:.1f} MB at start, {rss_end:.1f} MB at end")
    ok = alive and correct and tracebacks == 0 and rss_end < rss_start * 1.5 + 20
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def udp_roundtrip(port: int, wire: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(wire, ("127.0.0.1", port))
        try:
            return s.recv(4096)
        except socket.timeout:
            return None


if __name__ == "__main__":
    sys.exit(main())
