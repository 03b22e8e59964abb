"""A customer origin configuration as data (seed 003 and seed 000): origin servers or a
bucket, cache rules, shields. Frozen; built by cdnkit.schema from a YAML file or a store
document, read by the edges and the control plane alike."""
from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass

from .bucket import Bucket


class Protocol(enum.Enum):
    HTTP = "http"
    HTTPS = "https"
    FOLLOW = "follow"        # the same as the client's request


class IPVersion(enum.Enum):
    """How an origin host name is resolved (the seed's five settings)."""

    DEFAULT = "default"              # IPv4 only
    V4_ONLY = "v4_only"
    V6_ONLY = "v6_only"
    V4_PREFERRED = "v4_preferred"    # IPv4 when the name has any, else IPv6
    V6_PREFERRED = "v6_preferred"    # IPv6 when the name has any, else IPv4


class Balancing(enum.Enum):
    ROUND_ROBIN = "round_robin"
    FAILOVER = "failover"    # primary first, the next only when it fails


@dataclass(frozen=True, slots=True)
class Server:
    """One origin server: an IP (with port) or a host name."""

    host: str
    port: int | None = None      # None: the scheme's default

    def authority(self, scheme: str) -> str:
        port = self.port or (443 if scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Origin:
    protocol: Protocol = Protocol.HTTP
    http: tuple[Server, ...] = ()        # servers for requests that arrive over HTTP
    https: tuple[Server, ...] = ()       # ... and over HTTPS (the seed's "HTTPS edge protocol")
    host_header: str = ""                # blank: the client's Host
    balancing: Balancing = Balancing.ROUND_ROBIN
    retry_5xx: bool = True               # a 5xx counts as a failure and tries the next server
    timeout: float = 10.0                # connect + first byte
    backoff: float = 5.0                 # first skip period for a failing server; doubles
    backoff_max: float = 300.0
    ip_version: IPVersion = IPVersion.DEFAULT
    validation_path: str = ""            # the seed's ADN validation asset, e.g. /permanent/bg.png
    rank: bool = False                   # order failover by measured validation time
    bucket: Bucket | None = None         # an S3/OSS bucket: its one server is the bucket address


@dataclass(frozen=True, slots=True)
class TtlRule:
    """A TTL for paths matching `match` (a glob on the path, e.g. "*.mp4" or "/static/*")."""

    match: str
    ttl: float
    override: bool = False       # True: ignore the origin's freshness; False: only when it gives none


@dataclass(frozen=True, slots=True)
class CacheRules:
    """Per customer: whether and how responses are cached (RFC 9111 applies on top)."""

    enabled: bool = True
    default_ttl: float = 0.0             # for responses without freshness information; 0 = do not store
    honour_client_no_cache: bool = False  # a client's no-cache / max-age=0 goes to the origin
    max_object: int = 64 * 1024 * 1024   # larger responses pass through, uncached
    grace: float = 0.0                   # serve stale this long when the origin fails (any object)
    ignore_query: bool = False           # the query string is not part of the cache key
    key_headers: tuple[str, ...] = ()    # request headers that are part of the cache key
    ttl_rules: tuple[TtlRule, ...] = ()  # first match wins
    # RFC 9213 targeted cache fields the edge obeys over Cache-Control, first present
    # wins; lower case. Never passed on to clients.
    targeted: tuple[str, ...] = ("cdn-cache-control",)

    def ttl_rule(self, path: str) -> TtlRule | None:
        path = path.split("?", 1)[0]
        for rule in self.ttl_rules:
            if fnmatch.fnmatchcase(path, rule.match) or (
                    "/" not in rule.match and fnmatch.fnmatchcase(path.rsplit("/", 1)[-1],
                                                                  rule.match)):
                return rule
        return None


@dataclass(frozen=True, slots=True)
class Shield:
    name: str
    server: Server
    region: str = ""
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True, slots=True)
class Customer:
    directory: str                       # CDN URL /<account>/<directory>/...; case-sensitive
    cnames: tuple[str, ...]              # edge CNAME host names, lower case
    origin: Origin
    alt_svc: str = ""
    cache: CacheRules = CacheRules()
    shields: tuple[Shield, ...] = ()   # this edge's shield plan for the customer, in order
    https: str = ""                    # "auto" (ACME), "upload" (its own) or "" (none)
