"""Which customer a request is for: its Host (an edge CNAME) or the CDN URL
`/<account>/<directory>/...`; None for anything else (never an open proxy).

The path is made canonical here (paths.py), before it is keyed, signed or
sent: a path that climbs above the customer's root (or its bucket) is a
`BadPath`. An absolute-form target (`GET http://host/x`) is routed by its
authority, which RFC 9112 3.2.2 says replaces the Host header.
"""
from __future__ import annotations

from edge.model import Customer, EdgeConfig
from edge.http.paths import BadPath, clean, clean_key

__all__ = ["BadPath", "canonical", "cname_customer", "host_name", "keys_host", "origin_host", "route",
           "split_target"]


_NAMES: dict[str, str] = {}


def host_name(host: str) -> str:
    """A Host header as an edge CNAME is written: lower case, no port, no final dot
    (an IPv6 literal is kept whole; it is no CNAME). Remembered: it runs per request."""
    name = _NAMES.get(host)
    if name is None:
        name = host.rsplit(":", 1)[0].lower().rstrip(".")
        if name.startswith("[") or name.count(":") > 1:
            name = host.lower()
        if len(_NAMES) > 10_000:
            _NAMES.clear()
        _NAMES[host] = name
    return name


def cname_customer(config: EdgeConfig, host: str) -> Customer | None:
    """The customer whose edge CNAME the Host header `host` names, if any."""
    return config.by_cname.get(host_name(host))


def split_target(host: str, target: str) -> tuple[str, str]:
    """(host, origin-form target): an absolute-form target brings its own authority."""
    if target[:1] == "/":
        return host, target
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise BadPath(target)             # authority-form, asterisk-form or garbage
    authority, slash, path = rest.partition("/")
    authority, q, query = authority.partition("?")
    path = "/" + path if slash else "/"
    if q:
        path = "/?" + query
    if "@" in authority or not authority:
        raise BadPath(target)             # userinfo is deprecated and a phishing aid
    return authority, path


def route(config: EdgeConfig, host: str, target: str) -> tuple[Customer | None, str]:
    """(customer, canonical path and query to request from the origin) or (None, "").

    BadPath when the target is malformed or climbs out of the customer's root.
    """
    global _last
    last = _last
    if last[2] == target and last[1] == host and last[0] is config:
        return last[3]
    found = _route(config, host, target)
    _last = (config, host, target, found)
    return found


# The hit shortcut, then the pass-through shortcut, route the same request in turn.
_last: tuple = (None, None, None, None)


def _route(config: EdgeConfig, host: str, target: str) -> tuple[Customer | None, str]:
    host, target = split_target(host, target)
    customer = cname_customer(config, host)
    if customer is None and config.source == "--origin":
        customer = config.customers[0]
    if customer is not None:
        return customer, canonical(customer, target)
    prefix = f"/{config.account}/"
    if target.startswith(prefix):
        directory, _, rest = target[len(prefix):].partition("/")
        customer = config.by_directory.get(directory)      # case-sensitive, as the seed says
        if customer is not None:
            return customer, canonical(customer, "/" + rest)
    return None, ""


def canonical(customer: Customer, target: str) -> str:
    """The canonical path and query of a customer's request (BadPath if it climbs out)."""
    return clean_key(target) if customer.origin.bucket is not None else clean(target)


def origin_host(customer: Customer, client_host: str) -> str:
    """The Host the origin is asked with: the configured one, else the client's when it is
    one of the customer's edge CNAMEs (else the first CNAME): never a name the client
    made up, since that name is not part of the cache key."""
    if customer.origin.host_header:
        return customer.origin.host_header
    if not customer.cnames or host_name(client_host) in customer.cnames:
        return client_host
    return customer.cnames[0]


def keys_host(customer: Customer) -> bool:
    """Whether the origin may see more than one Host for this customer (so the key holds it)."""
    return not customer.origin.host_header and len(customer.cnames) != 1
