"""Edge proxy vs nginx, with wrk, in one run: pass-through and cache hits.

    python bench/edgebench.py [--seconds 10] [--workers N]

One nginx serves the files (the origin). In front of it, in turn: nginx
`proxy_pass` without cache, `edge serve` without cache, nginx `proxy_cache`
(with proxy_cache_lock) and `edge serve` with its cache (same workers each).
wrk measures 10 KB requests/s and 100 MB streaming throughput; RSS of each
proxy is sampled while streaming. Then 200 concurrent misses on one new key
are sent to each caching proxy and the origin's access log is counted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from dnsbench import cpu_seconds, free_port, rss_mb, stop, tree  # noqa: E402

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


def wait_port(port: int, timeout: float = 15) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


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
    peak = {"rss": rss_mb(pids)}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak["rss"] = max(peak["rss"], rss_mb(tree(proc.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    start_rss = rss_mb(pids)
    sampler.start()
    _, mbps = wrk(port, "/100m.bin", 4, seconds)
    stop.set()
    sampler.join()
    return {"name": name, "rps": rps, "cpu_us": 1e6 * cpu_small / max(rps, 1), "mbps": mbps,
            "rss_start": start_rss, "rss_peak": peak["rss"], "mixed": mixed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run bench/edge.sh, which installs it", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="edgebench-"))
    files = work / "files"
    files.mkdir()
    # nginx workers run as an unprivileged user: they must be able to read these.
    work.chmod(0o755)
    files.chmod(0o755)
    (files / "10k.bin").write_bytes(os.urandom(10240))
    with (files / "100m.bin").open("wb") as fh:
        block = os.urandom(1 << 20)
        for _ in range(100):
            fh.write(block)
    for f in files.iterdir():
        f.chmod(0o644)
    origin_port, nginx_port, edge_port = free_port(), free_port(), free_port()
    (work / "origin.conf").write_text(NGINX_ORIGIN.format(work=work, port=origin_port, files=files))
    (work / "proxy.conf").write_text(NGINX_PROXY.format(work=work, port=nginx_port,
                                                        origin=origin_port, workers=args.workers))
    cache_port, edge_cache_port = free_port(), free_port()
    (work / "edge.yaml").write_text(EDGE.format(port=edge_port, origin=origin_port,
                                                cache="false", disk='""'))
    (work / "edge-cache.yaml").write_text(EDGE.format(port=edge_cache_port, origin=origin_port,
                                                      cache="true", disk=work / "edge-disk"))
    (work / "cache.conf").write_text(NGINX_CACHE.format(work=work, port=cache_port,
                                                        origin=origin_port, workers=args.workers))
    procs = []
    results = []
    try:
        origin = subprocess.Popen(["nginx", "-c", str(work / "origin.conf"), "-g",
                                   "daemon off;"], stderr=subprocess.DEVNULL)
        procs.append(origin)
        wait_port(origin_port)
        edge_cmd = [sys.executable, "-m", "edge.cli", "serve", "--workers", str(args.workers),
                    "-c"]
        runs = [("nginx proxy", ["nginx", "-c", str(work / "proxy.conf"), "-g", "daemon off;"],
                 nginx_port),
                ("edge", edge_cmd + [str(work / "edge.yaml")], edge_port),
                ("nginx cache", ["nginx", "-c", str(work / "cache.conf"), "-g", "daemon off;"],
                 cache_port),
                ("edge cache", edge_cmd + [str(work / "edge-cache.yaml")], edge_cache_port)]
        misses = {}
        for name, cmd, port in runs:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            procs.append(proc)
            wait_port(port)
            time.sleep(0.5)
            wrk(port, "/10k.bin", 8, 2)                      # warm-up (fills caches)
            if "cache" in name:
                wrk(port, "/100m.bin", 2, 3)
            results.append(measure(name, proc, port, args.seconds, work))
            if "cache" in name:
                misses[name] = concurrent_misses(port, work, name)
            stop(proc)
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    base = results[0]
    print(f"\n{args.workers} worker(s) each; wrk -t1; 10 KB: -c32, 100 MB: -c4; "
          f"{args.seconds} s per figure; origin: nginx static")
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
              f"(target >= 0.6)")
    for name, (ok, origin_requests) in misses.items():
        print(f"{name}: 200 concurrent misses on one key -> {ok} answered 200, "
              f"{origin_requests} origin request(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
