"""Capacity and load: what a site or edge can serve, and how full it is.

Config side: a site's `capacity` (requests per second, bandwidth, open
connections; any of them) and its `shed_low` / `shed_high` watermarks, and
the fleet settings under `health:` (`quorum`, `shed_hold`, `shed_band`).
Runtime side: `utilization` compares what an edge reports (edge/fleet/report.py:
the same three names) with a capacity; the fullest part decides.
"""
from __future__ import annotations

from typing import Any, Mapping

from cdnkit.capacity import PARTS, parse_bandwidth
from cdnkit.check import Checker
from cdnkit.yamlsrc import LineDict

from gslb.model import Capacity

SITE_KEYS = ("capacity", "shed_low", "shed_high")
HEALTH_KEYS = ("quorum", "shed_hold", "shed_band")


def site_capacity(ck: Checker, site: LineDict, what: str) -> tuple[Capacity | None, float, float]:
    """A site's (capacity, shed_low, shed_high), every problem reported to `ck`."""
    capacity = None
    before = len(ck.problems)
    if "capacity" in site:
        block = ck.mapping(site["capacity"], site.at("capacity"), f"{what} capacity")
        ck.keys(block, PARTS, f"{what} capacity")
        requests = ck.number(block, "requests", 0.001, 1e12, f"{what} capacity", default=0.0)
        connections = ck.number(block, "connections", 1, 1e12, f"{what} capacity", default=0.0)
        bandwidth = None
        if "bandwidth" in block:
            bandwidth = parse_bandwidth(block["bandwidth"])
            if bandwidth is None:
                ck.add(block.at("bandwidth"), f"{what} capacity: bandwidth "
                       f"{block['bandwidth']!r} must be bits per second, e.g. 1e9, "
                       "\"10Gbit\" or \"500Mbit/s\"")
        capacity = Capacity(requests or None, bandwidth, connections or None)
        if not capacity.parts() and len(ck.problems) == before:
            ck.add(site.at("capacity"), f"{what} capacity needs requests, bandwidth or "
                   "connections")
    low = ck.number(site, "shed_low", 0.0, 10.0, what, default=0.8)
    high = ck.number(site, "shed_high", 0.0, 10.0, what, default=0.95)
    low = 0.8 if low is None else low
    high = 0.95 if high is None else high
    if ("shed_low" in site or "shed_high" in site) and high <= low:
        ck.add(site.at("shed_high" if "shed_high" in site else "shed_low"),
               f"{what}: shed_high ({high:g}) must be above shed_low ({low:g})")
        low, high = 0.8, 0.95
    return capacity, low, high


def fleet_settings(ck: Checker, block: LineDict) -> dict[str, Any]:
    """`health.quorum` (an integer, or `majority` = 0), `shed_hold`, `shed_band`."""
    quorum = 0
    raw = block.get("quorum", "majority")
    if raw != "majority":
        quorum = ck.integer(block, "quorum", 0, 1, 1000, "health")
    return {"quorum": quorum,
            "shed_hold": ck.number(block, "shed_hold", 0.0, 86400, "health", default=10.0),
            "shed_band": ck.number(block, "shed_band", 0.0, 1.0, "health", default=0.05)}


def capacity_of(raw: Mapping[str, Any] | None) -> Capacity | None:
    """A capacity as an edge reports it in its node record (JSON), or None."""
    if not isinstance(raw, Mapping):
        return None
    values = {}
    for part in PARTS:
        value = raw.get(part)
        value = parse_bandwidth(value) if part == "bandwidth" else value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            values[part] = float(value)
    return Capacity(**values) if values else None


def add(a: Capacity | None, b: Capacity | None) -> Capacity | None:
    """Two capacities together (a site made of edges); a part either lacks stays unset."""
    if a is None or b is None:
        return a or b
    return Capacity(*(((x or 0) + (y or 0)) or None for x, y in
                      ((a.requests, b.requests), (a.bandwidth, b.bandwidth),
                       (a.connections, b.connections))))


def utilization(load: Mapping[str, float], capacity: Capacity | None) -> tuple[float, str]:
    """(load / capacity of the fullest part, which part); (0, "") without a capacity."""
    if capacity is None:
        return 0.0, ""
    best, part = 0.0, ""
    for name, limit in capacity.parts().items():
        used = float(load.get(name) or 0.0) / limit
        if used > best or not part:
            best, part = used, name
    return best, part


def describe(load: Mapping[str, float], capacity: Capacity | None, part: str) -> str:
    """"requests 870/s of 1000/s" for the part that decided."""
    if capacity is None or not part:
        return "no capacity"
    limit = capacity.parts()[part]
    used = float(load.get(part) or 0.0)
    if part == "bandwidth":
        return f"bandwidth {used / 1e6:,.1f} of {limit / 1e6:,.1f} Mbit/s"
    if part == "requests":
        return f"requests {used:,.0f}/s of {limit:,.0f}/s"
    return f"connections {used:,.0f} of {limit:,.0f}"
