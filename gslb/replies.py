"""Replies built from zone data: static RRsets, negatives, CNAME chains, signed forms.

`ReplyBuilder.resolve` turns a question into a `Reply` (bytes ready for the
server) or a `Dynamic` (a service name: the server completes it with the
client's location through answers.py). Each reply is rendered twice when its
zone is signed: plainly, and for DO=1 queries with RRSIGs after each RRset
and the NSEC proofs of dnssec/denial.py in the authority section.

In-zone CNAMEs are followed (RFC 1034 4.3.2 step 3a, RFC 6604 for the
rcode): the target's records, its service answer, or its SOA (NODATA,
NXDOMAIN) join the CNAME in one response; a loop or a chain longer than
MAX_CHAIN ends with the CNAMEs gathered so far, and a target outside our
zones is left to the resolver.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from gslb.dnssec import denial
from gslb.compress import MAX_OFFSET, Writer, pointer
from gslb.dnssec.sign import ZoneSigner
from gslb.fleet.gate import OPEN, Gate
from gslb.model import Denial, RecordSet, Service, ZoneConfig
from gslb.records import RRset
from gslb.select import Selection
from gslb.wire import (
    POINTER_TO_QNAME,
    QTYPE_DNSKEY,
    QTYPE_HINFO,
    QTYPE_NS,
    QTYPE_NSEC,
    QTYPE_RRSIG,
    QTYPE_SOA,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    address_rdata,
    counts,
    encode_name,
    hinfo_rdata,
    soa_rdata,
)
from gslb.zone import Kind, Match, ZoneIndex

MAX_CHAIN = 8          # CNAMEs followed in one response


@dataclass(frozen=True, slots=True)
class Variant:
    """Everything after the question, its section counts, and the header counts."""

    body: bytes
    counts: bytes            # without OPT
    counts_opt: bytes        # with OPT
    an: int = 0
    ns: int = 0
    ar: int = 0
    # What rate limiting tells responses apart by when not the body: compressed
    # bodies differ with the question's length, the answers they carry do not.
    key: bytes = b""


def variant(answer: list[bytes], authority: list[bytes] = (),
            additional: list[bytes] = (), key: bytes = b"") -> Variant:
    an, ns, ar = len(answer), len(authority), len(additional)
    return Variant(b"".join(answer) + b"".join(authority) + b"".join(additional),
                   counts(1, an, ns, ar), counts(1, an, ns, ar + 1), an, ns, ar, key)


def content_key(items: list[Signed]) -> bytes:
    """The RRsets' content, independent of where and how compressed they are written."""
    return b"".join(r.owner + r.rtype.to_bytes(2, "big") + b"".join(r.rdatas)
                    for r, _ in items)


@dataclass(frozen=True, slots=True)
class Reply:
    rcode: int
    aa: bool
    variants: tuple[Variant, ...]
    client_dependent: bool = False      # ECS scope = decision network, else 0
    service: str | None = None
    selection: Selection | None = None
    signed: tuple[Variant, ...] | None = None   # for DO=1 when the zone is signed
    rcode_do: int | None = None         # rcode under DO when it differs (compact denial)
    nxname: bool = False                # compact denial of a name: NXDOMAIN again under CO


@dataclass(frozen=True, slots=True)
class Dynamic:
    """A service name: the answer depends on where the client is.

    `start`/`start_signed` are where the service's records begin (after the
    question and any chain, plain and signed) for name compression; `layout`
    says which replies can be shared: equal layouts mean equal starts.
    """

    service: Service
    qtype: int
    zone: ZoneConfig
    owner: bytes = POINTER_TO_QNAME     # wire owner of the service RRs (a CNAME target)
    prefix: Variant | None = None       # the CNAME chain that led here, plain ...
    prefix_signed: Variant | None = None    # ... and signed
    proof: Variant | None = None        # NSECs proving wildcard expansions (DO only)
    allowed: frozenset[str] | None = None   # a customer name: only these edges (gate.py)
    owner_signed: bytes | None = None   # the owner after the signed chain, if it differs
    layout: bytes = b""
    start: Writer | None = field(default=None, compare=False)
    start_signed: Writer | None = field(default=None, compare=False)
    proof_start: Writer | None = field(default=None, compare=False)   # this question only
    proof_items: tuple = field(default=(), compare=False)
    proofs: dict = field(default_factory=dict, compare=False)   # offset -> compressed proof

    @property
    def composed(self) -> bool:
        return self.prefix is not None or self.proof is not None

    def compose(self, v: Variant, signed: bool) -> tuple[bytes, int, int, int]:
        """(body, an, ns, ar) of the service variant `v` wrapped in chain and proof."""
        pre = self.prefix_signed if signed else self.prefix
        body = (pre.body if pre else b"") + v.body
        an, ns = v.an + (pre.an if pre else 0), v.ns
        if signed and self.proof is not None:
            body += self._proof_at(len(v.body))
            ns += self.proof.ns
        return body, an, ns, v.ar

    def _proof_at(self, offset: int) -> bytes:
        """The proof compressed where it lands: after `offset` bytes of service records
        (which add no names to point at). Rendered once per offset."""
        found = self.proofs.get(offset)
        if found is None:
            w = _writer(self.proof_start)
            w.skip(offset)
            found = self.proofs[offset] = b"".join(_emit(w, list(self.proof_items), True))
        return found


Signed = tuple[RRset, "ZoneSigner | None"]


@dataclass
class Sections:
    """RRsets of a reply before rendering; `denial` NSECs go to authority under DO only."""

    answer: list[Signed] = field(default_factory=list)
    authority: list[Signed] = field(default_factory=list)
    additional: list[Signed] = field(default_factory=list)
    denial: list[Signed] = field(default_factory=list)
    broken: bool = False        # a proof could not be made: DO answers SERVFAIL
    # Where the body starts (after the question), for name compression; plain and
    # under DO when they differ (after a chain with signatures). None: no compression.
    start: Writer | None = None
    start_signed: Writer | None = None

    def signed(self) -> bool:
        return any(s is not None for _, s in self.answer + self.authority + self.denial)


def _emit(w: Writer, items: list[Signed], sigs: bool) -> list[bytes]:
    """The records of `items` (with their RRSIGs when `sigs`), compressed by `w`."""
    out: list[bytes] = []
    for rrset, signer in items:
        owner, ttl = rrset.wire_owner, rrset.ttl
        out += [w.rr(owner, rrset.rtype, ttl, data) for data in rrset.rdatas]
        if sigs and signer is not None:
            out += [w.rr(owner, QTYPE_RRSIG, ttl, data) for data in signer.rrsig_rdatas(rrset)]
    return out


def _writer(start: Writer | None) -> Writer:
    return start.copy() if start is not None else Writer(MAX_OFFSET + 1)


def render_ends(sections: Sections) -> tuple[Variant, Variant | None, Writer, Writer]:
    """`render`, plus the writers' states after each variant (for what follows them)."""
    wp = _writer(sections.start)
    key = content_key(sections.answer + sections.authority)
    plain = variant(_emit(wp, sections.answer, False), _emit(wp, sections.authority, False),
                    _emit(wp, sections.additional, False), key)
    ws = _writer(sections.start_signed or sections.start)
    if not sections.signed() and not sections.broken:
        return plain, None, wp, ws
    if sections.broken:
        return plain, variant([]), wp, ws
    signed = variant(_emit(ws, sections.answer, True),
                     _emit(ws, sections.authority + sections.denial, True),
                     _emit(ws, sections.additional, True), key + content_key(sections.denial))
    return plain, signed, wp, ws


def render(sections: Sections) -> tuple[Variant, Variant | None]:
    """The plain variant and, when anything in it is signed, the DO variant."""
    return render_ends(sections)[:2]


def neg_ttl(zone: ZoneConfig, ttl: int | None = None) -> int:
    """RFC 2308: min(SOA TTL, SOA MINIMUM); a computed NODATA may ask for less."""
    return min(zone.soa.ttl, zone.soa.minimum, ttl if ttl is not None else zone.soa.ttl)


def soa_rrset(zone: ZoneConfig, ttl: int, wire_owner: bytes | None = None) -> RRset:
    s = zone.soa
    owner = encode_name(zone.origin)
    return RRset(owner, QTYPE_SOA, ttl, (soa_rdata(s.mname, s.rname, s.serial, s.refresh,
                                                   s.retry, s.expire, s.minimum),),
                 wire_owner or owner)


def record_rrset(rs: RecordSet, wire_owner: bytes) -> RRset:
    return RRset(encode_name(rs.name), rs.rtype, rs.ttl, rs.rdata, wire_owner)


REFUSED = Reply(RCODE_REFUSED, False, (variant([]),))


class ReplyBuilder:
    """Builds replies for one ZoneIndex and one set of zone signers."""

    def __init__(self, zones: ZoneIndex, signers: dict[str, ZoneSigner], gate: Gate = OPEN):
        self.zones = zones
        self.signers = signers
        self.gate = gate
        self._owners: dict[str, bytes] = {}      # service name -> wire owner

    def signer(self, zone: ZoneConfig | None) -> ZoneSigner | None:
        return None if zone is None else self.signers.get(zone.origin)

    # --- questions ---------------------------------------------------------------------

    def resolve(self, name: str, qtype: int, qname: bytes | None = None) -> Reply | Dynamic:
        """The reply (or Dynamic) for a normalised name; `qname` is its lower-case wire form."""
        qname = question = qname or encode_name(name)
        match = self.zones.lookup(name, qtype)
        if match.kind is Kind.REFUSED or match.zone is None:
            return REFUSED
        sections = Sections(start=Writer.after_question(question))
        wire_owner, seen = POINTER_TO_QNAME, {name}
        while match.kind is Kind.CNAME and match.records is not None:
            self._answer(sections, record_rrset(match.records, wire_owner), match, qname)
            target = match.records.text[0].lower().rstrip(".") + "."
            if (len(sections.answer) >= MAX_CHAIN or target in seen
                    or self.zones.zone_of(target) is None):
                return self._finish(RCODE_NOERROR, sections)
            seen.add(target)
            name, qname, wire_owner = target, encode_name(target), encode_name(target)
            match = self.zones.lookup(name, qtype)
        zone = match.zone
        assert zone is not None
        allowed = self.gate.allowed(name)
        if self.gate.active and match.wildcard and not allowed:
            return self._nxdomain(sections, zone, name, qname)   # no edge serves it (gate.py)
        if match.kind is Kind.SERVICE and match.service is not None:
            if allowed is not None and not allowed:
                return self._nodata(sections, match, name, qname, qtype)
            return self._dynamic(match, qtype, qname, wire_owner, sections, allowed, question)
        if match.kind is Kind.NXDOMAIN:
            return self._nxdomain(sections, zone, name, qname)
        if match.kind is Kind.ANY:
            hinfo = RRset(self._owner(match, name), QTYPE_HINFO, zone.ttl,
                          (hinfo_rdata("RFC8482", ""),), wire_owner)
            self._answer(sections, hinfo, match, qname)
            return self._finish(RCODE_NOERROR, sections)
        rrset = self._records(match, name, qtype, wire_owner)
        if rrset is None:
            return self._nodata(sections, match, name, qname, qtype)
        self._answer(sections, rrset, match, qname)
        if rrset.rtype == QTYPE_NS and name == zone.origin:
            for glue in self.zones.glue(zone.ns):
                sections.additional.append((record_rrset(glue, encode_name(glue.name)),
                                            self.signer(self.zones.zone_of(glue.name))))
        return self._finish(RCODE_NOERROR, sections)

    def _owner(self, match: Match, name: str) -> bytes:
        return encode_name(match.wildcard or name)

    def _records(self, match: Match, name: str, qtype: int, wire_owner: bytes) -> RRset | None:
        zone = match.zone
        assert zone is not None
        if match.records is not None:
            return record_rrset(match.records, wire_owner)
        if match.kind is Kind.RECORDS and qtype == QTYPE_SOA:
            return soa_rrset(zone, zone.soa.ttl, wire_owner)
        if match.kind is Kind.RECORDS and qtype == QTYPE_NS:
            return RRset(encode_name(zone.origin), QTYPE_NS, zone.soa.ttl,
                         tuple(encode_name(n) for n in zone.ns), wire_owner)
        signer = self.signer(zone)
        if qtype == QTYPE_DNSKEY and name == zone.origin and signer is not None:
            dnskey = signer.dnskey
            return RRset(dnskey.owner, dnskey.rtype, dnskey.ttl, dnskey.rdatas, wire_owner)
        return None

    def _answer(self, sections: Sections, rrset: RRset, match: Match, qname: bytes) -> None:
        """An answer RRset (signed by its zone) and, if a wildcard made it, the proof."""
        sections.answer.append((rrset, self.signer(match.zone)))
        if match.wildcard is not None:
            self._expansion(sections, match, qname)

    def _expansion(self, sections: Sections, match: Match, qname: bytes) -> None:
        signer = self.signer(match.zone)
        if signer is None or match.wildcard is None or match.zone is None:
            return
        ce = match.wildcard[2:]
        proof = denial.expansion_proof(qname, encode_name(ce),
                                       self.zones.children.get(ce, []), neg_ttl(match.zone))
        if proof is None:
            sections.broken = True
        else:
            sections.denial.append((proof, signer))

    def _finish(self, rcode: int, sections: Sections, **extra) -> Reply:
        plain, signed = render(sections)
        if sections.broken:
            extra["rcode_do"] = RCODE_SERVFAIL
        return Reply(rcode, True, (plain,), signed=(signed,) if signed else None, **extra)

    # --- negative answers --------------------------------------------------------------

    def _nodata(self, sections: Sections, match: Match, name: str, qname: bytes,
                qtype: int) -> Reply:
        zone = match.zone
        assert zone is not None
        ttl = neg_ttl(zone)
        signer = self.signer(zone)
        if qtype == QTYPE_NSEC and signer is not None and match.wildcard is None:
            # An NSEC query gets the NSEC our NODATA answers show (RFC 4035 3.1.5 spirit).
            proof = denial.at_name(encode_name(name), frozenset(
                self.zones.types_at(name, zone, True)), ttl)
            if proof is not None:
                self._answer(sections, RRset(proof.owner, QTYPE_NSEC, ttl, proof.rdatas,
                                             POINTER_TO_QNAME), match, qname)
                return self._finish(RCODE_NOERROR, sections)
        sections.authority.append((soa_rrset(zone, ttl), signer))
        if signer is not None:
            owner = match.wildcard or name
            types = self.zones.types_at(owner, zone, True) - {qtype}
            self._deny(sections, denial.at_name(encode_name(owner), frozenset(types), ttl),
                       signer)
            if match.wildcard is not None:
                self._expansion(sections, match, qname)
        return self._finish(RCODE_NOERROR, sections)

    def _nxdomain(self, sections: Sections, zone: ZoneConfig, name: str,
                  qname: bytes) -> Reply:
        ttl = neg_ttl(zone)
        signer = self.signer(zone)
        sections.authority.append((soa_rrset(zone, ttl), signer))
        if signer is None:
            return self._finish(RCODE_NXDOMAIN, sections)
        if signer.settings.denial is Denial.COMPACT:
            self._deny(sections, denial.compact_nxname(qname, ttl), signer)
            return self._finish(RCODE_NXDOMAIN, sections, rcode_do=RCODE_NOERROR, nxname=True)
        ce = self.zones.closest_encloser(name) or zone.origin
        proofs = denial.white_lies_nxdomain(qname, encode_name(ce),
                                            self.zones.children.get(ce, []), ttl)
        for proof in proofs or [None]:
            self._deny(sections, proof, signer)
        return self._finish(RCODE_NXDOMAIN, sections)

    @staticmethod
    def _deny(sections: Sections, proof: RRset | None, signer: ZoneSigner) -> None:
        if proof is None:
            sections.broken = True
        else:
            sections.denial.append((proof, signer))

    # --- services ----------------------------------------------------------------------

    def _dynamic(self, match: Match, qtype: int, qname: bytes, wire_owner: bytes,
                 chain: Sections, allowed: frozenset[str] | None = None,
                 question: bytes | None = None) -> Dynamic:
        """`qname`: the name the service matched (a CNAME target, or the question)."""
        assert match.service is not None and match.zone is not None
        question = question or qname
        prefix = prefix_signed = proof = None
        owner_signed = None
        if chain.answer:
            prefix, prefix_signed, start, start_signed = render_ends(
                Sections(answer=chain.answer, start=chain.start))
            # The service's owner is the last CNAME's target: point at it.
            at = start.names.get(qname)
            wire_owner = pointer(at) if at is not None else qname
            if prefix_signed is not None:
                at = start_signed.names.get(qname)
                owner_signed = pointer(at) if at is not None else qname
            else:
                start_signed = start
            proof_start = start_signed
            layout = (question + len(prefix.body).to_bytes(2, "big") + prefix.body
                      + (prefix_signed.body if prefix_signed is not None else b""))
        else:
            # Replies made here are shared by every question of this length that
            # matches the same name or wildcard: only the part they share is
            # pointed at.
            shared = encode_name(match.wildcard[2:]) if match.wildcard else qname
            start = start_signed = Writer.after_question(question, shared)
            layout = bytes((len(question),)) + shared
            proof_start = Writer.after_question(question)
        expansion = Sections(denial=list(chain.denial), broken=chain.broken)
        if match.wildcard is not None:
            self._expansion(expansion, match, qname)
        if expansion.denial:
            proof = variant([], _emit(Writer(MAX_OFFSET + 1), expansion.denial, True))
        return Dynamic(match.service, qtype, match.zone, wire_owner, prefix, prefix_signed,
                       proof, allowed, owner_signed, layout, start, start_signed,
                       proof_start, tuple(expansion.denial))

    def service_rrset(self, dyn: Dynamic, ttl: int, addrs: tuple[str, ...]) -> RRset:
        owner = self._owners.get(dyn.service.name)
        if owner is None:
            owner = self._owners[dyn.service.name] = encode_name(dyn.service.name)
        return RRset(owner, dyn.qtype, ttl, tuple(address_rdata(ip) for ip in addrs), dyn.owner)

    def service_reply(self, dyn: Dynamic, sel: Selection, dependent: bool) -> Reply:
        """Wire reply for a selection (NODATA when it has no addresses)."""
        zone = dyn.zone
        signer = self.signer(zone)
        name = dyn.service.name
        if not sel.variants:
            ttl = neg_ttl(zone, sel.ttl)
            start = dyn.start or Writer.after_question(encode_name(name))
            sections = Sections(authority=[(soa_rrset(zone, ttl), signer)], start=start,
                                start_signed=dyn.start_signed)
            if signer is not None:
                types = self.zones.types_at(name, zone, True) - {dyn.qtype}
                self._deny(sections, denial.at_name(encode_name(name), frozenset(types), ttl),
                           signer)
            plain, signed = render(sections)
            return Reply(RCODE_NOERROR, True, (plain,), dependent, name, sel,
                         (signed,) if signed else None)
        plains, signeds = [], []
        for addrs in sel.variants:      # the common case, kept lean: one RRset in answer
            rrset = self.service_rrset(dyn, sel.ttl, addrs)
            records = rrset.wire()      # owner a pointer, addresses: nothing to compress
            plains.append(variant(records))
            if signer is not None:
                if dyn.owner_signed is not None and dyn.owner_signed != dyn.owner:
                    rrset = replace(rrset, wire_owner=dyn.owner_signed)
                    records = rrset.wire()
                signeds.append(variant(records + signer.rrsigs(rrset)))
        return Reply(RCODE_NOERROR, True, tuple(plains), dependent, name, sel,
                     tuple(signeds) if signer is not None else None)
