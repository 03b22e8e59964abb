"""The validation Checker: collect every problem with its file:line, fail once.

Config loaders (gslb, edge, control) call the helpers below; each returns a
usable value even when it complains, so one pass reports everything
(octoDNS style) and `ConfigError` carries the whole list, sorted by line.
Every scalar goes through a helper that checks its type (a list where a
string belongs is an error at its line, never `str([...])`), and a misspelled
key or choice gets a "did you mean" (as octoDNS and Cargo do).
"""
from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any, Iterable

from .yamlsrc import LineDict, LineList, Where

_LOCATED = re.compile(r"^(.*?):(\d+): ")
_PATH = re.compile(r"^[A-Za-z_][\w.]*$")


class ConfigError(ValueError):
    """A config was rejected; ``problems`` holds every reason as "file:line: text",
    in the order of the file (a problem without a line keeps its place)."""

    def __init__(self, problems: list[str]):
        self.problems = sorted(problems, key=_line_of)
        super().__init__("\n".join(self.problems))


def _line_of(problem: str) -> int:
    found = _LOCATED.match(problem)
    return int(found.group(2)) if found else 0


def describe(problems: list[str], source: str = "") -> str:
    """Problems for a terminal: one alone, or a count and one indented line each."""
    if len(problems) == 1:
        return problems[0]
    head = f"{source}: {len(problems)} problems:" if source else f"{len(problems)} problems:"
    return head + "\n" + "\n".join(f"  {p}" for p in problems)


def field(what: str, key: str) -> str:
    """`server.workers`, but `site 'fra': lat` and `service www.example.net.: ttl` -- no
    dot glued to a name that ends with one, nor to a quoted name."""
    return f"{what}.{key}" if _PATH.match(what) and not what.endswith(".") else f"{what}: {key}"


def kind_of(value: Any) -> str:
    """What a YAML value is, in words (values themselves may be secrets: never echoed)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def suggest(word: Any, choices: Iterable[Any]) -> str:
    """" (did you mean 'x'?)" when `word` is a near miss of one of `choices`, else ""."""
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
            self.add(where, f"{what} must be a mapping, got {kind_of(value)}")
        empty = LineDict()
        empty.where, empty.key_where = where, {}
        return empty

    def keys(self, block: LineDict, allowed: Iterable[str], what: str) -> None:
        allowed = tuple(allowed)
        for key in block:
            if key not in allowed:
                self.add(block.at(key), f"unknown key {key!r} in {what}{suggest(key, allowed)} "
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

    def word(self, value: Any, where: Where, what: str, numbers: bool = False) -> str | None:
        """A scalar that must be a string (or, with `numbers`, an integer written bare:
        `account: 800001`); None, and a problem, when it is not."""
        if isinstance(value, str):
            return value
        if numbers and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        self.add(where, f"{what} must be a string, got {kind_of(value)}")
        return None

    def texts(self, value: Any, where: Where, what: str,
              numbers: bool = False) -> list[tuple[str, Where]]:
        """`items` whose every item must be a string: (text, where) pairs, bad ones left out."""
        out = []
        each = f"{what}: each item" if isinstance(value, LineList) else what
        for item, at in self.items(value, where, what):
            text = self.word(item, at, each, numbers)
            if text is not None:
                out.append((text, at))
        return out

    def integer(self, block: LineDict, key: str, default: int, lo: int, hi: int,
                what: str) -> int:
        value = block.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(block.at(key), f"{field(what, key)} must be an integer, got {value!r}"
                     if isinstance(value, (str, float)) else
                     f"{field(what, key)} must be an integer, got {kind_of(value)}")
            return default
        if not lo <= value <= hi:
            self.add(block.at(key), f"{field(what, key)} = {value} is out of range {lo}..{hi}")
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
            self.add(block.at(key), f"{field(what, key)} must be a number, got {value!r}"
                     if isinstance(value, str) else
                     f"{field(what, key)} must be a number, got {kind_of(value)}")
            return default
        if not lo <= value <= hi:
            self.add(block.at(key), f"{field(what, key)} = {value} is out of range {lo}..{hi}")
            return default
        return float(value)

    def choice(self, block: LineDict, key: str, enum_type: Any, default: Any, what: str) -> Any:
        if key not in block:
            return default
        value = block[key]
        names = [e.value for e in enum_type]
        if not isinstance(value, str):
            self.add(block.at(key), f"{field(what, key)} must be one of: {', '.join(names)}; "
                     f"got {kind_of(value)}")
            return default
        try:
            return enum_type(value)
        except ValueError:
            self.add(block.at(key), f"{field(what, key)} = {value!r} is not one of: "
                     f"{', '.join(names)}{suggest(value, names)}")
            return default

    def text(self, block: LineDict, key: str, what: str, default: str = "",
             numbers: bool = False) -> str:
        """A string setting (`numbers`: a bare integer is taken as its digits)."""
        if key not in block or block[key] is None and default == "":
            return default
        found = self.word(block[key], block.at(key), field(what, key), numbers)
        return default if found is None else found

    def flag(self, block: LineDict, key: str, default: bool, what: str) -> bool:
        """A true/false setting ("yes", 1 or "on" are errors: YAML 1.2 has no such booleans)."""
        value = block.get(key, default)
        if not isinstance(value, bool):
            self.add(block.at(key), f"{field(what, key)} must be true or false, got "
                     f"{value!r}" if isinstance(value, (str, int, float)) else
                     f"{field(what, key)} must be true or false, got {kind_of(value)}")
            return default
        return value

    def ip(self, value: Any, where: Where, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if not isinstance(value, str):
            self.add(where, f"{what}: an IP address is a string, got {kind_of(value)}")
            return None
        try:
            return ipaddress.ip_address(value.strip())
        except ValueError:
            self.add(where, f"{what}: {value!r} is not an IP address")
            return None
