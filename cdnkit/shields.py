"""Origin shield: which parent edges a miss goes through before the origin, in what order.

Seed 003's choices per customer: off, one shield POP for everyone (the
recommended setting), or per region of the requesting edge: a named POP,
"blank" (the nearest shield) or "bypass" (straight to the origin). The plan is
worked out once per edge when the config loads: an ordered list of shields,
the chosen one first and the others by distance as fall-backs, then the
origin. An edge that is itself a shield never goes through another one.

Between tiers, requests carry `CDN-Loop` (RFC 8586) with every edge they
passed; an edge that finds its own name there answers 508 instead of
forwarding, so a misconfigured pair cannot bounce a request back and forth.
"""
from __future__ import annotations

import math
from typing import Any

from .check import Checker
from .customer import Server, Shield
from .listen import split_host_port
from .yamlsrc import LineDict, Where

BLANK, BYPASS = "blank", "bypass"


def parse_shields(ck: Checker, raw: Any, where: Where) -> tuple[Shield, ...]:
    """The top-level `shields:` list: name, address (host:port), optional region/lat/lon."""
    out: list[Shield] = []
    for index, (item, w) in enumerate(ck.items(raw, where, "shields") if raw else []):
        block = ck.mapping(item, w, f"shield #{index + 1}")
        ck.keys(block, ("name", "address", "region", "lat", "lon"), "shield")
        name = ck.text(block, "name", f"shield #{index + 1}")
        address = ck.text(block, "address", f"shield #{index + 1}")
        if not name:
            ck.add(block.where, "a shield needs name:")
        try:
            host, port = split_host_port(address)
            server = Server(host, port)
        except ValueError as exc:
            ck.add(block.at("address"), f"shield {name}: address {address!r}: {exc}")
            continue
        if not host or "://" in address:
            ck.add(block.at("address"), f"shield {name}: address must be HOST:PORT")
            continue
        lat = ck.number(block, "lat", -90, 90, f"shield {name}", default=None) \
            if "lat" in block else None
        lon = ck.number(block, "lon", -180, 180, f"shield {name}", default=None) \
            if "lon" in block else None
        out.append(Shield(name, server, ck.text(block, "region", f"shield {name}"), lat, lon))
    names = [s.name for s in out]
    for name in {n for n in names if names.count(n) > 1}:
        ck.add(where, f"shield {name} is listed twice")
    return tuple(out)


def _distance(a: tuple[float, float] | None, shield: Shield) -> float:
    if a is None or shield.lat is None or shield.lon is None:
        return math.inf
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], shield.lat, shield.lon))
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2)
    return 2 * math.asin(math.sqrt(h))


def plan(ck: Checker, raw: Any, where: Where, what: str, shields: tuple[Shield, ...],
         me: str, region: str, location: tuple[float, float] | None) -> tuple[Shield, ...]:
    """The shields this edge tries for a customer, in order; () = straight to the origin."""
    if raw is None or raw is False or raw == "off":
        return ()
    by_name = {s.name: s for s in shields}
    if isinstance(raw, LineDict):
        ck.keys(raw, ("regions", "default"), f"{what} shield")
        regions = raw.get("regions") or {}
        choice = str(regions.get(region, raw.get("default", BLANK))) if isinstance(
            regions, dict) else BLANK
        for value in list(regions.values()) if isinstance(regions, dict) else []:
            if str(value) not in by_name and str(value) not in (BLANK, BYPASS):
                ck.add(raw.at("regions"), f"{what} shield: {value!r} is not a shield "
                       f"(known: {', '.join(by_name) or 'none'}), blank or bypass")
    else:
        choice = str(raw)
    if choice not in by_name and choice not in (BLANK, BYPASS):
        ck.add(where, f"{what} shield: {choice!r} is not a shield "
               f"(known: {', '.join(by_name) or 'none'}), off, or a regions block")
        return ()
    if me in by_name or choice == BYPASS:
        return ()            # a shield goes to the origin itself
    nearest = sorted(shields, key=lambda s: _distance(location, s))   # stable: config order
    if choice == BLANK:
        return tuple(nearest)
    first = by_name[choice]
    return (first,) + tuple(s for s in nearest if s is not first)
