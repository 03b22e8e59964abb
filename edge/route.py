"""Which customer a request is for: its Host (an edge CNAME) or the CDN URL
`/<account>/<directory>/...`; None for anything else (never an open proxy)."""
from __future__ import annotations

from aiohttp import web

from .model import Customer, EdgeConfig


def host_name(host: str) -> str:
    """A Host header as an edge CNAME is written: lower case, no port, no final dot
    (an IPv6 literal is kept whole; it is no CNAME)."""
    name = host.rsplit(":", 1)[0].lower().rstrip(".")
    if name.startswith("[") or name.count(":") > 1:
        return host.lower()
    return name


def route(config: EdgeConfig, request: web.Request) -> tuple[Customer | None, str]:
    """(customer, path and query to request from the origin) or (None, "")."""
    customer = config.by_cname.get(host_name(request.host or ""))
    if customer is not None:
        return customer, request.raw_path
    if config.source == "--origin":
        return config.customers[0], request.raw_path
    prefix = f"/{config.account}/"
    if request.raw_path.startswith(prefix):
        directory, _, rest = request.raw_path[len(prefix):].partition("/")
        customer = config.by_directory.get(directory)      # case-sensitive, as the seed says
        if customer is not None:
            return customer, "/" + rest
    return None, ""
