"""Address blocks that origins must let in (the seed's "Whitelist IP Blocks")."""
from __future__ import annotations

import ipaddress
from typing import Iterable


def collapse(blocks: Iterable[str]) -> dict[str, list[str]]:
    """Addresses and CIDRs -> {"ipv4": [...], "ipv6": [...]}, merged into the fewest blocks."""
    nets = [ipaddress.ip_network(b, strict=False) for b in blocks]
    return {key: [str(n) for n in ipaddress.collapse_addresses(
        [n for n in nets if n.version == version])] for version, key in ((4, "ipv4"), (6, "ipv6"))}
