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

import functools
import ipaddress

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

def connection_names(headers) -> frozenset[str]:
    """The header names a message's Connection header lists (RFC 9110 7.6.1)."""
    if hasattr(headers, "getall"):
        values = headers.getall("Connection", ())
    else:
        values = [v for k, v in headers if k.lower() == "connection"]
    if not values:
        return frozenset()
    return frozenset(t.strip().lower() for v in values for t in v.split(","))


def end_to_end(headers) -> list[tuple[str, str]]:
    """Headers (pairs, or a multidict) minus hop-by-hop ones, including those the
    Connection header names."""
    named = connection_names(headers)
    pairs = headers.items() if hasattr(headers, "items") else headers
    return [(k, v) for k, v in pairs if (lower := k.lower()) not in HOP_BY_HOP
            and lower not in named]


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


@functools.lru_cache(maxsize=4096)
def _quoted(value: str) -> str:
    token = value and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in value)
    return value if token else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


SPECIAL = HOP_BY_HOP | FORWARDING | OVERRIDES | OWN


def to_origin(headers, *, peer: str, scheme: str, host: str, keyed: tuple[str, ...],
              trust: bool) -> list[tuple[str, str]]:
    """The client's end-to-end headers fit to forward (a multidict in), with the edge's
    forwarding headers. `host` is the Host the client sent (X-Forwarded-Host); the
    caller adds Host, Via and CDN-Loop."""
    named = connection_names(headers)
    kept = []
    chain: dict[str, list[str]] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower not in SPECIAL and lower not in named:
            kept.append((name, value))            # the common case: one set lookup
        elif lower in named or lower in HOP_BY_HOP or lower in OWN:
            continue
        elif lower in FORWARDING:
            if trust:
                chain.setdefault(lower, []).append(value)
        elif lower in keyed:
            kept.append((name, value))            # an override the customer keys on
    return kept + forwarding(peer, scheme, host, chain)


def forwarding(peer: str, scheme: str, host: str,
               chain: "dict[str, list[str]] | None" = None) -> list[tuple[str, str]]:
    """The edge's Forwarded and X-Forwarded-* headers, extending a trusted tier's `chain`
    (lower-case name -> values it sent)."""
    chain = chain or {}
    mine = f"for={_node(peer)};host={_quoted(host)};proto={scheme}"
    xff = ", ".join(chain.get("x-forwarded-for", []) + [peer])
    return [("Forwarded", ", ".join(chain.get("forwarded", []) + [mine])),
            ("X-Forwarded-For", xff),
            ("X-Forwarded-Proto", chain.get("x-forwarded-proto", [scheme])[0]),
            ("X-Forwarded-Host", chain.get("x-forwarded-host", [host])[0])]
