"""`gslb demo --fleet`: the demo CDN with its customers in etcd, managed by cdnctl.

Children, in start order: a real etcd (Debian's etcd-server) on 127.0.0.1:2379 with
its data in the demo's work directory, seeded with data/edge.yaml's customers by
`cdnctl apply`; `cdnctl serve` on 127.0.0.1:8090; the origin; the shield and an
edge per site, each following the store and reporting its load (capacity
EDGE_CAPACITY); two nameservers, the zone's ns1 (the demo's DNS listeners,
127.0.0.1:8053 and [::1]:8053, dashboard 127.0.0.1:8080) and ns2 (127.0.0.2 on the
same ports), sharing their probe verdicts through the store and answering customer
names only with edges that serve them. All on loopback, all the demo's, gone with it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from cdnkit.listen import Listener

from .cdn import Plan, gslb_child
from .procs import ROOT, Child, edge_answers_as

DEMO_TOKEN = "demo-token"
EDGE_CAPACITY = "requests=500,connections=2000"   # small, so `wrk` can make an edge shed
NS2_HOST = "127.0.0.2"                            # the zone's ns2.cdn.example.net


@dataclass(frozen=True)
class FleetPlan:
    """Where the fleet's own parts listen (the README's addresses by default)."""

    etcd: str = "127.0.0.1:2379"
    etcd_peer: str = "127.0.0.1:2380"
    cdnctl: str = "127.0.0.1:8090"

    @property
    def store(self) -> str:
        return f"etcd://{self.etcd}"


def _etcd(work: Path, fleet: FleetPlan) -> Child:
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    command = [etcd, "--name", "demo", "--data-dir", str(work / "etcd"),
               "--listen-client-urls", f"http://{fleet.etcd}",
               "--advertise-client-urls", f"http://{fleet.etcd}",
               "--listen-peer-urls", f"http://{fleet.etcd_peer}",
               "--initial-advertise-peer-urls", f"http://{fleet.etcd_peer}",
               "--initial-cluster", f"demo=http://{fleet.etcd_peer}",
               # one `cdnctl apply` is one transaction, however many customers it holds
               "--max-txn-ops", "100000", "--max-request-bytes", str(64 * 1024 * 1024),
               "--logger", "zap", "--log-level", "info"]
    return Child("etcd", "the store (etcd)", command, [fleet.etcd], work / "etcd.log",
                 "serving client traffic", check=_seeder(work, fleet.store))


def seed_files(plan: Plan, work: Path) -> Path:
    """data/edge.yaml's customers (on the demo origin, through the shield) and the shield,
    as a cdnctl directory."""
    raw = yaml.safe_load((ROOT / "data" / "edge.yaml").read_text())
    for customer in raw["customers"]:
        customer["shield"] = plan.shield_name
        customer["origin"]["http"] = [plan.origin]
    shields = [{"name": plan.shield_name, "address": plan.shield,
                "lat": plan.shield_at[0], "lon": plan.shield_at[1]}]
    folder = work / "customers"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "customers.yaml").write_text(yaml.safe_dump(
        {"customers": raw["customers"], "shields": shields}, sort_keys=False))
    return folder


def _seeder(work: Path, store: str):
    def seed(child: Child) -> str:
        out = subprocess.run([sys.executable, "-m", "control.cli", "apply", "-f",
                              str(work / "customers"), "--store", store], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
        with open(child.log, "a") as log:
            log.write(out.stdout + out.stderr)
        return "" if out.returncode == 0 else f"cdnctl apply failed: {out.stderr.strip()}"
    return seed


def _local_config(work: Path, name: str, lat: float, lon: float) -> Path:
    """How one edge runs (its customers come from the store)."""
    raw = yaml.safe_load((ROOT / "data" / "edge.yaml").read_text())
    raw.pop("customers", None)
    raw.update(name=name, via=name, lat=lat, lon=lon,
               cache_disk=str(work / name / "cache"), state_dir=str(work / name / "state"))
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _edge(work: Path, store: str, name: str, role: str, binds: list[str], lat: float,
          lon: float, kind: str, site: str, addresses: list[str]) -> Child:
    command = [sys.executable, "-m", "edge.cli", "serve", "--workers", "1",
               "-c", str(_local_config(work, name, lat, lon)), "--store", store,
               "--node-id", name, "--kind", kind, "--site", site]
    if kind == "edge":
        command += ["--capacity", EDGE_CAPACITY]
    for bind in binds:
        command += ["--listen", bind]
    for address in addresses:
        command += ["--address", address]
    return Child(name, role, command, binds, work / f"{name}.log", "ready:",
                 check=edge_answers_as)


def children(plan: Plan, work: Path, fleet: FleetPlan) -> list[Child]:
    """Every process of the fleet demo, in start order."""
    from gslb.health import targets

    os.environ.setdefault("CDNCTL_TOKEN", DEMO_TOKEN)
    os.environ.setdefault("EDGE_ADMIN_TOKEN", os.environ["CDNCTL_TOKEN"])  # for Validate
    seed_files(plan, work)
    store = fleet.store
    out = [_etcd(work, fleet),
           Child("cdnctl", "the control plane (API and Customer Origin page)",
                 [sys.executable, "-m", "control.cli", "serve", "--store", store,
                  "--listen", fleet.cdnctl], [fleet.cdnctl], work / "cdnctl.log", "ready:"),
           Child("origin", "the origin (data/media)",
                 [sys.executable, "-m", "demo.origin", plan.origin], [plan.origin],
                 work / "origin.log")]
    out.append(_edge(work, store, plan.shield_name, f"the shield {plan.shield_name}", [plan.shield],
                     *plan.shield_at, "shield", "", []))
    by_site: dict[str, list[str]] = {}
    for target in targets(plan.config):
        bind = f"[{target.host}]:{target.port}" if ":" in target.host else \
            f"{target.host}:{target.port}"
        if bind not in by_site.setdefault(target.site, []):
            by_site[target.site].append(bind)
    for site, binds in by_site.items():
        where = plan.config.sites[site]
        out.append(_edge(work, store, f"edge-{site}", f"the {site} edge", binds, where.lat, where.lon,
                         "edge", site, [a.ip for a in where.addresses]))
    out.append(gslb_child(plan, work, extra=["--store", store, "--node-id", "ns1"]))
    out.append(second_nameserver(plan, work, store))
    return out


def second_nameserver(plan: Plan, work: Path, store: str) -> Child:
    """ns2: the same config on 127.0.0.2 (the demo's first DNS port), its own dashboard."""
    dns = (Listener(NS2_HOST, plan.dns[0].port),)
    http = Listener(NS2_HOST, plan.http.port) if plan.http else None
    child = gslb_child(replace(plan, http=http), work, "ns2", dns,
                       extra=["--store", store, "--node-id", "ns2"])
    return replace(child, role="the second nameserver (ns2)" + (
        " and its dashboard" if http else ""))


def banner_lines(plan: Plan, fleet: FleetPlan, edge: str) -> list[str]:
    """What to try in the fleet demo: a customer created through the API, then served."""
    zone = plan.config.zones[0].origin.rstrip(".")
    first = plan.dns[0]
    token = os.environ.get("CDNCTL_TOKEN", DEMO_TOKEN)
    auth = '-H "Authorization: Bearer $CDNCTL_TOKEN"'
    doc = ('{"directory": "video", "cnames": ["video.example.com", "video.example.com.'
           f'{zone}"], "origin": {{"http": ["{plan.origin}"]}}, "shield": "{plan.shield_name}"}}')
    ip, port = edge.rsplit(":", 1)
    control = fleet.cdnctl
    lines = [
        "", f"The fleet: customers live in etcd ({fleet.store}), every edge and the "
            "nameserver follow it. Create one and watch it served:",
        f"  export CDNCTL_TOKEN={token}",
        f"  curl -s {auth} -X POST http://{control}/api/customers -d '{doc}'",
        f"  curl -s {auth} http://{control}/api/customers/video     # deploying (k/n) -> "
        "deployed",
        f"  dig @{first.host} -p {first.port} video.example.com.{zone} A "
        "+subnet=198.51.100.0/24 +norec",
        f"  curl -s -o /dev/null -D - --resolve video.example.com:{port}:{ip} "
        f"http://video.example.com:{port}/clip.webm",
        f"  open http://{control}/       # the Customer Origin page (token {token})",
        f"  cdnctl status --store {fleet.store}",
        "", "Two nameservers, one view of health (ns1 and ns2 share their probe verdicts "
            "and the edges' leases and load through etcd):",
        f"  dig @{NS2_HOST} -p {first.port} www.test.com.{zone} A +subnet=198.51.100.0/24 "
        "+norec    # ns2 answers as ns1",
        f"  cdnctl drain edge-fra --wait 30 --store {fleet.store}    # out of both "
        "nameservers' answers; then `cdnctl undrain edge-fra`",
        f"  wrk -t2 -c64 -d30s -H 'Host: www.test.com' http://{edge}/clip.webm    # past its "
        f"capacity ({EDGE_CAPACITY}): Frankfurt's clients shed to the next site",
    ]
    if plan.http is not None:
        lines.append(f"  open http://{plan.http}/#fleet     # the fleet view: nameservers, "
                     "edges, load, the last 15 minutes")
    return lines
