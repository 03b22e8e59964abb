"""(service, client decision, health) -> the addresses to answer.

Pure functions: no I/O, no clock, no logging. The server never calls these per
query; answers.py calls them once per (service, type, location bucket) and
caches the wire bytes until health or config changes. `explain` calls the same
functions and prints the notes they leave.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import reduce
from typing import Mapping

from gslb.geo import Decision
from gslb.health import HealthView
from gslb.model import Algorithm, AllDown, IPVersion, Location, Service, Site

EARTH_RADIUS_KM = 6371.0
MAX_WEIGHTED_VARIANTS = 64


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True, slots=True)
class Ranked:
    site: Site
    distance_km: float | None


def rank(service: Service, sites: Mapping[str, Site], decision: Decision) -> tuple[Ranked, ...]:
    """The pool in the order this client should try it."""
    pool = [sites[name] for name in service.pool]
    loc: Location | None = decision.location
    if decision.sites:
        # An operator `nets` site list fixes the order; the rest of the pool
        # follows as a last resort, in pool order.
        first = [sites[n] for n in decision.sites if n in service.pool]
        pool = first + [s for s in pool if s not in first]
        dist = [None] * len(pool)
    elif loc is not None and loc.has_coords:
        dist = [great_circle_km(loc.lat, loc.lon, s.lat, s.lon)
                if s.lat is not None and s.lon is not None else None for s in pool]
        if service.algorithm is Algorithm.NEAREST:
            order = sorted(range(len(pool)), key=lambda i: dist[i])  # stable: ties keep pool order
            pool, dist = [pool[i] for i in order], [dist[i] for i in order]
    else:
        dist = [None] * len(pool)
    return tuple(Ranked(s, d) for s, d in zip(pool, dist))


def depends_on_client(service: Service, has_site_nets: bool) -> bool:
    """Whether two clients can ever get different answers (ECS scope > 0)."""
    if len(service.pool) < 2:
        return False
    return service.algorithm is Algorithm.NEAREST or has_site_nets


def families(policy: IPVersion) -> tuple[int, ...]:
    """Families answered, the preferred one first."""
    return {
        IPVersion.DEFAULT: (4,), IPVersion.V4_ONLY: (4,), IPVersion.V6_ONLY: (6,),
        IPVersion.V4_PREFERRED: (4, 6), IPVersion.V6_PREFERRED: (6, 4),
    }[policy]


@dataclass(frozen=True)
class Selection:
    """What to answer. `variants` rotate per query; empty = NODATA."""

    variants: tuple[tuple[str, ...], ...]
    site: str | None
    ttl: int
    all_down: bool = False
    notes: tuple[str, ...] = field(default=(), compare=False)


def _rotations(addrs: list[str], n: int) -> list[tuple[str, ...]]:
    """Each rotation of the usable addresses, cut to `n` answers."""
    if len(addrs) <= n:
        return [tuple(addrs)]
    return [tuple((addrs[i:] + addrs[:i])[:n]) for i in range(len(addrs))]


def _usable(site: Site, family: int, health: HealthView | None) -> list[str]:
    return [a.ip for a in site.family(family) if health is None or health.usable(a.ip)]


def _first_usable(ranked: tuple[Ranked, ...], family: int,
                  health: HealthView | None) -> tuple[Site, list[str]] | None:
    for r in ranked:
        addrs = _usable(r.site, family, health)
        if addrs:
            return r.site, addrs
    return None


def _weighted(service: Service, ranked: tuple[Ranked, ...], family: int,
              health: HealthView | None) -> list[tuple[Site, list[str]]]:
    live = [(r.site, a) for r in ranked if r.site.weight and (a := _usable(r.site, family, health))]
    if not live:
        return []
    g = reduce(math.gcd, (s.weight for s, _ in live))
    total = sum(s.weight // g for s, _ in live)
    scale = min(1.0, MAX_WEIGHTED_VARIANTS / total)
    out: list[tuple[Site, list[str]]] = []
    for site, addrs in live:
        out += [(site, addrs)] * max(1, round(site.weight // g * scale))
    return out


def _pick(service: Service, ranked: tuple[Ranked, ...], family: int,
          health: HealthView | None, notes: list[str]) -> Selection | None:
    if service.algorithm is Algorithm.WEIGHTED:
        slots = _weighted(service, ranked, family, health)
        if not slots:
            return None
        variants: list[tuple[str, ...]] = []
        for site, addrs in slots:
            variants += _rotations(addrs, service.answers)[:1]
        names = sorted({s.name for s, _ in slots})
        notes.append(f"weighted over {', '.join(f'{n}' for n in names)} "
                     f"({len(variants)} answer slots)")
        return Selection(tuple(variants), names[0] if len(names) == 1 else None, service.ttl)
    found = _first_usable(ranked, family, health)
    if found is None:
        return None
    site, addrs = found
    notes.append(f"IPv{family}: first usable site is {site.name} ({len(addrs)} usable address"
                 f"{'es' if len(addrs) != 1 else ''})")
    return Selection(tuple(_rotations(addrs, service.answers)), site.name, service.ttl)


def select(service: Service, ranked: tuple[Ranked, ...], family: int,
           health: HealthView | None) -> Selection:
    """Addresses of `family` (4 or 6) for a client whose pool order is `ranked`."""
    notes: list[str] = []
    allowed = families(service.ip_version)
    if family not in allowed:
        notes.append(f"ip_version {service.ip_version.value}: no IPv{family} answers (NODATA)")
        return Selection((), None, service.ttl, notes=tuple(notes))
    preferred = allowed[0]
    if family != preferred:
        # Dual-stack clients should land on one site: follow the site that the
        # preferred family picked, if it has usable addresses of this family.
        anchor = _pick(service, ranked, preferred, health, [])
        if anchor is not None and anchor.site is not None:
            site = next(r.site for r in ranked if r.site.name == anchor.site)
            addrs = _usable(site, family, health)
            if addrs:
                notes.append(f"{service.ip_version.value}: IPv{preferred} picked {site.name}; "
                             f"IPv{family} follows it")
                return Selection(tuple(_rotations(addrs, service.answers)), site.name,
                                 service.ttl, notes=tuple(notes))
            notes.append(f"{service.ip_version.value}: {site.name} (picked by IPv{preferred}) "
                         f"has no usable IPv{family}; IPv{family} picks on its own")
        else:
            notes.append(f"{service.ip_version.value}: no usable IPv{preferred} edge; "
                         f"IPv{family} picks on its own")
    picked = _pick(service, ranked, family, health, notes)
    if picked is not None:
        return Selection(picked.variants, picked.site, picked.ttl, notes=tuple(notes))
    return _all_down(service, ranked, family, notes)


def _all_down(service: Service, ranked: tuple[Ranked, ...], family: int,
              notes: list[str]) -> Selection:
    mode = service.all_down
    if mode is AllDown.SERVE_ALL:
        # Fail open like Route 53: with nothing healthy, answer as if all were up.
        picked = _pick(service, ranked, family, None, [])
        notes.append(f"no usable IPv{family} edge: all_down serve_all answers ignoring health")
        if picked is None:
            return Selection((), None, service.ttl, True, tuple(notes))
        return Selection(picked.variants, picked.site, service.ttl, True, tuple(notes))
    if mode is AllDown.FALLBACK:
        addrs = [a.ip for a in service.fallback if a.version == family]
        notes.append(f"no usable IPv{family} edge: all_down fallback -> "
                     f"{', '.join(addrs) or 'none of this family (NODATA)'}")
        return Selection(tuple(_rotations(addrs, service.answers)) if addrs else (), None,
                         service.ttl, True, tuple(notes))
    notes.append(f"no usable IPv{family} edge: all_down serve_none (NODATA)")
    return Selection((), None, service.ttl, True, tuple(notes))

