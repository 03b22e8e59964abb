"""JSON documents (API bodies, store values) for the validators that expect YAML.

The validators read `LineDict`/`LineList` and say where a problem is through each
value's `Where`. A JSON document has no lines, so its places are JSON pointers
(RFC 6901): `/origin/http/0` instead of `edge.yaml:12`. Same validator, same
messages, a different address.
"""
from __future__ import annotations

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
