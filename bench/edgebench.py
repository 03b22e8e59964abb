"""Edge proxy vs nginx, with wrk, in one run: pass-through and cache hits.

    python bench/edgebench.py [--seconds 10] [--workers N] [--only stream [--rounds 5]]
                              [--only h2|h3] [--sendfile]

One nginx serves the files (the origin). In front of it, in turn: nginx
`proxy_pass` without cache, `edge serve` without cache, nginx `proxy_cache`
(with proxy_cache_lock) and `edge serve` with its cache (same workers each).
wrk measures 10 KB requests/s and 100 MB streaming throughput; RSS of each
proxy is sampled while streaming. Then 200 concurrent misses on one new key
are sent to each caching proxy and the origin's access log is counted.

`--only stream`: nginx proxy_cache and the edge cache run side by side and
only 100 MB hits are measured, alternating between the two for `--rounds`
rounds (a busy box moves both alike), with the ratio of each round.
`--only h3`: HTTP/3 10 KB hits against the edge's own HTTP/2 (bench/h3bench.py).
`--only floor`: pass-through only, nginx proxy_pass, bench/floorproxy.py (the least
a Python proxy on uvloop + httptools does per request), the edge, the edge with
EDGE_HEADS=0 (its shortcut reading every head through llhttp's callbacks, not
edge/_heads.c) and with EDGE_PASS_SHORTCUT=0 (every pass-through the long way), alternating for
`--rounds` rounds, CPU per request split into user and kernel time: how much of the
gap to nginx is the edge's own work and how much any Python proxy pays.

`--only h2`: only the HTTP/2 row (bench/h2bench.py): 10 KB hits with h2load
against nginx `listen ... ssl http2` + proxy_cache, and a 100 MB hit over h2.
`--sendfile`: the edge sends disk-tier hits with sendfile(2) (`sendfile: true`).

Every child's stdout and stderr go to `<name>.log` in the work dir; when one
does not come up, the bench says which (and on which port), prints the end of
its log and keeps the work dir.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from dnsbench import cpu_seconds, cpu_split, free_port, missing, rss_mb, stop, tree  # noqa: E402
from h2bench import run_h2  # noqa: E402
from h3bench import run_h3  # noqa: E402

NGINX_ORIGIN = """
worker_processes 1;
pid {work}/origin.pid;
error_log {work}/origin-error.log;
events {{ worker_connections 1024; }}
http {{
  log_format path '$request_uri';
  access_log {work}/origin-access.log path;
  sendfile on;
  server {{ listen 127.0.0.1:{port}; root {files}; }}
}}
"""

NGINX_CACHE = """
worker_processes {workers};
pid {work}/cache.pid;
error_log {work}/cache-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  proxy_cache_path {work}/nginx-cache keys_zone=edge:10m max_size=1g;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_cache edge;
      proxy_cache_valid 200 10m;
      proxy_cache_lock on;
      add_header X-Cache $upstream_cache_status;
    }}
  }}
}}
"""

NGINX_PROXY = """
worker_processes {workers};
pid {work}/proxy.pid;
error_log {work}/proxy-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_max_temp_file_size 0;
    }}
  }}
}}
"""

EDGE = """
listen: ["127.0.0.1:{port}"]
cache_memory: 1073741824
cache_disk: {disk}
sendfile: {sendfile}
customers:
  - directory: bench
    cnames: [bench.test]
    origin: {{http: ["127.0.0.1:{origin}"]}}
    cache:
      enabled: {cache}
      max_object: 209715200
      ttl_rules: [{{match: "*", ttl: 600, override: true}}]
"""


async def _misses(port: int, path: str, count: int) -> int:
    import aiohttp
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one() -> int:
            async with s.get(f"http://127.0.0.1:{port}{path}",
                             headers={"Host": "bench.test"}) as r:
                await r.read()
                return r.status
        statuses = await asyncio.gather(*(one() for _ in range(count)))
    return sum(1 for st in statuses if st == 200)


def concurrent_misses(port: int, work: Path, name: str) -> tuple[int, int]:
    """(clients answered 200, origin requests for the key) for 200 simultaneous misses."""
    path = f"/10k.bin?coalesce={name.replace(' ', '-')}"
    ok = asyncio.run(_misses(port, path, 200))
    time.sleep(0.3)
    log = (work / "origin-access.log").read_text().splitlines()
    return ok, sum(1 for line in log if line == path)


class NotUp(RuntimeError):
    """A server of the bench did not come up; the message says which and why."""


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text) or "    (empty)"


def start(name: str, cmd: list[str], port: int, work: Path, timeout: float = 30,
          logs: tuple[Path, ...] = ()) -> subprocess.Popen:
    """Start `name` with its output in work/<name>.log and wait until `port` accepts;
    NotUp with its log's tail (and the `logs` it writes itself) when it exits or
    `timeout` passes first (the process is stopped then)."""
    log = work / f"{name.replace(' ', '-')}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            pass
        code = proc.poll()
        if code is not None or time.monotonic() > deadline:
            stop(proc)
            why = (f"exited with {code}" if code is not None
                   else f"not listening after {timeout:g} s")
            tails = "".join(f"\n  {p}:\n{log_tail(p)}" for p in (log, *logs))
            raise NotUp(f"{name} on 127.0.0.1:{port} {why}; the end of its log:{tails}")
        time.sleep(0.05)


# The first request on each connection a range (the long way through the cache), plain
# hits after it: they must cost what hits on fresh connections cost, whatever the
# connection has seen (wrk asks request() once per connection first, then per answer).
MIXED = """
local n = 0
request = function()
  n = n + 1
  if n <= 32 then
    return wrk.format("GET", nil, {["Host"] = "bench.test", ["Range"] = "bytes=0-99"})
  end
  return wrk.format("GET", nil, {["Host"] = "bench.test"})
end
"""


def wrk(port: int, path: str, conns: int, seconds: int,
        script: Path | None = None) -> tuple[float, float]:
    # --timeout: a 100 MB response takes longer than wrk's default 2 s per request.
    extra = ["-s", str(script)] if script else ["-H", "Host: bench.test"]
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "60s",
                          *extra, f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=seconds + 120).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors; the figures would be meaningless:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    scale = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1, "GB": 1024}[m.group(2)]
    return rps, float(m.group(1)) * scale


def stream(proc: subprocess.Popen, port: int, seconds: int) -> tuple[float, float, float]:
    """(MB/s of 100 MB hits with wrk -c4, RSS MB at the start, peak RSS MB while streaming)."""
    pids = tree(proc.pid)
    peak = {"rss": rss_mb(pids)}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak["rss"] = max(peak["rss"], rss_mb(tree(proc.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    start_rss = rss_mb(pids)
    sampler.start()
    try:
        _, mbps = wrk(port, "/100m.bin", 4, seconds)
    finally:
        done.set()
        sampler.join()
    return mbps, start_rss, peak["rss"]


def measure(name: str, proc: subprocess.Popen, port: int, seconds: int, work: Path) -> dict:
    pids = tree(proc.pid)
    before = cpu_seconds(pids)
    t0 = time.monotonic()
    rps, _ = wrk(port, "/10k.bin", 32, seconds)
    cpu_small = (cpu_seconds(pids) - before) / (time.monotonic() - t0)
    mixed = None
    if "cache" in name:
        script = work / "mixed.lua"
        script.write_text(MIXED)
        mixed, _ = wrk(port, "/10k.bin", 32, seconds, script)
    mbps, start_rss, peak_rss = stream(proc, port, seconds)
    return {"name": name, "rps": rps, "cpu_us": 1e6 * cpu_small / max(rps, 1), "mbps": mbps,
            "rss_start": start_rss, "rss_peak": peak_rss, "mixed": mixed}


class Bench:
    """The work dir, the origin and the proxies' configs; `launch` starts one of them."""

    def __init__(self, work: Path, workers: int, sendfile: bool):
        self.work, self.workers, self.sendfile = work, workers, sendfile
        self.procs: list[subprocess.Popen] = []
        self.origin_port = 0

    def files(self) -> None:
        files = self.work / "files"
        files.mkdir()
        # nginx workers run as an unprivileged user: they must be able to read these.
        self.work.chmod(0o755)
        files.chmod(0o755)
        (files / "10k.bin").write_bytes(os.urandom(10240))
        with (files / "100m.bin").open("wb") as fh:
            block = os.urandom(1 << 20)
            for _ in range(100):
                fh.write(block)
        for f in files.iterdir():
            f.chmod(0o644)

    def command(self, kind: str, port: int) -> tuple[list[str], tuple[Path, ...]]:
        """The command line of `kind` on `port` (its config written), and the logs it
        writes itself."""
        work = self.work
        if kind == "origin":
            text = NGINX_ORIGIN.format(work=work, port=port, files=work / "files")
        elif kind in ("proxy", "cache"):
            template = NGINX_PROXY if kind == "proxy" else NGINX_CACHE
            text = template.format(work=work, port=port, origin=self.origin_port,
                                   workers=self.workers)
        elif kind == "floor":
            return ([sys.executable, str(ROOT / "bench" / "floorproxy.py"), str(port),
                     str(self.origin_port), str(self.workers)], ())
        else:
            cache = kind == "edge-cache"
            (work / f"{kind}.yaml").write_text(EDGE.format(
                port=port, origin=self.origin_port, cache=str(cache).lower(),
                disk=work / "edge-disk" if cache else '""',
                sendfile=str(self.sendfile).lower()))
            # edge-long: pass-through without its shortcut (edge/origin/direct.py);
            # edge-llhttp: with it, every head read by llhttp's callbacks (edge/_heads.c off)
            env = {"edge-long": ["env", "EDGE_PASS_SHORTCUT=0"],
                   "edge-llhttp": ["env", "EDGE_HEADS=0"]}.get(kind, [])
            return ([*env, sys.executable, "-m", "edge.cli", "serve", "--workers",
                     str(self.workers), "-c", str(work / f"{kind}.yaml")], ())
        (work / f"{kind}.conf").write_text(text)
        return (["nginx", "-c", str(work / f"{kind}.conf"), "-g", "daemon off;"],
                (work / f"{kind}-error.log",))

    def launch(self, name: str, kind: str) -> tuple[subprocess.Popen, int]:
        """Start `kind` on a fresh port; another port if someone took that one meanwhile."""
        for attempt in range(3):
            port = free_port()
            cmd, logs = self.command(kind, port)
            try:
                proc = start(name, cmd, port, self.work, logs=logs)
            except NotUp as exc:
                if attempt == 2 or "in use" not in str(exc):
                    raise
                print(f"{name}: 127.0.0.1:{port} was taken; another port", file=sys.stderr)
                continue
            self.procs.append(proc)
            return proc, port
        raise AssertionError("unreachable")

    def stop_all(self) -> None:
        for proc in self.procs:
            stop(proc)


def warm(port: int, big: bool) -> None:
    wrk(port, "/10k.bin", 8, 2)                      # fills caches
    if big:
        wrk(port, "/100m.bin", 2, 3)


def run_all(bench: Bench, seconds: int) -> tuple[list[dict], dict]:
    """Each proxy in turn: 10 KB, mixed (caches), 100 MB, 200 concurrent misses (caches)."""
    runs = [("nginx proxy", "proxy"), ("edge", "edge"), ("nginx cache", "cache"),
            ("edge cache", "edge-cache")]
    results, misses = [], {}
    for name, kind in runs:
        proc, port = bench.launch(name, kind)
        time.sleep(0.5)
        warm(port, "cache" in name)
        results.append(measure(name, proc, port, seconds, bench.work))
        if "cache" in name:
            misses[name] = concurrent_misses(port, bench.work, name)
        stop(proc)
    return results, misses


def report_all(results: list[dict], misses: dict, workers: int, seconds: int) -> None:
    base = results[0]
    print(f"\n{workers} worker(s) each; wrk -t1; 10 KB: -c32, 100 MB: -c4; "
          f"{seconds} s per figure; origin: nginx static")
    head = (f"{'proxy':<13}{'10KB req/s':>11}{'CPU us/req':>11}{'100MB MB/s':>11}"
            f"{'RSS MB start/peak':>19}{'req/s ratio':>12}{'MB/s ratio':>11}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['name']:<13}{r['rps']:>11,.0f}{r['cpu_us']:>11.1f}{r['mbps']:>11,.0f}"
              f"{r['rss_start']:>10.1f}/{r['rss_peak']:<8.1f}{r['rps'] / base['rps']:>12.2f}"
              f"{r['mbps'] / base['mbps']:>11.2f}")
    print("(ratios are against nginx proxy; the cache rows compare with their own nginx row below)")
    by = {r["name"]: r for r in results}
    if "edge cache" in by and "nginx cache" in by:
        e, n = by["edge cache"], by["nginx cache"]
        print(f"cache hits, edge / nginx proxy_cache: 10 KB {e['rps'] / n['rps']:.2f}x "
              f"(target >= 1.0), 100 MB streaming {e['mbps'] / n['mbps']:.2f}x (target >= 0.9)")
        for r in (n, e):
            print(f"{r['name']}: 10 KB hits on connections that began with a range: "
                  f"{r['mixed']:,.0f} req/s = {r['mixed'] / r['rps']:.2f} x its hits on fresh "
                  f"connections (edge target >= {1 / 1.2:.2f})")
    if "edge" in by:
        print(f"pass-through, edge / nginx proxy: {by['edge']['rps'] / base['rps']:.2f}x "
              f"(target >= 0.8)")
    for name, (ok, origin_requests) in misses.items():
        print(f"{name}: 200 concurrent misses on one key -> {ok} answered 200, "
              f"{origin_requests} origin request(s)")


def run_stream(bench: Bench, seconds: int, rounds: int) -> None:
    """nginx proxy_cache and the edge cache side by side, 100 MB hits, alternating."""
    nginx, nginx_port = bench.launch("nginx cache", "cache")
    edge, edge_port = bench.launch("edge cache", "edge-cache")
    time.sleep(0.5)
    warm(nginx_port, True)
    warm(edge_port, True)
    print(f"\n100 MB hits, wrk -t1 -c4, {seconds} s each, {bench.workers} worker(s) each, "
          f"edge {'sendfile' if bench.sendfile else 'copy'}; alternating")
    print(f"{'round':<6}{'nginx MB/s':>11}{'edge MB/s':>11}{'ratio':>7}"
          f"{'nginx RSS start/peak':>22}{'edge RSS start/peak':>21}")
    ratios = []
    for n in range(1, rounds + 1):
        first = [(nginx, nginx_port), (edge, edge_port)]
        if n % 2 == 0:
            first.reverse()                 # neither always goes first
        got = {proc.pid: stream(proc, port, seconds) for proc, port in first}
        a, b = got[nginx.pid], got[edge.pid]
        ratios.append(b[0] / a[0])
        print(f"{n:<6}{a[0]:>11,.0f}{b[0]:>11,.0f}{ratios[-1]:>7.2f}"
              f"{a[1]:>13.1f}/{a[2]:<8.1f}{b[1]:>12.1f}/{b[2]:<8.1f}")
    print(f"100 MB streaming, edge / nginx proxy_cache: median {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}; target >= 0.9)")


def run_floor(bench: Bench, seconds: int, rounds: int) -> None:
    """Pass-through 10 KB: nginx proxy_pass, the Python floor and the edge, alternating."""
    names = [("nginx proxy", "proxy"), ("python floor", "floor"), ("edge", "edge"),
             ("edge llhttp heads", "edge-llhttp"), ("edge long way", "edge-long")]
    procs = [(name, *bench.launch(name, kind)) for name, kind in names]
    time.sleep(0.5)
    for _, _, port in procs:
        wrk(port, "/10k.bin", 8, 2)
    print(f"\npass-through 10 KB, wrk -t1 -c32, {seconds} s each, {bench.workers} worker(s) "
          f"each; alternating; CPU us per request = user + kernel")
    print(f"{'round':<6}" + "".join(f"{name + ' req/s':>20}{'us (user+kern)':>17}"
                                    for name, _, _ in procs) + f"{'floor/nginx':>12}"
          f"{'edge/nginx':>11}{'llhttp/nginx':>13}{'long/nginx':>11}")
    ratios: dict[str, list[float]] = {"floor": [], "edge": [], "llhttp": [], "long": []}
    for n in range(1, rounds + 1):
        order = procs if n % 2 else procs[::-1]        # none always goes first
        got = {}
        for name, proc, port in order:
            pids = tree(proc.pid)
            (u0, k0), t0 = cpu_split(pids), time.monotonic()
            rps, _ = wrk(port, "/10k.bin", 32, seconds)
            (u1, k1), wall = cpu_split(pids), time.monotonic() - t0
            per = 1e6 / max(rps * wall, 1)
            got[name] = (rps, (u1 - u0) * per, (k1 - k0) * per)
        base = got["nginx proxy"][0]
        ratios["floor"].append(got["python floor"][0] / base)
        ratios["edge"].append(got["edge"][0] / base)
        ratios["llhttp"].append(got["edge llhttp heads"][0] / base)
        ratios["long"].append(got["edge long way"][0] / base)
        print(f"{n:<6}" + "".join(f"{got[name][0]:>20,.0f}"
                                  f"{f'{got[name][1]:.1f}+{got[name][2]:.1f}':>17}"
                                  for name, _, _ in procs)
              + f"{ratios['floor'][-1]:>12.2f}{ratios['edge'][-1]:>11.2f}"
              f"{ratios['llhttp'][-1]:>13.2f}{ratios['long'][-1]:>11.2f}")
    for key, label in (("floor", "python floor"), ("edge", "edge"),
                       ("llhttp", "edge with every head read by llhttp (EDGE_HEADS=0)"),
                       ("long", "edge without the pass-through shortcut")):
        print(f"pass-through, {label} / nginx proxy: median "
              f"{statistics.median(ratios[key]):.2f}x (min {min(ratios[key]):.2f}, "
              f"max {max(ratios[key]):.2f}; target for the edge >= 0.8)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", choices=["stream", "h2", "h3", "floor"],
                    help="stream: only 100 MB hits, nginx cache vs edge; h2: only the "
                         "HTTP/2 row (bench/h2bench.py); h3: only HTTP/3 vs the edge's "
                         "own HTTP/2 (bench/h3bench.py); floor: pass-through against "
                         "the least a Python proxy does (bench/floorproxy.py)")
    ap.add_argument("--rounds", type=int, default=5, help="with --only stream or floor")
    ap.add_argument("--sendfile", action="store_true",
                    help="the edge sends disk-tier hits with sendfile(2)")
    args = ap.parse_args()
    if missing(("nginx", "wrk", "h2load"), "bench/edge.sh"):
        return 2
    bench = Bench(Path(tempfile.mkdtemp(prefix="edgebench-")), args.workers, args.sendfile)
    keep = False
    try:
        bench.files()
        _, bench.origin_port = bench.launch("origin", "origin")
        if args.only == "stream":
            run_stream(bench, args.seconds, args.rounds)
        elif args.only == "floor":
            run_floor(bench, args.seconds, args.rounds)
        elif args.only == "h2":
            run_h2(bench, args.seconds)
        elif args.only == "h3":
            run_h3(bench, args.seconds)
        else:
            results, misses = run_all(bench, args.seconds)
            report_all(results, misses, args.workers, args.seconds)
            run_h2(bench, args.seconds)
            run_h3(bench, args.seconds)
    except NotUp as exc:
        keep = True
        print(f"{exc}\n(the work dir {bench.work} is kept)", file=sys.stderr)
        return 1
    finally:
        bench.stop_all()
        if not keep:
            shutil.rmtree(bench.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
