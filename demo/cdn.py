"""The demo CDN as a list of children: an origin, a shield, a real edge per site of the
gslb config, and the nameserver with its dashboard, all on loopback.

Nothing is written into data/: edge configs, caches, logs and the nameserver's
state file live in the demo's work directory, removed when the demo stops.
"""
from __future__ import annotations

import random
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from cdnkit.listen import Listener
from gslb.health import targets
from gslb.model import Config

from .certs import TLS_PORT, customer_names, demo_tls, tls_block
from .procs import ROOT, Child, edge_answers_as


@dataclass(frozen=True)
class Plan:
    """Where the demo puts each part (the defaults are the README's addresses)."""

    config_path: Path
    config: Config
    dns: tuple[Listener, ...]
    http: Listener | None
    origin: str = "127.0.0.1:9000"
    shield: str = "127.0.0.14:8081"
    shield_name: str = "shield-fra"
    shield_at: tuple[float, float] = (50.0379, 8.5622)     # Frankfurt
    workers: int = 1
    https_port: int = TLS_PORT               # every site edge's HTTPS (and HTTP/3) port


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def edge_config(plan: Plan, work: Path, name: str, lat: float, lon: float,
                tls_bind: str = "") -> Path:
    """data/edge.yaml for one demo edge: its name and place, the shield, the demo origin,
    its own cache and state directories in `work`, and with `tls_bind` HTTPS there
    (demo/certs.py)."""
    raw = yaml.safe_load((ROOT / "data" / "edge.yaml").read_text())
    if tls_bind:
        raw["tls"] = tls_block(demo_tls(work, customer_names(raw)), tls_bind)
    raw.update(name=name, via=name, lat=lat, lon=lon,
               cache_disk=str(work / name / "cache"), state_dir=str(work / name / "state"),
               shields=[{"name": plan.shield_name, "address": plan.shield,
                         "lat": plan.shield_at[0], "lon": plan.shield_at[1]}])
    for customer in raw["customers"]:
        customer["shield"] = plan.shield_name
        customer["origin"]["http"] = [plan.origin]
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _edge(plan: Plan, work: Path, name: str, role: str, binds: list[str],
          lat: float, lon: float, tls: bool = False) -> Child:
    https = https_bind(binds, plan.https_port) if tls else ""
    command = [sys.executable, "-m", "edge.cli", "serve", "--workers", "1",
               "-c", str(edge_config(plan, work, name, lat, lon, https))]
    for bind in binds:
        command += ["--listen", bind]
    return Child(name, role, command, binds, work / f"{name}.log", "ready:",
                 check=edge_answers_as, tls=[https] if https else [])


def https_bind(binds: list[str], port: int) -> str:
    """Where a site edge serves HTTPS: its first IPv4 listener's address on `port`
    ("" when it has none)."""
    host = next((b.rsplit(":", 1)[0] for b in binds if not b.startswith("[")), "")
    return f"{host}:{port}" if host else ""


def children(plan: Plan, work: Path) -> list[Child]:
    """Every process of the demo, in start order (each needs the ones before it)."""
    out = [Child("origin", "the origin (data/media)",
                 [sys.executable, "-m", "demo.origin", plan.origin], [plan.origin],
                 work / "origin.log")]
    out.append(_edge(plan, work, plan.shield_name, f"the shield {plan.shield_name}",
                     [plan.shield], *plan.shield_at))
    by_site: dict[str, list[str]] = {}
    for target in targets(plan.config):
        bind = _bind(target.host, target.port)
        if bind not in by_site.setdefault(target.site, []):
            by_site[target.site].append(bind)
    for site, binds in by_site.items():
        where = plan.config.sites[site]
        out.append(_edge(plan, work, f"edge-{site}", f"the {site} edge", binds,
                         where.lat, where.lon, tls=True))
    out.append(gslb_child(plan, work))
    return out


def gslb_child(plan: Plan, work: Path, name: str = "gslb",
               dns: tuple[Listener, ...] | None = None, extra: list[str] = ()) -> Child:
    """The nameserver (and, with `plan.http`, its dashboard) on the plan's config."""
    dns = dns or plan.dns
    command = [sys.executable, "-m", "gslb.cli", "serve", "-c", str(plan.config_path),
               "--workers", str(plan.workers), "--state-file", str(work / f"{name}-state.json")]
    for listener in dns:
        command += ["--dns", str(listener)]
    command += ["--http", str(plan.http)] if plan.http else ["--no-http"]
    command += list(extra)
    binds = [str(l) for l in dns] + ([str(plan.http)] if plan.http else [])
    return Child(name, "the nameserver" + (" and dashboard" if plan.http else ""), command,
                 binds, work / f"{name}.log", "ready:", check=_answers_dns(plan, dns),
                 udp=[str(l) for l in dns])


def _answers_dns(plan: Plan, dns: tuple[Listener, ...]):
    zone = plan.config.zones[0].origin

    def check(child: Child) -> str:
        for listener in dns:
            if not soa_answered(listener, zone):
                return f"{listener} does not answer DNS queries for {zone}"
        return ""
    return check


def soa_answered(listener: Listener, zone: str, timeout: float = 1.0) -> bool:
    """True when `listener` answers an SOA query for `zone` over UDP with NOERROR."""
    qid = random.randrange(65536)
    question = b"".join(bytes([len(l)]) + l.encode() for l in zone.rstrip(".").split("."))
    packet = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + question + b"\0\x00\x06\x00\x01"
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(packet, (listener.host, listener.port))
            reply, _ = s.recvfrom(4096)
        except OSError:
            return False
    return len(reply) >= 12 and reply[:2] == packet[:2] and reply[3] & 0x0F == 0
