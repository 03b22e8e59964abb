"""Listening addresses (ADDR:PORT) and HOST[:PORT] splitting, for every wing."""
from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from typing import Any

from .check import Checker
from .yamlsrc import Where


@dataclass(frozen=True, slots=True)
class Listener:
    """An address and port to listen on; printed as ``ADDR:PORT`` (``[v6]:PORT``)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def listener(ck: Checker, text: Any, where: Where) -> Listener | None:
    """A config value ``ADDR:PORT`` as a Listener; None (and a problem) when it is not one."""
    if not isinstance(text, str):
        ck.add(where, f"listen address must be a string like 127.0.0.1:8053, got {text!r}")
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not sep or not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        ck.add(where, f"listen address {text!r} must be ADDR:PORT (IPv6 as [::1]:8053)")
        return None
    return Listener(host, number)


def parse_listener(text: str) -> Listener:
    """Parse a command-line ADDR:PORT; raise ValueError with a clear message."""
    ck = Checker("command line")
    found = listener(ck, text, Where("command line", 0))
    if found is None:
        raise ValueError(ck.problems[0].split(": ", 1)[1])
    return found


def listener_arg(text: str) -> Listener:
    """argparse type for ADDR:PORT options (`--dns`, `--http`, `--listen`)."""
    try:
        return parse_listener(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def split_host_port(text: str) -> tuple[str, str]:
    """`HOST`, `HOST:PORT`, `[IPv6]:PORT` or a bare IPv6 address -> (host, port text or "")."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest.lstrip(":")
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) as (host, port); ValueError without a port."""
    host, port = split_host_port(text)
    return host, int(port)
