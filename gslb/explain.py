"""`gslb explain`: the chain of decisions behind one answer.

It builds a real query, feeds it to the same `Responder.answer` the server
uses and decodes the bytes that come back, so the explanation and the server
cannot disagree. The intermediate steps are read from the same caches and
pure functions the answer was built from. The health is the running
server's, read from its API (`server_health`), when one answers.
"""
from __future__ import annotations

import ipaddress
import json
import urllib.request
from dataclasses import replace
from pathlib import Path

import dnslib

from gslb import select, shed
from gslb.answers import Dynamic
from gslb.config import Config, normalize_name
from gslb.health import HealthView, view_from_json
from gslb.server import TCP_LIMIT, Responder


def build_query(name: str, qtype: str, ecs: str | None) -> bytes:
    """A query as a resolver would send it: RD off, EDNS on, ECS if given."""
    q = dnslib.DNSRecord.question(name, qtype)
    q.header.rd = 0
    options = []
    if ecs:
        net = ipaddress.ip_network(ecs, strict=False)
        family = 1 if net.version == 4 else 2
        raw = net.network_address.packed[:(net.prefixlen + 7) // 8]
        options.append(dnslib.EDNSOption(8, family.to_bytes(2, "big")
                                         + bytes((net.prefixlen, 0)) + raw))
    q.add_ar(dnslib.EDNS0(udp_len=1232, opts=options))
    return bytes(q.pack())


class NoServer(Exception):
    """No server answered at the URL (the message says why)."""


def server_health(url: str, config_path: str, timeout: float = 2.0) -> tuple[HealthView | None,
                                                                          str]:
    """The health a running server sees, from its `/api/health`, and a line saying so.

    (None, why) when it runs another config than `config_path` (its addresses and
    checks could differ). NoServer when nothing answers there.
    """
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/health", timeout=timeout) as resp:
            data = json.load(resp)
        view = view_from_json(data["addresses"])
        view = replace(view, shed={str(k): int(v) for k, v in data.get("shed", {}).items()},
                       shed_notes=dict(data.get("shed_notes", {})))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise NoServer(f"no server answers at {url} ({getattr(reason, 'strerror', None) or reason})"
                       ) from None
    theirs = data.get("config")
    if theirs and Path(theirs).resolve() != Path(config_path).resolve():
        return None, (f"health: none: the server at {url} runs another config ({theirs}); "
                      "every address counts as not yet checked")
    return view, f"health: from the running server at {url}"


def default_server(config: Config) -> str:
    """The dashboard of a server running `config` on this machine: its configured listener
    (a wildcard address is reached on loopback)."""
    listen = config.dashboard.listen
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen.host, listen.host)
    return f"http://[{host}]:{listen.port}" if ":" in host else f"http://{host}:{listen.port}"


def ecs_scope(response: dnslib.DNSRecord) -> int | None:
    for rr in response.ar:
        if rr.rtype == dnslib.QTYPE.OPT:
            for opt in rr.rdata:
                if opt.code == 8:
                    return opt.data[3]
    return None


def explain(config: Config, name: str, qtype: str, client: str | None = None,
            ecs: str | None = None, health: HealthView | None = None) -> str:
    """Human-readable decision chain for ``name``/``qtype`` from ``client`` or ``ecs``.

    Without ``health`` every address counts as not yet checked (usable).
    """
    responder = Responder(config, health)
    client = client or "127.0.0.1"
    wire = build_query(name, qtype, ecs)
    out = responder.answer(wire, client, TCP_LIMIT)
    if out is None:
        raise ValueError("the server would drop this query")
    response = dnslib.DNSRecord.parse(out)
    lines = [f"query: {normalize_name(name)} {qtype} from {client}"
             + (f" with ECS {ecs}" if ecs else "")]
    table = responder.table
    entry = table.resolve(normalize_name(name), getattr(dnslib.QTYPE, qtype))
    if isinstance(entry, Dynamic):
        svc = entry.service
        lines.append(f"service: {svc.name} (algorithm {svc.algorithm.value}, answers "
                     f"{svc.answers}, ttl {svc.ttl}, ip_version {svc.ip_version.value}, "
                     f"all_down {svc.all_down.value})")
        ecs_raw = None
        if ecs:
            net = ipaddress.ip_network(ecs, strict=False)
            ecs_raw = ((1 if net.version == 4 else 2).to_bytes(2, "big")
                       + bytes((net.prefixlen, 0))
                       + net.network_address.packed[:(net.prefixlen + 7) // 8])
        decision, used_ecs = responder.locate(ecs_raw, client)
        where = f"ECS {ecs}" if used_ecs else f"source address {client}"
        loc = decision.location.describe() if decision.location else "unknown location"
        lines.append(f"located: {where} -> {decision.source} network {decision.network} -> {loc}")
        if decision.sites:
            lines.append(f"  nets entry fixes the site order: {', '.join(decision.sites)}")
        ranked = select.rank(svc, config.sites, decision)
        lines.append("ranking:")
        for i, r in enumerate(ranked, 1):
            dist = f"{r.distance_km:,.0f} km" if r.distance_km is not None else "distance n/a"
            states = ", ".join(f"{a.ip} {table.health.state(a.ip).value}" + (
                f" (sheds {shed.share(table.health.shed[a.ip]):.0%} of client networks)"
                if a.ip in table.health.shed else "") for a in r.site.addresses)
            lines.append(f"  {i}. {r.site.name} ({r.site.city or 'no city'}; {dist}): {states}")
            if r.site.name in table.health.shed_notes:
                lines.append(f"     load: {table.health.shed_notes[r.site.name]}")
        if table.health.shed:
            lines.append(f"shed: this client network {decision.network} is in bucket "
                         f"{decision.bucket} of {shed.STEPS}: a site shedding n% sends the "
                         "networks of n% of the buckets to the next site")
        reply = table.service(entry, decision)
        if reply.selection is not None:
            for note in reply.selection.notes:
                lines.append(f"policy: {note}")
    else:
        lines.append("static: not a service name; the answer comes from the zone data")
    rcode = dnslib.RCODE[response.header.rcode]
    lines.append(f"answer: {rcode}, {len(response.rr)} record(s)"
                 + (" (TC: truncated over UDP)" if response.header.tc else ""))
    for rr in response.rr:
        lines.append(f"  {rr.rname} {rr.ttl} {dnslib.QTYPE[rr.rtype]} {rr.rdata}")
    for rr in response.auth:
        lines.append(f"  authority: {rr.rname} {rr.ttl} {dnslib.QTYPE[rr.rtype]} {rr.rdata}")
    scope = ecs_scope(response)
    if scope is not None:
        lines.append(f"ecs scope: /{scope}" + (" (answer is the same for every client)"
                                                if scope == 0 else ""))
    return "\n".join(lines)
