"""`gslb demo`: the default config on loopback with the real CDN behind it (an origin, a
shield, an edge per site), and what to try."""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .demo_edge import parse_bind
from .health import targets
from .model import Config, Listener

TRIES = (
    ("192.0.2.0/24", "a client in New York"),
    ("198.51.100.0/24", "a client in Frankfurt"),
    ("203.0.113.0/24", "a client in Singapore"),
    ("2001:db8:4::/48", "a client in London"),
)


SHIELD = ("shield-fra", "127.0.0.14:8081", 50.0379, 8.5622)   # one shield POP, in Frankfurt
ORIGIN = "127.0.0.1:9000"                                       # data/edge.yaml's origin
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class DemoEdge:
    site: str                    # DNS site, or "shield" / "origin"
    binds: list[str]
    proc: subprocess.Popen
    command: list[str]


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _edge_config(work: Path, name: str, lat: float, lon: float) -> Path:
    """data/edge.yaml for one demo edge: its name and place, the shield, its own cache dir."""
    raw = yaml.safe_load((ROOT / "data" / "edge.yaml").read_text())
    shield_name, shield_address, slat, slon = SHIELD
    raw.update(name=name, via=name, lat=lat, lon=lon,
               cache_disk=str(work / name / "cache"), state_dir=str(work / name / "state"),
               shields=[{"name": shield_name, "address": shield_address, "lat": slat,
                         "lon": slon}])
    for customer in raw["customers"]:
        customer["shield"] = shield_name
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _wait_http(bind: str, proc: subprocess.Popen, timeout: float = 15.0) -> bool:
    address = parse_bind(bind)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(address, timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _start(site: str, binds: list[str], command: list[str], log: Path) -> DemoEdge | None:
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if not _wait_http(binds[0], proc):
        print(f"demo: the {site} process could not listen on {', '.join(binds)} "
              f"(see {log})", file=sys.stderr)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(5)
        return None
    return DemoEdge(site, binds, proc, command)


def start_edges(config: Config, work: Path) -> list[DemoEdge]:
    """The demo CDN: the origin, one shield, and a real edge per site on its checked addresses."""
    started = []
    origin = _start("origin", [ORIGIN], [sys.executable, "-m", "gslb.demo_origin", ORIGIN],
                    work / "origin.log")
    started += [origin] if origin else []
    name, address, lat, lon = SHIELD
    shield = _start("shield", [address], [
        sys.executable, "-m", "edge.cli", "serve", "--workers", "1", "-c",
        str(_edge_config(work, name, lat, lon)), "--listen", address], work / f"{name}.log")
    started += [shield] if shield else []
    by_site: dict[str, list[str]] = {}
    for target in targets(config):
        by_site.setdefault(target.site, []).append(_bind(target.host, target.port))
    for site, binds in by_site.items():
        where = config.sites[site]
        command = [sys.executable, "-m", "edge.cli", "serve", "--workers", "1", "-c",
                   str(_edge_config(work, f"edge-{site}", where.lat, where.lon))]
        for bind in binds:
            command += ["--listen", bind]
        edge = _start(site, binds, command, work / f"edge-{site}.log")
        started += [edge] if edge else []
    return started


def stop_edges(edges: list[DemoEdge]) -> None:
    for edge in edges:
        if edge.proc.poll() is None:
            edge.proc.terminate()
    for edge in edges:
        try:
            edge.proc.wait(5)
        except subprocess.TimeoutExpired:
            edge.proc.kill()
            edge.proc.wait()


def _program() -> str:
    """How the user can run us again (e.g. .venv/bin/gslb), for copy-paste."""
    path = sys.argv[0]
    if os.path.basename(path) == "gslb" and os.path.exists(path):
        rel = os.path.relpath(path)
        return rel if rel.startswith(".") else f"./{rel}" if os.sep in rel else rel
    return "gslb"


def banner(config: Config, listeners: tuple[Listener, ...], http: Listener | None,
           edges: list[DemoEdge]) -> str:
    first = listeners[0]
    at = f"@{first.host} -p {first.port}"
    name = "www.test.com." + config.zones[0].origin
    lines = [f"gslb demo: authoritative DNS for {', '.join(z.origin for z in config.zones)} "
             f"on {', '.join(map(str, listeners))}", "", "Try:"]
    for subnet, who in TRIES:
        lines.append(f"  dig {at} {name} A +subnet={subnet} +norec    # {who}")
    lines += [f"  dig {at} {name} AAAA +norec",
              f"  dig {at} {config.zones[0].origin} SOA +norec",
              f"  {_program()} explain {name} --ecs 198.51.100.0/24"]
    if http is not None:
        lines += [f"  open http://{http}/            # health dashboard",
                  f"  curl -s http://{http}/metrics | grep gslb_"]
    sites = [e for e in edges if e.site not in ("origin", "shield")]
    if sites:
        edge = next((e for e in sites if e.site == "fra"), sites[0])
        ip, port = edge.binds[0].rsplit(":", 1)
        lines += ["", "Fetch through the edge DNS answered (MISS, then HIT; the shield "
                      "absorbs the other edges' misses):",
                  f"  curl -s -o /dev/null -D - --resolve www.test.com:{port}:{ip} "
                  f"http://www.test.com:{port}/clip.webm",
                  f"  open http://{edge.binds[0]}/800001/test/      # the demo video, seekable"]
        lines += ["", "The CDN (stop a site and its clients move to the next nearest one):"]
        for e in edges:
            what = {"origin": "the origin (data/media)",
                    "shield": f"the shield {SHIELD[0]}"}.get(e.site, f"the {e.site} edge")
            lines.append(f"  kill {e.proc.pid:<8} # stop {what} ({', '.join(e.binds)})")
        lines.append(f"  restart the {edge.site} edge after stopping it:")
        lines.append("    " + shlex.join(edge.command))
    lines += ["", "Stop with Ctrl-C."]
    return "\n".join(lines)
