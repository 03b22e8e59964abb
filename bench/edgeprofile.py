"""Where a pass-through request's CPU goes: one edge worker under wrk, sampled by py-spy.

    python bench/edgeprofile.py [--seconds 10] [--top N]

nginx serves a 10 KB file (the origin); `edge serve --workers 1` proxies it
without cache; wrk -c32 drives it. The worker's CPU per request is measured
from /proc, then py-spy samples it and every sample is put in the stage its
innermost edge frame belongs to (client parse, route, upstream pool and send,
origin parse, relay, the event loop's own C code), printed in us per request.
`--top N` also prints the N frames with the most samples of their own (innermost),
and the N with the most samples below them, for finding what to shorten next.
py-spy comes from PyPI (`.venv/bin/pip install py-spy`); it is not a dependency.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from dnsbench import cpu_seconds, missing, stop  # noqa: E402
from edgebench import Bench, wrk  # noqa: E402

# (stage, frame prefixes): a sample's stage is that of its innermost matching frame.
STAGES = (
    ("client parse (httptools, request object)", ("Connection.data_received", "Connection.on_")),
    ("origin parse (httptools, response object)", ("Upstream.data_received", "Upstream.on_",
                                                    "Upstream.eof")),
    ("relay to the client (headers, write)", ("relay ", "Reply.", "Connection.write",
                                              "_relayed_headers", "to_client")),
    ("upstream pool and send (write)", ("pull ", "_send ", "Pool.", "Upstream.exchange",
                                        "request_head")),
    ("route, headers to origin", ("proxy ", "EdgeApp.handle", "to_origin", "route ")),
    ("request task bookkeeping", ("Connection._run", "Connection._start",
                                  "Connection._finished")),
)
LOOP = "event loop's C code (epoll, recv, callbacks)"


def stage(frames: list[str]) -> str:
    if frames[-1].startswith("Runner.run"):
        return LOOP               # uvloop's C, charged to the frame that started the loop
    for frame in reversed(frames):
        for name, prefixes in STAGES:
            if frame.startswith(prefixes):
                return name
    return "other"


def breakdown(raw: Path) -> Counter:
    counts: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            counts[stage(stack.split(";"))] += int(n)
    return counts


def top_frames(raw: Path, count: int) -> tuple[Counter, Counter]:
    """(samples whose innermost frame is f, samples with f anywhere on the stack)."""
    own: Counter = Counter()
    below: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        own[frames[-1]] += int(n)
        for frame in set(frames):
            below[frame] += int(n)
    return own, below


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--top", type=int, default=0)
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if missing(("wrk", "nginx"), "bench/edge.sh once") or not Path(spy).exists():
        if not Path(spy).exists():
            print("py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="edgeprofile-"))
    bench = Bench(work, 1, False)
    try:
        bench.files()
        _, bench.origin_port = bench.launch("origin", "origin")
        proc, port = bench.launch("edge", "edge")
        wrk(port, "/10k.bin", 32, 2)                       # warm: pooled origin connections
        before, t0 = cpu_seconds([proc.pid]), time.monotonic()
        rps, _ = wrk(port, "/10k.bin", 32, args.seconds)
        us = (cpu_seconds([proc.pid]) - before) / (time.monotonic() - t0) / rps * 1e6
        raw = work / "profile.txt"
        load = subprocess.Popen(["wrk", "-t1", "-c32", f"-d{args.seconds + 2}s", "-H",
                                 "Host: bench.test", f"http://127.0.0.1:{port}/10k.bin"],
                                stdout=subprocess.DEVNULL)
        try:
            time.sleep(1)
            subprocess.run([spy, "record", "-p", str(proc.pid), "-d", str(args.seconds),
                            "-r", "400", "-f", "raw", "-o", str(raw), "--nonblocking"],
                           check=True, capture_output=True, timeout=args.seconds + 60)
        finally:
            load.wait(args.seconds + 30)
        counts = breakdown(raw)
        total = sum(counts.values())
        print(f"\npass-through, 10 KB, 1 edge worker, wrk -c32: {rps:,.0f} req/s, "
              f"{us:.1f} us CPU per request")
        for name, n in counts.most_common():
            print(f"{us * n / total:6.1f} us  {100 * n / total:5.1f} %  {name}")
        if args.top:
            own, below = top_frames(raw, args.top)
            for title, counter in (("own samples", own), ("samples below", below)):
                print(f"\ntop {args.top} frames by {title}:")
                for frame, n in counter.most_common(args.top):
                    print(f"{us * n / total:6.1f} us  {frame}")
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
