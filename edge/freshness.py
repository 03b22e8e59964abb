"""HTTP caching rules (RFC 9111) as pure functions: may we store it, for how long.

No I/O and no clock: callers pass `now`. The cache (cache.py) applies them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Iterable, Mapping

# RFC 9110 15.1: statuses a cache may store with heuristic freshness. 206 is left
# out on purpose: this cache stores whole objects only and cuts ranges from them.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
STORABLE_STATUSES = HEURISTIC_STATUSES | {302, 307}
HEURISTIC_FRACTION = 0.1            # RFC 9111 4.2.2: 10 % of the time since Last-Modified
HEURISTIC_MAX = 86400.0


def directives(values: Iterable[str]) -> dict[str, str | None]:
    """Cache-Control header values -> {directive: argument or None}, names lower-cased."""
    out: dict[str, str | None] = {}
    for value in values:
        for part in value.split(","):
            name, _, arg = part.strip().partition("=")
            if name:
                out.setdefault(name.strip().lower(), arg.strip().strip('"') or None)
    return out


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(int(value))) if value is not None else None
    except ValueError:
        return None


def http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


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

    def stale_allowed(self, staleness: float, window: float) -> bool:
        return not self.must_revalidate and not self.no_cache and staleness <= window


def response_policy(method: str, status: int, headers: Mapping[str, str],
                    cache_control: list[str], request_cc: list[str], has_authorization: bool,
                    now: float, default_ttl: float = 0.0,
                    override_ttl: float | None = None) -> Policy:
    """RFC 9111 3 and 4.2: may a shared cache store this response, and for how long.

    Also the RFC 5861 extensions: how long it may be served stale while it is
    revalidated, and when the origin fails. `override_ttl` is an operator's
    rule that replaces the origin's freshness (never its no-store or private).
    """
    policy = _policy(method, status, headers, cache_control, request_cc, has_authorization, now,
                     default_ttl)
    if override_ttl is not None and (policy.store or policy.reason == "no freshness information"):
        policy = Policy(True, override_ttl, "operator TTL rule")
    if not policy.store:
        return policy
    cc = directives(cache_control)
    return replace(policy, stale_while_revalidate=_seconds(cc.get("stale-while-revalidate")) or 0.0,
                   stale_if_error=_seconds(cc.get("stale-if-error")) or 0.0)


def _policy(method: str, status: int, headers: Mapping[str, str],
                    cache_control: list[str], request_cc: list[str], has_authorization: bool,
                    now: float, default_ttl: float = 0.0) -> Policy:
    if method not in ("GET", "HEAD"):
        return Policy(False, 0, f"{method} is not cached")
    cc = directives(cache_control)
    if "no-store" in cc or "no-store" in directives(request_cc):
        return Policy(False, 0, "no-store")
    if "private" in cc:
        return Policy(False, 0, "private")
    if has_authorization and not ({"public", "s-maxage", "must-revalidate"} & set(cc)):
        return Policy(False, 0, "request had Authorization")   # RFC 9111 3.5
    if status not in STORABLE_STATUSES:
        return Policy(False, 0, f"status {status} is not cacheable")
    if headers.get("Vary", "").strip() == "*":
        return Policy(False, 0, "Vary: *")
    revalidate = "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc
    no_cache = "no-cache" in cc
    for name in ("s-maxage", "max-age"):                        # shared caches: s-maxage first
        ttl = _seconds(cc.get(name)) if name in cc else None
        if ttl is not None:
            return Policy(True, ttl, name, revalidate, no_cache)
    expires = headers.get("Expires")
    if expires is not None:
        when, date = http_date(expires), http_date(headers.get("Date")) or now
        # An invalid Expires (e.g. "0") means already expired (RFC 9111 5.3).
        return Policy(True, max(0.0, when - date) if when else 0.0, "Expires", revalidate,
                      no_cache)
    modified = http_date(headers.get("Last-Modified"))
    if modified is not None and status in HEURISTIC_STATUSES:
        date = http_date(headers.get("Date")) or now
        ttl = min(HEURISTIC_MAX, max(0.0, (date - modified) * HEURISTIC_FRACTION))
        return Policy(True, ttl, "heuristic (Last-Modified)", revalidate, no_cache)
    if default_ttl > 0 and status in HEURISTIC_STATUSES:
        return Policy(True, default_ttl, "customer default TTL", revalidate, no_cache)
    if no_cache and (headers.get("ETag") or headers.get("Last-Modified")):
        return Policy(True, 0.0, "no-cache with validators", True, True)
    return Policy(False, 0, "no freshness information")


def initial_age(headers: Mapping[str, str], response_time: float, request_time: float) -> float:
    """RFC 9111 4.2.3 corrected initial age: the origin's Age plus time in flight."""
    age = _seconds(headers.get("Age")) or 0.0
    date = http_date(headers.get("Date"))
    apparent = max(0.0, response_time - date) if date is not None else 0.0
    return max(apparent, age + (response_time - request_time))


def request_wants_fresh(request_cc: list[str], honour: bool) -> bool:
    """A client's `no-cache` / `max-age=0`: go to the origin when the customer honours it."""
    if not honour:
        return False
    cc = directives(request_cc)
    return "no-cache" in cc or cc.get("max-age") == "0"
