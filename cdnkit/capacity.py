"""Capacity as operators write it, shared by the edge (`--capacity`) and gslb (`capacity:`).

Three parts, each optional: `requests` (per second), `bandwidth` (bits per
second to clients: a number, or `10Gbit`, `500 Mbit/s`, `2.5Gbps`) and
`connections` (open client connections). Edges report their load under the
same names (edge/fleet/report.py).
"""
from __future__ import annotations

import re

PARTS = ("requests", "bandwidth", "connections")
_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BANDWIDTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:bit(?:/s)?|bps|b/s)\s*$", re.I)


def parse_bandwidth(value: object) -> float | None:
    """Bits per second from `1e9`, `"10Gbit"`, `"500 Mbit/s"` or `"2.5Gbps"`; None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    found = _BANDWIDTH.match(str(value))
    if not found:
        try:
            number = float(str(value))
        except ValueError:
            return None
        return number if number > 0 else None
    return float(found.group(1)) * _UNITS[found.group(2).lower()] or None


def parse_capacity(text: str) -> dict[str, float]:
    """`requests=2000,bandwidth=1Gbit,connections=5000` -> parts; ValueError says what is wrong."""
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in PARTS:
            raise ValueError(f"{name!r}: capacity parts are {', '.join(PARTS)}")
        number = parse_bandwidth(value) if name == "bandwidth" else None
        if name != "bandwidth":
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None or number <= 0:
            raise ValueError(f"{item!r}: give {name}=A_POSITIVE_NUMBER"
                             + (" (bits/s, or e.g. 10Gbit)" if name == "bandwidth" else ""))
        out[name] = number
    if not out:
        raise ValueError(f"{text!r}: give e.g. requests=2000,bandwidth=1Gbit,connections=5000")
    return out


def capacity_arg(text: str) -> dict[str, float]:
    """argparse type for --capacity."""
    import argparse
    try:
        return parse_capacity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
