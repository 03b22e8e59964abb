"""Online DNSSEC signing of the precomputed answers (RFC 4033-4035).

A `ZoneSigner` signs RRsets of one zone for one signing period with the keys
that are active in it. It is used when answer tables are built (config,
health or key change, and at each period boundary), never per query: the
RRSIGs end up inside the precomputed wire answers. Signatures are cached by
RRset content, so a table rebuilt after a health change re-signs only RRsets
it has not seen in this period.

Signing periods are aligned to multiples of `refresh` since the epoch, and
ECDSA signatures are deterministic (RFC 6979): every worker and every name
server sharing the key directory produces byte-identical RRSIGs.

The RRSIG signature input (RFC 4034 3.1.8.1: RRSIG rdata without the
signature, then the RRset's records in canonical form and order) is
assembled here rather than through dnspython's `dns.dnssec.sign`, which costs
about 80 us of object handling per signature on top of 20 us of ECDSA; 10k
services need tens of thousands of signatures at start. Rdata with embedded
names is put in canonical form by dnspython, and tests check our RRSIGs
with `dns.dnssec.validate` and with unbound and delv.
"""
from __future__ import annotations

import struct
from typing import Callable

import dns.rdata
import dns.rdataclass

from . import dnssec_keys
from .model import DnssecKey, DnssecSettings
from .records import RRset, label_count
from .wire import CLASS_IN, QTYPE_DNSKEY, QTYPE_RRSIG, encode_name, rr

CLOCK_SKEW = 3600        # inception this far in the past: validators with slow clocks
# Types whose rdata holds names that canonical form lower-cases (RFC 4034 6.2, RFC 6840 5.1)
NAME_TYPES = frozenset({2, 5, 6, 12, 15, 33})


def canonical_rdata(rtype: int, rdata: bytes) -> bytes:
    """Rdata in DNSSEC canonical form (names inside it lower-cased)."""
    if rtype not in NAME_TYPES:
        return rdata
    parsed = dns.rdata.from_wire(dns.rdataclass.IN, rtype, rdata, 0, len(rdata))
    return parsed.to_digestable()


def period_start(now: float, settings: DnssecSettings) -> int:
    return int(now) // settings.refresh * settings.refresh


def next_event(settings: DnssecSettings, now: float) -> int:
    """When the signing state changes next: the period ends or a key timing field passes."""
    events = [period_start(now, settings) + settings.refresh]
    for key in settings.keys:
        events += [t for t in (key.publish, key.activate, key.inactive, key.delete)
                   if t is not None and t > now]
    return min(events)


def key_state(settings: DnssecSettings, now: float) -> tuple:
    """What decides the signatures: equal states sign alike (deterministic ECDSA)."""
    return (period_start(now, settings),
            tuple((k.tag, k.published(now), k.signing(now)) for k in settings.keys))


class ZoneSigner:
    """RRSIGs for one zone and one signing period."""

    def __init__(self, origin: str, settings: DnssecSettings, now: float):
        start = period_start(now, settings)
        self.origin = origin
        self.settings = settings
        self.state = key_state(settings, now)
        self.inception = start - CLOCK_SKEW
        self.expiration = start + settings.validity
        self.next_event = next_event(settings, now)
        active = [k for k in settings.keys if k.signing(now)]
        self.ksks = [k for k in active if k.flags == dnssec_keys.KSK_FLAGS]
        self.zsks = [k for k in active if k.flags == dnssec_keys.ZSK_FLAGS]
        if settings.csk:
            self.zsks = self.ksks + self.zsks
        self._sign: dict[int, Callable[[bytes], bytes]] = {
            k.tag: dnssec_keys.signer(k.algorithm, k.private) for k in active}
        self._signer_name = encode_name(origin)
        published = [k for k in settings.keys if k.published(now)]
        self.dnskey = RRset(self._signer_name, QTYPE_DNSKEY, settings.dnskey_ttl,
                            tuple(dnssec_keys.dnskey_rdata(k) for k in published))
        self._cache: dict[tuple, tuple[bytes, ...]] = {}
        self.signatures = 0      # made, not served from the cache

    def rrsigs(self, rrset: RRset) -> list[bytes]:
        """The RRSIG records covering `rrset`, in wire form with the same wire owner."""
        key = (rrset.owner, rrset.rtype, rrset.ttl, rrset.rdatas)
        rdatas = self._cache.get(key)
        if rdatas is None:
            rdatas = self._cache[key] = self._make(rrset)
        return [rr(rrset.wire_owner, QTYPE_RRSIG, rrset.ttl, data) for data in rdatas]

    def _make(self, rrset: RRset) -> tuple[bytes, ...]:
        keys: list[DnssecKey] = self.ksks if rrset.rtype == QTYPE_DNSKEY else self.zsks
        fixed = rrset.owner + struct.pack("!HHI", rrset.rtype, CLASS_IN, rrset.ttl)
        records = b"".join(fixed + struct.pack("!H", len(d)) + d for d in sorted(
            {canonical_rdata(rrset.rtype, d) for d in rrset.rdatas}))
        labels = label_count(rrset.owner)
        out = []
        for k in keys:
            head = struct.pack("!HBBIIIH", rrset.rtype, k.algorithm, labels, rrset.ttl,
                               self.expiration & 0xFFFFFFFF, self.inception & 0xFFFFFFFF,
                               k.tag) + self._signer_name
            out.append(head + self._sign[k.tag](head + records))
            self.signatures += 1
        return tuple(out)


def signers(zones, now: float, previous: dict[str, ZoneSigner] | None = None
            ) -> dict[str, ZoneSigner]:
    """A signer per signed zone; one whose keys, settings and period are unchanged is kept
    (with its cache of signatures)."""
    out: dict[str, ZoneSigner] = {}
    for zone in zones:
        if zone.dnssec is None:
            continue
        old = (previous or {}).get(zone.origin)
        if old is not None and old.settings == zone.dnssec \
                and old.state == key_state(zone.dnssec, now):
            out[zone.origin] = old
        else:
            out[zone.origin] = ZoneSigner(zone.origin, zone.dnssec, now)
    return out
