"""HTTP caching rules (RFC 9111, RFC 9213) as pure functions: may we store it, for how long.

No I/O and no clock: callers pass `now`. The cache (cache.py) applies them.
Field values are parsed strictly (fields.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from edge.cache.fields import delta_seconds, directives, field_names, http_date, sf_dictionary

__all__ = ["Policy", "directives", "http_date", "initial_age", "request_wants_fresh",
           "response_policy"]

# RFC 9110 15.1: statuses a cache may store with heuristic freshness. 206 is left out
# here: partial content is stored apart (parts.py) and never as a whole object.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
NEVER_WHOLE = frozenset({206, 304})     # not a whole representation to store as one
HEURISTIC_FRACTION = 0.1            # RFC 9111 4.2.2: 10 % of the time since Last-Modified
HEURISTIC_MAX = 86400.0


@dataclass(frozen=True)
class Policy:
    """What a response allows: store it or not, fresh for how long, revalidation rules."""

    store: bool
    ttl: float                      # freshness lifetime, seconds
    reason: str
    must_revalidate: bool = False   # never served stale
    no_cache: bool = False          # stored, but revalidated before every use
    stale_while_revalidate: float = 0.0   # RFC 5861
    stale_if_error: float = 0.0
    strip: tuple[str, ...] = ()     # header fields not stored (private="f", no-cache="f")

    def stale_allowed(self, staleness: float, window: float) -> bool:
        return not self.must_revalidate and not self.no_cache and staleness <= window


def _getall(headers, name: str) -> list[str]:
    if hasattr(headers, "getall"):
        return headers.getall(name, [])
    value = headers.get(name)
    return [] if value is None else [value]


def cache_directives(headers, targeted: tuple[str, ...] = ()) -> tuple[dict, bool]:
    """(directives, whether Expires counts): from the first targeted field with a valid,
    non-empty value (RFC 9213 2.2: then Cache-Control and Expires are ignored), else
    from Cache-Control."""
    for name in targeted:
        values = _getall(headers, name)
        if not values:
            continue
        # Surrogate-Control predates Structured Fields and is written like Cache-Control.
        found = directives(values) if name == "surrogate-control" else sf_dictionary(values)
        if found:
            return found, False
    return directives(_getall(headers, "Cache-Control")), True


def response_policy(status: int, headers, request_cc: list[str], has_authorization: bool,
                    now: float, default_ttl: float = 0.0, override_ttl: float | None = None,
                    targeted: tuple[str, ...] = ()) -> Policy:
    """RFC 9111 3 and 4.2: may a shared cache store this response to a GET, and for how
    long (`targeted`: RFC 9213 fields obeyed over Cache-Control, in order).

    Also the RFC 5861 extensions: how long it may be served stale while it is
    revalidated, and when the origin fails. `override_ttl` is an operator's rule
    that replaces the origin's freshness (never its no-store or private).
    """
    cc, use_expires = cache_directives(headers, targeted)
    policy = _policy(status, headers, cc, use_expires, request_cc, has_authorization, now,
                     default_ttl)
    if override_ttl is not None and (policy.store or policy.reason == "no freshness information"):
        policy = Policy(True, override_ttl, "operator TTL rule", strip=policy.strip)
    if not policy.store:
        return policy
    return replace(policy,
                   stale_while_revalidate=delta_seconds(cc.get("stale-while-revalidate")) or 0.0,
                   stale_if_error=delta_seconds(cc.get("stale-if-error")) or 0.0)


def _policy(status: int, headers, cc: dict, use_expires: bool, request_cc: list[str],
            has_authorization: bool, now: float, default_ttl: float) -> Policy:
    if "no-store" in cc or "no-store" in directives(request_cc):
        return Policy(False, 0, "no-store")
    strip: tuple[str, ...] = ()
    if "private" in cc:
        strip = field_names(cc["private"])
        if not strip:
            return Policy(False, 0, "private")
        # RFC 9111 5.2.2.7: a shared cache may store it without the named fields.
    if has_authorization and not ({"public", "s-maxage", "must-revalidate"} & set(cc)):
        return Policy(False, 0, "request had Authorization")   # RFC 9111 3.5
    if status < 200 or status in NEVER_WHOLE:
        return Policy(False, 0, f"status {status} is not stored whole")
    vary = {n.strip() for v in _getall(headers, "Vary") for n in v.split(",")}
    if "*" in vary:
        return Policy(False, 0, "Vary: *")                      # RFC 9111 4.1: never matches
    revalidate = "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc
    no_cache = "no-cache" in cc
    if no_cache and cc["no-cache"]:
        # RFC 9111 5.2.2.4: qualified, it only keeps the named fields from being reused.
        strip += field_names(cc["no-cache"])
        no_cache = False
    for name in ("s-maxage", "max-age"):                        # shared caches: s-maxage first
        ttl = delta_seconds(cc.get(name)) if name in cc else None
        if ttl is not None:
            return Policy(True, float(ttl), name, revalidate, no_cache, strip=strip)
    if use_expires:
        expires = _getall(headers, "Expires")
        if expires:
            # RFC 9111 5.3: an invalid Expires (not one HTTP-date) means already expired.
            when = http_date(expires[0]) if len(expires) == 1 else None
            date = http_date(headers.get("Date")) or now
            return Policy(True, max(0.0, when - date) if when else 0.0, "Expires", revalidate,
                          no_cache, strip=strip)
    heuristic = status in HEURISTIC_STATUSES or "public" in cc
    modified = http_date(headers.get("Last-Modified"))
    if modified is not None and heuristic:
        date = http_date(headers.get("Date")) or now
        ttl = min(HEURISTIC_MAX, max(0.0, (date - modified) * HEURISTIC_FRACTION))
        return Policy(True, ttl, "heuristic (Last-Modified)", revalidate, no_cache, strip=strip)
    if default_ttl > 0 and heuristic:
        return Policy(True, default_ttl, "customer default TTL", revalidate, no_cache,
                      strip=strip)
    if no_cache and (headers.get("ETag") or headers.get("Last-Modified")):
        return Policy(True, 0.0, "no-cache with validators", True, True, strip=strip)
    return Policy(False, 0, "no freshness information")


def initial_age(headers, response_time: float, request_time: float) -> float:
    """RFC 9111 4.2.3 corrected initial age: the origin's Age (the first member of the
    first line; an invalid one is ignored) plus the time in flight."""
    values = _getall(headers, "Age")
    age = delta_seconds(values[0].split(",", 1)[0].strip()) if values else None
    date = http_date(headers.get("Date"))
    apparent = max(0.0, response_time - date) if date is not None else 0.0
    return max(apparent, (age or 0) + (response_time - request_time))


def request_wants_fresh(request_cc: list[str], honour: bool) -> bool:
    """A client's `no-cache` / `max-age=0`: go to the origin when the customer honours it."""
    if not honour:
        return False
    cc = directives(request_cc)
    return "no-cache" in cc or cc.get("max-age") == "0"
