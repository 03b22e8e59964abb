"""DNSSEC with many services: start-up signing time and the first query after a health change.

    python bench/dnssign.py [--services 10000] [--workers 2]

Writes a config with N exact service names (pools of the demo's three sites,
nearest) next to the demo's wildcard, signs the zone (ECDSA P-256, compact
denial, keys made by `gslb dnssec init`), then measures:

1. in one process: loading the config, and building the Responder, which
   signs every RRset ahead (the signature count is printed);
2. `gslb serve --workers N --no-http` from exec to the first signed answer
   for the last service name;
3. in one process: a health change (a site drained) rebuilding the tables of
   every answer served so far, and the first query after it.

Loopback only; stops what it started.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.flags
import dns.message
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dnsbench import free_port, stop  # noqa: E402

from gslb.config import load_config  # noqa: E402
from gslb.health import HealthBoard  # noqa: E402
from gslb.model import AdminState  # noqa: E402
from gslb.server import TCP_LIMIT, Responder  # noqa: E402


def write_config(work: Path, services: int) -> Path:
    cfg = yaml.safe_load((ROOT / "data" / "gslb.yaml").read_text())
    cfg["geoip"]["database"] = str(ROOT / "data" / cfg["geoip"]["database"])
    cfg["health"] = {"state_file": str(work / "state.json")}
    cfg["zones"]["cdn.example.net."]["dnssec"] = {"key_directory": str(work / "keys")}
    for i in range(services):
        cfg["services"][f"svc{i}.cdn.example.net."] = {"pool": ["nyc", "fra", "sin"],
                                                       "ip_version": "v4_preferred"}
    path = work / "gslb.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run([sys.executable, "-m", "gslb.cli", "dnssec", "init", "cdn.example.net.",
                    "-c", str(path)], check=True, capture_output=True, cwd=ROOT)
    return path


def do_query(name: str, qtype: str = "A", ecs: str | None = None) -> bytes:
    import dns.edns
    options = [dns.edns.ECSOption.from_text(ecs)] if ecs else []
    q = dns.message.make_query(name, qtype, use_edns=0, want_dnssec=True, options=options)
    q.flags &= ~dns.flags.RD
    return q.to_wire()


def signed_answer(data: bytes | None) -> bool:
    if not data:
        return False
    msg = dns.message.from_wire(data)
    return any(r.rdtype == 46 for r in msg.answer)


def time_serve(path: Path, name: str, workers: int, work: Path) -> float:
    port = free_port()
    wire = do_query(name)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gslb.cli", "serve", "-c", str(path), "--dns",
                             f"127.0.0.1:{port}", "--workers", str(workers), "--no-http"],
                            stdout=(work / "serve.log").open("w"), stderr=subprocess.STDOUT,
                            cwd=ROOT)
    try:
        while time.monotonic() - t0 < 120:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.05)
                s.sendto(wire, ("127.0.0.1", port))
                try:
                    if signed_answer(s.recv(4096)):
                        return time.monotonic() - t0
                except (socket.timeout, ConnectionRefusedError):
                    pass
            if proc.poll() is not None:
                raise RuntimeError((work / "serve.log").read_text())
        raise RuntimeError("no signed answer within 120 s")
    finally:
        stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dnssign-"))
    try:
        path = write_config(work, args.services)
        t0 = time.perf_counter()
        config = load_config(path)
        t1 = time.perf_counter()
        r = Responder(config)
        t2 = time.perf_counter()
        made = r.signers["cdn.example.net."].signatures
        print(f"{args.services} services: config loaded in {t1 - t0:.2f} s; Responder built "
              f"and every RRset signed ahead in {t2 - t1:.2f} s ({made} signatures, "
              f"{1e6 * (t2 - t1) / max(made, 1):.0f} us each incl. building)")
        last = f"svc{args.services - 1}.cdn.example.net."
        took = time_serve(path, last, args.workers, work)
        print(f"gslb serve --workers {args.workers}: first signed answer {took:.2f} s after exec")
        # Serve every service once from three networks, as a running server has.
        nets = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
        for i in range(args.services):
            for net in nets:
                r.answer(do_query(f"svc{i}.cdn.example.net.", "A", net), "10.1.1.1", TCP_LIMIT)
        board = HealthBoard(config)
        board.subscribe(r.set_health)
        before = r.signers["cdn.example.net."].signatures
        t3 = time.perf_counter()
        board.set_site("nyc", AdminState.DRAIN)          # rebuilds every served answer
        t4 = time.perf_counter()
        out = r.answer(do_query(last, "A", "192.0.2.0/24"), "10.1.1.1", TCP_LIMIT)
        t5 = time.perf_counter()
        assert signed_answer(out)
        print(f"health change (nyc drained): {len(r.table.dynamic)} served answers rebuilt and "
              f"signed in {t4 - t3:.2f} s ({r.signers['cdn.example.net.'].signatures - before} "
              f"new signatures); the first query after it answered in "
              f"{1e3 * (t5 - t4):.2f} ms, {1e3 * (t5 - t3):.0f} ms after the change")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
