"""A `--store` value: `file:PATH` or `etcd://[USER@]HOST:PORT[,...][/?ca=&cert=&key=&prefix=]`.

Apart from the etcd client (cdnkit.store) so that parsing a command line does not
load grpc: a plain `gslb serve` or `edge serve` on YAML files never needs it.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from .keys import DEFAULT_PREFIX

PASSWORD_ENV = "CDN_ETCD_PASSWORD"


@dataclass(frozen=True)
class StoreSpec:
    """A parsed --store value."""

    kind: str                          # "file" | "etcd"
    path: str = ""                     # file:
    endpoints: tuple[str, ...] = ()    # etcd: host:port
    user: str = ""
    password: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""
    prefix: str = DEFAULT_PREFIX

    def __str__(self) -> str:          # never the password
        if self.kind == "file":
            return f"file:{self.path}"
        who = f"{self.user}@" if self.user else ""
        return f"etcd://{who}{','.join(self.endpoints)}{self.prefix}"


def parse_store(text: str) -> StoreSpec:
    """`file:PATH` or `etcd://...` (see the module docstring); ValueError says what is wrong."""
    if text.startswith("file:"):
        if not text[5:]:
            raise ValueError("file: needs a path, e.g. file:data/edge.yaml")
        return StoreSpec("file", path=text[5:])
    if not text.startswith("etcd://"):
        raise ValueError(f"{text!r}: give file:PATH or etcd://HOST:PORT[,HOST:PORT...]")
    parts = urlsplit(text)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    endpoints = tuple(h for h in hosts.split(",") if h)
    if not endpoints:
        raise ValueError(f"{text!r}: no HOST:PORT")
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{text!r}: endpoint {endpoint!r} must be HOST:PORT")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"ca", "cert", "key", "prefix"}
    if unknown:
        raise ValueError(f"{text!r}: unknown option(s) {', '.join(sorted(unknown))} "
                         "(known: ca, cert, key, prefix)")
    prefix = query.get("prefix", DEFAULT_PREFIX)
    if not prefix.startswith("/") or not prefix.endswith("/"):
        raise ValueError(f"prefix {prefix!r} must start and end with /")
    if bool(query.get("cert")) != bool(query.get("key")):
        raise ValueError("cert= and key= go together (a client certificate and its key)")
    return StoreSpec("etcd", endpoints=endpoints, user=unquote(user),
                     password=unquote(password) or os.environ.get(PASSWORD_ENV, ""),
                     ca=query.get("ca", ""), cert=query.get("cert", ""),
                     key=query.get("key", ""), prefix=prefix)


def store_arg(text: str) -> StoreSpec:
    """argparse type for --store."""
    try:
        return parse_store(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
