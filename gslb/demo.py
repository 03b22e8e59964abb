"""`gslb demo`: the default config on loopback, stand-in edges, and what to try."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from .health import targets
from .model import Config, Listener

TRIES = (
    ("192.0.2.0/24", "a client in New York"),
    ("198.51.100.0/24", "a client in Frankfurt"),
    ("203.0.113.0/24", "a client in Singapore"),
    ("2001:db8:4::/48", "a client in London"),
)


@dataclass
class DemoEdge:
    site: str
    binds: list[str]
    proc: subprocess.Popen


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def start_edges(config: Config) -> list[DemoEdge]:
    """One stand-in edge process per site, listening where that site's checks probe."""
    by_site: dict[str, list[str]] = {}
    for target in targets(config):
        by_site.setdefault(target.site, []).append(_bind(target.host, target.port))
    edges = []
    for site, binds in by_site.items():
        proc = subprocess.Popen([sys.executable, "-m", "gslb.demo_edge", site, *binds],
                                stdout=subprocess.PIPE, text=True)
        if proc.stdout.readline().strip() != "ready":
            proc.wait(5)
            print(f"demo: the {site} edge could not listen on {', '.join(binds)}",
                  file=sys.stderr)
            continue
        edges.append(DemoEdge(site, binds, proc))
    return edges


def stop_edges(edges: list[DemoEdge]) -> None:
    for edge in edges:
        if edge.proc.poll() is None:
            edge.proc.terminate()
            edge.proc.wait(5)


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
    if edges:
        lines += ["", "Stand-in edges (health checks probe these):"]
        for edge in edges:
            lines.append(f"  kill {edge.proc.pid:<8} # stop the {edge.site} edge "
                         f"({', '.join(edge.binds)}); its clients move to the next nearest site")
    lines += ["", "Stop with Ctrl-C."]
    return "\n".join(lines)
