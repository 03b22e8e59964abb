"""HTTP/3 hits: the edge's h3 against its own h2, in the same run, same edge processes.

    python bench/edgebench.py --only h3 [--seconds 10] [--workers N]
    python bench/h3bench.py load --port P --seconds S [--conns 10] [--streams 10]

Debian's h2load does not speak HTTP/3, so the h3 load comes from a small aioquic
client (`load`, below: `--conns` QUIC connections with `--streams` requests each in
flight, in its own process, whose CPU is not counted). The h2 figures are h2load's
(h2bench.measure) against the same edge. Reported: req/s and CPU us per request of
the edge's processes, for 10 KB hits. The Python client is slower than h2load, so
compare the CPU per request: req/s of h3 is bounded by the client on 2 cores.
"""
from __future__ import annotations

import argparse
import asyncio
import ssl
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dnsbench import cpu_seconds, stop, tree  # noqa: E402
from h2bench import EDGE_H2, _ports, bench_start, certificate  # noqa: E402
from h2bench import measure as measure_h2  # noqa: E402


async def _load(port: int, seconds: float, conns: int, streams: int) -> tuple[int, int]:
    """(answers, errors) of 10 KB GETs over HTTP/3 for `seconds`."""
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration

    class Client(QuicConnectionProtocol):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.h3 = H3Connection(self._quic)
            self.waiting: dict[int, list] = {}

        def quic_event_received(self, event) -> None:
            for ev in self.h3.handle_event(event):
                slot = self.waiting.get(ev.stream_id)
                if slot is None:
                    continue
                if isinstance(ev, HeadersReceived):
                    slot[1] = dict(ev.headers).get(b":status") == b"200"
                elif isinstance(ev, DataReceived):
                    slot[2] += len(ev.data)
                if ev.stream_ended:
                    del self.waiting[ev.stream_id]
                    slot[0].set_result(slot[1] and slot[2] == 10240)

        async def get(self) -> bool:
            sid = self._quic.get_next_available_stream_id()
            done = asyncio.get_running_loop().create_future()
            self.waiting[sid] = [done, False, 0]
            self.h3.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                       (b":authority", b"bench.test"),
                                       (b":path", b"/10k.bin")], end_stream=True)
            self.transmit()
            return await asyncio.wait_for(done, 30)

    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                               server_name="bench.test", verify_mode=ssl.CERT_NONE)
    counts = [0, 0]
    deadline = time.monotonic() + seconds

    async def worker(client: Client) -> None:
        while time.monotonic() < deadline:
            ok = await client.get()
            counts[0 if ok else 1] += 1

    async def one() -> None:
        async with connect("127.0.0.1", port, configuration=config,
                           create_protocol=Client) as client:
            await asyncio.gather(*(worker(client) for _ in range(streams)))

    await asyncio.gather(*(one() for _ in range(conns)))
    return counts[0], counts[1]


def h3load(port: int, seconds: float, conns: int = 10, streams: int = 10) -> float:
    """req/s of the h3 load client (its own process); RuntimeError on any failed answer."""
    out = subprocess.run([sys.executable, __file__, "load", "--port", str(port), "--seconds",
                          str(seconds), "--conns", str(conns), "--streams", str(streams)],
                         capture_output=True, text=True, timeout=seconds + 120)
    try:
        ok, errors, took = out.stdout.split()
    except ValueError:
        raise RuntimeError(f"h3 load client failed:\n{out.stdout}{out.stderr}") from None
    if int(errors) or not int(ok):
        raise RuntimeError(f"h3 load client saw {errors} errors, {ok} answers")
    return int(ok) / float(took)


def measure_h3(proc: subprocess.Popen, port: int, seconds: int) -> tuple[float, float]:
    """(req/s, CPU us per request of the edge) of 10 KB hits over HTTP/3."""
    h3load(port, 2)                                         # warm-up
    pids = tree(proc.pid)
    before, t0 = cpu_seconds(pids), time.monotonic()
    rps = h3load(port, seconds)
    cpu = (cpu_seconds(pids) - before) / (time.monotonic() - t0)
    return rps, 1e6 * cpu / max(rps, 1)


def run_h3(bench, seconds: int) -> None:
    """The h3 row (bench is edgebench.Bench, its origin running): h3 vs h2, one edge."""
    work = bench.work
    cert, key = certificate(work)
    plain, port = _ports(bench)
    (work / "h3edge.yaml").write_text(EDGE_H2.format(
        plain=plain, port=port, origin=bench.origin_port, disk=work / "h3edge-disk",
        cert=cert, key=key))
    edge = bench_start(bench, "edge h3", [sys.executable, "-m", "edge.cli", "serve",
                                          "--workers", str(bench.workers), "-c",
                                          str(work / "h3edge.yaml")], port)
    time.sleep(0.5)
    h2_rps, h2_cpu = measure_h2(edge, port, seconds)
    h3_rps, h3_cpu = measure_h3(edge, port, seconds)
    print(f"\nHTTP/3 vs HTTP/2, 10 KB hits, 10 connections x 10 streams, {seconds} s each, "
          f"one edge with {bench.workers} worker(s)")
    print(f"{'protocol (client)':<28}{'req/s':>10}{'edge CPU us/req':>17}")
    print(f"{'h2 (h2load)':<28}{h2_rps:>10,.0f}{h2_cpu:>17.1f}")
    print(f"{'h3 (bench/h3bench.py)':<28}{h3_rps:>10,.0f}{h3_cpu:>17.1f}")
    print(f"h3 / h2: {h3_rps / h2_rps:.2f}x req/s, {h3_cpu / h2_cpu:.2f}x edge CPU per request")
    stop(edge)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("load", help="the h3 load client (prints: answers errors seconds)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--streams", type=int, default=10)
    args = ap.parse_args()
    t0 = time.monotonic()
    ok, errors = asyncio.run(_load(args.port, args.seconds, args.conns, args.streams))
    print(ok, errors, f"{time.monotonic() - t0:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
