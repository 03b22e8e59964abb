"""Origin host names -> addresses, by the customer's IP-version policy.

An async stub resolver (UDP, TCP on truncation) that caches answers for
their TTL, negative ones too, and orders the result as the seed's policies
say: `default` = v4 only; `v4_preferred` / `v6_preferred` = the preferred
family when the name has any such address, else the other; `v4_only`,
`v6_only`.
"""
from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dnslib

from edge.model import IPVersion

NEGATIVE_TTL = 30          # when the answer carries no SOA to take a minimum from
MAX_TTL = 3600
QUERY_TIMEOUT = 2.0


class ResolveError(OSError):
    """No address of an allowed family, or no name server answered."""


def system_nameservers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    servers = []
    try:
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                servers.append((parts[1], 53))
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]


@dataclass
class _Cached:
    addresses: list[str]
    expires: float


class Resolver:
    """Caching stub resolver; one per edge process."""

    def __init__(self, nameservers: list[tuple[str, int]] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.nameservers = nameservers or system_nameservers()
        self._clock = clock
        self._cache: dict[tuple[str, int], _Cached] = {}
        self._inflight: dict[tuple[str, int], asyncio.Future] = {}
        self._literal: dict[str, bool] = {}     # name -> is it an IP address already
        self.queries = 0

    def literal(self, name: str) -> bool:
        """Whether `name` is an IP address (remembered: this runs per origin request)."""
        known = self._literal.get(name)
        if known is None:
            try:
                ipaddress.ip_address(name)
                known = True
            except ValueError:
                known = False
            if len(self._literal) < 10_000:
                self._literal[name] = known
        return known

    async def resolve(self, name: str, policy: IPVersion) -> list[str]:
        """Addresses to try for `name`, in order; ResolveError when none is allowed."""
        if self.literal(name):
            return [name]
        order = {IPVersion.DEFAULT: (1,), IPVersion.V4_ONLY: (1,), IPVersion.V6_ONLY: (28,),
                 IPVersion.V4_PREFERRED: (1, 28), IPVersion.V6_PREFERRED: (28, 1)}[policy]
        for qtype in order:
            found = await self.lookup(name, qtype)
            if found:
                return found
        families = " or ".join("IPv4" if q == 1 else "IPv6" for q in order)
        raise ResolveError(f"{name} has no {families} address ({policy.value})")

    async def lookup(self, name: str, qtype: int) -> list[str]:
        """A or AAAA addresses of `name` (cached for their TTL); [] when there are none."""
        key = (name.lower().rstrip("."), qtype)
        cached = self._cache.get(key)
        if cached is not None and cached.expires > self._clock():
            return cached.addresses
        pending = self._inflight.get(key)
        if pending is not None:            # one query per name at a time
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            addresses, ttl = await self._chase(key[0], qtype)
            self._cache[key] = _Cached(addresses, self._clock() + ttl)
            future.set_result(addresses)
            return addresses
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()             # retrieved: no "never retrieved" warning
            raise
        finally:
            del self._inflight[key]

    async def _chase(self, name: str, qtype: int) -> tuple[list[str], int]:
        """Follow CNAMEs an authoritative server answers alone (up to 8 hops)."""
        ttl = MAX_TTL
        for _ in range(8):
            addresses, step_ttl, alias = await self._query(name, qtype)
            ttl = min(ttl, step_ttl)
            if addresses or alias is None:
                return addresses, ttl
            name = alias
        raise ResolveError(f"CNAME chain too long at {name}")

    async def _query(self, name: str, qtype: int) -> tuple[list[str], int, str | None]:
        request = dnslib.DNSRecord.question(name, dnslib.QTYPE[qtype])
        request.header.id = random.getrandbits(16)
        wire = bytes(request.pack())
        errors = []
        for server in self.nameservers:
            try:
                reply = await self._udp(server, wire, request.header.id)
                if reply.header.tc:
                    reply = await self._tcp(server, wire)
            except (OSError, asyncio.TimeoutError, dnslib.DNSError) as exc:
                errors.append(f"{server[0]}:{server[1]}: {exc or type(exc).__name__}")
                continue
            self.queries += 1
            if reply.header.rcode not in (dnslib.RCODE.NOERROR, dnslib.RCODE.NXDOMAIN):
                errors.append(f"{server[0]}: {dnslib.RCODE[reply.header.rcode]}")
                continue
            # Addresses of the asked type anywhere in the answer: a CNAME chain ends there.
            records = [rr for rr in reply.rr if rr.rtype == qtype]
            if records:
                ttl = min(rr.ttl for rr in reply.rr)
                return [str(rr.rdata) for rr in records], max(1, min(ttl, MAX_TTL)), None
            aliases = [rr for rr in reply.rr if rr.rtype == dnslib.QTYPE.CNAME]
            if aliases:
                return [], max(1, min(aliases[-1].ttl, MAX_TTL)), str(aliases[-1].rdata)
            soa = [rr for rr in reply.auth if rr.rtype == dnslib.QTYPE.SOA]
            negative = min(soa[0].ttl, soa[0].rdata.times[-1]) if soa else NEGATIVE_TTL
            return [], max(1, min(negative, MAX_TTL)), None
        raise ResolveError(f"no name server answered for {name}: {'; '.join(errors)}")

    async def _udp(self, server: tuple[str, int], wire: bytes, qid: int) -> dnslib.DNSRecord:
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        loop = asyncio.get_running_loop()
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, server)
            await loop.sock_sendall(sock, wire)
            async with asyncio.timeout(QUERY_TIMEOUT):
                while True:
                    data = await loop.sock_recv(sock, 65535)
                    reply = dnslib.DNSRecord.parse(data)
                    if reply.header.id == qid:
                        return reply

    async def _tcp(self, server: tuple[str, int], wire: bytes) -> dnslib.DNSRecord:
        async with asyncio.timeout(QUERY_TIMEOUT):
            reader, writer = await asyncio.open_connection(*server)
            try:
                writer.write(len(wire).to_bytes(2, "big") + wire)
                size = int.from_bytes(await reader.readexactly(2), "big")
                return dnslib.DNSRecord.parse(await reader.readexactly(size))
            finally:
                writer.close()
