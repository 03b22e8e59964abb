"""The edge's Prometheus counters (one registry per process, served at /metrics)."""
from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("edge_requests", "Client requests", ["customer", "status"],
                                registry=r)
        self.to_clients = Counter("edge_bytes_to_clients", "Body bytes sent to clients "
                                  "(playback traffic)", ["customer"], registry=r)
        self.from_origin = Counter("edge_bytes_from_origin", "Body bytes pulled from origins "
                                   "(origin traffic)", ["customer"], registry=r)
        self.origin_errors = Counter("edge_origin_errors", "Failed origin attempts",
                                     ["customer", "server", "reason"], registry=r)
        self.cache = Counter("edge_cache_requests", "Requests by cache result",
                             ["customer", "result"], registry=r)
        self.bad_requests = Counter("edge_bad_requests", "Malformed requests refused with 400 "
                                    "(framing: smuggling shapes such as Content-Length with "
                                    "Transfer-Encoding; too_large; syntax)", ["reason"],
                                    registry=r)
        self.shield = Counter("edge_shield_requests", "Misses sent to a shield, by outcome "
                              "(ok, failed, skipped while backing off, origin = none left)",
                              ["customer", "shield", "result"], registry=r)
