"""Validated configuration values: frozen dataclasses and enums, nothing else.

config.py turns YAML into these; every other module only reads them.
"""
from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Mapping

from cdnkit.listen import Listener

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Algorithm(enum.Enum):
    """How a service orders its pool of sites."""

    NEAREST = "nearest"      # great-circle distance from the client's location
    FAILOVER = "failover"    # the pool's order, first usable site wins
    WEIGHTED = "weighted"    # sites in proportion to their weight


class IPVersion(enum.Enum):
    """Which address families a service answers (the seed's five policies)."""

    DEFAULT = "default"          # same as v4_only
    V4_ONLY = "v4_only"
    V6_ONLY = "v6_only"
    V4_PREFERRED = "v4_preferred"
    V6_PREFERRED = "v6_preferred"


class AllDown(enum.Enum):
    """What a service answers when no site has a usable address."""

    SERVE_ALL = "serve_all"      # fail open: answer as if everything were up
    FALLBACK = "fallback"        # fixed addresses from the config
    SERVE_NONE = "serve_none"    # NODATA with a short TTL


class AdminState(enum.Enum):
    """Operator-set state of a site or an address."""

    UP = "up"          # follow the health checks (or count as up without any)
    DOWN = "down"      # never answered
    DRAIN = "drain"    # not answered to new queries, still checked


class CheckKind(enum.Enum):
    HTTP = "http"
    HTTPS = "https"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """How to check (gdnsd's service type): declared once, attached to sites or addresses."""

    name: str
    kind: CheckKind
    port: int
    path: str = "/"
    host: str = ""                   # Host header / TLS SNI; blank = the probed address
    expect: tuple[int, ...] = (200,)
    body: str = ""                   # substring the body must contain; blank = any
    verify_tls: bool = True
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3


@dataclass(frozen=True, slots=True)
class Location:
    """Where a client is, as far as GeoIP or the operator's `nets` know."""

    lat: float | None
    lon: float | None
    city: str = ""
    country: str = ""
    continent: str = ""

    @property
    def has_coords(self) -> bool:
        return self.lat is not None and self.lon is not None

    def describe(self) -> str:
        place = ", ".join(p for p in (self.city, self.country, self.continent) if p) or "unknown"
        if self.has_coords:
            return f"{place} ({self.lat:.4f}, {self.lon:.4f})"
        return place


@dataclass(frozen=True, slots=True)
class Address:
    """One edge address and its configured admin state."""

    ip: str                  # canonical text form
    version: int             # 4 or 6
    state: AdminState = AdminState.UP
    check: str = ""          # check name; blank = the site's
    probe_host: str = ""     # probe this host instead of `ip` (NAT, or the demo's ::1)
    probe_port: int = 0      # ... and this port instead of the check's


@dataclass(frozen=True, slots=True)
class Site:
    """An edge site (POP): coordinates and addresses."""

    name: str
    lat: float | None            # None: no coordinates (failover / weighted pools only)
    lon: float | None
    addresses: tuple[Address, ...]
    city: str = ""
    weight: int = 1
    state: AdminState = AdminState.UP
    check: str = ""          # check name applied to every address without its own

    def family(self, version: int) -> tuple[Address, ...]:
        return tuple(a for a in self.addresses if a.version == version)


@dataclass(frozen=True, slots=True)
class Service:
    """A name whose A/AAAA answers are computed from a pool of sites."""

    name: str                # absolute, lower case; "*.x." for a wildcard
    pool: tuple[str, ...]    # site names, in the operator's default order
    algorithm: Algorithm = Algorithm.NEAREST
    answers: int = 1
    ttl: int = 30
    ip_version: IPVersion = IPVersion.DEFAULT
    all_down: AllDown = AllDown.SERVE_ALL
    fallback: tuple[Address, ...] = ()

    @property
    def wildcard(self) -> bool:
        return self.name.startswith("*.")


@dataclass(frozen=True, slots=True)
class NetOverride:
    """An operator `nets` entry: a CIDR mapped to a location or a site order."""

    network: IPNetwork
    location: Location | None = None
    sites: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordSet:
    """Static records of one name and type, rdata already in wire form."""

    name: str
    rtype: int
    ttl: int
    rdata: tuple[bytes, ...]
    text: tuple[str, ...]    # presentation form, for `explain` and the API


@dataclass(frozen=True, slots=True)
class Soa:
    mname: str
    rname: str
    serial: int
    refresh: int = 3600
    retry: int = 600
    expire: int = 1209600
    minimum: int = 60
    ttl: int = 3600


class Denial(enum.Enum):
    """How a signed zone proves that a name or type does not exist (no zone walking)."""

    COMPACT = "compact"          # RFC 9824: NODATA with an NSEC at the name (NXNAME)
    WHITE_LIES = "white_lies"    # RFC 4470: minimally covering NSECs around the name


DNSSEC_ALGORITHMS = {"ecdsap256sha256": 13, "ed25519": 15}
KSK_FLAGS, ZSK_FLAGS = 257, 256        # DNSKEY flags: SEP + zone key, zone key


@dataclass(frozen=True, slots=True)
class DnssecKey:
    """One DNSSEC key of a zone, as its BIND-style key files describe it.

    Times are Unix seconds (None: since ever / never), with BIND's meaning:
    published in the DNSKEY RRset from `publish` until `delete`; signing
    from `activate` until `inactive`.
    """

    zone: str
    flags: int                       # 257 = KSK (or CSK), 256 = ZSK
    algorithm: int                   # 13 ECDSAP256SHA256, 15 ED25519
    tag: int
    public: bytes                    # the DNSKEY public key field
    private: bytes = field(repr=False)   # raw private key; never printed or logged
    path: str = ""                   # the .private file it came from
    publish: int | None = None
    activate: int | None = None
    inactive: int | None = None
    delete: int | None = None

    def published(self, now: float) -> bool:
        return ((self.publish is None or self.publish <= now)
                and (self.delete is None or now < self.delete))

    def signing(self, now: float) -> bool:
        return (self.published(now) and (self.activate is None or self.activate <= now)
                and (self.inactive is None or now < self.inactive))


@dataclass(frozen=True, slots=True)
class DnssecSettings:
    """A zone's `dnssec:` block with its keys loaded."""

    key_directory: str
    algorithm: int = 13
    csk: bool = False                # one combined signing key instead of KSK + ZSK
    validity: int = 14 * 86400       # signatures are valid this long ...
    refresh: int = 3 * 86400         # ... and re-made after this long (validity - refresh left)
    denial: Denial = Denial.COMPACT
    dnskey_ttl: int = 3600
    keys: tuple[DnssecKey, ...] = ()


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    origin: str              # absolute, lower case
    soa: Soa
    ns: tuple[str, ...]
    ttl: int
    records: tuple[RecordSet, ...] = ()
    dnssec: DnssecSettings | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Response rate limiting in the manner of BIND/Knot RRL (UDP only)."""

    enabled: bool = False
    responses_per_second: float = 20.0   # per client network and identical response
    slip: int = 2                        # every Nth limited response goes out truncated; 0 = drop all
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: tuple[Listener, ...]
    workers: int = 0             # 0 = one per core
    tcp_idle_timeout: float = 10.0
    edns_payload: int = 1232
    tcp_read_timeout: float = 5.0        # a started message must arrive whole within this
    tcp_max_connections: int = 4096      # per worker; the longest idle one is closed past it
    tcp_max_per_client: int = 64         # per client address, per worker
    tcp_max_queued: int = 64             # responses waiting for a client that does not read
    rate_limit: RateLimit = RateLimit()
    cookies: bool = True                 # EDNS Cookies (RFC 7873 / 9018)
    cookie_secret: bytes = b""           # shared by all workers; generated when empty
    nsid: bytes = b""                    # RFC 5001 name server identifier; empty = off


@dataclass(frozen=True, slots=True)
class HealthSettings:
    state_file: str | None = None    # admin overrides, kept across restarts
    max_concurrent: int = 256        # probes in flight at once


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    listen: Listener | None = None   # None: no dashboard
    token: str = ""                  # admin actions need it; blank = admin actions refused
    edges: tuple[tuple[str, str], ...] = ()   # (name, /metrics URL) of edges and shields to show


@dataclass(frozen=True)
class Config:
    """A complete, validated configuration. Swapped whole on reload."""

    source: str
    server: ServerSettings
    geoip_database: str | None
    zones: tuple[ZoneConfig, ...]
    sites: Mapping[str, Site]
    services: tuple[Service, ...]
    nets: tuple[NetOverride, ...] = ()
    checks: Mapping[str, CheckSpec] = field(default_factory=dict)
    health: HealthSettings = HealthSettings()
    dashboard: DashboardSettings = DashboardSettings()
