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

import os
import pickle
import struct
from typing import Callable

from gslb.model import KSK_FLAGS, ZSK_FLAGS, DnssecKey, DnssecSettings
from gslb.records import RRset, label_count
from gslb.wire import CLASS_IN, QTYPE_DNSKEY, QTYPE_RRSIG, encode_name, rr

PARALLEL_MIN = 4000      # fewer RRsets than this are signed in-process
CLOCK_SKEW = 3600        # inception this far in the past: validators with slow clocks
# Types whose rdata holds names that canonical form lower-cases (RFC 4034 6.2, RFC 6840 5.1)
NAME_TYPES = frozenset({2, 5, 6, 12, 15, 33})


def canonical_rdata(rtype: int, rdata: bytes) -> bytes:
    """Rdata in DNSSEC canonical form (names inside it lower-cased)."""
    if rtype not in NAME_TYPES:
        return rdata
    import dns.rdata  # deferred, like every DNSSEC library: unsigned zones skip them
    import dns.rdataclass
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
        from gslb.dnssec import keys as dnssec_keys
        start = period_start(now, settings)
        self.origin = origin
        self.settings = settings
        self.state = key_state(settings, now)
        self.inception = start - CLOCK_SKEW
        self.expiration = start + settings.validity
        self.next_event = next_event(settings, now)
        active = [k for k in settings.keys if k.signing(now)]
        self.ksks = [k for k in active if k.flags == KSK_FLAGS]
        self.zsks = [k for k in active if k.flags == ZSK_FLAGS]
        if settings.csk:
            self.zsks = self.ksks + self.zsks
        sign = {k.tag: dnssec_keys.signer(k.algorithm, k.private) for k in active}
        self._signer_name = encode_name(origin)

        def parts(k: DnssecKey) -> tuple[bytes, bytes, Callable[[bytes], bytes]]:
            # What every RRSIG of this key shares, besides type, labels and TTL.
            return (bytes((k.algorithm,)), struct.pack("!IIH", self.expiration & 0xFFFFFFFF,
                                                       self.inception & 0xFFFFFFFF, k.tag)
                    + self._signer_name, sign[k.tag])
        self._dnskey_signers = [parts(k) for k in self.ksks]
        self._zone_signers = [parts(k) for k in self.zsks]
        published = [k for k in settings.keys if k.published(now)]
        self.dnskey = RRset(self._signer_name, QTYPE_DNSKEY, settings.dnskey_ttl,
                            tuple(dnssec_keys.dnskey_rdata(k) for k in published))
        self._cache: dict[tuple, tuple[bytes, ...]] = {}
        self._labels: dict[bytes, int] = {}
        self.signatures = 0      # made, not served from the cache

    def presign(self, rrset: RRset) -> None:
        """Sign `rrset` now (if not yet), so a later answer finds the signature made."""
        key = (rrset.owner, rrset.rtype, rrset.ttl, rrset.rdatas)
        if key not in self._cache:
            self._cache[key] = self._make(rrset)

    def sign_all(self, rrsets: list[RRset], processes: int = 1) -> None:
        """Presign many RRsets, in `processes` forked children when there are enough.

        Signing is CPU-bound and the crypto holds the GIL, so more cores need more
        processes; a fork shares the keys and the work list without copying them.
        Call it only while the process has no other threads doing I/O.
        """
        todo = list({(r.owner, r.rtype, r.ttl, r.rdatas): r for r in rrsets
                     if (r.owner, r.rtype, r.ttl, r.rdatas) not in self._cache}.items())
        if processes <= 1 or len(todo) < PARALLEL_MIN:
            for key, rrset in todo:
                self._cache[key] = self._make(rrset)
            return
        children = []
        for part in range(processes):
            chunk = todo[part::processes]
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:                                   # child: sign, send, vanish
                os.close(read)
                try:
                    with os.fdopen(write, "wb") as out:
                        pickle.dump([self._make(r) for _, r in chunk], out, pickle.HIGHEST_PROTOCOL)
                finally:
                    os._exit(0)
            os.close(write)
            children.append((pid, read, chunk))
        for pid, read, chunk in children:
            with os.fdopen(read, "rb") as src:
                try:
                    signed = pickle.load(src)
                except EOFError:
                    signed = [self._make(r) for _, r in chunk]   # the child died: do it here
            os.waitpid(pid, 0)
            for (key, _), rdatas in zip(chunk, signed):
                self._cache[key] = rdatas
            self.signatures += sum(len(r) for r in signed)

    def export(self) -> tuple[tuple, bytes]:
        """The signatures made so far, for another process with the same keys and period.

        One flat byte string rather than the dict: pickling 60k small tuples costs
        more than the whole blob takes to build and to read back.
        """
        out = []
        for (owner, rtype, ttl, rdatas), sigs in self._cache.items():
            out.append(struct.pack("!B", len(owner)) + owner
                       + struct.pack("!HIHH", rtype, ttl, len(rdatas), len(sigs)))
            out += [struct.pack("!H", len(d)) + d for d in rdatas + sigs]
        return self.state, b"".join(out)

    def adopt(self, exported: tuple[tuple, bytes] | None) -> bool:
        """Take over another signer's signatures if they were made for our state."""
        if exported is None or exported[0] != self.state:
            return False
        blob, i, n, cache = exported[1], 0, len(exported[1]), self._cache
        unpack = struct.unpack_from
        while i < n:
            size = blob[i]
            owner = blob[i + 1:i + 1 + size]
            rtype, ttl, count, nsigs = unpack("!HIHH", blob, i + 1 + size)
            i += size + 11
            fields = []
            for _ in range(count + nsigs):
                length = (blob[i] << 8) | blob[i + 1]
                fields.append(blob[i + 2:i + 2 + length])
                i += 2 + length
            cache[(owner, rtype, ttl, tuple(fields[:count]))] = tuple(fields[count:])
        return True

    def rrsigs(self, rrset: RRset) -> list[bytes]:
        """The RRSIG records covering `rrset`, in wire form with the same wire owner."""
        return [rr(rrset.wire_owner, QTYPE_RRSIG, rrset.ttl, data)
                for data in self.rrsig_rdatas(rrset)]

    def rrsig_rdatas(self, rrset: RRset) -> tuple[bytes, ...]:
        """The RRSIG rdatas covering `rrset` (made now if not yet), for a compressing writer."""
        key = (rrset.owner, rrset.rtype, rrset.ttl, rrset.rdatas)
        rdatas = self._cache.get(key)
        if rdatas is None:
            rdatas = self._cache[key] = self._make(rrset)
        return rdatas

    def _make(self, rrset: RRset) -> tuple[bytes, ...]:
        keys = self._dnskey_signers if rrset.rtype == QTYPE_DNSKEY else self._zone_signers
        fixed = rrset.owner + struct.pack("!HHI", rrset.rtype, CLASS_IN, rrset.ttl)
        rdatas = rrset.rdatas
        if len(rdatas) == 1 and rrset.rtype not in NAME_TYPES:   # most service answers
            records = fixed + struct.pack("!H", len(rdatas[0])) + rdatas[0]
        else:
            records = b"".join(fixed + struct.pack("!H", len(d)) + d for d in sorted(
                {canonical_rdata(rrset.rtype, d) for d in rdatas}))
        labels = self._labels.get(rrset.owner)
        if labels is None:
            labels = self._labels[rrset.owner] = label_count(rrset.owner)
        lead = struct.pack("!HBI", rrset.rtype, labels, rrset.ttl)
        out = []
        for algorithm, rest, sign in keys:
            head = lead[:2] + algorithm + lead[2:] + rest
            out.append(head + sign(head + records))
        self.signatures += len(keys)
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
