"""`edge validate` and `edge whitelist`: checks and lists for operators and customers."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from cdnkit.netblocks import collapse
from cdnkit.yamlsrc import load_yaml

from edge.model import Customer, EdgeConfig, Server
from edge.origin.resolve import Resolver


@dataclass(frozen=True)
class Probe:
    scheme: str
    server: Server
    address: str
    status: int | None
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


async def validate(config: EdgeConfig, customer: Customer, timeout: float = 5.0) -> list[Probe]:
    """GET the validation path from every origin server (both edge protocols), with its Host."""
    origin = customer.origin
    path = origin.validation_path or "/"
    resolver = Resolver(list(config.nameservers) or None)
    results = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for scheme, servers in (("http", origin.http), ("https", origin.https)):
            for server in servers:
                results.append(await _probe(session, resolver, customer, scheme, server, path))
    return results


async def _probe(session: aiohttp.ClientSession, resolver: Resolver, customer: Customer,
                 scheme: str, server: Server, path: str) -> Probe:
    origin = customer.origin
    host = origin.host_header or (customer.cnames[0] if customer.cnames else server.host)
    wire_scheme = scheme if origin.protocol.value == "follow" else origin.protocol.value
    start = time.monotonic()
    try:
        address = (await resolver.resolve(server.host, origin.ip_version))[0]
        url = f"{wire_scheme}://{Server(address, server.port).authority(wire_scheme)}{path}"
        extra = {"server_hostname": host} if wire_scheme == "https" else {}
        async with session.get(url, headers={"Host": host}, allow_redirects=False,
                               **extra) as resp:
            await resp.read()
            return Probe(scheme, server, address, resp.status, time.monotonic() - start)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return Probe(scheme, server, "", None, time.monotonic() - start,
                     str(exc) or type(exc).__name__)


def validation_table(customer: Customer, probes: list[Probe]) -> str:
    lines = [f"validation of {customer.directory} "
             f"({customer.origin.validation_path or '/'}):",
             f"  {'protocol':<9}{'server':<32}{'address':<24}{'status':<8}{'time':>9}"]
    for p in sorted(probes, key=lambda p: (not p.ok, p.seconds)):
        server = f"{p.server.host}:{p.server.port}" if p.server.port else p.server.host
        status = str(p.status) if p.status is not None else "FAIL"
        lines.append(f"  {p.scheme:<9}{server:<32}{p.address or '-':<24}{status:<8}"
                     f"{p.seconds * 1000:>7.1f} ms" + (f"  {p.error}" if p.error else ""))
    ok = all(p.ok for p in probes)
    lines.append("all origin servers returned 200 OK" if ok else
                 "NOT all origin servers returned 200 OK")
    return "\n".join(lines)


def ranked(probes: list[Probe], scheme: str) -> tuple[Server, ...]:
    """Servers of one edge protocol, fastest 200 first, failures last (the ADN idea)."""
    mine = [p for p in probes if p.scheme == scheme]
    return tuple(p.server for p in sorted(mine, key=lambda p: (not p.ok, p.seconds)))


def whitelist(config: EdgeConfig, edge_addresses: list[str]) -> dict[str, list[str]]:
    """IPv4 and IPv6 blocks that origins must allow: configured egress plus every edge."""
    return collapse([*config.egress, *edge_addresses])


def site_addresses(gslb_config: Path) -> list[str]:
    """Every site address written in a gslb config (`sites: NAME: addresses:`); read
    here rather than through gslb's loader, which belongs to another wing."""
    raw = load_yaml(gslb_config)
    sites = raw.get("sites") if isinstance(raw, dict) else None
    out = []
    for site in (sites or {}).values():
        for item in (site or {}).get("addresses") or ():
            out.append(str(item.get("address") if isinstance(item, dict) else item))
    return out


def whitelist_text(blocks: dict[str, list[str]], as_json: bool) -> str:
    if as_json:
        return json.dumps(blocks, indent=2)
    lines = ["# Edge and shield source blocks: allow these on the origin firewall."]
    lines += ["# IPv4"] + blocks["ipv4"] + ["# IPv6"] + blocks["ipv6"]
    return "\n".join(lines)
