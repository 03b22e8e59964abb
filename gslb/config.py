"""YAML config -> validated, frozen `Config`.

Loading never stops at the first problem: every check appends a reason with
its file:line, and `load_config` raises one `ConfigError` listing them all.
Nothing half-loaded ever reaches the server; a reload either swaps in a
complete new `Config` or keeps the old one.
"""
from __future__ import annotations

import ipaddress
import os
from collections import Counter
from pathlib import Path
from typing import Any

import dnslib

from cdnkit.check import Checker, ConfigError, suggest
from cdnkit.listen import Listener, listener, split_host_port
from cdnkit.yamlsrc import ConfigFileError, LineDict, LineList, Where, YamlError, read_config

from gslb import capacity
from gslb.dnssec.config import parse_dnssec
from gslb.model import (
    Address,
    AdminState,
    Algorithm,
    AllDown,
    CheckKind,
    CheckSpec,
    Config,
    DashboardSettings,
    HealthSettings,
    IPVersion,
    Location,
    NetOverride,
    RateLimit,
    RecordSet,
    ServerSettings,
    Service,
    Site,
    Soa,
    ZoneConfig,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "data" / "gslb.yaml"
STATIC_TYPES = ("A", "AAAA", "CNAME", "MX", "NS", "TXT", "SRV", "CAA", "PTR")
MAX_TTL = 2**31 - 1


def normalize_name(name: str) -> str:
    """Absolute, lower-case DNS name ("Foo.Example" -> "foo.example.")."""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def in_zone(name: str, origin: str) -> bool:
    """True when ``name`` is ``origin`` or below it (both normalised)."""
    return name == origin or name.endswith("." + origin)


# --- sections ---------------------------------------------------------------------------


def _server(ck: Checker, raw: Any, where: Where) -> ServerSettings:
    block = ck.mapping(raw, where, "server")
    ck.keys(block, ("listen", "workers", "tcp_idle_timeout", "edns_payload", "tcp_read_timeout",
                    "tcp_max_connections", "tcp_max_per_client", "tcp_max_queued", "rate_limit",
                    "cookies", "cookie_secret_env", "nsid"), "server")
    listeners = [listener(ck, v, w) for v, w in ck.items(block.get("listen"), block.at("listen"),
                                                          "server.listen")]
    if "listen" not in block:
        listeners = [Listener("127.0.0.1", 8053), Listener("::1", 8053)]
    workers_raw = block.get("workers", "auto")
    workers = 0
    if workers_raw != "auto":
        workers = ck.integer(block, "workers", 0, 1, 256, "server")
    idle = ck.number(block, "tcp_idle_timeout", 0.1, 3600, "server", default=10.0)
    payload = ck.integer(block, "edns_payload", 1232, 512, 4096, "server")
    read = ck.number(block, "tcp_read_timeout", 0.1, 600, "server", default=5.0)
    cookies = ck.flag(block, "cookies", True, "server")
    secret = b""
    env = ck.text(block, "cookie_secret_env", "server")
    if env:
        try:
            secret = bytes.fromhex(os.environ.get(env, ""))
            if os.environ.get(env) and len(secret) < 16:
                raise ValueError
        except ValueError:
            ck.add(block.at("cookie_secret_env"), f"${env} must hold at least 16 bytes in hex")
            secret = b""
    nsid = ck.text(block, "nsid", "server", numbers=True).encode()
    if len(nsid) > 255:
        ck.add(block.at("nsid"), "server.nsid is longer than 255 bytes")
    return ServerSettings(
        tuple(x for x in listeners if x), workers, float(idle or 10.0), payload,
        float(read or 5.0),
        ck.integer(block, "tcp_max_connections", 4096, 1, 1_000_000, "server"),
        ck.integer(block, "tcp_max_per_client", 64, 1, 1_000_000, "server"),
        ck.integer(block, "tcp_max_queued", 64, 1, 100_000, "server"),
        _rate_limit(ck, block.get("rate_limit"), block.at("rate_limit")),
        cookies, secret, nsid[:255])


def _rate_limit(ck: Checker, raw: Any, where: Where) -> RateLimit:
    block = ck.mapping(raw, where, "server.rate_limit")
    what = "server.rate_limit"
    ck.keys(block, ("enabled", "responses_per_second", "slip", "ipv4_prefix", "ipv6_prefix"), what)
    enabled = ck.flag(block, "enabled", bool(block), what)
    rate = ck.number(block, "responses_per_second", 0.1, 1_000_000, what, default=20.0)
    return RateLimit(enabled, float(rate or 20.0), ck.integer(block, "slip", 2, 0, 100, what),
                     ck.integer(block, "ipv4_prefix", 24, 8, 32, what),
                     ck.integer(block, "ipv6_prefix", 56, 16, 128, what))


def _geoip(ck: Checker, raw: Any, where: Where, base: Path) -> str | None:
    if raw is None:
        return None
    block = ck.mapping(raw, where, "geoip")
    ck.keys(block, ("database",), "geoip")
    if "database" not in block:
        ck.add(block.where, "geoip needs database: PATH (a GeoIP2/GeoLite2 City or Country .mmdb)")
        return None
    text = ck.text(block, "database", "geoip")
    if not text:
        return None
    path = Path(os.path.expandvars(text))
    if not path.is_absolute():
        path = base / path
    from gslb.geo import GeoError, open_database  # deferred: geo imports model only
    try:
        open_database(str(path)).close()
    except GeoError as exc:
        ck.add(block.at("database"), str(exc))
        return None
    return str(path)


def _location(ck: Checker, raw: Any, where: Where, what: str) -> Location | None:
    block = ck.mapping(raw, where, what)
    ck.keys(block, ("lat", "lon", "city", "country", "continent"), what)
    lat = ck.number(block, "lat", -90, 90, what)
    lon = ck.number(block, "lon", -180, 180, what)
    if lat is None or lon is None:
        return None
    return Location(lat, lon, ck.text(block, "city", what), ck.text(block, "country", what),
                    ck.text(block, "continent", what))


def _probe_target(ck: Checker, raw: Any, where: Where, what: str) -> tuple[str, int]:
    """`HOST`, `HOST:PORT` or `[V6]:PORT` -> (host, port or 0)."""
    text = ck.word(raw, where, f"{what}: probe")
    if text is None:
        return "", 0
    text = text.strip()
    host, port = split_host_port(text)
    try:
        number = int(port) if port else 0
        if not 0 <= number <= 65535 or not host:
            raise ValueError
    except ValueError:
        ck.add(where, f"{what}: probe {text!r} must be HOST, HOST:PORT or [IPv6]:PORT")
        return "", 0
    return host, number


def _address(ck: Checker, raw: Any, where: Where, what: str) -> Address | None:
    state, check, probe = AdminState.UP, "", ("", 0)
    if isinstance(raw, LineDict):
        ck.keys(raw, ("address", "state", "check", "probe"), what)
        state = ck.choice(raw, "state", AdminState, AdminState.UP, what)
        check = ck.text(raw, "check", what)
        if "probe" in raw:
            probe = _probe_target(ck, raw["probe"], raw.at("probe"), what)
        where, raw = raw.at("address"), raw.get("address")
    ip = ck.ip(raw, where, what)
    if ip is None:
        return None
    return Address(ip.compressed, ip.version, state, check, probe[0], probe[1])


def _sites(ck: Checker, raw: Any, where: Where) -> dict[str, Site]:
    block = ck.mapping(raw, where, "sites")
    seen_ips: dict[str, str] = {}
    sites: dict[str, Site] = {}
    for name, body in block.items():
        what = f"site {name!r}"
        site = ck.mapping(body, block.at(name), what)
        ck.keys(site, ("city", "lat", "lon", "addresses", "weight", "state", "check",
                       *capacity.SITE_KEYS), what)
        lat = lon = None       # coordinates are needed only by `nearest` pools (checked there)
        if "lat" in site or "lon" in site:
            lat = ck.number(site, "lat", -90, 90, what)
            lon = ck.number(site, "lon", -180, 180, what)
        addrs: list[Address] = []
        for value, w in ck.items(site.get("addresses"), site.at("addresses"), f"{what} addresses"):
            addr = _address(ck, value, w, f"{what} address")
            if addr is None:
                continue
            if addr.ip in seen_ips:
                ck.add(w, f"{what}: address {addr.ip} is already used by site {seen_ips[addr.ip]!r}")
                continue
            seen_ips[addr.ip] = str(name)
            addrs.append(addr)
        if not addrs and "addresses" not in site:
            ck.add(site.where, f"{what} needs addresses: [IPv4 and/or IPv6 addresses]")
        weight = ck.integer(site, "weight", 1, 0, 1000, what)
        state = ck.choice(site, "state", AdminState, AdminState.UP, what)
        sites[str(name)] = Site(str(name), lat, lon, tuple(addrs),
                                ck.text(site, "city", what), weight, state,
                                ck.text(site, "check", what),
                                *capacity.site_capacity(ck, site, what))
    return sites


def _nets(ck: Checker, raw: Any, where: Where, sites: dict[str, Site]) -> list[NetOverride]:
    block = ck.mapping(raw, where, "nets")
    out: list[NetOverride] = []
    seen: dict[Any, Where] = {}
    for cidr, body in block.items():
        w = block.at(cidr)
        what = f"nets {cidr!r}"
        try:
            network = ipaddress.ip_network(str(cidr), strict=True)
        except ValueError as exc:
            ck.add(w, f"{what}: bad CIDR ({exc})")
            continue
        if network in seen:
            ck.add(w, f"{what} repeats the network at {seen[network]}")
            continue
        seen[network] = w
        entry = ck.mapping(body, w, what)
        ck.keys(entry, ("location", "sites"), what)
        if ("location" in entry) == ("sites" in entry):
            ck.add(entry.where, f"{what} needs exactly one of location: or sites:")
            continue
        if "location" in entry:
            loc = _location(ck, entry["location"], entry.at("location"), f"{what} location")
            if loc:
                out.append(NetOverride(network, location=loc))
            continue
        names = []
        for value, sw in ck.texts(entry["sites"], entry.at("sites"), f"{what} sites"):
            if value not in sites:
                ck.add(sw, f"{what}: unknown site {value!r}{suggest(value, sites)}")
            else:
                names.append(str(value))
        if names:
            out.append(NetOverride(network, sites=tuple(names)))
    return out


def _parse_rdata(ck: Checker, name: str, rtype: str, ttl: int, value: Any,
                 where: Where) -> tuple[bytes, str] | None:
    if rtype == "TXT" and isinstance(value, str) and not value.startswith('"'):
        value = '"' + value.replace('"', '\\"') + '"'
    text = f"{name} {ttl} IN {rtype} {value}"
    try:
        records = dnslib.RR.fromZone(text)
        if len(records) != 1 or dnslib.QTYPE[records[0].rtype] != rtype:
            raise ValueError("not exactly one record")
        rr = records[0]
        buf = dnslib.DNSBuffer()
        rr.rdata.pack(buf)
        # dnslib may compress names inside rdata against the buffer; a fresh buffer
        # holds nothing to point at, so the bytes are self-contained.
        return bytes(buf.data), rr.rdata.toZone()
    except Exception as exc:  # dnslib raises many types for bad text
        ck.add(where, f"record {name} {rtype}: cannot parse value {value!r} ({exc})")
        return None


def _records(ck: Checker, raw: Any, where: Where, origin: str, default_ttl: int) -> list[RecordSet]:
    block = ck.mapping(raw, where, f"zone {origin} records")
    out: list[RecordSet] = []
    for label, body in block.items():
        name = origin if label in ("@", "") else (
            normalize_name(str(label)) if str(label).endswith(".") else normalize_name(f"{label}.{origin}"))
        w = block.at(label)
        if not in_zone(name, origin):
            ck.add(w, f"record {label!r} is outside zone {origin}")
            continue
        entries = body if isinstance(body, LineList) else [body]
        wheres = [body.at(i) for i in range(len(body))] if isinstance(body, LineList) else [w]
        types_here: dict[str, Where] = {}
        for entry, ew in zip(entries, wheres):
            what = f"record {name}"
            rec = ck.mapping(entry, ew, what)
            ck.keys(rec, ("type", "ttl", "value", "values"), what)
            rtype = ck.text(rec, "type", what).upper()
            if "type" in rec and not isinstance(rec["type"], str):
                continue                          # said so; which type is unknown
            if rtype not in STATIC_TYPES:
                ck.add(rec.at("type"), f"{what}: type {rec.get('type')!r} is not one of "
                       f"{', '.join(STATIC_TYPES)}")
                continue
            if rtype in types_here:
                ck.add(rec.where, f"{what} {rtype} is defined twice (first at {types_here[rtype]})")
                continue
            types_here[rtype] = rec.where
            ttl = ck.integer(rec, "ttl", default_ttl, 0, MAX_TTL, what)
            if ("value" in rec) == ("values" in rec):
                ck.add(rec.where, f"{what} {rtype} needs exactly one of value: or values:")
                continue
            key = "value" if "value" in rec else "values"
            rdatas, texts = [], []
            for value, vw in ck.texts(rec[key], rec.at(key), f"{what} {rtype} {key}",
                                      numbers=True):
                parsed = _parse_rdata(ck, name, rtype, ttl, value, vw)
                if parsed:
                    rdatas.append(parsed[0])
                    texts.append(parsed[1])
            if rtype == "CNAME" and len(rdatas) > 1:
                ck.add(rec.where, f"{what}: a CNAME has exactly one value")
            if rtype == "NS" and name == origin:
                ck.add(rec.where, f"{what}: apex NS records come from the zone's ns: list")
                continue
            if rdatas:
                out.append(RecordSet(name, getattr(dnslib.QTYPE, rtype), ttl,
                                     tuple(rdatas), tuple(texts)))
        if "CNAME" in types_here and len(types_here) > 1:
            ck.add(w, f"record {name}: CNAME cannot coexist with other types "
                   f"({', '.join(t for t in types_here if t != 'CNAME')})")
    return out


def _zones(ck: Checker, raw: Any, where: Where, base: Path = Path("."),
           dnssec_keys: bool = True) -> list[ZoneConfig]:
    block = ck.mapping(raw, where, "zones")
    if not block:
        ck.add(block.where, "at least one zone is needed under zones:")
    out: list[ZoneConfig] = []
    for origin_raw, body in block.items():
        origin = normalize_name(str(origin_raw))
        what = f"zone {origin}"
        zone = ck.mapping(body, block.at(origin_raw), what)
        ck.keys(zone, ("ttl", "soa", "ns", "records", "dnssec"), what)
        ttl = ck.integer(zone, "ttl", 3600, 0, MAX_TTL, what)
        soa_block = ck.mapping(zone.get("soa"), zone.at("soa"), f"{what} soa")
        ck.keys(soa_block, ("mname", "rname", "serial", "refresh", "retry", "expire", "minimum",
                            "ttl"), f"{what} soa")
        ns_names = [normalize_name(v) for v, _ in ck.texts(zone.get("ns"), zone.at("ns"),
                                                          f"{what} ns")]
        if not ns_names:
            ck.add(zone.where, f"{what} needs ns: [name server names]")
        mname = normalize_name(ck.text(soa_block, "mname", f"{what} soa",
                                       ns_names[0] if ns_names else origin))
        rname = normalize_name(ck.text(soa_block, "rname", f"{what} soa", f"hostmaster.{origin}"))
        soa = Soa(mname, rname,
                  ck.integer(soa_block, "serial", 1, 0, 2**32 - 1, f"{what} soa"),
                  ck.integer(soa_block, "refresh", 3600, 0, MAX_TTL, f"{what} soa"),
                  ck.integer(soa_block, "retry", 600, 0, MAX_TTL, f"{what} soa"),
                  ck.integer(soa_block, "expire", 1209600, 0, MAX_TTL, f"{what} soa"),
                  ck.integer(soa_block, "minimum", 60, 0, 86400, f"{what} soa"),
                  ck.integer(soa_block, "ttl", ttl, 0, MAX_TTL, f"{what} soa"))
        records = _records(ck, zone.get("records"), zone.at("records"), origin, ttl)
        for ns in ns_names:
            if in_zone(ns, origin) and not any(r.name == ns and r.rtype in (1, 28) for r in records):
                ck.add(zone.at("ns"), f"{what}: name server {ns} is inside the zone "
                       "but has no A/AAAA record (glue)")
        dnssec = None
        if "dnssec" in zone:
            max_ttl = max([soa.ttl, ttl] + [r.ttl for r in records])
            dnssec = parse_dnssec(ck, zone["dnssec"], zone.at("dnssec"), origin, base, max_ttl,
                                  dnssec_keys)
        out.append(ZoneConfig(origin, soa, tuple(ns_names), ttl, tuple(records), dnssec))
    return out


def _services(ck: Checker, raw: Any, where: Where, sites: dict[str, Site],
              zones: list[ZoneConfig]) -> list[Service]:
    block = ck.mapping(raw, where, "services")
    out: list[Service] = []
    static = {(r.name, r.rtype) for z in zones for r in z.records}
    cnames = {r.name for z in zones for r in z.records if r.rtype == 5}
    allowed = ("pool", "algorithm", "answers", "ttl", "ip_version", "all_down", "fallback")
    for name_raw, body in block.items():
        name = normalize_name(str(name_raw))
        w = block.at(name_raw)
        what = f"service {name}"
        svc = ck.mapping(body, w, what)
        ck.keys(svc, allowed, what)
        labels = name.rstrip(".").split(".")
        if any(label == "*" for label in labels[1:]) or any("*" in l and l != "*" for l in labels):
            ck.add(w, f"{what}: a wildcard must be the whole leftmost label (*.example.net.)")
        owner = name[2:] if name.startswith("*.") else name
        if not any(in_zone(owner, z.origin) for z in zones):
            ck.add(w, f"{what} is outside every zone ({', '.join(z.origin for z in zones)})")
        if (name, 1) in static or (name, 28) in static or name in cnames:
            ck.add(w, f"{what} clashes with static A/AAAA/CNAME records of the same name")
        pool: list[str] = []
        for value, pw in ck.texts(svc.get("pool"), svc.at("pool"), f"{what} pool"):
            if value not in sites:
                ck.add(pw, f"{what}: unknown site {value!r} in pool{suggest(value, sites)}")
            elif value in pool:
                ck.add(pw, f"{what}: site {value!r} is in the pool twice")
            else:
                pool.append(str(value))
        if "pool" not in svc:
            ck.add(svc.where, f"{what} needs pool: [site names]")
        algorithm = ck.choice(svc, "algorithm", Algorithm, Algorithm.NEAREST, what)
        answers = ck.integer(svc, "answers", 1, 1, 16, what)
        ttl = ck.integer(svc, "ttl", 30, 0, MAX_TTL, what)
        ip_version = ck.choice(svc, "ip_version", IPVersion, IPVersion.DEFAULT, what)
        all_down = ck.choice(svc, "all_down", AllDown, AllDown.SERVE_ALL, what)
        fallback = [a for v, fw in ck.items(svc.get("fallback"), svc.at("fallback"),
                                            f"{what} fallback")
                    if (a := _address(ck, v, fw, f"{what} fallback"))]
        if all_down is AllDown.FALLBACK and not fallback:
            ck.add(svc.at("all_down"), f"{what}: all_down: fallback needs fallback: [addresses]")
        if fallback and all_down is not AllDown.FALLBACK:
            ck.add(svc.at("fallback"), f"{what}: fallback: is only used with all_down: fallback")
        for family in _families(ip_version):
            if pool and not any(sites[s].family(family) for s in pool):
                ck.add(svc.at("pool"), f"{what}: ip_version {ip_version.value} needs IPv{family} "
                       "addresses but no site in the pool has any")
        if algorithm is Algorithm.NEAREST:
            for name_ in (s for s in pool if sites[s].lat is None or sites[s].lon is None):
                ck.add(svc.at("pool"), f"{what}: algorithm nearest needs coordinates (lat: and "
                       f"lon:) for site {name_!r}; failover and weighted pools do not")
        if algorithm is Algorithm.WEIGHTED and pool and not any(sites[s].weight for s in pool):
            ck.add(svc.at("pool"), f"{what}: weighted pool where every site has weight 0")
        out.append(Service(name, tuple(pool), algorithm, answers, ttl, ip_version, all_down,
                           tuple(fallback)))
    counted = Counter(s.name for s in out)      # not names.count(): 10k services in O(n)
    for name in sorted(n for n, times in counted.items() if times > 1):
        ck.add(block.where, f"service {name} is defined more than once")
    return out


def _families(policy: IPVersion) -> tuple[int, ...]:
    if policy in (IPVersion.DEFAULT, IPVersion.V4_ONLY):
        return (4,)
    if policy is IPVersion.V6_ONLY:
        return (6,)
    return ()  # preferred policies work with either family present


CHECK_KEYS = ("type", "port", "path", "host", "expect", "body", "verify_tls", "interval",
              "timeout", "rise", "fall")
DEFAULT_PORTS = {CheckKind.HTTP: 80, CheckKind.HTTPS: 443}


def _checks(ck: Checker, raw: Any, where: Where) -> dict[str, CheckSpec]:
    block = ck.mapping(raw, where, "checks")
    out: dict[str, CheckSpec] = {}
    for name, body in block.items():
        what = f"check {name!r}"
        c = ck.mapping(body, block.at(name), what)
        ck.keys(c, CHECK_KEYS, what)
        kind = ck.choice(c, "type", CheckKind, CheckKind.HTTP, what)
        if "type" not in c:
            ck.add(c.where, f"{what} needs type: http, https or tcp")
        if kind is CheckKind.TCP and "port" not in c:
            ck.add(c.where, f"{what}: a tcp check needs port:")
        port = ck.integer(c, "port", DEFAULT_PORTS.get(kind, 0), 1, 65535, what)
        path = ck.text(c, "path", what, "/")
        if not path.startswith("/"):
            ck.add(c.at("path"), f"{what}: path must start with /")
        expect = []
        for value, w in ck.items(c.get("expect", 200), c.at("expect"), f"{what} expect"):
            if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
                ck.add(w, f"{what}: expect {value!r} is not an HTTP status code")
            else:
                expect.append(value)
        verify = ck.flag(c, "verify_tls", True, what)
        interval = ck.number(c, "interval", 0.1, 3600, what, default=5.0) or 5.0
        timeout = ck.number(c, "timeout", 0.05, 600, what, default=2.0) or 2.0
        if timeout > interval:
            ck.add(c.at("timeout"), f"{what}: timeout {timeout} is longer than interval {interval}")
        out[str(name)] = CheckSpec(
            str(name), kind, port, path, ck.text(c, "host", what), tuple(expect) or (200,),
            ck.text(c, "body", what), verify, interval, timeout,
            ck.integer(c, "rise", 2, 1, 100, what), ck.integer(c, "fall", 3, 1, 100, what))
    return out


def _check_refs(ck: Checker, top: LineDict, sites: dict[str, Site],
                checks: dict[str, CheckSpec]) -> None:
    raw_sites = top.get("sites")
    for site in sites.values():
        where = raw_sites.at(site.name) if isinstance(raw_sites, LineDict) else top.where
        for name in {site.check} | {a.check for a in site.addresses}:
            if name and name not in checks:
                ck.add(where, f"site {site.name!r}: unknown check {name!r}"
                       f"{suggest(name, checks)} (defined: {', '.join(checks) or 'none'})")


def _health(ck: Checker, raw: Any, where: Where, base: Path) -> HealthSettings:
    block = ck.mapping(raw, where, "health")
    ck.keys(block, ("state_file", "max_concurrent", *capacity.HEALTH_KEYS), "health")
    state = "" if "state_file" in block and block["state_file"] is None else \
        ck.text(block, "state_file", "health", "gslb-state.json")      # null: none
    path = None
    if state:
        path = Path(os.path.expandvars(state))
        path = path if path.is_absolute() else base / path
    return HealthSettings(str(path) if path else None,
                          ck.integer(block, "max_concurrent", 256, 1, 100_000, "health"),
                          **capacity.fleet_settings(ck, block))


def _dashboard(ck: Checker, raw: Any, where: Where) -> DashboardSettings:
    block = ck.mapping(raw, where, "dashboard")
    ck.keys(block, ("listen", "token", "token_env", "edges"), "dashboard")
    listen = Listener("127.0.0.1", 8080)
    if "listen" in block:
        listen = listener(ck, block["listen"], block.at("listen"))
    token = ck.text(block, "token", "dashboard")
    env = ck.text(block, "token_env", "dashboard", "GSLB_ADMIN_TOKEN")
    # The environment wins, so operators can keep the secret out of the YAML.
    token = os.environ.get(env, "") or token
    edges = []
    raw_edges = block.get("edges") or {}
    if not isinstance(raw_edges, dict):
        ck.add(block.at("edges"), "dashboard.edges must map edge names to their /metrics URLs")
        raw_edges = {}
    for name, url in raw_edges.items():
        at = raw_edges.at(name) if hasattr(raw_edges, "at") else block.at("edges")
        url = ck.word(url, at, f"dashboard.edges.{name}")
        if url is None:
            continue
        if not url.startswith(("http://", "https://")):
            ck.add(at, f"dashboard.edges.{name} must be an http:// or https:// URL, got {url!r}")
            continue
        edges.append((str(name), url))
    return DashboardSettings(listen, token, tuple(edges))


TOP_KEYS = ("server", "geoip", "nets", "sites", "zones", "services", "checks", "health",
            "dashboard")


def load_config(path: str | os.PathLike[str], dnssec_keys: bool = True) -> Config:
    """Load and validate ``path``; raise ConfigError listing every problem.

    ``dnssec_keys=False`` skips loading DNSSEC keys (for `gslb dnssec init`).
    """
    path = Path(path)
    source = str(path)
    try:
        raw = read_config(path)
    except (ConfigFileError, YamlError) as exc:
        raise ConfigError([str(exc)]) from None
    return build_config(raw, source, path.resolve().parent, dnssec_keys)


def build_config(raw: Any, source: str, base: Path, dnssec_keys: bool = True) -> Config:
    """Validate already-parsed YAML (with line info) into a Config."""
    ck = Checker(source)
    top = ck.mapping(raw, Where(source, 1), "config")
    ck.keys(top, TOP_KEYS, "the top level")
    server = _server(ck, top.get("server"), top.at("server"))
    geoip = _geoip(ck, top.get("geoip"), top.at("geoip"), base)
    sites = _sites(ck, top.get("sites"), top.at("sites"))
    nets = _nets(ck, top.get("nets"), top.at("nets"), sites)
    zones = _zones(ck, top.get("zones"), top.at("zones"), base, dnssec_keys)
    services = _services(ck, top.get("services"), top.at("services"), sites, zones)
    checks = _checks(ck, top.get("checks"), top.at("checks"))
    _check_refs(ck, top, sites, checks)
    health = _health(ck, top.get("health"), top.at("health"), base)
    dashboard = _dashboard(ck, top.get("dashboard"), top.at("dashboard"))
    origins = [z.origin for z in zones]
    for origin in {o for o in origins if origins.count(o) > 1}:
        ck.add(top.at("zones"), f"zone {origin} is defined more than once")
    used = {s for svc in services for s in svc.pool}
    for name in sites:
        if name not in used:
            ck.add(top["sites"].at(name), f"site {name!r} is in no service's pool (unused)")
    if ck.problems:
        raise ConfigError(ck.problems)
    return Config(source, server, geoip, tuple(zones), sites, tuple(services), tuple(nets),
                  checks, health, dashboard)
