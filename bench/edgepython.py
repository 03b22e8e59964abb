"""The Python a pass-through request costs, without sockets: the edge's shortcut and
bench/floorproxy.py side by side, in one process, on transports that only keep
what is written. No kernel, no event loop wake-ups, no load generator: the figure
moves only when the code does, so it shows what a change to the shortcut saved
before bench/edge.sh --only floor (noisy, minutes) confirms it.

    python bench/edgepython.py [--requests 50000] [--profile]

Each request is the same 10 KB pass-through wrk makes (one Host, one User-Agent)
answered by nginx's header set; printed in us per request, client side (request
parsed, routed, sent to the origin) and origin side (response parsed, head built,
relayed, connection pooled).
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import uvloop  # noqa: E402

import floorproxy  # noqa: E402
from edge import config as edge_config  # noqa: E402
from edge.http.client import Upstream  # noqa: E402
from edge.http.front import Listeners  # noqa: E402
from edge.http.server import Connection  # noqa: E402
from edge.proxy import EdgeApp  # noqa: E402
from edge.state import EdgeState  # noqa: E402

CONFIG = """
listen: ["127.0.0.1:9"]
cache_disk: ""
customers:
  - directory: bench
    cnames: [bench.test]
    origin: {http: ["127.0.0.1:9"]}
    cache: {enabled: false}
"""
ROUNDS = 3
REQUEST = b"GET /10k.bin HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n"
            b"Date: Mon, 07 Dec 2026 10:00:00 GMT\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 10240\r\nLast-Modified: Mon, 07 Dec 2026 09:00:00 GMT\r\n"
            b'Connection: keep-alive\r\nETag: "6571-2800"\r\nAccept-Ranges: bytes\r\n\r\n'
            + b"x" * 10240)


class Kept:
    """A transport that keeps what is written (and is never closing)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        raise AssertionError("the bench's connections must stay open")

    abort = close

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading


def timed(client, origin, kept: list[Kept], count: int,
          profile: cProfile.Profile | None) -> tuple[float, float]:
    """(client side, origin side) us per request."""
    clock = time.perf_counter
    sides = [0.0, 0.0]
    if profile is not None:
        profile.enable()
    for _ in range(count):
        start = clock()
        client(REQUEST)
        middle = clock()
        origin(RESPONSE)
        sides[0] += middle - start
        sides[1] += clock() - middle
        for transport in kept:
            transport.out.clear()
    if profile is not None:
        profile.disable()
    return 1e6 * sides[0] / count, 1e6 * sides[1] / count


def check(kept: list[Kept], what: str) -> None:
    """The request reached the origin and the whole answer the client."""
    to_origin, to_client = b"".join(kept[0].out), b"".join(kept[1].out)
    if not to_origin.startswith(b"GET /10k.bin") or not to_client.endswith(b"x" * 10240):
        raise SystemExit(f"{what}: the request was not relayed")


async def edge_pair(work: Path):
    (work / "edge.yaml").write_text(CONFIG)
    state = EdgeState(edge_config.load(work / "edge.yaml"))
    app = EdgeApp(state)
    listeners = Listeners(state, app.handle)
    if listeners.passes is None:
        raise SystemExit("EDGE_PASS_SHORTCUT=0: nothing to measure")
    client_side, origin_side = Kept(), Kept()
    conn = Connection(app.handle, listeners.hits, "http", listeners.conns,
                      state.metrics.bad_requests)
    conn.passes, conn.flagged = listeners.passes, listeners.flagged
    conn.connection_made(client_side)
    upstream = Upstream(state.client, ("127.0.0.1", 9, None))
    upstream.connection_made(origin_side)
    state.client.put(upstream)
    return conn.data_received, upstream.data_received, [origin_side, client_side], listeners


def floor_pair():
    pool: list = []
    client_side, origin_side = Kept(), Kept()
    client = floorproxy.Client(pool, 9)
    client.connection_made(client_side)
    upstream = floorproxy.Up(pool)
    upstream.connection_made(origin_side)
    pool.append(upstream)
    return client.data_received, upstream.data_received, [origin_side, client_side]


async def main(count: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        client, origin, kept, listeners = await edge_pair(Path(tmp))
        timed(client, origin, kept, 1000, None)
        relayed = listeners.passes.relayed
        timed(client, origin, kept[:0], 1, None)
        check(kept, "edge")
        fclient, forigin, fkept = floor_pair()
        timed(fclient, forigin, fkept, 1000, None)
        timed(fclient, forigin, fkept[:0], 1, None)
        check(fkept, "floor")
        spy = cProfile.Profile() if profile else None
        edges, floors = [], []
        for _ in range(ROUNDS):             # alternating; the best of each is printed
            edges.append(timed(client, origin, kept, count, spy))
            floors.append(timed(fclient, forigin, fkept, count, None))
        if listeners.passes.relayed != relayed + ROUNDS * count + 1:
            raise SystemExit("the edge took the long way: the shortcut was not measured")
    edge, floor = min(edges, key=sum), min(floors, key=sum)
    print(f"pass-through, Python only, {count:,} requests x {ROUNDS}: best us per request "
          f"(client side + origin side)")
    print(f"  edge shortcut  {edge[0]:5.2f} + {edge[1]:5.2f} = {sum(edge):5.2f}")
    print(f"  python floor   {floor[0]:5.2f} + {floor[1]:5.2f} = {sum(floor):5.2f}")
    print(f"  edge / floor   {sum(edge) / sum(floor):.2f}x")
    if spy is not None:
        pstats.Stats(spy).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--profile", action="store_true", help="cProfile the edge's side")
    args = ap.parse_args()
    uvloop.install()
    asyncio.run(main(args.requests, args.profile))
