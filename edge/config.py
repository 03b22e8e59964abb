"""Edge config: YAML (or a store document) -> a validated, frozen `EdgeConfig`.

Validated like the DNS config (cdnkit's Checker): every problem at once, each
with file:line; a reload either swaps in a whole new config or keeps the old
one. The types themselves are in model.py.
"""
from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path
from typing import Any

from cdnkit.check import Checker, ConfigError
from cdnkit.listen import Listener, parse_listener, split_host_port
from cdnkit.yamlsrc import LineDict, Where, YamlError, load_yaml

from .bucket import Bucket, Secret
from .model import (
    Balancing,
    CacheRules,
    Customer,
    EdgeConfig,
    IPVersion,
    Origin,
    Protocol,
    Server,
    TtlRule,
)
from .shield import parse_shields, plan
from .tls import CertSpec, CertStore

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "data" / "edge.yaml"
MAX_CUSTOMERS = 100          # the seed's limit per platform


SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def size(ck: Checker, block: LineDict, key: str, default: int, what: str) -> int:
    """A byte count: an integer, or a number with k/M/G/T (powers of 1024), e.g. 512M."""
    value = block.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip().lower().removesuffix("b").removesuffix("i")
    number, unit = text.rstrip("kmgt"), text[len(text.rstrip("kmgt")):]
    try:
        if unit not in SIZE_UNITS:
            raise ValueError
        out = int(float(number) * SIZE_UNITS[unit])
        if out < 0:
            raise ValueError
        return out
    except ValueError:
        ck.add(block.at(key), f"{what}.{key} must be a size such as 10240, 512M or 10G, "
                              f"got {value!r}")
        return default


def _servers(ck: Checker, raw: Any, where: Where, what: str) -> list[Server]:
    out = []
    for value, w in ck.items(raw, where, what):
        text = str(value).strip()
        if "://" in text:
            ck.add(w, f"{what}: {text!r}: give HOST or HOST:PORT, no scheme (protocol: sets it)")
            continue
        host, port = split_host_port(text)
        try:
            number = int(port) if port else None
            if number is not None and not 0 < number < 65536:
                raise ValueError
        except ValueError:
            ck.add(w, f"{what}: bad port in {text!r}")
            continue
        out.append(Server(host.lower(), number))
    hostnames = [s for s in out if not _is_ip(s.host)]
    if hostnames and len(out) > 1:
        ck.add(where, f"{what}: give several IP addresses or one domain, not a mix "
               f"({', '.join(s.host for s in hostnames)})")
    return out


def _nameserver(text: str) -> tuple[str, int] | None:
    host, port = split_host_port(text)
    port = port or "53"
    if not _is_ip(host) or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _cache_rules(ck: Checker, raw: Any, where: Where, what: str) -> CacheRules:
    block = ck.mapping(raw, where, what)
    ck.keys(block, ("enabled", "default_ttl", "honour_client_no_cache", "max_object", "grace",
                    "ignore_query", "key_headers", "ttl_rules"), what)
    rules = []
    items = block.get("ttl_rules") or []
    for index, item in enumerate(items if isinstance(items, list) else []):
        w = items.at(index) if hasattr(items, "at") else block.where
        r = ck.mapping(item, w, f"{what} ttl rule")
        ck.keys(r, ("match", "ttl", "override"), f"{what} ttl rule")
        match = ck.text(r, "match", f"{what} ttl rule")
        if not match:
            ck.add(r.where, f"{what} ttl rule needs match: a path glob such as *.mp4")
        ttl = ck.number(r, "ttl", 0, 10 * 365 * 86400, f"{what} ttl rule")
        override = r.get("override", False)
        if not isinstance(override, bool):
            ck.add(r.at("override"), f"{what} ttl rule: override must be true or false")
            override = False
        if match and ttl is not None:
            rules.append(TtlRule(match, ttl, override))
    flags = {}
    for key, default in (("enabled", True), ("honour_client_no_cache", False),
                         ("ignore_query", False)):
        value = block.get(key, default)
        if not isinstance(value, bool):
            ck.add(block.at(key), f"{what}.{key} must be true or false")
            value = default
        flags[key] = value
    return CacheRules(flags["enabled"],
                      ck.number(block, "default_ttl", 0, 10 * 365 * 86400, what, default=0.0) or 0.0,
                      flags["honour_client_no_cache"],
                      size(ck, block, "max_object", 64 * 1024**2, what),
                      ck.number(block, "grace", 0, 30 * 86400, what, default=0.0) or 0.0,
                      flags["ignore_query"],
                      tuple(str(v).lower() for v, _ in ck.items(block.get("key_headers"),
                                                                block.at("key_headers"),
                                                                f"{what} key_headers")),
                      tuple(rules))


def _validation_path(ck: Checker, block: LineDict, what: str) -> str:
    path = ck.text(block, "validation_path", what)
    if path.startswith(("http://", "https://")):
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if path and not path.startswith("/"):
        ck.add(block.at("validation_path"), f"{what}: validation_path must be a path (/x.png)")
    if block.get("rank") and not path:
        ck.add(block.at("rank"), f"{what}: rank needs a validation_path to measure")
    return path


BUCKET_KEYS = ("type", "bucket", "address", "region", "addressing", "signature",
               "access_key_id", "access_key_id_env", "secret_access_key",
               "secret_access_key_env", "credentials_file", "private", "expose_errors",
               "cache_errors", "protocol", "timeout", "backoff", "backoff_max", "ip_version")


def _origin(ck: Checker, raw: Any, where: Where, what: str, base: Path = Path(".")) -> Origin:
    block = ck.mapping(raw, where, what)
    kind = str(block.get("type", "servers"))
    if kind in ("s3", "oss"):
        return _bucket_origin(ck, block, kind, what, base)
    if kind != "servers":
        ck.add(block.at("type"), f"{what}.type must be servers, s3 or oss, got {kind!r}")
    ck.keys(block, ("type", "protocol", "http", "https", "host_header", "balancing",
                    "retry_5xx", "timeout", "backoff", "backoff_max", "ip_version",
                    "validation_path", "rank"), what)
    protocol = ck.choice(block, "protocol", Protocol, Protocol.HTTP, what)
    http = _servers(ck, block.get("http"), block.at("http"), f"{what} http")
    https = _servers(ck, block.get("https"), block.at("https"), f"{what} https")
    if not http and not https:
        ck.add(block.where, f"{what} needs servers: http: [...] and/or https: [...]")
    retry = block.get("retry_5xx", True)
    if not isinstance(retry, bool):
        ck.add(block.at("retry_5xx"), f"{what}.retry_5xx must be true or false")
        retry = True
    return Origin(protocol, tuple(http), tuple(https), ck.text(block, "host_header", what),
                  ck.choice(block, "balancing", Balancing, Balancing.ROUND_ROBIN, what), retry,
                  ck.number(block, "timeout", 0.1, 600, what, default=10.0) or 10.0,
                  ck.number(block, "backoff", 0.01, 3600, what, default=5.0) or 5.0,
                  ck.number(block, "backoff_max", 0.01, 86400, what, default=300.0) or 300.0,
                  ck.choice(block, "ip_version", IPVersion, IPVersion.DEFAULT, what),
                  _validation_path(ck, block, what), block.get("rank", False) is True)


def _bucket_origin(ck: Checker, block: LineDict, kind: str, what: str, base: Path) -> Origin:
    """An S3/OSS bucket origin: address (host name only), region, addressing, credentials."""
    ck.keys(block, BUCKET_KEYS, what)
    address = ck.text(block, "address", what)
    if not address:
        ck.add(block.where, f"{what}: a {kind} origin needs address: (the bucket's host name)")
    elif "://" in address or "/" in address:
        ck.add(block.at("address"), f"{what}.address must be a host name only, without "
                                    f"http:// or https:// or a path, got {address!r}")
    host, port = split_host_port(address) if address and "/" not in address else ("", None)
    addressing = str(block.get("addressing", "virtual"))
    if addressing not in ("virtual", "path"):
        ck.add(block.at("addressing"), f"{what}.addressing must be virtual or path")
    name = ck.text(block, "bucket", what)
    if not name and addressing == "virtual" and host:
        name = host.split(".", 1)[0]          # bucket.s3.region.amazonaws.com
    if not name:
        ck.add(block.where, f"{what}: path addressing needs bucket: (the bucket name)")
    region = ck.text(block, "region", what)
    if kind == "oss" and not region:
        ck.add(block.where, f"{what}: an oss origin needs region: (e.g. cn-hangzhou)")
    signature = str(block.get("signature", "v4"))
    if signature not in (("v4",) if kind == "s3" else ("v4", "v1")):
        ck.add(block.at("signature"), f"{what}.signature must be "
                                      f"{'v4' if kind == 's3' else 'v4 or v1'}")
    protocol = ck.choice(block, "protocol", Protocol, Protocol.HTTPS, what)
    if protocol is Protocol.FOLLOW:
        ck.add(block.at("protocol"), f"{what}.protocol of a bucket must be http or https")
        protocol = Protocol.HTTPS
    key_id, secret = _credentials(ck, block, what, base)
    private = block.get("private", bool(secret))
    if private and not secret:
        ck.add(block.where, f"{what}: a private bucket needs access_key_id and "
                            f"secret_access_key (or their _env forms, or credentials_file)")
    flags = {k: block.get(k, False) is True for k in ("expose_errors", "cache_errors")}
    bucket = Bucket(kind, name, address, region, addressing, signature, key_id,
                    Secret(secret) if private and secret else None, **flags)
    servers = (Server(host, port),) if host else ()
    return Origin(protocol, servers if protocol is Protocol.HTTP else (),
                  servers if protocol is Protocol.HTTPS else (), address,
                  Balancing.FAILOVER, True,
                  ck.number(block, "timeout", 0.1, 600, what, default=10.0) or 10.0,
                  ck.number(block, "backoff", 0.01, 3600, what, default=5.0) or 5.0,
                  ck.number(block, "backoff_max", 0.01, 86400, what, default=300.0) or 300.0,
                  ck.choice(block, "ip_version", IPVersion, IPVersion.DEFAULT, what),
                  bucket=bucket)


def _credentials(ck: Checker, block: LineDict, what: str, base: Path) -> tuple[str, str]:
    """(access key id, secret) from the config, environment variables or a file."""
    found = {}
    for name in ("access_key_id", "secret_access_key"):
        value = block.get(name)
        env = block.get(f"{name}_env")
        if value is not None and env is not None:
            ck.add(block.at(name), f"{what}: give {name} or {name}_env, not both")
        if env is not None:
            value = os.environ.get(str(env))
            if value is None:
                ck.add(block.at(f"{name}_env"), f"{what}: environment variable {env} "
                                                f"(for {name}) is not set")
        if value is not None:
            found[name] = str(value)
    path = block.get("credentials_file")
    if path is not None:
        file = base / str(path)
        try:
            for line in file.read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip().lower() in ("access_key_id", "secret_access_key",
                                                   "aws_access_key_id", "aws_secret_access_key"):
                    found.setdefault(key.strip().lower().removeprefix("aws_"), value.strip())
        except OSError as exc:
            ck.add(block.at("credentials_file"), f"{what}: credentials_file {file}: "
                                                 f"{exc.strerror}")
    if bool(found.get("access_key_id")) != bool(found.get("secret_access_key")):
        ck.add(block.where, f"{what}: access_key_id and secret_access_key go together")
    return found.get("access_key_id", ""), found.get("secret_access_key", "")


def _tls(ck: Checker, raw: Any, where: Where, base: Path) -> tuple[tuple[Listener, ...],
                                                                  tuple[CertSpec, ...]]:
    if raw is None:
        return (), ()
    block = ck.mapping(raw, where, "tls")
    ck.keys(block, ("listen", "certificates"), "tls")
    listen = []
    for value, w in ck.items(block.get("listen", "127.0.0.1:8443"), block.at("listen"),
                             "tls listen"):
        try:
            listen.append(parse_listener(str(value)))
        except ValueError as exc:
            ck.add(w, f"tls listen: {exc}")
    specs = []
    items = block.get("certificates") or []
    for index, item in enumerate(items if isinstance(items, list) else []):
        w = items.at(index) if hasattr(items, "at") else block.where
        c = ck.mapping(item, w, "tls certificate")
        ck.keys(c, ("names", "cert", "key"), "tls certificate")
        names = tuple(str(n).lower() for n, _ in ck.items(c.get("names"), c.at("names"),
                                                            "tls names"))
        paths = []
        for key in ("cert", "key"):
            path = base / ck.text(c, key, "tls certificate")
            if not path.is_file():
                ck.add(c.at(key), f"tls certificate {key} {path} does not exist")
            paths.append(str(path))
        if not names:
            ck.add(c.where, "tls certificate needs names: [edge CNAMEs it serves]")
        specs.append(CertSpec(names, paths[0], paths[1]))
    if not specs:
        ck.add(block.where, "tls needs certificates: [{names, cert, key}]")
    if ck.problems:
        return tuple(listen), tuple(specs)
    try:
        CertStore(tuple(specs))          # the files load and the keys match
    except (ssl.SSLError, OSError) as exc:
        ck.add(block.where, f"tls: cannot load the certificates ({exc})")
    return tuple(listen), tuple(specs)


def build(raw: Any, source: str, base: Path | None = None) -> EdgeConfig:
    """Validate parsed YAML into an EdgeConfig; ConfigError lists every problem."""
    ck = Checker(source)
    base = base or Path(".")
    top = ck.mapping(raw, Where(source, 1), "config")
    ck.keys(top, ("listen", "account", "via", "customers", "resolver", "egress", "tls",
                  "origin_ca_file", "cache_memory", "cache_disk", "cache_disk_size", "state_dir",
                  "admin_token_env", "name", "region", "lat", "lon", "shields",
                  "trusted_proxies"),
            "the top level")
    state_dir = ck.text(top, "state_dir", "config")
    if state_dir:
        state_dir = str(base / state_dir)
    admin_token = os.environ.get(ck.text(top, "admin_token_env", "config", "EDGE_ADMIN_TOKEN"), "")
    cache_memory = size(ck, top, "cache_memory", 256 * 1024**2, "config")
    cache_disk = ck.text(top, "cache_disk", "config")
    if cache_disk:
        cache_disk = str(base / cache_disk)
    cache_disk_size = size(ck, top, "cache_disk_size", 10 * 1024**3, "config")
    tls_listen, certs = _tls(ck, top.get("tls"), top.at("tls"), base)
    origin_ca = ck.text(top, "origin_ca_file", "config")
    if origin_ca:
        origin_ca = str(base / origin_ca)
        if not Path(origin_ca).is_file():
            ck.add(top.at("origin_ca_file"), f"origin_ca_file {origin_ca} does not exist")
    egress = []
    for value, w in ck.items(top.get("egress"), top.at("egress"), "egress"):
        try:
            egress.append(str(ipaddress.ip_network(str(value), strict=False)))
        except ValueError:
            ck.add(w, f"egress: {value!r} is not an address or CIDR")
    # Our own tiers send from the egress blocks: by default their chains are kept.
    trusted_proxies = [ipaddress.ip_network(e) for e in egress]
    if "trusted_proxies" in top:
        trusted_proxies = []
    for value, w in ck.items(top.get("trusted_proxies"), top.at("trusted_proxies"),
                             "trusted_proxies"):
        try:
            trusted_proxies.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            ck.add(w, f"trusted_proxies: {value!r} is not an address or CIDR")
    nameservers = []
    for value, w in ck.items(top.get("resolver"), top.at("resolver"), "resolver"):
        found = _nameserver(str(value).strip())
        if found is None:
            ck.add(w, f"resolver: {value!r} must be IP, IP:PORT or [IPv6]:PORT")
        else:
            nameservers.append(found)
    listen = []
    for value, w in ck.items(top.get("listen", "127.0.0.1:8081"), top.at("listen"), "listen"):
        try:
            listen.append(parse_listener(str(value)))
        except ValueError as exc:
            ck.add(w, f"listen: {exc}")
    account = str(top.get("account", "800001"))

    me = str(top.get("name", top.get("via", "gslb-edge")))
    region = str(top.get("region", ""))
    location = None
    if "lat" in top and "lon" in top:
        lat = ck.number(top, "lat", -90, 90, "config")
        lon = ck.number(top, "lon", -180, 180, "config")
        location = (lat, lon) if lat is not None and lon is not None else None
    shields = parse_shields(ck, top.get("shields"), top.at("shields"))
    customers: list[Customer] = []
    by_cname: dict[str, Customer] = {}
    by_directory: dict[str, Customer] = {}
    items = top.get("customers") or []
    if not isinstance(items, list):
        ck.add(top.at("customers"), "customers must be a list")
        items = []
    if len(items) > MAX_CUSTOMERS:
        ck.add(top.at("customers"), f"{len(items)} customers; at most {MAX_CUSTOMERS} are allowed")
    for index, body in enumerate(items):
        w = items.at(index) if hasattr(items, "at") else top.where
        c = ck.mapping(body, w, f"customer #{index + 1}")
        directory = str(c.get("directory", "")).strip("/")
        what = f"customer {directory or '#' + str(index + 1)}"
        ck.keys(c, ("directory", "cnames", "origin", "alt_svc", "cache", "shield"), what)
        if not directory or "/" in directory:
            ck.add(c.at("directory"), f"{what} needs directory: NAME (one URL segment)")
        cnames = [str(v).lower().rstrip(".") for v, _ in ck.items(c.get("cnames"), c.at("cnames"),
                                                                    f"{what} cnames")]
        origin = _origin(ck, c.get("origin"), c.at("origin"), f"{what} origin", base)
        for server in origin.http + origin.https:
            if server.host in cnames:
                ck.add(c.at("origin"), f"{what}: origin {server.host} is one of its own edge "
                       "CNAMEs (requests would loop)")
        customer = Customer(directory, tuple(cnames), origin, ck.text(c, "alt_svc", what),
                            _cache_rules(ck, c.get("cache"), c.at("cache"), f"{what} cache"),
                            plan(ck, c.get("shield"), c.at("shield"), what, shields, me, region,
                                 location))
        if customer.shields and not cnames:
            ck.add(c.at("shield"), f"{what}: a shield routes by edge CNAME; give cnames:")
        if directory in by_directory:
            ck.add(c.at("directory"), f"{what}: directory {directory!r} is used twice")
        by_directory[directory] = customer
        for name in cnames:
            if name in by_cname:
                ck.add(c.at("cnames"), f"{what}: edge CNAME {name} already belongs to "
                       f"{by_cname[name].directory}")
            by_cname[name] = customer
        customers.append(customer)
    if ck.problems:
        raise ConfigError(ck.problems)
    return EdgeConfig(source, tuple(listen), account, tuple(customers),
                      str(top.get("via", "gslb-edge")), tuple(egress), tls_listen, certs,
                      origin_ca, cache_memory, cache_disk, cache_disk_size, state_dir,
                      admin_token, name=me, region=region, location=location,
                      shields=shields, nameservers=tuple(nameservers),
                      trusted_proxies=tuple(trusted_proxies), by_cname=by_cname,
                      by_directory=by_directory)


def load(path: str | os.PathLike[str]) -> EdgeConfig:
    source = str(path)
    try:
        raw = load_yaml(Path(path))
    except FileNotFoundError:
        raise ConfigError([f"{source}:0: file not found"]) from None
    except YamlError as exc:
        raise ConfigError([str(exc)]) from None
    return build(raw, source, Path(path).resolve().parent)


def quick(origin_url: str, host: str | None, listen: tuple[Listener, ...]) -> EdgeConfig:
    """`edge serve --origin URL`: every Host goes to that one origin."""
    from urllib.parse import urlsplit
    parts = urlsplit(origin_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError([f"--origin: {origin_url!r} must be http://HOST[:PORT] or https://..."])
    server = Server(parts.hostname, parts.port)
    origin = Origin(Protocol(parts.scheme), (server,), (server,), host or "")
    customer = Customer("quick", (), origin)
    return EdgeConfig("--origin", listen, "800001", (customer,), "gslb-edge",
                      by_directory={"quick": customer})


__all__ = ["Balancing", "CacheRules", "ConfigError", "Customer", "EdgeConfig", "IPVersion",
           "Origin", "Protocol", "Server", "TtlRule", "build", "load", "quick"]
