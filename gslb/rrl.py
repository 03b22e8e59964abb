"""Response rate limiting (RRL), in the manner of BIND and Knot.

A token bucket per (client network, response identity): the identity is the
response's body (the same answer RRset, or the zone's SOA for every NXDOMAIN
and NODATA of that zone, or nothing for REFUSED and errors), so a flood of
random names costs one bucket, not one per name. A limited response is
dropped, except every `slip`-th, which goes out truncated (TC=1, no records):
a real resolver behind a spoofed-looking network retries over TCP, which is
never limited. Only UDP is limited; clients with a valid EDNS server cookie
are exempt (their address cannot be spoofed).
"""
from __future__ import annotations

import ipaddress

from gslb.model import RateLimit

SEND, DROP, SLIP = 0, 1, 2
PRUNE_AT = 200_000


class RateLimiter:
    """Decides per UDP response: send, drop or slip. `now` is set by the caller per batch."""

    def __init__(self, settings: RateLimit):
        self.settings = settings
        self.rate = settings.responses_per_second
        self.burst = max(1.0, settings.responses_per_second)
        self.slip = settings.slip
        self.v4_shift = 32 - settings.ipv4_prefix
        self.v6_shift = 128 - settings.ipv6_prefix
        self.now = 0.0
        self._networks: dict[str, int] = {}
        # bucket -> [tokens, last refill, limited responses so far]
        self._buckets: dict[tuple[int, object], list[float]] = {}
        self.limited = self.dropped = self.slipped = 0

    def _network(self, client: str) -> int:
        net = self._networks.get(client)
        if net is None:
            addr = ipaddress.ip_address(client.split("%", 1)[0])
            if addr.version == 4:
                net = int(addr) >> self.v4_shift
            else:
                net = (int(addr) >> self.v6_shift) | (1 << 128)   # never equal to a v4 key
            if len(self._networks) >= PRUNE_AT:
                self._networks.clear()
            self._networks[client] = net
        return net

    def check(self, client: str, identity: object) -> int:
        """SEND, DROP or SLIP for one response of `identity` to `client`."""
        key = (self._network(client), identity)
        bucket = self._buckets.get(key)
        now = self.now
        if bucket is None:
            if len(self._buckets) >= PRUNE_AT:
                self.prune()
            self._buckets[key] = [self.burst - 1.0, now, 0.0]
            return SEND
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return SEND
        bucket[0] = tokens
        bucket[2] += 1
        self.limited += 1
        if self.slip and bucket[2] % self.slip == 0:
            self.slipped += 1
            return SLIP
        self.dropped += 1
        return DROP

    def prune(self) -> None:
        """Forget buckets that have refilled completely (they behave as new ones)."""
        full = self.burst / self.rate
        now = self.now
        self._buckets = {k: b for k, b in self._buckets.items() if now - b[1] < full}

    def counts(self) -> dict[str, int]:
        return {"limited": self.limited, "dropped": self.dropped, "slipped": self.slipped}
