"""`gslb demo --fleet`: the demo CDN with its customers in etcd, managed by cdnctl.

Children, in start order: a real etcd (Debian's etcd-server) on 127.0.0.1:2379 with
its data in the demo's work directory, seeded with data/edge.yaml's customers by
`cdnctl apply`; the origin; the shield and an edge per site, each following the
store and reporting its load (capacity EDGE_CAPACITY); two nameservers, the zone's
ns1 (the demo's DNS listeners, 127.0.0.1:8053 and [::1]:8053, dashboard
127.0.0.1:8080) and ns2 (127.0.0.2 on the same ports), sharing their probe verdicts
through the store and answering customer names only with edges that serve them;
last `cdnctl serve` on 127.0.0.1:8090. All on loopback, all the demo's, gone with it.

The control plane starts last, and a node counts as started only once its record is
in the store with the seeded revision applied (a nameserver: answered): so when the
API first answers, every edge and nameserver is registered, and a customer created
then is `deployed` only when all of them serve and answer it.

The demo makes a key file (`cdnctl keygen`) in its work directory and hands it to
cdnctl and every edge, so private bucket customers (access_key_id and
secret_access_key) can be created: cdnctl seals the secret, edges open it.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from cdnkit.keys import Keys
from cdnkit.listen import Listener
from cdnkit.seal import new_key

from .cdn import Plan, gslb_child, https_bind
from .certs import customer_names, demo_tls, self_signed, tls_block
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
    acme: str = "127.0.0.1:14000"            # pebble, the demo's ACME CA (https: auto)
    acme_admin: str = "127.0.0.1:15000"      # pebble's management API: its root certificate

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


def key_file(work: Path) -> Path:
    """The demo's key for sealed bucket secrets (made once per demo, owner-only)."""
    path = work / "seal.key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(new_key())
    return path


def _etcd_get(etcd: str, key: str) -> tuple[dict | None, int]:
    """(the JSON value of `key` or None, its mod revision) through etcd's JSON gateway."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    req = urllib.request.Request(f"http://{etcd}/v3/kv/range", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=2) as resp:
        kvs = json.load(resp).get("kvs") or []
    if not kvs:
        return None, 0
    return json.loads(base64.b64decode(kvs[0]["value"])), int(kvs[0].get("mod_revision", 0))


def registered(etcd: str, node: str, field: str = "applied"):
    """A check: the node's record is in the store and its `field` reached the config
    revision (edges: applied; nameservers: serving, i.e. answering every customer)."""
    keys = Keys()

    def check(child: Child) -> str:
        try:
            _, revision = _etcd_get(etcd, keys.rev)
            record, _ = _etcd_get(etcd, keys.node(node))
        except (OSError, ValueError, KeyError) as exc:
            return f"cannot read {node}'s record in the store ({exc})"
        if record is None:
            return f"{node} has not registered in the store"
        if int(record.get(field, 0)) < revision:
            return f"{node} is at revision {record.get(field, 0)} ({field}), not {revision}"
        return ""
    return check


def _both(first, second):
    def check(child: Child) -> str:
        return (first(child) if first else "") or second(child)
    return check


def _seeder(work: Path, store: str):
    def seed(child: Child) -> str:
        out = subprocess.run([sys.executable, "-m", "control.cli", "apply", "-f",
                              str(work / "customers"), "--store", store,
                              "--key-file", str(key_file(work))], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
        with open(child.log, "a") as log:
            log.write(out.stdout + out.stderr)
        return "" if out.returncode == 0 else f"cdnctl apply failed: {out.stderr.strip()}"
    return seed


def _local_config(work: Path, name: str, lat: float, lon: float, tls_bind: str = "") -> Path:
    """How one edge runs (its customers come from the store; with `tls_bind`, HTTPS
    there with the demo's certificate for the seeded customers' names)."""
    raw = yaml.safe_load((ROOT / "data" / "edge.yaml").read_text())
    if tls_bind:
        raw["tls"] = tls_block(demo_tls(work, customer_names(raw)), tls_bind)
    raw.pop("customers", None)
    raw.update(name=name, via=name, lat=lat, lon=lon,
               cache_disk=str(work / name / "cache"), state_dir=str(work / name / "state"))
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _edge(work: Path, fleet: FleetPlan, name: str, role: str, binds: list[str], lat: float,
          lon: float, kind: str, site: str, addresses: list[str], https_port: int) -> Child:
    https = https_bind(binds, https_port) if kind == "edge" else ""
    command = [sys.executable, "-m", "edge.cli", "serve", "--workers", "1",
               "-c", str(_local_config(work, name, lat, lon, https)), "--store", fleet.store,
               "--node-id", name, "--kind", kind, "--site", site,
               "--key-file", str(key_file(work))]
    if kind == "edge":
        command += ["--capacity", EDGE_CAPACITY]
    for bind in binds:
        command += ["--listen", bind]
    for address in addresses:
        command += ["--address", address]
    return Child(name, role, command, binds, work / f"{name}.log", "ready:",
                 check=_both(edge_answers_as, registered(fleet.etcd, name)),
                 tls=[https] if https else [])


def children(plan: Plan, work: Path, fleet: FleetPlan) -> list[Child]:
    """Every process of the fleet demo, in start order."""
    from gslb.health import targets

    os.environ.setdefault("CDNCTL_TOKEN", DEMO_TOKEN)
    os.environ.setdefault("EDGE_ADMIN_TOKEN", os.environ["CDNCTL_TOKEN"])  # for Validate
    seed_files(plan, work)
    store = fleet.store
    out = [_etcd(work, fleet),
           Child("origin", "the origin (data/media)",
                 [sys.executable, "-m", "demo.origin", plan.origin], [plan.origin],
                 work / "origin.log")]
    out.append(_edge(work, fleet, plan.shield_name, f"the shield {plan.shield_name}", [plan.shield],
                     *plan.shield_at, "shield", "", [], plan.https_port))
    by_site: dict[str, list[str]] = {}
    for target in targets(plan.config):
        bind = f"[{target.host}]:{target.port}" if ":" in target.host else \
            f"{target.host}:{target.port}"
        if bind not in by_site.setdefault(target.site, []):
            by_site[target.site].append(bind)
    for site, binds in by_site.items():
        where = plan.config.sites[site]
        out.append(_edge(work, fleet, f"edge-{site}", f"the {site} edge", binds, where.lat, where.lon,
                         "edge", site, [a.ip for a in where.addresses], plan.https_port))
    acme = _pebble(work, fleet, plan, int(next(iter(by_site.values()))[0].rsplit(":", 1)[1]))
    ns = replace(plan, config_path=_shop_over_ipv4(plan, work)) if acme else plan
    ns1 = gslb_child(ns, work, extra=["--store", store, "--node-id", "ns1"])
    out.append(replace(ns1, check=_both(ns1.check, registered(fleet.etcd, "ns1", "serving"))))
    out.append(second_nameserver(ns, work, fleet))
    # a quick retry: a first order may race the edges applying the new customer
    ca = ["--acme-directory", f"https://{fleet.acme}/dir", "--acme-ca-file",
          str(work / "acme-listener.pem"), "--acme-interval", "1", "--acme-retry", "5"] \
        if acme else []
    out += [acme] if acme else []
    # Last: the API answers only once every edge and nameserver is up and registered.
    out.append(Child("cdnctl", "the control plane (API and Customer Origin page)",
                     [sys.executable, "-m", "control.cli", "serve", "--store", store,
                      "--listen", fleet.cdnctl, "--key-file", str(key_file(work)), *ca],
                     [fleet.cdnctl], work / "cdnctl.log", "ready:"))
    return out


def _shop_over_ipv4(plan: Plan, work: Path) -> Path:
    """The plan's config plus a service for the banner's `shop.<zone>` answered over IPv4
    only. Pebble, like Let's Encrypt's validators, dials the AAAA answer, and the demo's
    IPv6 edge addresses are documentation ones (2001:db8::/32) that route nowhere; a real
    fleet's AAAA addresses are reachable and need no such service."""
    source = plan.config_path
    raw = yaml.safe_load(source.read_text())
    base = source.resolve().parent
    # the copy lives in the work directory: the paths it names stay the original's
    geoip = raw.get("geoip") or {}
    if geoip.get("database"):
        geoip["database"] = str(base / geoip["database"])
    for zone in (raw.get("zones") or {}).values():
        if isinstance(zone, dict) and isinstance(zone.get("dnssec"), dict):
            zone["dnssec"]["key_directory"] = str(base / zone["dnssec"].get("key_directory",
                                                                            "keys"))
    health = raw.get("health") or {}
    if health.get("state_file"):
        health["state_file"] = str(base / os.path.expandvars(health["state_file"]))
    zone = plan.config.zones[0].origin
    services = raw.setdefault("services", {})
    model = services.get(f"*.{zone}") or next(iter(services.values()), {"pool": list(
        plan.config.sites)})
    services[f"shop.{zone}"] = {**model, "ip_version": "v4_only"}
    path = work / "gslb-fleet.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _pebble(work: Path, fleet: FleetPlan, plan: Plan, edge_port: int) -> Child | None:
    """Debian's pebble as the ACME CA for customers marked `https: auto`: it looks names
    up at ns1 (the demo's own nameserver, so a name in the zone leads it to an edge) and
    validates HTTP-01 at the edges' port. None when pebble is not installed."""
    binary = shutil.which("pebble")
    if binary is None:
        return None
    cert, key = self_signed(work, "acme-listener", fleet.acme.rsplit(":", 1)[0])
    config = work / "pebble.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": fleet.acme, "managementListenAddress": fleet.acme_admin,
        "certificate": str(cert), "privateKey": str(key), "httpPort": edge_port,
        "tlsPort": plan.https_port, "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    dns = plan.dns[0]
    # `env` execs pebble (same pid): validate at once rather than after a random sleep,
    # and no nonces refused on purpose (pebble's tests of clients' retries)
    command = ["env", "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", binary,
               "-config", str(config), "-dnsserver", f"{dns.host}:{dns.port}"]
    return Child("pebble", "the ACME CA (pebble, for https: auto)", command,
                 [fleet.acme, fleet.acme_admin], work / "pebble.log", "ACME directory",
                 check=_root_saved(work, fleet))


def _root_saved(work: Path, fleet: FleetPlan):
    """Save pebble's root (made anew at every start) where the banner's curl trusts it."""
    def check(child: Child) -> str:
        import ssl
        ctx = ssl.create_default_context(cafile=str(work / "acme-listener.pem"))
        try:
            with urllib.request.urlopen(f"https://{fleet.acme_admin}/roots/0", context=ctx,
                                        timeout=3) as resp:
                (work / "acme-root.pem").write_bytes(resp.read())
        except OSError as exc:
            return f"pebble's root certificate: {exc}"
        return ""
    return check


def second_nameserver(plan: Plan, work: Path, fleet: FleetPlan) -> Child:
    """ns2: the same config on 127.0.0.2 (the demo's first DNS port), its own dashboard."""
    dns = (Listener(NS2_HOST, plan.dns[0].port),)
    http = Listener(NS2_HOST, plan.http.port) if plan.http else None
    child = gslb_child(replace(plan, http=http), work, "ns2", dns,
                       extra=["--store", fleet.store, "--node-id", "ns2"])
    return replace(child, role="the second nameserver (ns2)" + (
        " and its dashboard" if http else ""),
        check=_both(child.check, registered(fleet.etcd, "ns2", "serving")))


def banner_lines(plan: Plan, fleet: FleetPlan, edge: str, work: Path) -> list[str]:
    """What to try in the fleet demo: a customer created through the API, then served."""
    zone = plan.config.zones[0].origin.rstrip(".")
    first = plan.dns[0]
    token = os.environ.get("CDNCTL_TOKEN", DEMO_TOKEN)
    auth = '-H "Authorization: Bearer $CDNCTL_TOKEN"'
    doc = ('{"directory": "video", "cnames": ["video.example.com"], "origin": {"http": '
           f'["{plan.origin}"]}}, "shield": "{plan.shield_name}"}}')
    ip, port = edge.rsplit(":", 1)
    control = fleet.cdnctl
    lines = [
        "", f"The fleet: customers live in etcd ({fleet.store}), every edge and the "
            "nameserver follow it. Create one and watch it served:",
        f"  export CDNCTL_TOKEN={token}",
        f"  curl -s {auth} -X POST http://{control}/api/customers -d '{doc}'",
        f"  curl -s {auth} http://{control}/api/customers/video     # deploying (edges k/n, "
        "nameservers k/m) -> deployed; cname_target: CNAME video.example.com to "
        f"video.example.com.{zone}",
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
    if shutil.which("pebble"):
        shop = ('{"directory": "shop", "cnames": ["shop.' + zone + '"], "origin": {"http": '
                f'["{plan.origin}"]}}, "https": "auto"}}')
        lines += [
            "", f"HTTPS by ACME: pebble ({fleet.acme}) is the CA; it looks names up at ns1 and "
                "asks the edges for the HTTP-01 answer:",
            f"  curl -s {auth} -X POST http://{control}/api/customers -d '{shop}'",
            f"  cdnctl certs --store {fleet.store}     # shop: issuing -> active (expires ...)",
            f"  curl -s -o /dev/null -D - --cacert {work}/acme-root.pem --resolve "
            f"shop.{zone}:{plan.https_port}:{ip} https://shop.{zone}:{plan.https_port}/clip.webm"]
    if plan.http is not None:
        lines.append(f"  open http://{plan.http}/#fleet     # the fleet view: nameservers, "
                     "edges, load, the last 15 minutes")
    return lines
