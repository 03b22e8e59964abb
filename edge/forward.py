"""What of a client's request reaches the origin (docs/edge.md, "Request headers").

Headers that are not part of the cache key must not be able to change the
origin's answer in ways a client controls, or one client could store its
answer for everyone (cache poisoning). So:

- hop-by-hop headers, and those `Connection` names, are dropped (RFC 9110 7.6.1);
- `Forwarded`, `X-Forwarded-For`, `-Proto` and `-Host` are written by the edge
  from what it received (the peer address, its scheme, the Host); a client's
  are dropped, unless the peer is a trusted tier (`trusted_proxies`), whose
  chain is kept and extended;
- the URL- and method-override family (`X-Original-URL`, `X-Rewrite-URL`,
  `X-HTTP-Method-Override`, ...) is dropped unless the customer keys on it;
- `Host`, `Via` and `CDN-Loop` are the edge's own.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})
FORWARDING = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
# Headers frameworks use to rebuild the URL, scheme, host or method of a request.
OVERRIDES = frozenset({"x-original-url", "x-rewrite-url", "x-forwarded-scheme",
                       "x-http-method-override", "x-http-method", "x-method-override",
                       "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server",
                       "x-forwarded-ssl", "x-host", "x-original-host", "front-end-https"})
OWN = frozenset({"host", "via", "cdn-loop"})

def end_to_end(headers: Iterable[tuple[str, str]],
               connection: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Headers (pairs, or a multidict) minus hop-by-hop ones, including those the
    Connection header names."""
    pairs = list(headers.items() if hasattr(headers, "items") else headers)
    named = {t.strip().lower() for k, v in pairs if k.lower() == "connection"
             for t in v.split(",")}
    named.update(c.lower() for c in connection)
    drop = HOP_BY_HOP | named if named else HOP_BY_HOP
    return [(k, v) for k, v in pairs if k.lower() not in drop]


def trusted(peer: str, networks: tuple) -> bool:
    """Whether `peer` is one of our own tiers, whose forwarding headers are kept."""
    if not networks or not peer:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    return any(address in net for net in networks)


def _node(peer: str) -> str:
    """A Forwarded node (RFC 7239 6): IPv6 in brackets, quoted."""
    return f'"[{peer}]"' if ":" in peer else peer or "unknown"


def _quoted(value: str) -> str:
    token = value and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in value)
    return value if token else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_origin(headers: Iterable[tuple[str, str]], *, peer: str, scheme: str, host: str,
              keyed: tuple[str, ...], trust: bool) -> list[tuple[str, str]]:
    """The client's end-to-end headers fit to forward, with the edge's forwarding headers.

    `host` is the Host the client sent (X-Forwarded-Host); the caller adds Host,
    Via and CDN-Loop.
    """
    kept = []
    chain: dict[str, list[str]] = {}
    for name, value in end_to_end(headers):
        lower = name.lower()
        if lower in FORWARDING:
            if trust:
                chain.setdefault(lower, []).append(value)
            continue
        if lower in OWN or (lower in OVERRIDES and lower not in keyed):
            continue
        kept.append((name, value))
    mine = f"for={_node(peer)};host={_quoted(host)};proto={scheme}"
    xff = ", ".join(chain.get("x-forwarded-for", []) + [peer])
    kept += [("Forwarded", ", ".join(chain.get("forwarded", []) + [mine])),
             ("X-Forwarded-For", xff),
             ("X-Forwarded-Proto", chain.get("x-forwarded-proto", [scheme])[0]),
             ("X-Forwarded-Host", chain.get("x-forwarded-host", [host])[0])]
    return kept
