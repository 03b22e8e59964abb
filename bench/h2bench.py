"""HTTP/2 hits: the edge vs nginx (`listen ... ssl http2` + proxy_cache), with h2load.

    python bench/edgebench.py --only h2 [--seconds 10] [--workers N]
    python bench/h2bench.py idle [--conns 10000]    # RSS of idle h2 connections

The h2 row: 10 KB hits with `h2load -c 10 -m 10`, req/s and CPU per request of each
server (same workers, same origin), and their ratio. Then a 100 MB hit over h2 to
the edge (curl --http2), with the edge's RSS sampled while it streams. `idle` opens
that many TLS connections that speak the HTTP/2 preface and then wait, and states
the edge's RSS before and after (RLIMIT_NOFILE raised to its hard limit first).
"""
from __future__ import annotations

import argparse
import asyncio
import re
import resource
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dnsbench import cpu_seconds, rss_mb, stop, tree  # noqa: E402

NGINX_H2 = """
worker_processes {workers};
pid {work}/h2nginx.pid;
error_log {work}/h2nginx-error.log;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 10000000;      # else a GOAWAY after 1000 requests per connection
  proxy_cache_path {work}/nginx-h2-cache keys_zone=h2edge:10m max_size=1g;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_cache h2edge;
      proxy_cache_valid 200 10m;
      proxy_cache_lock on;
    }}
  }}
}}
"""

EDGE_H2 = """
listen: ["127.0.0.1:{plain}"]
cache_memory: 1073741824
cache_disk: {disk}
tls:
  listen: ["127.0.0.1:{port}"]
  certificates: [{{names: [bench.test], cert: "{cert}", key: "{key}"}}]
customers:
  - directory: bench
    cnames: [bench.test]
    origin: {{http: ["127.0.0.1:{origin}"]}}
    cache:
      max_object: 209715200
      ttl_rules: [{{match: "*", ttl: 600, override: true}}]
"""


def certificate(work: Path) -> tuple[Path, Path]:
    """A self-signed certificate for bench.test (the clients do not verify it)."""
    cert, key = work / "bench.pem", work / "bench.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=bench.test", "-addext",
                    "subjectAltName=DNS:bench.test"], check=True, capture_output=True)
    key.chmod(0o644)               # nginx workers run unprivileged
    return cert, key


def h2load(port: int, path: str, requests: int, conns: int = 10, streams: int = 10) -> float:
    """req/s of h2load -n `requests` (-D would count the streams cut at its end as
    errors); RuntimeError when any request failed."""
    out = subprocess.run(["h2load", "-c", str(conns), "-m", str(streams), "-n", str(requests),
                          "-H", ":authority: bench.test", f"https://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=300).stdout
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored", out)
    if done is None or int(done.group(4)) or int(done.group(5)) or "h2" not in out:
        raise RuntimeError(f"h2load saw errors; the figures would be meaningless:\n{out}")
    return float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))


def measure(proc: subprocess.Popen, port: int, seconds: int) -> tuple[float, float]:
    """(req/s, CPU us per request) of 10 KB hits, for about `seconds`."""
    rate = h2load(port, "/10k.bin", 3000)                 # fills the cache, warms up
    pids = tree(proc.pid)
    before, t0 = cpu_seconds(pids), time.monotonic()
    rps = h2load(port, "/10k.bin", max(3000, int(rate * seconds)))
    cpu = (cpu_seconds(pids) - before) / (time.monotonic() - t0)
    return rps, 1e6 * cpu / max(rps, 1)


def big_hit(proc: subprocess.Popen, port: int) -> tuple[float, float, float]:
    """(MB/s, RSS MB before, peak RSS MB) of a 100 MB hit over h2 (curl --http2)."""
    url = f"https://bench.test:{port}/100m.bin"
    curl = ["curl", "-sk", "--http2", "--resolve", f"bench.test:{port}:127.0.0.1", "-o",
            "/dev/null", "-w", "%{speed_download} %{http_version}", url]
    subprocess.run(curl, capture_output=True, timeout=120)          # stored
    peak = {"rss": rss_mb(tree(proc.pid))}
    start = peak["rss"]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak["rss"] = max(peak["rss"], rss_mb(tree(proc.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = subprocess.run(curl, capture_output=True, text=True, timeout=120).stdout.split()
    finally:
        done.set()
        sampler.join()
    if out[1:] != ["2"]:
        raise RuntimeError(f"the 100 MB hit was not HTTP/2: {out}")
    return float(out[0]) / 2**20, start, peak["rss"]


def run_h2(bench, seconds: int) -> None:
    """The h2 row (bench is edgebench.Bench, its origin running)."""
    work = bench.work
    cert, key = certificate(work)
    nginx_port, edge_port = _ports(bench)
    (work / "h2nginx.conf").write_text(NGINX_H2.format(
        work=work, port=nginx_port, origin=bench.origin_port, workers=bench.workers,
        cert=cert, key=key))
    nginx = bench_start(bench, "nginx h2", ["nginx", "-c", str(work / "h2nginx.conf"),
                                            "-g", "daemon off;"], nginx_port)
    (work / "h2edge.yaml").write_text(EDGE_H2.format(
        plain=_ports(bench)[0], port=edge_port, origin=bench.origin_port,
        disk=work / "h2edge-disk", cert=cert, key=key))
    edge = bench_start(bench, "edge h2", [sys.executable, "-m", "edge.cli", "serve",
                                          "--workers", str(bench.workers), "-c",
                                          str(work / "h2edge.yaml")], edge_port)
    time.sleep(0.5)
    n_rps, n_cpu = measure(nginx, nginx_port, seconds)
    e_rps, e_cpu = measure(edge, edge_port, seconds)
    print(f"\nHTTP/2 10 KB hits, h2load -c 10 -m 10, {seconds} s each, {bench.workers} "
          f"worker(s) each")
    print(f"{'server':<22}{'req/s':>10}{'CPU us/req':>12}")
    print(f"{'nginx ssl http2 cache':<22}{n_rps:>10,.0f}{n_cpu:>12.1f}")
    print(f"{'edge h2':<22}{e_rps:>10,.0f}{e_cpu:>12.1f}")
    print(f"h2 hits, edge / nginx: {e_rps / n_rps:.2f}x req/s (target >= 0.8), "
          f"{e_cpu / n_cpu:.2f}x CPU per request")
    mbps, start, peak = big_hit(edge, edge_port)
    print(f"edge h2: one 100 MB hit at {mbps:,.0f} MB/s, RSS {start:.1f} MB before, "
          f"{peak:.1f} MB peak")
    stop(nginx)
    stop(edge)


def _ports(bench) -> tuple[int, int]:
    from dnsbench import free_port
    return free_port(), free_port()


def bench_start(bench, name: str, cmd: list[str], port: int) -> subprocess.Popen:
    import edgebench
    proc = edgebench.start(name, cmd, port, bench.work)
    bench.procs.append(proc)
    return proc


async def _idle_clients(port: int, count: int) -> list:
    import h2.config
    import h2.connection
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    held, sem = [], asyncio.Semaphore(200)

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                           server_hostname="bench.test")
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            writer.write(conn.data_to_send())
            await reader.read(1024)                     # the edge's SETTINGS
            held.append((reader, writer))

    await asyncio.gather(*(one() for _ in range(count)))
    return held


def idle(conns: int, workers: int) -> int:
    """RSS of `conns` idle HTTP/2 connections to the edge."""
    import shutil
    import tempfile
    from dnsbench import free_port
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # the edge inherits it
    if hard < conns + 100:
        print(f"RLIMIT_NOFILE hard limit {hard} is below {conns} connections", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="h2idle-"))
    cert, key = certificate(work)
    port = free_port()
    (work / "edge.yaml").write_text(EDGE_H2.format(plain=free_port(), port=port, origin=1,
                                                   disk='""', cert=cert, key=key))
    import edgebench
    proc = edgebench.start("edge", [sys.executable, "-m", "edge.cli", "serve", "--workers",
                                    str(workers), "-c", str(work / "edge.yaml")], port, work)
    try:
        time.sleep(1.0)
        before = rss_mb(tree(proc.pid))

        async def hold() -> tuple[int, float]:
            t0 = time.monotonic()
            held = await _idle_clients(port, conns)
            took = time.monotonic() - t0
            await asyncio.sleep(2.0)
            after = rss_mb(tree(proc.pid))
            for _, writer in held:
                writer.close()
            print(f"{len(held)} idle h2 connections (opened in {took:.1f} s): edge RSS "
                  f"{before:.1f} MB -> {after:.1f} MB, {1024 * (after - before) / len(held):.1f}"
                  f" KB per connection ({workers} worker(s))")
            return len(held), after

        asyncio.run(hold())
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    import os
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["idle"])
    ap.add_argument("--conns", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    return idle(args.conns, args.workers)


if __name__ == "__main__":
    sys.exit(main())
