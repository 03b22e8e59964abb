"""What one edge process holds: the config, its origin pools, the cache, the HTTP
client, the resolver, the certificates and the counters. `apply` swaps a whole
validated config in at once."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from edge.cache.store import Cache
from edge.http.pool import Pool
from edge.cache.disk import DiskStore
from edge.metrics import Metrics
from edge.model import Balancing, Customer, EdgeConfig, Origin
from edge.origin.order import OriginPool
from edge.origin.resolve import Resolver
from edge.http.tls import CertStore

log = logging.getLogger("edge.state")

FIXED = ("cache_disk", "cache_disk_size", "state_dir")     # set when the process starts

# Shields back off as origin servers do (5 s, doubling, up to 300 s).
SHIELD_BACKOFF = Origin(balancing=Balancing.FAILOVER)


class EdgeState:
    """The current config, its origin pools, the HTTP client and the counters."""

    def __init__(self, config: EdgeConfig):
        self.metrics = Metrics()
        self.client = Pool(config.origin_ca_file)
        self.config: EdgeConfig | None = None
        self.resolver = Resolver(list(config.nameservers) or None)
        self.certs = CertStore(config.certificates)
        disk = None
        if config.cache_disk:
            disk = DiskStore(config.cache_disk, config.cache_disk_size)
            disk.scan()
            log.info("disk cache %s: %d objects", config.cache_disk, len(disk))
        self.cache = Cache(config.cache_memory, disk)
        self.pools: dict[tuple[str, str], OriginPool] = {}
        self.shield_pool = OriginPool(SHIELD_BACKOFF, ())
        self.apply(config)

    def apply(self, config: EdgeConfig) -> None:
        """Swap in a validated config; back-off state survives for unchanged servers.

        The disk tier and the state dir are the process's for its life (its files are
        open, its workers follow them): a new config's take effect at the next start.
        """
        if self.config is not None:
            kept = {k: getattr(self.config, k) for k in FIXED
                    if getattr(config, k) != getattr(self.config, k)}
            if kept:
                if config.cache_disk or config.state_dir:
                    log.warning("%s change at the next start, not on reload",
                                " and ".join(sorted(kept)))
                config = dataclasses.replace(config, **kept)
        old = self.pools
        pools: dict[tuple[str, str], OriginPool] = {}
        for customer in config.customers:
            for scheme, servers in (("http", customer.origin.http),
                                    ("https", customer.origin.https)):
                if not servers:
                    continue
                pool = OriginPool(customer.origin, servers)
                previous = old.get((customer.directory, scheme))
                if previous is not None and previous.servers == servers:
                    pool.adopt(previous.state)
                pools[(customer.directory, scheme)] = pool
        shields = OriginPool(SHIELD_BACKOFF, tuple(s.server for s in config.shields))
        shields.adopt(self.shield_pool.state)
        if self.config is not None and (
                self.config.origin_ca_file != config.origin_ca_file):
            self.client.close()
            self.client = Pool(config.origin_ca_file)    # new trust for new connections
        self.config, self.pools, self.shield_pool = config, pools, shields
        self.certs.load(config.certificates)       # new handshakes use the new files

    def tell_workers_invalidated(self, url: str, keys: list[str], when: float) -> None:
        """Pass an invalidation (RFC 9111 4.4) to the other workers through the bans file."""
        if self.config.state_dir:
            from edge.cache.purge import Invalidation, append
            append(Path(self.config.state_dir) / "bans.jsonl",
                   Invalidation(url, tuple(keys), when))

    def pool_for(self, customer: Customer, edge_scheme: str) -> OriginPool:
        # The seed's HTTP/HTTPS edge protocols: requests arriving over HTTPS use the
        # HTTPS server list when there is one.
        return (self.pools.get((customer.directory, edge_scheme))
                or self.pools.get((customer.directory, "http"))
                or self.pools[(customer.directory, "https")])
