"""The safe order on the DNS side: a customer's name is answered only with edges that
already serve it.

With the store (`gslb serve --store etcd://...`), each customer's edge CNAMEs under
our zones come from the store's CNAME index, and each edge reports the config
revision it has applied. A name may be answered with an edge's addresses once that
edge has applied the revision that gave the name to its customer; a name being
retired is answered by no one (the edges still serve it until the control plane
lets them drop it). So a client is never sent to an edge that does not yet, or no
longer, serve the customer.

Store mode answers names under a wildcard service only when they are customer
names: any other name there is NXDOMAIN, as is a customer name no edge serves yet
(its negative TTL is the zone's SOA minimum; keep it low). An exact service name of
the config that is also a customer name gets NODATA while no edge serves it.

A `Gate` is built off the query path, whenever the CNAME index or an edge's applied
revision changes, and answers.py consults it only when it builds a table entry.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from gslb.config import in_zone, normalize_name
from gslb.model import Site

Allowed = frozenset[str]


@dataclass(frozen=True)
class Gate:
    """Per customer name, the edge addresses that may answer it."""

    active: bool = False                            # False: no store, nothing gated
    names: Mapping[str, Allowed] = field(default_factory=dict)   # only names with edges
    known: frozenset[str] = frozenset()             # every customer name in our zones
    revision: int = 0                               # the config revision it reflects
    # Every customer name given at or before this revision is answered (with edges) by
    # this gate: what a nameserver reports as serving, so `deployed` means answered.
    serving: int = 0

    def allowed(self, name: str) -> Allowed | None:
        """The addresses for `name`; None when the name is not gated at all."""
        if not self.active or name not in self.known:
            return None
        return self.names.get(name, frozenset())


OPEN = Gate()


def _canonical(address: str) -> str:
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address


def build(origins: Iterable[str], cnames: Mapping[str, tuple[bool, int]],
          edges: Iterable[tuple[int, Iterable[str]]], revision: int) -> Gate:
    """The gate for CNAMEs (name -> (retiring, revision that gave it its customer)) and
    edges ((applied revision, addresses) each)."""
    zones = tuple(origins)
    edge_list = [(applied, tuple(_canonical(a) for a in addresses))
                 for applied, addresses in edges]
    interned: dict[Allowed, Allowed] = {}
    names: dict[str, Allowed] = {}
    known = set()
    unanswered: list[int] = []
    for raw, (retiring, since) in cnames.items():
        name = normalize_name(raw)
        if retiring or not any(in_zone(name, z) for z in zones):
            continue
        known.add(name)
        allowed = frozenset(a for applied, addresses in edge_list if applied >= since
                            for a in addresses)
        if allowed:
            names[name] = interned.setdefault(allowed, allowed)
        else:
            unanswered.append(since)
    # The oldest name still NXDOMAIN bounds what this gate serves: a resolver asking for
    # any name given before it gets an answer, for that name (and later ones) maybe not.
    serving = min(revision, min(unanswered) - 1) if unanswered else revision
    return Gate(True, names, frozenset(known), revision, max(serving, 0))


def restrict(sites: Mapping[str, Site], allowed: Allowed) -> dict[str, Site]:
    """The sites with only the allowed addresses (a site without any is never usable)."""
    from dataclasses import replace
    return {name: replace(site, addresses=tuple(a for a in site.addresses
                                                if a.ip in allowed))
            for name, site in sites.items()}
