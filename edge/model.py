"""The edge's config as data. The customer part (customers, origins, cache rules,
shields) is cdnkit.customer, shared with the control plane; this adds what one edge
process runs with.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cdnkit.customer import (
    Balancing,
    CacheRules,
    Customer,
    IPVersion,
    Origin,
    Protocol,
    Server,
    Shield,
    TtlRule,
)
from cdnkit.listen import Listener

from edge.http.tls import CertSpec

__all__ = ["Balancing", "CacheRules", "Customer", "EdgeConfig", "IPVersion", "Origin",
           "Protocol", "Server", "Shield", "TtlRule"]


@dataclass(frozen=True)
class EdgeConfig:
    source: str
    listen: tuple[Listener, ...]
    account: str
    customers: tuple[Customer, ...]
    via: str = "gslb-edge"
    egress: tuple[str, ...] = ()         # source blocks of edges and shields, for origin firewalls
    tls_listen: tuple[Listener, ...] = ()
    certificates: tuple[CertSpec, ...] = ()
    origin_ca_file: str = ""             # extra CAs to trust for HTTPS origins
    cache_memory: int = 256 * 1024 * 1024   # bytes of the memory tier
    cache_disk: str = ""                 # directory of the disk tier, shared by workers; "" = none
    cache_disk_size: int = 10 * 1024**3  # bytes the disk tier may hold
    state_dir: str = ""                  # shared by the workers (purge bans); "" = none
    admin_token: str = ""                # admin API (purge) needs it; "" = refused
    name: str = "gslb-edge"              # this edge, in Via and CDN-Loop (unique per edge)
    region: str = ""                     # for per-region shield choices
    location: tuple[float, float] | None = None     # lat, lon: "blank" picks the nearest shield
    shields: tuple[Shield, ...] = ()
    nameservers: tuple[tuple[str, int], ...] = ()   # empty: /etc/resolv.conf
    # Peers whose Forwarded / X-Forwarded-* chains are kept (our own tiers); default: egress.
    trusted_proxies: tuple = ()
    sendfile: bool = False               # disk-tier hits by sendfile(2), not copied (filesend)
    h3: bool = True                      # HTTP/3 (UDP) on every tls listen (tls: h3: false)
    # ACME HTTP-01 challenges from the store (edge/fleet/watch.py): token -> key authorization
    acme_challenges: dict[str, str] = field(default_factory=dict)
    by_cname: dict[str, Customer] = field(default_factory=dict)
    by_directory: dict[str, Customer] = field(default_factory=dict)


