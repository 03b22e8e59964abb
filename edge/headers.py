"""Response headers as clients get them, the same for every way a response leaves the
edge (a hit from the shortcut, a hit the long way, a miss, a pass, an error).

The edge writes `Content-Length`/framing, `Age`, `Via`, `X-Cache` and
`Cache-Status` (RFC 9211) itself; hop-by-hop headers and the CDN's targeted
cache fields (`CDN-Cache-Control`, RFC 9213) are not passed on.
"""
from __future__ import annotations

from typing import Iterable

from .forward import end_to_end

OWN = frozenset({"content-length", "age", "via", "x-cache"})


def via(incoming: str | None, version: str, name: str) -> str:
    """Via with this edge appended (RFC 9110 7.6.3)."""
    mine = f"{version} {name}"
    return f"{incoming}, {mine}" if incoming else mine


def _token(name: str) -> str:
    """A cache name as an RFC 8941 token when it is one, else a string."""
    ok = name[:1].isalpha() and all(c.isalnum() or c in "!#$%&'*+-.^_`|~:/" for c in name)
    return name if ok else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cache_status(name: str, *, hit: bool = False, fwd: str = "", fwd_status: int = 0,
                 ttl: float | None = None, stored: bool = False, collapsed: bool = False,
                 detail: str = "") -> str:
    """This edge's Cache-Status entry (RFC 9211 2)."""
    parts = [_token(name)]
    if hit:
        parts.append("hit")
    if fwd:
        parts.append(f"fwd={fwd}")
        if fwd_status:
            parts.append(f"fwd-status={fwd_status}")
    if ttl is not None:
        parts.append(f"ttl={int(ttl) if ttl >= 0 else -int(-ttl + 0.999)}")
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if detail:
        parts.append(f"detail={detail}")
    return "; ".join(parts)


def to_client(headers: Iterable[tuple[str, str]], *, version: str, via_name: str,
              alt_svc: str = "", drop: frozenset[str] = frozenset(),
              status_entry: str = "") -> list[tuple[str, str]]:
    """End-to-end headers for the client, Via extended and our Cache-Status appended to
    the upstream ones (each tier adds its own entry, the client's nearest last)."""
    out = []
    incoming_via = None
    upstream_status: list[str] = []
    for name, value in end_to_end(headers):
        lower = name.lower()
        if lower in OWN or lower in drop:
            if lower == "via":
                incoming_via = f"{incoming_via}, {value}" if incoming_via else value
            continue
        if lower == "cache-status":
            upstream_status.append(value)
            continue
        out.append((name, value))
    out.append(("Via", via(incoming_via, version, via_name)))
    if alt_svc:
        out.append(("Alt-Svc", alt_svc))
    if status_entry:
        out.append(("Cache-Status", ", ".join(upstream_status + [status_entry])))
    elif upstream_status:
        out.append(("Cache-Status", ", ".join(upstream_status)))
    return out
