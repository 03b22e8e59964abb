"""gslb vs gdnsd (geoip plugin, auto_dc_coords) under dnsperf, in one run.

Both servers get the same GeoIP database (data/demo-city.mmdb) and the same
three sites; the query mix is half ECS (from many /24 and /48 networks, some in
the demo database and most not) and half plain EDNS, A and AAAA 50/50, over
50 names below the wildcard. Prints qps, server CPU microseconds per query
(utime+stime of every server process / answered queries) and the ratios.

    python bench/dnsbench.py [--seconds 15] [--clients 32] [--workers N]
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
SITES = {"nyc": ((40.7357, -74.1724), "127.0.0.11", "2001:db8:ed9e::11"),
         "fra": ((50.0379, 8.5622), "127.0.0.12", "2001:db8:ed9e::12"),
         "sin": ((1.3644, 103.9915), "127.0.0.13", "2001:db8:ed9e::13")}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- queries -----------------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"


def query(qid: int, name: str, qtype: int, ecs: ipaddress._BaseNetwork | None) -> bytes:
    head = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 1)
    question = encode_name(name) + struct.pack("!HH", qtype, 1)
    options = b""
    if ecs is not None:
        fam = 1 if ecs.version == 4 else 2
        addr = ecs.network_address.packed[:(ecs.prefixlen + 7) // 8]
        data = struct.pack("!HBB", fam, ecs.prefixlen, 0) + addr
        options = struct.pack("!HH", 8, len(data)) + data
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(options)) + options
    return head + question + opt


def ecs_networks(rng: random.Random) -> list[ipaddress._BaseNetwork]:
    nets = [ipaddress.ip_network(n) for n in
            ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8:1::/48",
             "2001:db8:4::/48", "2001:db8:5::/48", "2001:db8:6::/48", "2001:db8:7::/48")]
    for _ in range(400):    # networks the database does not know: the unknown-location path
        nets.append(ipaddress.ip_network((rng.getrandbits(24) << 8, 24)))
    for _ in range(100):
        nets.append(ipaddress.ip_network((rng.getrandbits(48) << 80, 48)))
    return nets


def write_queries(path: Path, count: int = 4000, seed: int = 1) -> None:
    rng = random.Random(seed)
    nets = ecs_networks(rng)
    with path.open("wb") as fh:
        for i in range(count):
            name = f"c{rng.randrange(50)}.cdn.example.net"
            qtype = 1 if rng.random() < 0.5 else 28
            ecs = rng.choice(nets) if i % 2 == 0 else None
            wire = query(i & 0xFFFF, name, qtype, ecs)
            fh.write(struct.pack("!H", len(wire)) + wire)


# --- servers -----------------------------------------------------------------------------


GDNSD_CONFIG = """
options => {{
  listen => [ 127.0.0.1:{port} ]
  run_dir => {run}
  state_dir => {state}
}}
plugins => {{
  geoip => {{
    maps => {{
      demo => {{
        geoip2_db => {mmdb}
        datacenters => [nyc, fra, sin]
        auto_dc_coords => {{ {coords} }}
      }}
    }}
    resources => {{
      edge => {{
        map => demo
        service_types => up
        dcmap => {{ {dcmap} }}
      }}
    }}
  }}
}}
"""

GDNSD_ZONE = """$TTL 3600
@ SOA ns1 hostmaster.example.net. ( 2026112401 3600 600 1209600 60 )
@ NS ns1
@ NS ns2
ns1 A 127.0.0.1
ns2 A 127.0.0.2
* 30 DYNA geoip!edge
"""


def start_gdnsd(work: Path, port: int) -> subprocess.Popen:
    cfg = work / "gdnsd"
    for sub in ("zones", "geoip", "run", "state"):
        (cfg / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA / "demo-city.mmdb", cfg / "geoip" / "demo-city.mmdb")
    coords = ", ".join(f"{n} => [{c[0]}, {c[1]}]" for n, (c, _, _) in SITES.items())
    dcmap = ", ".join(f"{n} => {{ addrs_v4 => {v4}, addrs_v6 => {v6} }}"
                      for n, (_, v4, v6) in SITES.items())
    (cfg / "config").write_text(GDNSD_CONFIG.format(
        port=port, run=cfg / "run", state=cfg / "state", mmdb="demo-city.mmdb",
        coords=coords, dcmap=dcmap))
    (cfg / "zones" / "cdn.example.net").write_text(GDNSD_ZONE)
    log = (work / "gdnsd.log").open("w")
    return subprocess.Popen(["gdnsd", "-c", str(cfg), "start"], stdout=log, stderr=log)


def start_gslb(work: Path, port: int, workers: int) -> subprocess.Popen:
    log = (work / f"gslb-{workers}.log").open("w")
    gslb = [sys.executable, "-m", "gslb.cli"]
    return subprocess.Popen(gslb + ["serve", "-c", str(DATA / "gslb.yaml"), "--dns",
                                    f"127.0.0.1:{port}", "--workers", str(workers)],
                            stdout=log, stderr=log, cwd=ROOT)


def wait_up(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    probe = query(1, "c1.cdn.example.net", 1, None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            s.sendto(probe, ("127.0.0.1", port))
            try:
                s.recv(512)
                return
            except socket.timeout:
                pass
    raise RuntimeError("server did not come up")


def answer_of(port: int, net: str, qtype: int = 1) -> list[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query(7, "www.test.com.cdn.example.net", qtype, ipaddress.ip_network(net)),
                 ("127.0.0.1", port))
        data = s.recv(4096)
    import dnslib
    return sorted(str(r.rdata) for r in dnslib.DNSRecord.parse(data).rr)


def tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    kids = [int(x) for x in out.stdout.split()]
    return [pid] + [p for k in kids for p in tree(k)]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / CLK_TCK


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


@dataclass
class Result:
    name: str
    qps: float
    lost: int
    sent: int
    cpu_pct: float
    us_per_query: float
    avg_latency_ms: float
    rss_mb: float


def run_dnsperf(name: str, port: int, proc: subprocess.Popen, queries: Path, seconds: int,
                clients: int) -> Result:
    pids = tree(proc.pid)
    before = cpu_seconds(pids)
    t0 = time.monotonic()
    out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
                          "-B", "-l", str(seconds), "-c", str(clients), "-q", "100",
                          "-Q", "1000000"], capture_output=True, text=True,
                         timeout=seconds + 60)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(pids) - before
    text = out.stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", text).group(1))
    completed = int(re.search(r"Queries completed:\s+(\d+)", text).group(1))
    sent = int(re.search(r"Queries sent:\s+(\d+)", text).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", text).group(1))
    lat = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", text).group(1)) * 1000
    return Result(name, qps, lost, sent, 100 * cpu / elapsed, 1e6 * cpu / max(completed, 1), lat,
                  rss_mb(pids))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="gslb workers for the main comparison (default: one per core)")
    args = ap.parse_args()
    for tool in ("dnsperf", "gdnsd"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run bench/dns.sh, which installs it", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="dnsbench-"))
    queries = work / "queries.bin"
    write_queries(queries)
    results: list[Result] = []
    runs = [("gdnsd-geoip", lambda p: start_gdnsd(work, p)),
            (f"gslb x{args.workers}", lambda p: start_gslb(work, p, args.workers))]
    if args.workers != 1:
        runs.append(("gslb x1", lambda p: start_gslb(work, p, 1)))
    answers: dict[str, list] = {}
    for name, start in runs:
        port = free_port()
        proc = start(port)
        try:
            wait_up(port, proc)
            answers[name] = [answer_of(port, n, t) for n in
                             ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                              "2001:db8:5::/48") for t in (1, 28)]
            # warm-up: fill caches the way a long-running server has them
            subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
                            "-B", "-l", "2", "-c", "8", "-Q", "20000"], capture_output=True,
                           timeout=60)
            results.append(run_dnsperf(name, port, proc, queries, args.seconds, args.clients))
        finally:
            stop(proc)
    base = results[0]
    agree = all(a == answers[base.name] for a in answers.values())
    print(f"\nquery mix: {queries.stat().st_size // 1} bytes, 4000 queries, 50% ECS over "
          f"{len(ecs_networks(random.Random(1)))} networks, A/AAAA 50/50, EDNS on all; "
          f"dnsperf -c {args.clients} -q 100 -l {args.seconds}")
    print(f"answers for the demo networks agree between servers: {'yes' if agree else 'NO'}")
    header = (f"{'server':<14}{'qps':>10}{'lost':>7}{'srv CPU %':>11}{'CPU us/q':>10}"
              f"{'avg lat ms':>12}{'RSS MB':>8}{'qps ratio':>11}{'CPU ratio':>11}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.name:<14}{r.qps:>10,.0f}{r.lost:>7}{r.cpu_pct:>11.0f}{r.us_per_query:>10.1f}"
              f"{r.avg_latency_ms:>12.3f}{r.rss_mb:>8.1f}{r.qps / base.qps:>11.2f}"
              f"{r.us_per_query / base.us_per_query:>11.2f}")
    print("(ratios are gslb / gdnsd: qps target >= 0.75, CPU per query target <= 2.0)")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
