"""JSON documents (API bodies, store values) for the validators that expect YAML.

The validators read `LineDict`/`LineList` and say where a problem is through each
value's `Where`. A JSON document has no lines, so its places are JSON pointers
(RFC 6901): `/origin/http/0` instead of `edge.yaml:12`. Same validator, same
messages, a different address. `parse` reads such a body from the wire, refusing
anything that is not UTF-8, not JSON or nested too deep before the parser recurses.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .yamlsrc import LineDict, LineList, Where


@dataclass(frozen=True)
class Pointer(Where):
    """A place in a JSON document, printed as its JSON pointer ("/origin/http/0")."""

    def __str__(self) -> str:
        return self.file or "/"


def _escape(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def lines(value: Any, pointer: str = "") -> Any:
    """A parsed JSON value with every mapping and list carrying JSON pointers."""
    if isinstance(value, dict):
        out = LineDict()
        out.where = Pointer(pointer, 0)
        out.key_where = {}
        for key, item in value.items():
            here = f"{pointer}/{_escape(key)}"
            out[key] = lines(item, here)
            out.key_where[key] = Pointer(here, 0)
        return out
    if isinstance(value, list):
        seq = LineList(lines(item, f"{pointer}/{i}") for i, item in enumerate(value))
        seq.where = Pointer(pointer, 0)
        seq.item_where = [Pointer(f"{pointer}/{i}", 0) for i in range(len(value))]
        return seq
    return value


def plain(value: Any) -> Any:
    """Back to plain dicts and lists (for JSON or YAML output)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


class BadJSON(ValueError):
    """A body that is not a JSON document we accept: not UTF-8, not JSON, or too deep."""


# A JSON string (escapes are always two characters, so `\\.` keeps `\"` inside it) or one
# bracket. Scanning with this skips strings in C, so brackets inside them are not counted.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def depth_ok(data: bytes, max_depth: int) -> bool:
    """Whether no array/object in `data` nests deeper than `max_depth`.

    Checked before json.loads, whose recursive parser would otherwise spend stack (and
    raise RecursionError) on `[` x 100,000; this stops at the first bracket too many.
    For valid JSON it counts exactly what the parser would; for invalid JSON it agrees
    with the parser up to the parser's first error, so it is a sound guard either way.
    """
    depth = 0
    for match in _TOKENS.finditer(data):
        char = match.group()[:1]
        if char in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return False
        elif char in (b"]", b"}"):
            depth -= 1
    return True


def parse(data: bytes, max_depth: int) -> Any:
    """A request body as JSON: strict UTF-8, at most `max_depth` levels, or BadJSON.

    The messages say what is wrong and where (line, column), never the input itself.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJSON(f"the body is not UTF-8 (bad byte at offset {exc.start})") from None
    if not depth_ok(data, max_depth):
        raise BadJSON(f"the body nests deeper than {max_depth} levels of arrays and objects")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadJSON(f"the body is not JSON: {exc.msg} at line {exc.lineno} column "
                      f"{exc.colno}") from None
    except (ValueError, RecursionError) as exc:      # e.g. an integer of 5,000 digits
        raise BadJSON(f"the body is not JSON we accept: {str(exc)[:200]}") from None
