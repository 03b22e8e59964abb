"""DNSSEC online signing: keys and their files, every answer kind signed and valid,
denial without zone walking, signing ahead of queries, rollovers."""
from __future__ import annotations

import os
import stat
import time

import dns.dnssec
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from cdnkit.check import ConfigError
from gslb.config import load_config
from gslb.health import HealthBoard
from gslb.model import AdminState
from gslb.server import TCP_LIMIT, UDP_PLAIN_LIMIT, Responder
from tests.conftest import write_config
from tests.gslb.signed import ZONE, check_signed, do_query, gslb, make_signed, signed_dict

SHOP = "www.shop.com.cdn.example.net."


def answer(r: Responder, name: str, qtype: str, ecs: str | None = None, co: bool = False,
           limit: int = TCP_LIMIT, payload: int = 1232) -> dns.message.Message:
    out = r.answer(do_query(name, qtype, ecs, co, payload), "10.1.1.1", limit)
    return dns.message.from_wire(out)


def dnskeys(r: Responder) -> dns.rrset.RRset:
    msg = answer(r, ZONE, "DNSKEY")
    check = msg.find_rrset(msg.answer, dns.name.from_text(ZONE), 1, dns.rdatatype.DNSKEY)
    return check


# --- keys -------------------------------------------------------------------------------


def test_init_makes_private_files_0600_and_ds_matches_the_served_dnskey(tmp_path):
    path = make_signed(tmp_path)
    privates = sorted((tmp_path / "keys").glob("*.private"))
    assert len(privates) == 2
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in privates)
    again = gslb("dnssec", "init", ZONE, "-c", str(path), check=False)
    assert again.returncode == 1 and "already has keys" in again.stderr
    ds_lines = [line for line in gslb("dnssec", "ds", ZONE, "-c", str(path)).stdout.splitlines()
                if " DS " in line]
    assert len(ds_lines) == 1
    r = Responder(load_config(path))
    keys = dnskeys(r)
    ksk = next(k for k in keys if k.flags == 257)
    assert ds_lines[0].split(" DS ")[1] == str(dns.dnssec.make_ds(ZONE, ksk, "SHA256"))
    secrets = [line for p in privates for line in p.read_text().splitlines()
               if line.startswith("PrivateKey:")]
    shown = repr(load_config(path)) + gslb("dnssec", "keys", ZONE, "-c", str(path)).stdout
    assert all(s.split()[1] not in shown for s in secrets)


def test_keys_readable_by_others_or_missing_are_config_errors(tmp_path):
    path = write_config(tmp_path, signed_dict(tmp_path / "keys"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any("gslb dnssec init" in p for p in err.value.problems)
    gslb("dnssec", "init", ZONE, "-c", str(path))
    private = next((tmp_path / "keys").glob("*.private"))
    os.chmod(private, 0o644)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any("readable by others" in p and "gslb.yaml:" in p for p in err.value.problems)


def test_refresh_must_leave_signatures_valid_past_every_ttl(tmp_path):
    cfg = signed_dict(tmp_path / "keys")
    cfg["zones"][ZONE]["dnssec"].update(signature_validity="2d", signature_refresh="3d")
    cfg["zones"][ZONE]["dnssec"]["denial"] = "black_lies"
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, cfg))
    text = "\n".join(err.value.problems)
    assert "must be shorter than signature_validity" in text
    assert "black_lies" in text and "compact, white_lies" in text


# --- every answer kind is signed and validates -------------------------------------------


KINDS = [
    ("apex SOA", ZONE, "SOA", None, 0),
    ("apex NS", ZONE, "NS", None, 0),
    ("static TXT", ZONE, "TXT", None, 0),
    ("static A", "static.cdn.example.net.", "A", None, 0),
    ("service A (NYC net)", SHOP, "A", "192.0.2.0/24", 0),
    ("service AAAA (SIN net)", SHOP, "AAAA", "2001:db8:5::/48", 0),
    ("exact service", "www.cdn.example.net.", "A", "198.51.100.0/24", 0),
    ("TXT next to a service", "www.cdn.example.net.", "TXT", None, 0),
    ("CNAME to static", "to-static.cdn.example.net.", "A", None, 0),
    ("CNAME to wildcard service", "alias.cdn.example.net.", "AAAA", "203.0.113.0/24", 0),
    ("NODATA", "ns2.cdn.example.net.", "AAAA", None, 0),
    ("empty non-terminal", "deep.cdn.example.net.", "A", None, 0),
    ("wildcard NODATA", SHOP, "MX", None, 0),
    ("NXDOMAIN", "nope.static.cdn.example.net.", "A", None, 3),
]


@pytest.mark.parametrize("denial", ["compact", "white_lies"])
@pytest.mark.parametrize("algorithm", ["ecdsap256sha256", "ed25519"])
def test_every_answer_kind_is_signed_and_valid(tmp_path, denial, algorithm):
    r = Responder(load_config(make_signed(tmp_path, denial=denial, algorithm=algorithm)))
    keys = dnskeys(r)
    assert len(keys) == 2
    for label, name, qtype, ecs, nx in KINDS:
        msg = answer(r, name, qtype, ecs)
        assert check_signed(msg, keys) >= 1, label
        if nx and denial == "white_lies":
            assert msg.rcode() == dns.rcode.NXDOMAIN, label
        elif nx:
            assert msg.rcode() == dns.rcode.NOERROR, label     # RFC 9824: NODATA + NXNAME
        else:
            assert msg.rcode() == dns.rcode.NOERROR, label
    nyc = answer(r, SHOP, "A", "192.0.2.0/24").answer[0]
    sin = answer(r, SHOP, "A", "203.0.113.0/24").answer[0]
    assert [x.address for x in nyc] == ["127.0.0.11"] and [x.address for x in sin] == \
        ["127.0.0.13"]


def test_unsigned_queries_get_no_dnssec_records(tmp_path):
    r = Responder(load_config(make_signed(tmp_path)))
    plain = dns.message.make_query(SHOP, "A", use_edns=0)
    msg = dns.message.from_wire(r.answer(plain.to_wire(), "10.1.1.1", UDP_PLAIN_LIMIT))
    assert [x.rdtype for x in msg.answer] == [dns.rdatatype.A] and not msg.authority
    nx = dns.message.make_query("nope.static.cdn.example.net.", "A", use_edns=0)
    msg = dns.message.from_wire(r.answer(nx.to_wire(), "10.1.1.1", UDP_PLAIN_LIMIT))
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert [x.rdtype for x in msg.authority] == [dns.rdatatype.SOA]


def nsecs(msg: dns.message.Message) -> list[dns.rrset.RRset]:
    return [x for x in msg.authority if x.rdtype == dns.rdatatype.NSEC]


def test_compact_denial_nxname_and_the_co_flag(tmp_path):
    r = Responder(load_config(make_signed(tmp_path, denial="compact")))
    name = "nope.static.cdn.example.net."
    msg = answer(r, name, "A")
    [proof] = nsecs(msg)
    assert str(proof.name) == name and str(proof[0].next) == "\\000." + name
    assert 128 in [t for w, bits in proof[0].windows for t in _types(w, bits)]
    with_co = answer(r, name, "A", co=True)
    assert with_co.rcode() == dns.rcode.NXDOMAIN and with_co.ednsflags & 0x4000
    assert check_signed(with_co, dnskeys(r)) >= 2
    nxname = dns.message.make_query(name, 128, use_edns=0)
    out = dns.message.from_wire(r.answer(nxname.to_wire(), "10.1.1.1", UDP_PLAIN_LIMIT))
    assert out.rcode() == dns.rcode.FORMERR


def test_an_nsec_query_gets_the_nsec_in_the_answer(tmp_path):
    r = Responder(load_config(make_signed(tmp_path)))
    msg = answer(r, "ns1.cdn.example.net.", "NSEC")
    [nsec] = [x for x in msg.answer if x.rdtype == dns.rdatatype.NSEC]
    assert str(nsec.name) == "ns1.cdn.example.net." and not msg.authority
    assert {dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.NSEC} <= set(
        t for w, bits in nsec[0].windows for t in _types(w, bits))
    assert check_signed(msg, dnskeys(r)) == 1


def _types(window: int, bits: bytes) -> list[int]:
    return [window * 256 + i * 8 + j for i, b in enumerate(bits) for j in range(8)
            if b & (0x80 >> j)]


@pytest.mark.parametrize("denial", ["compact", "white_lies"])
def test_denials_never_reveal_other_names(tmp_path, denial):
    """No zone walking: no NSEC owner or next name is a name of the zone, except the
    queried name itself and the wildcard (which every wildcard answer shows anyway)."""
    path = make_signed(tmp_path, denial=denial)
    config = load_config(path)
    r = Responder(config)
    existing = set(r.engine.zones.existing)
    for name, qtype in (("nope.static.cdn.example.net.", "A"), ("a.cdn.example.net.", "TXT"),
                        ("nx.ns1.cdn.example.net.", "A"), ("zzz.cdn.example.net.", "MX"),
                        ("ns1.cdn.example.net.", "TXT"), (SHOP, "TXT")):
        for proof in nsecs(answer(r, name, qtype)):
            for shown in (proof.name.to_text(), proof[0].next.to_text()):
                if shown in existing:
                    assert shown in (name, "*.cdn.example.net."), (name, shown)


def test_wildcard_answers_share_signatures_and_proofs_by_next_closer_name(tmp_path):
    r = Responder(load_config(make_signed(tmp_path)))
    signer = r.signers[ZONE]
    a = answer(r, "www.shop.com.cdn.example.net.", "A", "192.0.2.0/24")
    made = signer.signatures
    b = answer(r, "img.other.com.cdn.example.net.", "A", "192.0.2.0/24")
    assert signer.signatures == made     # same RRset signature, same proof for "com"
    sig_a = [x for x in a.answer if x.rdtype == dns.rdatatype.RRSIG][0][0]
    sig_b = [x for x in b.answer if x.rdtype == dns.rdatatype.RRSIG][0][0]
    assert sig_a == sig_b and sig_a.labels == 3    # RFC 4035: the wildcard's label count
    answer(r, "cdn.shop.io.cdn.example.net.", "A", "192.0.2.0/24")
    assert signer.signatures == made + 1          # one NSEC for the next closer name "io"


def test_service_answers_are_signed_ahead_not_per_query(tmp_path):
    r = Responder(load_config(make_signed(tmp_path)))
    signer = r.signers[ZONE]
    answer(r, "warm.com.cdn.example.net.", "A")     # the proof for "com"
    made = signer.signatures
    nets = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8:5::/48",
            "9.9.9.0/24", "100.64.0.0/24"]
    for net in nets:
        for qtype in ("A", "AAAA"):
            for name in ("x.com.cdn.example.net.", "www.cdn.example.net."):
                msg = answer(r, name, qtype, net)
                # www is v4 only: its AAAA is a (signed) NODATA
                assert msg.answer or (name.startswith("www") and qtype == "AAAA")
                assert check_signed(msg, dnskeys(r)) >= 1
    assert signer.signatures == made, "every address set a site can give was presigned"


def test_health_change_rebuilds_signed_answers_before_the_next_query(tmp_path):
    config = load_config(make_signed(tmp_path))
    r = Responder(config)
    board = HealthBoard(config)
    board.subscribe(r.set_health)
    before = answer(r, SHOP, "A", "192.0.2.0/24")
    assert [x.address for x in before.answer[0]] == ["127.0.0.11"]
    signer = r.signers[ZONE]
    made = signer.signatures
    board.set_site("nyc", AdminState.DOWN)
    # The rebuilt table already holds the signed reply for that client, before any query.
    ready = [reply for key, reply in r.table.dynamic.items()
             if key[0] == "*.cdn.example.net." and key[1] == 1]
    assert ready and all(bytes([127, 0, 0, 12]) in reply.signed[0].body for reply in ready)
    after = answer(r, SHOP, "A", "192.0.2.0/24")
    assert [x.address for x in after.answer[0]] == ["127.0.0.12"]
    assert check_signed(after, dnskeys(r)) == 2
    assert signer.signatures == made


def test_two_servers_with_the_same_keys_sign_byte_identically(tmp_path):
    path = make_signed(tmp_path)
    one, two = Responder(load_config(path)), Responder(load_config(path))
    for name, qtype in ((SHOP, "A"), (ZONE, "DNSKEY"), ("nope.static.cdn.example.net.", "A")):
        wire = do_query(name, qtype, "192.0.2.0/24")
        assert one.answer(wire, "10.1.1.1", TCP_LIMIT) == two.answer(wire, "10.1.1.1", TCP_LIMIT)


def test_signed_answer_too_big_for_udp_is_truncated_and_whole_over_tcp(tmp_path):
    r = Responder(load_config(make_signed(tmp_path)))
    udp = r.answer(do_query(ZONE, "NS", payload=512), "10.1.1.1", UDP_PLAIN_LIMIT)
    assert len(udp) <= 512 and udp[2] & 0x02
    tcp = dns.message.from_wire(r.answer(do_query(ZONE, "NS", payload=512), "10.1.1.1",
                                         TCP_LIMIT))
    assert tcp.flags & 0x0200 == 0 and check_signed(tcp, dnskeys(r)) == 1
    assert len(tcp.additional) >= 3   # glue and its signatures


# --- rollovers ---------------------------------------------------------------------------


def signing_tags(msg: dns.message.Message, covered: int) -> set[int]:
    return {sig.key_tag for rrset in msg.answer if rrset.rdtype == dns.rdatatype.RRSIG
            and rrset.covers == covered for sig in rrset}


def test_zsk_prepublish_rollover(tmp_path):
    path = make_signed(tmp_path)
    old = Responder(load_config(path))
    old_zsk = next(k.tag for k in old.signers[ZONE].zsks)
    gslb("dnssec", "add", ZONE, "-c", str(path), "--role", "zsk", "--publish", "now",
         "--activate", "+2h")
    gslb("dnssec", "schedule", ZONE, str(old_zsk), "-c", str(path), "--inactive", "+2h",
         "--delete", "+4h")
    now = time.time()
    r = Responder(load_config(path))            # after `gslb reload`
    keys = dnskeys(r)
    assert len(keys) == 3                       # 1. the new ZSK is published, not yet used
    assert signing_tags(answer(r, SHOP, "A"), 1) == {old_zsk}
    assert r.resign(now + 2 * 3600 + 1)         # 2. after the DNSKEY TTL: it signs
    new_zsk = next(k.tag for k in r.signers[ZONE].zsks)
    msg = answer(r, SHOP, "A")
    assert signing_tags(msg, 1) == {new_zsk} != {old_zsk}
    assert len(dnskeys(r)) == 3                 # the old one stays while its RRSIGs may live
    check_signed(msg, keys, now=now + 2 * 3600 + 1)
    assert r.resign(now + 4 * 3600 + 1)         # 3. and is removed
    assert {k.key_tag if hasattr(k, "key_tag") else dns.dnssec.key_id(k)
            for k in dnskeys(r)} == {dns.dnssec.key_id(k) for k in keys
                                     if dns.dnssec.key_id(k) != old_zsk}


def test_ksk_double_signature_rollover(tmp_path):
    path = make_signed(tmp_path)
    old_ksk = next(k.tag for k in Responder(load_config(path)).signers[ZONE].ksks)
    gslb("dnssec", "add", ZONE, "-c", str(path), "--role", "ksk")
    r = Responder(load_config(path))
    dnskey_sigs = signing_tags(answer(r, ZONE, "DNSKEY"), dns.rdatatype.DNSKEY)
    assert len(dnskey_sigs) == 2 and old_ksk in dnskey_sigs    # both KSKs sign DNSKEY
    ds = [line for line in gslb("dnssec", "ds", ZONE, "-c", str(path)).stdout.splitlines()
          if " DS " in line]
    assert len(ds) == 2                          # the new DS goes to the parent
    gslb("dnssec", "schedule", ZONE, str(old_ksk), "-c", str(path), "--inactive", "now",
         "--delete", "now")
    r = Responder(load_config(path))
    new_ksk = (dnskey_sigs - {old_ksk}).pop()
    assert signing_tags(answer(r, ZONE, "DNSKEY"), dns.rdatatype.DNSKEY) == {new_ksk}
    assert {k.flags for k in dnskeys(r)} == {256, 257} and len(dnskeys(r)) == 2
    assert check_signed(answer(r, SHOP, "A"), dnskeys(r)) == 2


def test_a_new_signing_period_resigns_everything_before_queries(tmp_path):
    path = make_signed(tmp_path)
    config = load_config(path)
    r = Responder(config)
    first = answer(r, SHOP, "A", "192.0.2.0/24")
    refresh = config.zones[0].dnssec.refresh
    assert r.next_signing_event() <= time.time() + refresh
    assert r.resign(time.time() + refresh)            # the timer's call at the boundary
    signer = r.signers[ZONE]
    made = signer.signatures
    assert made > 10                                  # presigned again, for the new period
    later = answer(r, SHOP, "A", "192.0.2.0/24")
    assert signer.signatures == made                  # the query found it signed
    old_sig = [x for x in first.answer if x.rdtype == dns.rdatatype.RRSIG][0][0]
    new_sig = [x for x in later.answer if x.rdtype == dns.rdatatype.RRSIG][0][0]
    assert new_sig.inception == old_sig.inception + refresh
    assert new_sig.expiration == old_sig.expiration + refresh
    assert check_signed(later, dnskeys(r), now=time.time() + refresh) == 2
    assert not r.resign(time.time() + refresh + 1)    # nothing changed since


def test_a_single_combined_signing_key(tmp_path):
    path = make_signed(tmp_path, keys="csk")
    assert len(list((tmp_path / "keys").glob("*.private"))) == 1
    r = Responder(load_config(path))
    keys = dnskeys(r)
    [csk] = [dns.dnssec.key_id(k) for k in keys]
    assert {k.flags for k in keys} == {257}
    for name, qtype, ecs in ((SHOP, "A", "192.0.2.0/24"), (ZONE, "DNSKEY", None),
                             ("nope.static.cdn.example.net.", "A", None)):
        msg = answer(r, name, qtype, ecs)
        assert check_signed(msg, keys) >= 1
        assert {s.key_tag for x in msg.answer + msg.authority
                if x.rdtype == dns.rdatatype.RRSIG for s in x} == {csk}


def test_workers_adopt_the_supervisors_signatures_and_sign_nothing(tmp_path):
    from gslb.responder import presigned
    cfg = signed_dict(tmp_path / "keys")
    cfg["zones"][ZONE]["records"]["many"] = [
        {"type": "TXT", "values": [f"v{i}" for i in range(300)]}]   # > 255 rdatas in one set
    path = write_config(tmp_path, cfg)
    gslb("dnssec", "init", ZONE, "-c", str(path))
    config = load_config(path)
    signatures = presigned(config, processes=2)
    worker, alone = Responder(config, None, signatures), Responder(config)
    assert worker.signers[ZONE].signatures == 0 < alone.signers[ZONE].signatures
    for name, qtype, ecs in ((SHOP, "A", "192.0.2.0/24"), (SHOP, "AAAA", "203.0.113.0/24"),
                             ("many.cdn.example.net.", "TXT", None), (ZONE, "DNSKEY", None),
                             ("www.cdn.example.net.", "A", None)):
        wire = do_query(name, qtype, ecs)
        assert worker.answer(wire, "10.1.1.1", TCP_LIMIT) == alone.answer(wire, "10.1.1.1",
                                                                          TCP_LIMIT)
    assert worker.signers[ZONE].signatures == 0
