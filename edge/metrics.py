"""The edge's Prometheus counters (one registry per process, served at /metrics).

Counted on the request path several times per request, so a count is a float
added in place (one event loop thread counts, nothing to lock); the values are
turned into Prometheus counter families only when /metrics is read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily


class Count:
    """One labelled counter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Family:
    """A counter with labels: `labels(*values)` is one dict lookup once it exists."""

    def __init__(self, name: str, documentation: str, labelnames: list[str]):
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.children: dict[tuple[str, ...], Count] = {}

    def labels(self, *values: str) -> Count:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = Count()
        return child

    def family(self) -> CounterMetricFamily:
        out = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            out.add_metric(list(values), child.value)
        return out


@dataclass(eq=False)        # registered by identity
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Family("edge_requests", "Client requests", ["customer", "status"])
        self.to_clients = Family("edge_bytes_to_clients", "Body bytes sent to clients "
                                 "(playback traffic)", ["customer"])
        self.from_origin = Family("edge_bytes_from_origin", "Body bytes pulled from origins "
                                  "(origin traffic)", ["customer"])
        self.origin_errors = Family("edge_origin_errors", "Failed origin attempts",
                                    ["customer", "server", "reason"])
        self.cache = Family("edge_cache_requests", "Requests by cache result",
                            ["customer", "result"])
        self.bad_requests = Family("edge_bad_requests", "Malformed requests refused with 400 "
                                   "(framing: smuggling shapes such as Content-Length with "
                                   "Transfer-Encoding; too_large; syntax)", ["reason"])
        self.shield = Family("edge_shield_requests", "Misses sent to a shield, by outcome "
                             "(ok, failed, skipped while backing off, origin = none left)",
                             ["customer", "shield", "result"])
        self.registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        for value in vars(self).values():
            if isinstance(value, Family):
                yield value.family()

    def describe(self) -> list:
        return []            # no duplicate-name checks against families made at scrape time
