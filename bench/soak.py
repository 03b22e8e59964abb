"""Soak: a high query rate for ten minutes while health changes and configs reload.

    python bench/soak.py [--seconds 600] [--qps 30000] [--workers N]

Starts `gslb serve` on a copy of the default config and drives it with dnsperf
at a fixed rate (the dnsbench query mix: half ECS). Meanwhile, every 3 s an
operator override drains or clears a site (each one rebuilds every worker's
answers), and every 20 s the config file changes and the server gets SIGHUP.
Reports answered / lost queries, reloads, health changes and RSS at start and
end. Loopback only; stops what it started.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from dnsbench import free_port, rss_mb, tree, wait_up, write_queries  # noqa: E402

TOKEN = "soak-token"


def admin(http: int, action: str, site: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{http}/api/admin/{action}",
                                 data=json.dumps({"site": site}).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def metric(http: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--qps", type=int, default=30000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if shutil.which("dnsperf") is None:
        print("dnsperf is missing: run bench/dns.sh once (it installs it)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gslb-soak-"))
    config = work / "gslb.yaml"
    text = (ROOT / "data/gslb.yaml").read_text().replace(
        "database: demo-city.mmdb", f"database: {ROOT / 'data/demo-city.mmdb'}")
    config.write_text(text)
    queries = work / "queries.bin"
    write_queries(queries)
    port, http = free_port(), free_port()
    log = (work / "gslb.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "gslb.cli", "serve", "-c", str(config),
                             "--dns", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{http}",
                             "--workers", str(args.workers)],
                            stdout=log, stderr=log, cwd=ROOT,
                            env={**os.environ, "GSLB_ADMIN_TOKEN": TOKEN})
    stop = threading.Event()
    events = {"overrides": 0, "reloads": 0}

    def churn() -> None:
        rng = random.Random(1)
        tick = 0
        while not stop.wait(3):
            tick += 1
            site = rng.choice(["nyc", "fra", "sin"])
            admin(http, rng.choice(["drain", "clear", "force-down", "clear"]), site)
            events["overrides"] += 1
            if tick % 7 == 0:
                ttl = 30 + tick % 2
                config.write_text(text.replace("    ttl: 30\n", f"    ttl: {ttl}\n"))
                proc.send_signal(signal.SIGHUP)
                events["reloads"] += 1

    try:
        wait_up(port, proc)
        time.sleep(1)
        pids = tree(proc.pid)
        rss_start = rss_mb(pids)
        worker = threading.Thread(target=churn, daemon=True)
        worker.start()
        out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
                              "-B", "-l", str(args.seconds), "-Q", str(args.qps), "-c", "16",
                              "-q", "500"], capture_output=True, text=True,
                             timeout=args.seconds + 120)
        stop.set()
        worker.join(10)
        time.sleep(1.5)
        rss_end = rss_mb(tree(proc.pid))
        rebuilds = metric(http, "gslb_answer_rebuilds_total")
        reloads_ok = metric(http, 'gslb_config_reloads_total{result="ok"}')
        alive = proc.poll() is None
        tracebacks = (work / "gslb.log").read_text().count("Traceback")
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    completed = int(re.search(r"Queries completed:\s+(\d+)", out.stdout).group(1))
    sent = int(re.search(r"Queries sent:\s+(\d+)", out.stdout).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out.stdout).group(1))
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out.stdout).group(1))
    print(f"soak: {args.seconds} s at {args.qps:,} qps target, {args.workers} workers")
    print(f"queries: {sent:,} sent, {completed:,} answered, {lost:,} lost "
          f"({100 * lost / max(sent, 1):.4f} %), {qps:,.0f} qps achieved")
    print(f"during the run: {events['overrides']} health overrides, "
          f"{events['reloads']} SIGHUP reloads ({reloads_ok:.0f} applied), "
          f"{rebuilds:.0f} answer rebuilds pushed to workers")
    print(f"RSS of the server processes: {rss_start:.1f} MB at start, {rss_end:.1f} MB at end")
    print(f"server alive at the end: {alive}; tracebacks logged: {tracebacks}")
    ok = alive and tracebacks == 0 and lost <= sent * 0.001 and rss_end < rss_start * 1.5 + 20
    print("PASS" if ok else "FAIL")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
