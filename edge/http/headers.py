"""Response headers as clients get them, the same for every way a response leaves the
edge (a hit from the shortcut, a hit the long way, a miss, a pass, an error).

The edge writes `Content-Length`/framing, `Age`, `Via`, `X-Cache` and
`Cache-Status` (RFC 9211) itself; hop-by-hop headers and the CDN's targeted
cache fields (`CDN-Cache-Control`, RFC 9213) are not passed on.
"""
from __future__ import annotations

import functools

from edge.http.wire import field_lines, has_date
from edge.origin.forward import HOP_BY_HOP, connection_names

# Written by the edge itself, never copied from upstream or from the stored headers.
SPECIAL = HOP_BY_HOP | {"content-length", "age", "via", "x-cache", "cache-status"}
SPECIAL_RAW = frozenset(name.encode() for name in SPECIAL)
HOP_BY_HOP_RAW = frozenset(name.encode() for name in HOP_BY_HOP)


def via(incoming: str | None, version: str, name: str) -> str:
    """Via with this edge appended (RFC 9110 7.6.3)."""
    mine = f"{version} {name}"
    return f"{incoming}, {mine}" if incoming else mine


@functools.lru_cache(maxsize=64)
def sf_name(name: str) -> str:
    """A cache name as an RFC 8941 token when it is one, else a string."""
    ok = name[:1].isalpha() and all(c.isalnum() or c in "!#$%&'*+-.^_`|~:/" for c in name)
    return name if ok else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=1024)
def cache_status(name: str, *, hit: bool = False, fwd: str = "", fwd_status: int = 0,
                 ttl: float | None = None, stored: bool = False, collapsed: bool = False,
                 detail: str = "") -> str:
    """This edge's Cache-Status entry (RFC 9211 2)."""
    parts = [sf_name(name)]
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


def targeted_drop(request, customer) -> tuple[str, ...]:
    """The targeted cache fields to keep from this client: all of them, unless the
    request came through one of our tiers (CDN-Loop), which obeys them too."""
    return () if "CDN-Loop" in request.headers else customer.cache.targeted


def to_client(headers, *, version: str, via_name: str, alt_svc: str = "",
              drop: "frozenset[str] | tuple[str, ...]" = (), status_entry: str = "",
              checked: bool = False) -> list[tuple[str, str]]:
    """End-to-end headers for the client, Via extended and our Cache-Status appended to
    the upstream ones (each tier adds its own entry, the client's nearest last).
    `checked`: the headers are end-to-end already (stored ones are)."""
    named = frozenset() if checked else connection_names(headers)
    out = []
    incoming_via = None
    upstream_status: list[str] = []
    for name, value in (headers.items() if hasattr(headers, "items") else headers):
        lower = name.lower()
        if lower not in SPECIAL and lower not in drop and lower not in named:
            out.append((name, value))
        elif lower == "via":
            incoming_via = f"{incoming_via}, {value}" if incoming_via else value
        elif lower == "cache-status":
            upstream_status.append(value)
    out.append(("Via", via(incoming_via, version, via_name)))
    if alt_svc:
        out.append(("Alt-Svc", alt_svc))
    if status_entry:
        upstream_status.append(status_entry)
    if upstream_status:
        out.append(("Cache-Status", ", ".join(upstream_status)))
    return out


def to_client_raw(raw: "list[tuple[bytes, bytes]]", *, version: str, via_name: str,
                  alt_svc: str = "", drop: "frozenset[bytes]" = frozenset(),
                  status_entry: str = "") -> tuple[bytes, bool]:
    """`to_client` for headers as llhttp parsed them (bytes pairs), as the header lines
    `Reply.start_block` takes: (lines, whether they hold a Date). Byte for byte what
    `to_client` then `Reply.start` write (tests/edge/test_headers_raw.py holds them
    equal); the pass-through shortcut's, which must not decode and re-encode every
    field. `drop`: lower-case names, as bytes."""
    lines = []
    dated = False
    incoming_via: bytes | None = None
    upstream_status: tuple[bytes, ...] = ()
    listed = None                          # what Connection headers name
    for name, value in raw:
        lower = name.lower()
        if lower not in SPECIAL_RAW:
            if lower not in drop:
                lines.append(name + b": " + value + b"\r\n")
                if lower == b"date":
                    dated = True
        elif lower == b"via":
            incoming_via = incoming_via + b", " + value if incoming_via else value
        elif lower == b"cache-status":
            upstream_status += (value,)
        elif lower == b"connection":
            if value.lower() != b"keep-alive":      # keep-alive names a hop-by-hop field
                listed = (listed or set()) | {t.strip().lower() for t in value.split(b",")}
    if listed and not listed <= HOP_BY_HOP_RAW and any(
            n.lower() in listed for n, _ in raw):
        # A field the origin named hop-by-hop: rare; the general way drops it.
        pairs = to_client([(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw],
                          version=version, via_name=via_name, alt_svc=alt_svc,
                          drop=tuple(d.decode("latin-1") for d in drop),
                          status_entry=status_entry)
        return field_lines(pairs), has_date(pairs)
    lines.append(own_lines(incoming_via, upstream_status, version, via_name, alt_svc,
                           status_entry))
    return b"".join(lines), dated


@functools.lru_cache(maxsize=1024)
def own_lines(incoming_via: bytes | None, upstream_status: tuple[bytes, ...], version: str,
              via_name: str, alt_svc: str, status_entry: str) -> bytes:
    """to_client_raw's Via, Alt-Svc and Cache-Status lines (the pass-through shortcut's
    after edge._heads): the same few per customer."""
    mine = via(incoming_via.decode("latin-1") if incoming_via else None, version, via_name)
    lines = [f"Via: {mine}\r\n".encode("latin-1", "replace")]
    if alt_svc:
        lines.append(f"Alt-Svc: {alt_svc}\r\n".encode("latin-1", "replace"))
    statuses = list(upstream_status)
    if status_entry:
        statuses.append(status_entry.encode("latin-1", "replace"))
    if statuses:
        lines.append(b"Cache-Status: " + b", ".join(statuses) + b"\r\n")
    return b"".join(lines)
