"""The fleet (issue 15): failover on an edge kill (lease vs probe), time to shed under a
load step, answer flapping at the watermark, and DNS qps with two nameservers watching
etcd vs one that does not. A real etcd, real edges and nameservers, all on loopback.

    python bench/fleetbench.py [failover] [shed] [flap] [qps] [--kills 3] [--seconds 10]

failover: the edge killed with SIGKILL; the time until both nameservers stop answering it, with the store (the lease decides) and
without (the probes decide). shed: site a can take 200 requests/s (shed_low 0.5,
shed_high 1.0, the default hold of 10 s); a load client starts at 600/s; the time until
the first and all of a's 100 client networks go to b, and back after it stops. flap:
a steady load at the low watermark, and one half way, for --flap-seconds; every answer
change of the 100 networks on both nameservers is counted. qps: dnsperf against a
nameserver with 2 workers for --seconds, with the store and the fleet reporting load
every second, and without the store, alternated twice.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import dnsbench  # noqa: E402

from tests.control.fleet import customer, put  # noqa: E402
from tests.etcd import Etcd  # noqa: E402
from tests.fleet.cluster import (  # noqa: E402
    NAME,
    NEAR_A,
    NEAR_B,
    A,
    B,
    LoadClient,
    edge,
    free_port,
    gslb_config,
    start_nameserver,
    until,
)

DEMO_CHECK = {"interval": 2, "timeout": 1, "rise": 2, "fall": 3}


class Fleet:
    """etcd, an origin, edges a and b, and nameservers started on demand."""

    def __init__(self, store: bool = True, **site_a):
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
        (self.tmp / "etcd").mkdir()
        self.etcd = Etcd(self.tmp / "etcd").start()
        from tests.fleet.cluster import BigOrigin
        self.origin = BigOrigin(1024)
        put(self.etcd, "/cdn/config/customers/dl",
            customer("dl", self.origin.address, "dl.example.com"))
        self.port = free_port(A)
        self.edges = {"a": edge(self.tmp, self.etcd, "edge-a", A, self.port),
                      "b": edge(self.tmp, self.etcd, "edge-b", B, self.port)}
        self.site_a = site_a
        self.ns: list = []

    def config(self, **checks) -> dict:
        cfg = gslb_config(self.tmp, self.port, None, **self.site_a)
        for knob in ("shed_hold", "shed_band"):            # gslb's defaults, not the tests'
            cfg["health"].pop(knob)
        for name in ("fast", "slow"):
            cfg["checks"][name].update(checks or DEMO_CHECK)
        return cfg

    def nameservers(self, count: int = 2, store: bool = True, workers: int = 1, **checks):
        for ns in self.ns:
            ns.stop()
        self.ns = []
        for i in range(count):
            ns = start_nameserver(self.tmp, self.etcd.url, f"ns{i + 1}", f"127.0.0.{i + 1}",
                                  self.config(**checks))
            if not store or workers != 1:
                ns.stop()
                cmd = [c for c in ns.cmd]
                if not store:
                    at = cmd.index("--store")
                    del cmd[at:at + 4]                  # --store URL --node-id NAME
                cmd[cmd.index("--workers") + 1] = str(workers)
                ns.cmd = cmd
                ns.restart()
            self.ns.append(ns)
        until(lambda: all(n.resolve(NEAR_A[0]) == (A,) and n.resolve(NEAR_B[0]) == (B,)
                          for n in self.ns), 30, "answers from both sites")
        return self.ns

    def close(self) -> None:
        for proc in [*self.ns, *self.edges.values()]:
            proc.stop()
        self.origin.close()
        self.etcd.stop()


def summary(values: list[float], unit: str = "s") -> str:
    return (f"min {min(values):.2f} {unit}, median {statistics.median(values):.2f} {unit}, "
            f"max {max(values):.2f} {unit} (n={len(values)})")


DEFAULT_CHECK = {"interval": 5, "timeout": 2, "rise": 2, "fall": 3}     # gslb's defaults


def failover(args: argparse.Namespace) -> None:
    fleet = Fleet()
    runs = ((True, DEFAULT_CHECK, "with the store, the default probes (every 5 s, fall 3)"),
            (False, DEFAULT_CHECK, "without the store, the default probes"),
            (True, DEMO_CHECK, "with the store, the demo's probes (every 2 s, fall 3)"),
            (False, DEMO_CHECK, "without the store, the demo's probes"))
    try:
        for store, checks, how in runs:
            fleet.nameservers(store=store, **checks)
            times = []
            for _ in range(args.kills):
                b = fleet.edges["b"]
                b.proc.kill()
                killed = time.monotonic()
                until(lambda: all(n.resolve(NEAR_B[0], timeout=0.5) == (A,) for n in fleet.ns),
                      30, "both stopped answering edge-b", every=0.02)
                times.append(time.monotonic() - killed)
                b.restart()
                until(lambda: all(n.resolve(NEAR_B[0]) == (B,) for n in fleet.ns), 30, "back")
            print(f"failover on an edge kill, {how}: {summary(times)}", flush=True)
    finally:
        fleet.close()


def shed_share(ns) -> float:
    return sum(1 for net in NEAR_A if ns.resolve(net) == (B,)) / len(NEAR_A)


def shed(args: argparse.Namespace) -> None:
    fleet = Fleet(capacity={"requests": 200}, shed_low=0.5, shed_high=1.0)
    try:
        fleet.nameservers(interval=0.5, timeout=0.4, rise=2, fall=2)
        firsts, alls, backs = [], [], []
        for _ in range(args.steps):
            load = LoadClient(A, fleet.port, "dl.example.com", rate=600)
            started = time.monotonic()
            until(lambda: all(shed_share(n) > 0 for n in fleet.ns), 30, "first shed",
                  every=0.02)
            firsts.append(time.monotonic() - started)
            until(lambda: all(shed_share(n) == 1.0 for n in fleet.ns), 30, "all shed",
                  every=0.05)
            alls.append(time.monotonic() - started)
            rate = load.done / (time.monotonic() - started)
            load.stop()
            stopped = time.monotonic()
            until(lambda: all(shed_share(n) == 0.0 for n in fleet.ns), 60, "back", every=0.1)
            backs.append(time.monotonic() - stopped)
            time.sleep(2)
        print(f"shed under a load step (0 -> {rate:.0f} requests/s against a capacity of 200, "
              "watermarks 50-100 %):", flush=True)
        print(f"  first networks shed on both nameservers: {summary(firsts)}")
        print(f"  all of the site's networks shed:           {summary(alls)}")
        print(f"  all back after the load stops (hold 10 s): {summary(backs)}", flush=True)
    finally:
        fleet.close()


def flap(args: argparse.Namespace) -> None:
    fleet = Fleet(capacity={"requests": 200}, shed_low=0.5, shed_high=1.0)
    try:
        fleet.nameservers(interval=0.5, timeout=0.4, rise=2, fall=2)
        for label, rate in (("at the low watermark (100/s of 200)", 100.0),
                            ("half way (150/s of 200)", 150.0)):
            # the client falls a few % short of the rate it is given: aim so that the edge
            # measures the load right at the watermark (noise crosses it both ways)
            load = LoadClient(A, fleet.port, "dl.example.com", connections=2, rate=rate * 1.04)
            time.sleep(3)                            # the first reports
            last = [ns.table(NEAR_A) for ns in fleet.ns]
            changes = reversals = 0
            moved_to: dict[tuple[int, str], tuple[str, ...]] = {}
            started = time.monotonic()
            while time.monotonic() - started < args.flap_seconds:
                time.sleep(0.5)
                now = [ns.table(NEAR_A) for ns in fleet.ns]
                for i, (old, new) in enumerate(zip(last, now)):
                    for net in NEAR_A:
                        if old[net] != new[net]:
                            changes += 1
                            if moved_to.get((i, net)) == new[net]:
                                reversals += 1       # back to an answer it had left
                            moved_to[(i, net)] = old[net]
                last = now
            served = load.done / (time.monotonic() - started + 3)
            load.stop()
            shed_now = [shed_share(ns) for ns in fleet.ns]
            print(f"flapping {label}, {args.flap_seconds:.0f} s, 100 networks x 2 nameservers "
                  f"(load measured {served:.0f}/s): {changes} answer changes, {reversals} "
                  f"back and forth; shed at the end {shed_now}", flush=True)
            until(lambda: all(shed_share(n) == 0.0 for n in fleet.ns), 60, "back", every=0.2)
    finally:
        fleet.close()


def qps(args: argparse.Namespace) -> None:
    import ipaddress
    fleet = Fleet()
    work = fleet.tmp / "queries.raw"
    with work.open("wb") as fh:
        for i, net in enumerate(NEAR_A + NEAR_B):
            for j in range(20):
                wire = dnsbench.query((i * 20 + j) & 0xFFFF, NAME, 1 if j % 2 else 28,
                                      ipaddress.ip_network(net) if j % 4 else None)
                fh.write(len(wire).to_bytes(2, "big") + wire)
    results: dict[str, list] = {"store": [], "none": []}
    try:
        for store in (True, False, True, False):
            ns = fleet.nameservers(2 if store else 1, store=store, workers=2)[0]
            time.sleep(2)
            result = dnsbench.run_dnsperf("gslb", ns.port, ns.proc, work, args.seconds,
                                          args.clients)
            results["store" if store else "none"].append(result)
            print(f"  {'2 nameservers watching etcd' if store else 'no store'}: "
                  f"{result.qps:,.0f} qps, {result.us_per_query:.1f} us CPU per query, "
                  f"lost {result.lost}", flush=True)
        with_store = statistics.mean(r.qps for r in results["store"])
        without = statistics.mean(r.qps for r in results["none"])
        print(f"DNS qps, 2 workers, {args.seconds} s runs: with the store {with_store:,.0f}, "
              f"without {without:,.0f} ({with_store / without - 1:+.1%})", flush=True)
    finally:
        fleet.close()


PARTS = ("failover", "shed", "flap", "qps")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="*", metavar="{" + ",".join(PARTS) + "}",
                        help=f"what to measure (default: all of {', '.join(PARTS)})")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--flap-seconds", type=float, default=60.0)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    subprocess.run([str(ROOT / "dev"), "debs", "dnsperf"], check=False)
    unknown = [w for w in args.what if w not in PARTS]
    if unknown:     # checked here: argparse rejects an empty list against choices
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    for what in args.what or PARTS:
        {"failover": failover, "shed": shed, "flap": flap, "qps": qps}[what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
