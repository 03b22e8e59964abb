"""Control-plane benchmarks on loopback (bench/README.md, "bench/controlbench.py").

    python bench/controlbench.py propagation [--changes 200] [--edges 3] [--nameservers 2]
    python bench/controlbench.py scale [--customers 10000]
    python bench/controlbench.py fanout [--watchers 1,50,200] [--writes 50]

Each starts its own etcd (Debian's etcd-server) in a temp dir on free ports, plus
the edges, nameservers and cdnctl it needs, and stops exactly those processes.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cdnkit.keys import Keys  # noqa: E402
from cdnkit.nodes import merge  # noqa: E402
from cdnkit.store import EtcdStore, parse_store  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.control.fleet import Origin, start_ctl, start_edge, wait_for  # noqa: E402
from tests.etcd import Etcd  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def applied_times(store: EtcdStore, want: set[str], revisions: list[int],
                        done: asyncio.Event, out: dict[int, float]) -> None:
    """When every node in `want` has applied each revision (by watching nodes/)."""
    keys = Keys()
    snap = await store.load(keys.nodes)
    pending = list(revisions)

    def check(snap) -> None:
        out["last"] = (snap.revision, {n: v.applied for n, v in
                                        merge(snap.under(keys.nodes)).items()})
        nodes = merge(snap.under(keys.nodes))
        while pending and all(n in nodes and nodes[n].applied >= pending[0] for n in want):
            out[pending.pop(0)] = time.monotonic()
        if not pending:
            done.set()
    check(snap)
    if done.is_set():
        return
    async for snap in store.follow(snap):
        check(snap)
        if done.is_set():
            return


def propagation(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-control-"))
    (tmp / "etcd").mkdir()
    etcd = Etcd(tmp / "etcd").start()
    origin = Origin("o")
    procs = []
    try:
        ctl = start_ctl(tmp, etcd.url)
        procs.append(ctl)
        edges = [start_edge(tmp, etcd.url, f"edge-{i}") for i in range(args.edges)]
        procs += edges
        nameservers = []
        for i in range(args.nameservers):
            home = tmp / f"ns{i}"
            home.mkdir()
            nameservers.append(_gslb(home, etcd.url, f"ns{i}"))
        want = {e.name for e in edges} | {f"ns{i}" for i in range(args.nameservers)}
        doc = {"directory": "p", "cnames": ["p.example.com", "p.example.com.cdn.example.net"],
               "origin": {"http": [origin.address]}}
        status, body, _ = ctl.call("POST", "/api/customers", doc)
        revision = body["revision"]
        wait_for(lambda: True)
        latencies = asyncio.run(_propagate(etcd, ctl, doc, revision, want, args.changes))
        print(f"propagation over {args.changes} changes, {args.edges} edges + "
              f"{args.nameservers} nameservers (API write accepted -> applied everywhere):")
        print(f"  p50 {pct(latencies, 50) * 1000:.1f} ms   p99 {pct(latencies, 99) * 1000:.1f} ms"
              f"   max {max(latencies) * 1000:.1f} ms   mean "
              f"{statistics.mean(latencies) * 1000:.1f} ms")
    finally:
        for p in procs:
            p.stop()
        for proc in locals().get("nameservers", []):
            proc.terminate()
            proc.wait(10)
        origin.close()
        etcd.stop()


def _gslb(home: Path, store: str, node_id: str) -> subprocess.Popen:
    from tests.control import test_safe_order
    port = free_port()
    path = home / "gslb.yaml"
    path.write_text(yaml.safe_dump(test_safe_order.gslb_config(home), sort_keys=False))
    log = home / "gslb.log"
    proc = subprocess.Popen([sys.executable, "-m", "gslb.cli", "serve", "-c", str(path),
                             "--dns", f"127.0.0.1:{port}", "--workers", "1", "--no-http",
                             "--store", store, "--node-id", node_id], cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    from tests.conftest import wait_ready
    wait_ready(port, proc, log)
    return proc


async def _propagate(etcd: Etcd, ctl, doc: dict, revision: int, want: set[str],
                     changes: int) -> list[float]:
    store = await EtcdStore(parse_store(etcd.url)).connect()
    try:
        latencies = []
        for i in range(changes):
            doc["origin"]["timeout"] = 10 + i % 7 + (i / 1000)
            started = time.monotonic()
            status, body, _ = await asyncio.to_thread(
                ctl.call, "PUT", "/api/customers/p", doc, None, {"If-Match": str(revision)})
            assert status == 200, body
            revision = body["revision"]
            done, seen = asyncio.Event(), {}
            try:
                await asyncio.wait_for(applied_times(store, want, [revision], done, seen), 30)
            except asyncio.TimeoutError:
                nodes = merge((await store.load(Keys().nodes)).under(Keys().nodes))
                raise SystemExit(f"revision {revision} not applied everywhere in 30 s: "
                                 f"{ {n: v.applied for n, v in nodes.items()} }; the watch "
                                 f"saw {seen.get('last')}") from None
            latencies.append(seen[revision] - started)
        return latencies
    finally:
        await store.close()


def scale(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-control-"))
    (tmp / "etcd").mkdir()
    etcd = Etcd(tmp / "etcd")
    etcd_args = ["--max-txn-ops", "100000", "--max-request-bytes", str(64 * 1024 * 1024),
                 "--quota-backend-bytes", str(4 * 1024**3)]
    _start_with(etcd, etcd_args)
    origin = Origin("o")
    edge = None
    try:
        folder = tmp / "customers"
        folder.mkdir()
        customers = [{"directory": f"c{i}", "cnames": [f"www.c{i}.com",
                                                        f"www.c{i}.com.cdn.example.net"],
                      "origin": {"http": [origin.address], "balancing": "failover"},
                      "cache": {"grace": 60}} for i in range(args.customers)]
        if args.yaml:
            (folder / "customers.yaml").write_text(yaml.safe_dump({"customers": customers}))
        else:
            (folder / "customers.json").write_text(json.dumps({"customers": customers}))
        edge = start_edge(tmp, etcd.url, "edge-0")
        base_rss = rss_mb(edge.proc.pid)
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "control.cli", "apply", "-f", str(folder),
                              "--store", etcd.url, "--max-customers", str(args.customers)],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
        applied = time.monotonic() - started
        assert out.returncode == 0, out.stderr[-2000:]
        last = f"www.c{args.customers - 1}.com"
        wait_for(lambda: edge.get("/x", last)[0] == 200, timeout=120, every=0.02)
        on_edge = time.monotonic() - started
        rss = rss_mb(edge.proc.pid)
        edge.stop()
        t0 = time.monotonic()
        edge.restart()
        wait_for(lambda: edge.get("/x", last)[0] == 200, timeout=120, every=0.01)
        load = time.monotonic() - t0
        inside = [line for line in edge.log.read_text().splitlines()
                  if f"{args.customers} customers in" in line][-1].rsplit(" in ", 1)[1]
        print(f"{args.customers} customers ({'YAML' if args.yaml else 'JSON'}): cdnctl apply "
              f"{applied:.2f} s (one transaction), "
              f"served by the edge {on_edge:.2f} s after the apply started;")
        print(f"  edge RSS {base_rss:.0f} MB empty -> {rss:.0f} MB with them; "
              f"an edge restart serves them after {load:.2f} s (process start included; "
              f"loading and applying them: {inside})")
    finally:
        if edge is not None:
            edge.stop()
        origin.close()
        etcd.stop()


def _start_with(etcd: Etcd, extra: list[str]) -> None:
    import tests.etcd as etcdmod
    original = etcdmod.subprocess.Popen

    def popen(cmd, *a, **kw):
        return original(cmd + extra if cmd and cmd[0] == etcdmod.ETCD else cmd, *a, **kw)
    etcdmod.subprocess.Popen = popen
    try:
        etcd.start()
    finally:
        etcdmod.subprocess.Popen = original


async def _watchers(url: str, n: int, writes: int) -> list[float]:
    stores = [await EtcdStore(parse_store(url)).connect() for _ in range(n)]
    writer = await EtcdStore(parse_store(url)).connect()
    keys = Keys()
    got: dict[int, list[float]] = {}
    ready = 0

    async def watch(store: EtcdStore) -> None:
        nonlocal ready
        snap = await store.load(keys.config)
        ready += 1
        async for snap in store.follow(snap):
            got.setdefault(snap.revision, []).append(time.monotonic())

    tasks = [asyncio.create_task(watch(s)) for s in stores]
    while ready < n:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    delays = []
    for i in range(writes):
        t0 = time.monotonic()
        resp = await writer.kv.put(keys.config + "bench", json.dumps({"i": i}))
        rev = resp.header.revision
        while len(got.get(rev, [])) < n:
            await asyncio.sleep(0.001)
        delays.append(max(got[rev]) - t0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for s in stores + [writer]:
        await s.close()
    return delays


def fanout(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-control-"))
    (tmp / "etcd").mkdir()
    etcd = Etcd(tmp / "etcd").start()
    try:
        print(f"fan-out: one write, until the last of N watchers has it ({args.writes} writes; "
              "watchers are separate gRPC channels in one process)")
        for n in [int(x) for x in args.watchers.split(",")]:
            delays = asyncio.run(_watchers(etcd.url, n, args.writes))
            print(f"  {n:>4} watchers: p50 {pct(delays, 50) * 1000:6.1f} ms   "
                  f"p99 {pct(delays, 99) * 1000:6.1f} ms")
    finally:
        etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("propagation")
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--edges", type=int, default=3)
    p.add_argument("--nameservers", type=int, default=2)
    p = sub.add_parser("scale")
    p.add_argument("--customers", type=int, default=10000)
    p.add_argument("--yaml", action="store_true", help="the customers in YAML, not JSON")
    p = sub.add_parser("fanout")
    p.add_argument("--watchers", default="1,50,200")
    p.add_argument("--writes", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    {"propagation": propagation, "scale": scale, "fanout": fanout}[args.what](args)


if __name__ == "__main__":
    main()
