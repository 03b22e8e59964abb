"""The customer document and its one validator, for YAML files and store documents alike.

A customer entry (seed 003's customer origin configuration, seed 000's custom origin
domain) is validated here whether it comes from `data/edge.yaml`, from a `cdnctl
apply -f DIR` file or from an API request body: every problem at once, each with
where it was written (file:line, or a JSON pointer for API bodies). The edge builds
its config with these functions; the control plane validates writes with them.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bucket import Bucket, Secret
from .check import Checker
from .customer import (
    Balancing,
    CacheRules,
    Customer,
    IPVersion,
    Origin,
    Protocol,
    Server,
    Shield,
    TtlRule,
)
from .listen import split_host_port
from .shields import plan
from .yamlsrc import LineDict, Where

MAX_CUSTOMERS = 100          # the seed's limit per platform
CUSTOMER_KEYS = ("directory", "cnames", "origin", "alt_svc", "cache", "shield", "https")
DIRECTORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,63}")
HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                      r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True)
class Context:
    """What a customer is validated against, besides itself.

    `me`, `region` and `location` place the edge that builds the config (its shield
    plan depends on them); the control plane validates with the defaults.
    `local_refs` allows `*_env` and `credentials_file` (resolved where the config is
    loaded): true for an edge's own YAML, false for store documents, whose secrets
    are given inline and stored encrypted.
    """

    shields: tuple[Shield, ...] = ()
    me: str = ""
    region: str = ""
    location: tuple[float, float] | None = None
    base: Path = Path(".")
    own_domains: tuple[str, ...] = ()       # our CDN zones: never an origin (seed 000)
    max_customers: int | None = MAX_CUSTOMERS
    local_refs: bool = True


@dataclass
class Customers:
    """Validated customers with their two indexes."""

    items: list[Customer] = field(default_factory=list)
    by_cname: dict[str, Customer] = field(default_factory=dict)
    by_directory: dict[str, Customer] = field(default_factory=dict)


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


def servers(ck: Checker, raw: Any, where: Where, what: str) -> list[Server]:
    out = []
    for value, w in ck.texts(raw, where, what):
        text = value.strip()
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
    hostnames = [s for s in out if not is_ip(s.host)]
    if hostnames and len(out) > 1:
        ck.add(where, f"{what}: give several IP addresses or one domain, not a mix "
               f"({', '.join(s.host for s in hostnames)})")
    return out


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _cache_rules(ck: Checker, raw: Any, where: Where, what: str) -> CacheRules:
    block = ck.mapping(raw, where, what)
    ck.keys(block, ("enabled", "default_ttl", "honour_client_no_cache", "max_object", "grace",
                    "ignore_query", "key_headers", "ttl_rules", "targeted_field",
                    "surrogate_control"), what)
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
        override = ck.flag(r, "override", False, f"{what} ttl rule")
        if match and ttl is not None:
            rules.append(TtlRule(match, ttl, override))
    flags = {}
    for key, default in (("enabled", True), ("honour_client_no_cache", False),
                         ("ignore_query", False), ("surrogate_control", False)):
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
                      tuple(v.lower() for v, _ in ck.texts(block.get("key_headers"),
                                                           block.at("key_headers"),
                                                           f"{what} key_headers")),
                      tuple(rules), _targeted(ck, block, what, flags["surrogate_control"]))


FIELD_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _targeted(ck: Checker, block: LineDict, what: str, surrogate: bool) -> tuple[str, ...]:
    """RFC 9213 targeted fields in precedence order: the customer's own field (say
    Edge-Cache-Control), CDN-Cache-Control, then Surrogate-Control when asked for."""
    own = ck.text(block, "targeted_field", what).strip()
    if own and not FIELD_NAME.fullmatch(own):
        ck.add(block.at("targeted_field"), f"{what}.targeted_field must be a header name "
                                           f"such as Edge-Cache-Control, got {own!r}")
        own = ""
    fields = ([own.lower()] if own else []) + ["cdn-cache-control"]
    if surrogate:
        fields.append("surrogate-control")
    return tuple(dict.fromkeys(fields))


def _validation_path(ck: Checker, block: LineDict, what: str) -> str:
    path = ck.text(block, "validation_path", what)
    if path.startswith(("http://", "https://")):
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if path and not path.startswith("/"):
        ck.add(block.at("validation_path"), f"{what}: validation_path must be a path (/x.png)")
    if ck.flag(block, "rank", False, what) and not path:
        ck.add(block.at("rank"), f"{what}: rank needs a validation_path to measure")
    return path


BUCKET_KEYS = ("type", "bucket", "address", "region", "addressing", "signature",
               "access_key_id", "access_key_id_env", "secret_access_key",
               "secret_access_key_env", "credentials_file", "private", "expose_errors",
               "cache_errors", "protocol", "timeout", "backoff", "backoff_max", "ip_version")


def _origin(ck: Checker, raw: Any, where: Where, what: str, ctx: Context) -> Origin:
    block = ck.mapping(raw, where, what)
    kind = ck.text(block, "type", what, "servers")
    if kind in ("s3", "oss"):
        return _bucket_origin(ck, block, kind, what, ctx)
    if kind != "servers":
        ck.add(block.at("type"), f"{what}.type must be servers, s3 or oss, got {kind!r}")
    ck.keys(block, ("type", "protocol", "http", "https", "host_header", "balancing",
                    "retry_5xx", "timeout", "backoff", "backoff_max", "ip_version",
                    "validation_path", "rank"), what)
    protocol = ck.choice(block, "protocol", Protocol, Protocol.HTTP, what)
    http = servers(ck, block.get("http"), block.at("http"), f"{what} http")
    https = servers(ck, block.get("https"), block.at("https"), f"{what} https")
    if not http and not https:
        ck.add(block.where, f"{what} needs servers: http: [...] and/or https: [...]")
    retry = ck.flag(block, "retry_5xx", True, what)
    return Origin(protocol, tuple(http), tuple(https), ck.text(block, "host_header", what),
                  ck.choice(block, "balancing", Balancing, Balancing.ROUND_ROBIN, what), retry,
                  ck.number(block, "timeout", 0.1, 600, what, default=10.0) or 10.0,
                  ck.number(block, "backoff", 0.01, 3600, what, default=5.0) or 5.0,
                  ck.number(block, "backoff_max", 0.01, 86400, what, default=300.0) or 300.0,
                  ck.choice(block, "ip_version", IPVersion, IPVersion.DEFAULT, what),
                  _validation_path(ck, block, what), block.get("rank", False) is True)


def _bucket_origin(ck: Checker, block: LineDict, kind: str, what: str, ctx: Context) -> Origin:
    """An S3/OSS bucket origin: address (host name only), region, addressing, credentials."""
    ck.keys(block, BUCKET_KEYS, what)
    address = ck.text(block, "address", what)
    if not address:
        ck.add(block.where, f"{what}: a {kind} origin needs address: (the bucket's host name)")
    elif "://" in address or "/" in address:
        ck.add(block.at("address"), f"{what}.address must be a host name only, without "
                                    f"http:// or https:// or a path, got {address!r}")
    host, port = split_host_port(address) if address and "/" not in address else ("", None)
    addressing = ck.text(block, "addressing", what, "virtual")
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
    signature = ck.text(block, "signature", what, "v4")
    if signature not in (("v4",) if kind == "s3" else ("v4", "v1")):
        ck.add(block.at("signature"), f"{what}.signature must be "
                                      f"{'v4' if kind == 's3' else 'v4 or v1'}")
    protocol = ck.choice(block, "protocol", Protocol, Protocol.HTTPS, what)
    if protocol is Protocol.FOLLOW:
        ck.add(block.at("protocol"), f"{what}.protocol of a bucket must be http or https")
        protocol = Protocol.HTTPS
    key_id, secret = _credentials(ck, block, what, ctx)
    private = ck.flag(block, "private", bool(secret), what)
    if private and not secret:
        ck.add(block.where, f"{what}: a private bucket needs access_key_id and "
                            f"secret_access_key (or their _env forms, or credentials_file)")
    flags = {k: ck.flag(block, k, False, what) for k in ("expose_errors", "cache_errors")}
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


def _credentials(ck: Checker, block: LineDict, what: str, ctx: Context) -> tuple[str, str]:
    """(access key id, secret) from the config, environment variables or a file."""
    found = {}
    for name in ("access_key_id", "secret_access_key"):
        # Typed, and never echoed: `secret_access_key: [SECRET, 1]` was taken as a secret.
        value = ck.text(block, name, what) if name in block else None
        value = value or None
        env = ck.text(block, f"{name}_env", what) if f"{name}_env" in block else None
        env = env or None
        if value is not None and env is not None:
            ck.add(block.at(name), f"{what}: give {name} or {name}_env, not both")
        if env is not None and not ctx.local_refs:
            ck.add(block.at(f"{name}_env"), f"{what}: {name}_env names a variable of the "
                   f"machine that loads it; give {name} itself (it is stored encrypted)")
        elif env is not None:
            value = os.environ.get(env)
            if value is None:
                ck.add(block.at(f"{name}_env"), f"{what}: environment variable {env} "
                                                f"(for {name}) is not set")
        if value is not None:
            found[name] = str(value)
    path = ck.text(block, "credentials_file", what) or None
    if path is not None and not ctx.local_refs:
        ck.add(block.at("credentials_file"), f"{what}: credentials_file is a file of the "
               "machine that loads it; give access_key_id and secret_access_key")
    elif path is not None:
        file = ctx.base / path
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


def _under(host: str, domains: tuple[str, ...]) -> str:
    """The domain of `domains` that `host` is or is below ("" if none)."""
    for domain in domains:
        domain = domain.lower().rstrip(".")
        if host == domain or host.endswith("." + domain):
            return domain
    return ""


def _https(ck: Checker, c: LineDict, what: str, cnames: list[str]) -> str:
    """`https: auto` (ACME) or `https: {cert: PEM, key: PEM}` (uploaded): "auto",
    "upload" or "" (none). The PEM itself is checked where it is used (cdnkit/certs.py)."""
    if "https" not in c or c.get("https") is None:
        return ""
    value = c.get("https")
    if value == "auto":
        if not cnames:
            ck.add(c.at("https"), f"{what}: https: auto needs cnames: (the names to certify)")
        return "auto"
    if isinstance(value, dict):
        block = ck.mapping(value, c.at("https"), f"{what} https")
        ck.keys(block, ("cert", "key"), f"{what} https")
        for key in ("cert", "key"):
            if not isinstance(block.get(key), str) or not block.get(key):
                ck.add(block.at(key) if key in block else block.where,
                       f"{what}: https.{key} must be PEM text")
        return "upload"
    ck.add(c.at("https"), f"{what}: https must be auto or {{cert: PEM, key: PEM}}")
    return ""


def customer(ck: Checker, body: Any, where: Where, label: str, ctx: Context) -> Customer:
    """One customer entry; problems go to `ck` (the returned value is usable regardless)."""
    c = ck.mapping(body, where, f"customer {label}")
    directory = ck.text(c, "directory", f"customer {label}", numbers=True).strip("/")
    what = f"customer {directory or label}"
    ck.keys(c, CUSTOMER_KEYS, what)
    if not directory or "/" in directory:
        ck.add(c.at("directory"), f"{what} needs directory: NAME (one URL segment)")
    elif not DIRECTORY.fullmatch(directory):
        ck.add(c.at("directory"), f"{what}: directory {directory!r} may hold letters, digits "
               "and . _ ~ - (at most 64, first a letter or digit)")
    cnames = []
    for value, w in ck.texts(c.get("cnames"), c.at("cnames"), f"{what} cnames"):
        name = value.lower().rstrip(".")
        if not HOSTNAME.fullmatch(name):
            ck.add(w, f"{what}: edge CNAME {value!r} is not a host name")
        elif name in cnames:
            ck.add(w, f"{what}: edge CNAME {name} is listed twice")
        else:
            cnames.append(name)
    origin = _origin(ck, c.get("origin"), c.at("origin"), f"{what} origin", ctx)
    for server in origin.http + origin.https:
        if server.host in cnames:
            ck.add(c.at("origin"), f"{what}: origin {server.host} is one of its own edge "
                   "CNAMEs (requests would loop)")
        elif (domain := _under(server.host, ctx.own_domains)):
            ck.add(c.at("origin"), f"{what}: origin {server.host} is in our own CDN domain "
                   f"{domain} (requests would loop)")
    out = Customer(directory, tuple(cnames), origin, ck.text(c, "alt_svc", what),
                   _cache_rules(ck, c.get("cache"), c.at("cache"), f"{what} cache"),
                   plan(ck, c.get("shield"), c.at("shield"), what, ctx.shields, ctx.me,
                        ctx.region, ctx.location),
                   _https(ck, c, what, cnames))
    if out.shields and not cnames:
        ck.add(c.at("shield"), f"{what}: a shield routes by edge CNAME; give cnames:")
    return out


def customers(ck: Checker, items: Any, where: Where, ctx: Context) -> Customers:
    """The `customers:` list: each entry, plus unique directories and edge CNAMEs."""
    out = Customers()
    if items is None:
        items = []
    if not isinstance(items, list):
        ck.add(where, "customers must be a list")
        items = []
    if ctx.max_customers is not None and len(items) > ctx.max_customers:
        ck.add(where, f"{len(items)} customers; at most {ctx.max_customers} are allowed")
    for index, body in enumerate(items):
        w = items.at(index) if hasattr(items, "at") else where
        found = customer(ck, body, w, f"#{index + 1}", ctx)
        raw = body if isinstance(body, LineDict) else None
        at = raw.at("directory") if raw is not None else w
        if found.directory in out.by_directory:
            ck.add(at, f"customer {found.directory}: directory {found.directory!r} is used twice")
        out.by_directory[found.directory] = found
        for name in found.cnames:
            if name in out.by_cname:
                ck.add(raw.at("cnames") if raw is not None else w,
                       f"customer {found.directory}: edge CNAME {name} already belongs to "
                       f"{out.by_cname[name].directory}")
            out.by_cname[name] = found
        out.items.append(found)
    return out

