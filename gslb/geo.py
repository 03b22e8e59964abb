"""Client address -> where the decision is made (location and network).

GeoIP2 City or Country databases are read with MaxMind's own reader; the
operator's `nets` overrides beat them, longest prefix first. Every answer
carries the network it was decided on, which becomes the ECS scope.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable

import maxminddb

from gslb.model import IPNetwork, Location, NetOverride
from gslb.shed import bucket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A Country database has no coordinates. Rather than treat such clients as
# unknown, place them at their continent's rough centre so `nearest` still
# sends Europe to Europe; `nets` can refine this per network.
CONTINENT_CENTRES = {
    "AF": (2.0, 21.0), "AN": (-80.0, 0.0), "AS": (34.0, 100.0), "EU": (50.0, 10.0),
    "NA": (40.0, -100.0), "OC": (-25.0, 135.0), "SA": (-15.0, -60.0),
}


class GeoError(ValueError):
    """The GeoIP database is missing, unreadable or of the wrong kind."""


def open_database(path: str) -> maxminddb.Reader:
    """Open a GeoIP2/GeoLite2 City or Country database (or a compatible one)."""
    try:
        reader = maxminddb.open_database(path)
    except FileNotFoundError:
        raise GeoError(f"GeoIP database {path} does not exist") from None
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise GeoError(f"GeoIP database {path} is not a readable MaxMind DB ({exc})") from None
    kind = reader.metadata().database_type
    if "City" not in kind and "Country" not in kind:
        reader.close()
        raise GeoError(f"GeoIP database {path} is of type {kind!r}; a City or Country "
                       "database is needed")
    return reader


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a client was placed and on which network that holds.

    `sites` is set when an operator `nets` entry names an explicit site order;
    `bucket` is the network's stable place among the shares busy sites shed
    (shed.py): every client of one network has the same.
    """

    location: Location | None
    network: IPNetwork
    source: str                      # "nets", "geoip" or "none"
    sites: tuple[str, ...] = ()
    bucket: int = 0

    @property
    def key(self) -> tuple[Any, ...]:
        """Equal for clients that every selection treats alike."""
        return (self.location, self.sites)


def _location_from_record(record: dict[str, Any]) -> Location | None:
    loc = record.get("location") or {}
    city = (record.get("city") or {}).get("names", {}).get("en", "")
    country = ((record.get("country") or record.get("registered_country") or {})
               .get("iso_code", ""))
    continent = (record.get("continent") or {}).get("code", "")
    lat, lon = loc.get("latitude"), loc.get("longitude")
    if lat is None or lon is None:
        if continent not in CONTINENT_CENTRES:
            return None
        lat, lon = CONTINENT_CENTRES[continent]
    return Location(float(lat), float(lon), city, country, continent)


def _common_prefix(a: int, b: int, bits: int) -> int:
    return bits - (a ^ b).bit_length()


class Locator:
    """Finds the Decision for an address: `nets` first, then GeoIP.

    Built once per config; lookups are cached by the server, not here.
    """

    def __init__(self, reader: maxminddb.Reader | None, nets: Iterable[NetOverride]):
        self.reader = reader
        self._nets: dict[int, dict[tuple[int, int], NetOverride]] = {4: {}, 6: {}}
        for entry in nets:
            net = entry.network
            self._nets[net.version][(net.prefixlen, int(net.network_address))] = entry
        # Longest prefix first, so the first hit is the winner.
        self._lengths = {v: sorted({p for p, _ in d}, reverse=True) for v, d in self._nets.items()}

    def _net_match(self, addr: IPAddress) -> NetOverride | None:
        bits = addr.max_prefixlen
        value = int(addr)
        table = self._nets[addr.version]
        for plen in self._lengths[addr.version]:
            mask = ((1 << plen) - 1) << (bits - plen) if plen else 0
            hit = table.get((plen, value & mask))
            if hit is not None:
                return hit
        return None

    def _narrow(self, addr: IPAddress, network: IPNetwork) -> IPNetwork:
        """Shrink `network` around `addr` until no more specific `nets` entry lies inside it.

        Otherwise a resolver caching the answer for the whole GeoIP network would
        give clients of a more specific override the wrong answer (two scopes that
        overlap would disagree).
        """
        bits = addr.max_prefixlen
        value = int(addr)
        plen = network.prefixlen
        for (mlen, mnet), _ in self._nets[addr.version].items():
            if mlen <= network.prefixlen:
                continue
            inside = _common_prefix(mnet, int(network.network_address), bits) >= network.prefixlen
            if not inside:
                continue
            common = _common_prefix(value, mnet, bits)
            if common >= mlen:
                continue  # addr is inside that entry: it would have won
            plen = max(plen, common + 1)
        if plen == network.prefixlen:
            return network
        return ipaddress.ip_network((value, plen), strict=False)

    def locate(self, addr: IPAddress) -> Decision:
        """Decide where `addr` is; never raises for a valid address."""
        override = self._net_match(addr)
        if override is not None:
            network = self._narrow(addr, override.network)
            return Decision(override.location, network, "nets", override.sites, bucket(network))
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        record, plen = None, 0
        if self.reader is not None:
            record, plen = self.reader.get_with_prefix_len(addr)
        network = self._narrow(addr, ipaddress.ip_network((int(addr), plen), strict=False))
        location = _location_from_record(record) if isinstance(record, dict) else None
        if location is None:
            return Decision(None, network, "none" if self.reader is None or record is None
                            else "geoip", (), bucket(network))
        return Decision(location, network, "geoip", (), bucket(network))

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
