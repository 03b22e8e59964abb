"""Helpers for DNSSEC tests: a signed copy of the demo config, keys made by our CLI,
DO queries, and a check of every RRSIG in a response with dnspython's validator."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdatatype

from tests.conftest import ROOT, load_default, write_config

ZONE = "cdn.example.net."


def signed_dict(keydir: Path, denial: str = "compact", algorithm: str = "ecdsap256sha256",
                keys: str = "ksk_zsk") -> dict:
    """The demo config with the zone signed, plus a CNAME chain and an empty non-terminal."""
    cfg = load_default()
    zone = cfg["zones"][ZONE]
    zone["dnssec"] = {"key_directory": str(keydir), "denial": denial, "algorithm": algorithm,
                      "keys": keys}
    records = zone["records"]
    records["alias"] = [{"type": "CNAME", "value": "www.shop.com.cdn.example.net."}]
    records["static"] = [{"type": "A", "value": "192.0.2.80"}]
    records["to-static"] = [{"type": "CNAME", "value": "static.cdn.example.net."}]
    records["a.deep"] = [{"type": "TXT", "value": "below an empty non-terminal"}]
    records["www"] = [{"type": "TXT", "value": "static next to a service"}]
    cfg["services"]["www.cdn.example.net."] = {"pool": ["nyc", "fra", "sin"]}
    return cfg


def gslb(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gslb.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=check)


def make_signed(tmp: Path, **kw) -> Path:
    """Write the signed config and create its keys with `gslb dnssec init`."""
    path = write_config(tmp, signed_dict(tmp / "keys", **kw))
    gslb("dnssec", "init", ZONE, "-c", str(path))
    return path


def do_query(name: str, qtype: str, ecs: str | None = None, co: bool = False,
             payload: int = 1232) -> bytes:
    options = [dns.edns.ECSOption.from_text(ecs)] if ecs else []
    q = dns.message.make_query(name, qtype, use_edns=0, payload=payload, want_dnssec=True,
                               options=options)
    q.flags &= ~dns.flags.RD
    if co:
        q.ednsflags |= 0x4000
    return q.to_wire()


def check_signed(msg: dns.message.Message, dnskeys: dns.rrset.RRset,
                 now: float | None = None) -> int:
    """Validate every RRset of answer and authority against its RRSIG; return how many.

    Raises if an RRset has no RRSIG or one that does not validate.
    """
    keys = {dns.name.from_text(ZONE): dnskeys}
    checked = 0
    for section in (msg.answer, msg.authority):
        sigs = {(r.name, r.covers): r for r in section if r.rdtype == dns.rdatatype.RRSIG}
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                continue
            sig = sigs.get((rrset.name, rrset.rdtype))
            assert sig is not None, f"no RRSIG for {rrset.name} {rrset.rdtype!r}"
            dns.dnssec.validate(rrset, sig, keys, now=now)
            checked += 1
    return checked
