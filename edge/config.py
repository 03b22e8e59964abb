"""Edge config: YAML (or the store's documents) -> a validated, frozen `EdgeConfig`.

Validated like the DNS config (cdnkit's Checker): every problem at once, each
with file:line; a reload either swaps in a whole new config or keeps the old
one. The customer entries are validated by cdnkit.schema, the one validator the
control plane uses too; this module adds what is the edge's own (listeners, TLS,
cache, resolver). The types themselves are in model.py.
"""
from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path
from typing import Any

from cdnkit import schema
from cdnkit.check import Checker, ConfigError
from cdnkit.listen import Listener, parse_listener, split_host_port
from cdnkit.schema import MAX_CUSTOMERS, Context, is_ip, size
from cdnkit.shields import parse_shields
from cdnkit.yamlsrc import ConfigFileError, Where, YamlError, read_config

from edge.model import (
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
from edge.http.tls import CertSpec, CertStore

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "data" / "edge.yaml"


def _nameserver(text: str) -> tuple[str, int] | None:
    host, port = split_host_port(text)
    port = port or "53"
    if not is_ip(host) or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _tls(ck: Checker, raw: Any, where: Where, base: Path) -> tuple[tuple[Listener, ...],
                                                                  tuple[CertSpec, ...]]:
    if raw is None:
        return (), ()
    block = ck.mapping(raw, where, "tls")
    ck.keys(block, ("listen", "certificates", "h3"), "tls")
    listen = []
    for value, w in ck.texts(block.get("listen", "127.0.0.1:8443"), block.at("listen"),
                             "tls listen"):
        try:
            listen.append(parse_listener(value))
        except ValueError as exc:
            ck.add(w, f"tls listen: {exc}")
    specs = []
    items = block.get("certificates") or []
    for index, item in enumerate(items if isinstance(items, list) else []):
        w = items.at(index) if hasattr(items, "at") else block.where
        c = ck.mapping(item, w, "tls certificate")
        ck.keys(c, ("names", "cert", "key"), "tls certificate")
        names = tuple(n.lower() for n, _ in ck.texts(c.get("names"), c.at("names"),
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


def build(raw: Any, source: str, base: Path | None = None, *,
          max_customers: int | None = MAX_CUSTOMERS, local_refs: bool = True) -> EdgeConfig:
    """Validate parsed YAML into an EdgeConfig; ConfigError lists every problem.

    With the store (edge/fleet/watch.py), the customers and shields are the store's
    documents: the control plane enforces the customer limit, and secrets are inline.
    """
    ck = Checker(source)
    base = base or Path(".")
    top = ck.mapping(raw, Where(source, 1), "config")
    ck.keys(top, ("listen", "account", "via", "customers", "resolver", "egress", "tls",
                  "origin_ca_file", "cache_memory", "cache_disk", "cache_disk_size", "state_dir",
                  "sendfile", "admin_token_env", "name", "region", "lat", "lon", "shields",
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
    sendfile = ck.flag(top, "sendfile", False, "config")
    tls_listen, certs = _tls(ck, top.get("tls"), top.at("tls"), base)
    # HTTP/3 on the tls listeners' ports (edge/http/h3.py), on unless `tls: h3: false`.
    h3 = isinstance(top.get("tls"), dict) and ck.flag(top["tls"], "h3", True, "tls")
    origin_ca = ck.text(top, "origin_ca_file", "config")
    if origin_ca:
        origin_ca = str(base / origin_ca)
        if not Path(origin_ca).is_file():
            ck.add(top.at("origin_ca_file"), f"origin_ca_file {origin_ca} does not exist")
    egress = []
    for value, w in ck.texts(top.get("egress"), top.at("egress"), "egress"):
        try:
            egress.append(str(ipaddress.ip_network(value, strict=False)))
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
    for value, w in ck.texts(top.get("resolver"), top.at("resolver"), "resolver"):
        found = _nameserver(value.strip())
        if found is None:
            ck.add(w, f"resolver: {value!r} must be IP, IP:PORT or [IPv6]:PORT")
        else:
            nameservers.append(found)
    listen = []
    for value, w in ck.texts(top.get("listen", "127.0.0.1:8081"), top.at("listen"), "listen"):
        try:
            listen.append(parse_listener(value))
        except ValueError as exc:
            ck.add(w, f"listen: {exc}")
    account = ck.text(top, "account", "config", "800001", numbers=True)
    via = ck.text(top, "via", "config", "gslb-edge")
    me = ck.text(top, "name", "config", via)
    region = ck.text(top, "region", "config")
    location = None
    if "lat" in top and "lon" in top:
        lat = ck.number(top, "lat", -90, 90, "config")
        lon = ck.number(top, "lon", -180, 180, "config")
        location = (lat, lon) if lat is not None and lon is not None else None
    shields = parse_shields(ck, top.get("shields"), top.at("shields"))
    ctx = Context(shields, me, region, location, base, max_customers=max_customers,
                  local_refs=local_refs)
    found = schema.customers(ck, top.get("customers"), top.at("customers"), ctx)
    if ck.problems:
        raise ConfigError(ck.problems)
    return EdgeConfig(source, tuple(listen), account, tuple(found.items),
                      via, tuple(egress), tls_listen, certs,
                      origin_ca, cache_memory, cache_disk, cache_disk_size, state_dir,
                      admin_token, name=me, region=region, location=location,
                      shields=shields, nameservers=tuple(nameservers),
                      trusted_proxies=tuple(trusted_proxies), sendfile=sendfile, h3=h3,
                      by_cname=found.by_cname,
                      by_directory=found.by_directory)


def load(path: str | os.PathLike[str]) -> EdgeConfig:
    source = str(path)
    try:
        raw = read_config(path)
    except (ConfigFileError, YamlError) as exc:
        raise ConfigError([str(exc)]) from None
    return build(raw, source, Path(path).resolve().parent)


def quick(origin_url: str, host: str | None, listen: tuple[Listener, ...],
          tls_listen: tuple[Listener, ...] = (), cert: str = "", key: str = "") -> EdgeConfig:
    """`edge serve --origin URL`: every Host goes to that one origin; with `tls_listen`,
    also HTTPS (HTTP/2 and HTTP/1.1) there with the one certificate `cert`/`key`."""
    from urllib.parse import urlsplit
    parts = urlsplit(origin_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError([f"--origin: {origin_url!r} must be http://HOST[:PORT] or https://..."])
    server = Server(parts.hostname, parts.port)
    origin = Origin(Protocol(parts.scheme), (server,), (server,), host or "")
    customer = Customer("quick", (), origin)
    certs = quick_certificates(tls_listen, cert, key)
    return EdgeConfig("--origin", listen, "800001", (customer,), "gslb-edge",
                      tls_listen=tls_listen, certificates=certs,
                      by_directory={"quick": customer})


def quick_certificates(tls_listen: tuple[Listener, ...], cert: str,
                       key: str) -> tuple[CertSpec, ...]:
    """The one certificate of `--https` (for every name): checked now, so a wrong file
    is one clear line and not a failed handshake later."""
    if not tls_listen and not cert and not key:
        return ()
    if not tls_listen or not cert or not key:
        raise ConfigError(["--https ADDR:PORT, --cert FILE and --key FILE go together"])
    for flag, path in (("--cert", cert), ("--key", key)):
        if not Path(path).is_file():
            raise ConfigError([f"{flag}: {path} does not exist"])
    spec = CertSpec((), str(Path(cert).resolve()), str(Path(key).resolve()))
    try:
        CertStore((spec,))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError([f"--cert/--key: cannot load the certificate ({exc})"]) from None
    return (spec,)


__all__ = ["Balancing", "CacheRules", "ConfigError", "Customer", "EdgeConfig", "IPVersion",
           "Origin", "Protocol", "Server", "TtlRule", "build", "load", "quick", "quick_certificates"]
