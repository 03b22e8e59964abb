"""The validation Checker: collect every problem with its file:line, fail once.

Config loaders (gslb, edge, control) call the helpers below; each returns a
usable value even when it complains, so one pass reports everything
(octoDNS style) and `ConfigError` carries the whole list.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Iterable

from .yamlsrc import LineDict, LineList, Where


class ConfigError(ValueError):
    """A config was rejected; ``problems`` holds every reason as "file:line: text"."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Checker:
    """Collects problems; helpers return a usable value even when they complain."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def add(self, where: Where, text: str) -> None:
        self.problems.append(f"{where}: {text}")

    def mapping(self, value: Any, where: Where, what: str) -> LineDict:
        if isinstance(value, LineDict):
            return value
        if value is not None:
            self.add(where, f"{what} must be a mapping, got {type(value).__name__}")
        empty = LineDict()
        empty.where, empty.key_where = where, {}
        return empty

    def keys(self, block: LineDict, allowed: Iterable[str], what: str) -> None:
        allowed = tuple(allowed)
        for key in block:
            if key not in allowed:
                self.add(block.at(key), f"unknown key {key!r} in {what} "
                         f"(allowed: {', '.join(allowed)})")

    def items(self, value: Any, where: Where, what: str) -> list[tuple[Any, Where]]:
        """A scalar or a list, as (item, where) pairs."""
        if value is None:
            return []
        if isinstance(value, LineList):
            return [(v, value.at(i)) for i, v in enumerate(value)]
        if isinstance(value, (dict, list)):
            self.add(where, f"{what} must be a value or a list of values")
            return []
        return [(value, where)]

    def integer(self, block: LineDict, key: str, default: int, lo: int, hi: int,
                what: str) -> int:
        value = block.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(block.at(key), f"{what}.{key} must be an integer, got {value!r}")
            return default
        if not lo <= value <= hi:
            self.add(block.at(key), f"{what}.{key} = {value} is out of range {lo}..{hi}")
            return default
        return value

    def number(self, block: LineDict, key: str, lo: float, hi: float, what: str,
               default: float | None = None) -> float | None:
        if key not in block:
            if default is None:
                self.add(block.where, f"{what} needs {key}")
            return default
        value = block[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.add(block.at(key), f"{what}.{key} must be a number, got {value!r}")
            return default
        if not lo <= value <= hi:
            self.add(block.at(key), f"{what}.{key} = {value} is out of range {lo}..{hi}")
            return default
        return float(value)

    def choice(self, block: LineDict, key: str, enum_type: Any, default: Any, what: str) -> Any:
        if key not in block:
            return default
        try:
            return enum_type(block[key])
        except ValueError:
            names = ", ".join(e.value for e in enum_type)
            self.add(block.at(key), f"{what}.{key} = {block[key]!r} is not one of: {names}")
            return default

    def text(self, block: LineDict, key: str, what: str, default: str = "") -> str:
        value = block.get(key, default)
        if not isinstance(value, str):
            self.add(block.at(key), f"{what}.{key} must be a string")
            return default
        return value

    def ip(self, value: Any, where: Where, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(str(value).strip())
        except ValueError:
            self.add(where, f"{what}: {value!r} is not an IP address")
            return None


