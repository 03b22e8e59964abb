"""gslb vs gdnsd (geoip plugin, auto_dc_coords) under dnsperf, in one run.

Both servers get the same GeoIP database (data/demo-city.mmdb) and the same
three sites. Four query mixes (MIXES below): the usual one (half ECS from
many /24 and /48 networks, some in the demo database and most not, half plain
EDNS, over 50 names below the wildcard), a second one over 200 customer names
with ECS from random /24s of all IPv4 and a quarter without EDNS, and the
usual one with DO=1 on half the queries against an unsigned and a signed
gslb, and an independent mix (random names of 1-4 labels, each query drawn
half ECS from a random /24, a quarter plain EDNS, a quarter without EDNS) so
the targets are checked beyond the shapes the others favour. Prints qps,
server CPU microseconds per query (utime+stime of every server process /
answered queries) and the ratios. gslb runs with --no-http,
so the demo's dashboard port may be in use.

    python bench/dnsbench.py [--seconds 15] [--clients 32] [--workers N]
                             [--mix 1,2,do,independent]
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


def missing(tools: tuple[str, ...], installer: str) -> bool:
    """Whether a tool the bench drives is not installed (said on stderr, with the fix)."""
    gone = [tool for tool in tools if shutil.which(tool) is None]
    for tool in gone:
        print(f"{tool} is missing: run {installer}, which installs it", file=sys.stderr)
    return bool(gone)


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP, below the ephemeral range.

    A port the kernel hands out for port 0 is in the ephemeral range, and the load
    clients' and servers' own connections take their local ports from that range
    while a bench runs: one of them holding the port when its server starts makes
    the bind fail (nginx retries and gives up, gslb and the edge exit "address in
    use")."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(10000, max(low, 10001))
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


# --- queries -----------------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"


def query(qid: int, name: str, qtype: int, ecs: ipaddress._BaseNetwork | None,
          edns: bool = True, do: bool = False) -> bytes:
    head = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 1 if edns else 0)
    question = encode_name(name) + struct.pack("!HH", qtype, 1)
    if not edns:
        return head + question
    options = b""
    if ecs is not None:
        fam = 1 if ecs.version == 4 else 2
        addr = ecs.network_address.packed[:(ecs.prefixlen + 7) // 8]
        data = struct.pack("!HBB", fam, ecs.prefixlen, 0) + addr
        options = struct.pack("!HH", 8, len(data)) + data
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0x8000 if do else 0, len(options)) + options
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


def write_queries(path: Path, count: int = 4000, seed: int = 1, do_share: float = 0.0) -> None:
    """Mix 1: 50 names below the wildcard, A/AAAA, half ECS, EDNS on all.

    With `do_share`, that share of the queries (every other one at 0.5) sets DO=1.
    """
    rng = random.Random(seed)
    nets = ecs_networks(rng)
    every = round(1 / do_share) if do_share else 0
    with path.open("wb") as fh:
        for i in range(count):
            name = f"c{rng.randrange(50)}.cdn.example.net"
            qtype = 1 if rng.random() < 0.5 else 28
            ecs = rng.choice(nets) if i % 2 == 0 else None
            wire = query(i & 0xFFFF, name, qtype, ecs, do=bool(every) and i % every == 1)
            fh.write(struct.pack("!H", len(wire)) + wire)


TLDS = ("com", "net", "org", "io", "de", "co.uk", "fr", "jp")


def customer_names(count: int = 200, seed: int = 2) -> list[str]:
    """Customer CNAME targets as the demo names them: www.<customer domain>.<cdn zone>."""
    rng = random.Random(seed)
    return [f"{rng.choice(('www', 'img', 'static', 'cdn'))}.customer{i}.{rng.choice(TLDS)}"
            f".cdn.example.net" for i in range(count)]


def write_queries_mix2(path: Path, count: int = 8000, seed: int = 3) -> None:
    """Mix 2: 200 customer names below the wildcard, A/AAAA; half ECS from random /24s
    anywhere in IPv4, a quarter plain EDNS, a quarter without EDNS."""
    rng = random.Random(seed)
    names = customer_names()
    with path.open("wb") as fh:
        for i in range(count):
            qtype = 1 if rng.random() < 0.5 else 28
            kind = i % 4
            ecs = ipaddress.ip_network((rng.getrandbits(24) << 8, 24)) if kind < 2 else None
            wire = query(i & 0xFFFF, rng.choice(names), qtype, ecs, edns=kind != 3)
            fh.write(struct.pack("!H", len(wire)) + wire)


def independent_names(count: int = 200, seed: int = 5) -> list[str]:
    """Names below the zone that owe nothing to our config or the other mixes: one to
    four labels of random letters, digits and hyphens, 1 to 24 octets each."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    names: set[str] = set()
    while len(names) < count:
        labels = []
        for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
            size = rng.randint(1, 24)
            label = "".join(rng.choice(alphabet) for _ in range(size))
            if size > 2 and rng.random() < 0.2:
                cut = rng.randrange(1, size - 1)
                label = label[:cut] + "-" + label[cut + 1:]
            labels.append(label)
        names.add(".".join(labels) + ".cdn.example.net")
    return sorted(names)


def write_queries_independent(path: Path, count: int = 10000, seed: int = 6) -> None:
    """The independent mix: 200 names from `independent_names`, A/AAAA 50/50, each query
    drawn at random: half with ECS from a random IPv4 /24, a quarter plain EDNS, a
    quarter without EDNS."""
    rng = random.Random(seed)
    names = independent_names()
    with path.open("wb") as fh:
        for i in range(count):
            qtype = 1 if rng.random() < 0.5 else 28
            draw = rng.random()
            ecs = ipaddress.ip_network((rng.getrandbits(24) << 8, 24)) if draw < 0.5 else None
            wire = query(i & 0xFFFF, rng.choice(names), qtype, ecs, edns=draw < 0.75)
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


def start_gslb(work: Path, port: int, workers: int, config: Path | None = None
               ) -> subprocess.Popen:
    """`gslb serve` without a dashboard, so the demo's ports may be taken meanwhile."""
    log = (work / f"gslb-{workers}.log").open("a")
    gslb = [sys.executable, "-m", "gslb.cli"]
    return subprocess.Popen(gslb + ["serve", "-c", str(config or DATA / "gslb.yaml"), "--dns",
                                    f"127.0.0.1:{port}", "--workers", str(workers),
                                    "--no-http"],
                            stdout=log, stderr=log, cwd=ROOT)


def signed_config(work: Path) -> Path:
    """data/gslb.yaml with the zone signed (ECDSA P-256, compact denial), keys made here."""
    import yaml
    cfg = yaml.safe_load((DATA / "gslb.yaml").read_text())
    cfg["geoip"]["database"] = str(DATA / cfg["geoip"]["database"])
    cfg["health"] = {"state_file": str(work / "state.json")}
    cfg["zones"]["cdn.example.net."]["dnssec"] = {"key_directory": str(work / "keys")}
    path = work / "gslb-signed.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run([sys.executable, "-m", "gslb.cli", "dnssec", "init", "cdn.example.net.",
                    "-c", str(path)], check=True, capture_output=True, cwd=ROOT)
    return path


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


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, kernel) CPU seconds of `pids` so far."""
    user = kernel = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user, kernel = user + int(fields[11]), kernel + int(fields[12])
        except (OSError, IndexError):
            pass
    return user / CLK_TCK, kernel / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_split(pids))


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


MIXES = {
    "1": "mix 1: 4000 queries, 50 names below the wildcard, A/AAAA 50/50, EDNS on all, 50% ECS "
         "over 508 networks",
    "2": "mix 2: 8000 queries, 200 customer names below the wildcard, A/AAAA 50/50, 50% ECS "
         "from random IPv4 /24s, 25% plain EDNS, 25% no EDNS",
    "do": "mix 1 with DO=1 on half the queries; gslb unsigned and signed (ECDSA P-256, "
          "compact denial), gdnsd unsigned",
    "independent": "independent mix: 10000 queries, 200 random names (1-4 labels, not the "
                   "config's), A/AAAA 50/50, drawn per query: 50% ECS from random IPv4 /24s, "
                   "25% plain EDNS, 25% no EDNS",
}


def run_mix(mix: str, work: Path, args: argparse.Namespace) -> tuple[list[Result], bool]:
    queries = work / f"queries-{mix}.bin"
    if mix == "2":
        write_queries_mix2(queries)
    elif mix == "independent":
        write_queries_independent(queries)
    else:
        write_queries(queries, do_share=0.5 if mix == "do" else 0.0)
    runs = [("gdnsd-geoip", lambda p: start_gdnsd(work, p)),
            (f"gslb x{args.workers}", lambda p: start_gslb(work, p, args.workers))]
    if mix == "do":
        signed = signed_config(work)
        runs.append((f"gslb x{args.workers} signed",
                     lambda p: start_gslb(work, p, args.workers, signed)))
    elif args.workers != 1:
        runs.append(("gslb x1", lambda p: start_gslb(work, p, 1)))
    results: list[Result] = []
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
    agree = all(a == answers[results[0].name] for a in answers.values())
    return results, agree


def print_results(mix: str, results: list[Result], agree: bool, args: argparse.Namespace) -> None:
    base = results[0]
    print(f"\n{MIXES[mix]}; dnsperf -c {args.clients} -q 100 -l {args.seconds}")
    print(f"answers for the demo networks agree between servers: {'yes' if agree else 'NO'}")
    header = (f"{'server':<20}{'qps':>10}{'lost':>7}{'srv CPU %':>11}{'CPU us/q':>10}"
              f"{'avg lat ms':>12}{'RSS MB':>8}{'qps ratio':>11}{'CPU ratio':>11}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.name:<20}{r.qps:>10,.0f}{r.lost:>7}{r.cpu_pct:>11.0f}{r.us_per_query:>10.1f}"
              f"{r.avg_latency_ms:>12.3f}{r.rss_mb:>8.1f}{r.qps / base.qps:>11.2f}"
              f"{r.us_per_query / base.us_per_query:>11.2f}")
    if mix == "do" and len(results) == 3:
        plain, signed = results[1], results[2]
        print(f"signing costs {100 * (1 - signed.qps / plain.qps):.1f} % qps and "
              f"{100 * (signed.us_per_query / plain.us_per_query - 1):.1f} % CPU per query "
              "(target: <= 10 % qps)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="gslb workers for the main comparison (default: one per core)")
    ap.add_argument("--mix", default="1,2,do,independent",
                    help="comma-separated: 1 (usual), 2 (customers), do (DNSSEC), independent "
                         "(names and networks owing nothing to our config); default all")
    args = ap.parse_args()
    if missing(("dnsperf", "gdnsd"), "bench/dns.sh"):
        return 2
    work = Path(tempfile.mkdtemp(prefix="dnsbench-"))
    ok = True
    try:
        for mix in args.mix.split(","):
            results, agree = run_mix(mix, work, args)
            print_results(mix, results, agree, args)
            ok = ok and agree
        print("(ratios are gslb / gdnsd: targets qps >= 1.0, CPU per query <= 1.2; load "
              f"average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
