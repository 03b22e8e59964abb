"""DNSSEC key files: generate, read, re-time; DNSKEY and DS for the parent.

The files are BIND's (`K<zone>+<alg>+<tag>.key` / `.private`, private-key
format v1.3 with the Created/Publish/Activate/Inactive/Delete timing fields),
so keys made by `dnssec-keygen` work here and ours work in BIND. Private
files are created mode 0600 and refused when others can read them; their
contents never reach a log or a repr. Keys are made with `cryptography`;
DNSKEY, key tag and DS come from dnspython.
"""
from __future__ import annotations

import base64
import calendar
import os
import re
import stat
import time
from dataclasses import replace
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdataclass
import dns.rdatatype
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from gslb.model import DNSSEC_ALGORITHMS as ALGORITHMS
from gslb.model import KSK_FLAGS, ZSK_FLAGS, DnssecKey

ECDSAP256SHA256, ED25519 = ALGORITHMS["ecdsap256sha256"], ALGORITHMS["ed25519"]
ALGORITHM_NAMES = {ECDSAP256SHA256: "ECDSAP256SHA256", ED25519: "ED25519"}
__all__ = ["ALGORITHMS", "KSK_FLAGS", "ZSK_FLAGS", "generate", "load", "read", "write"]
TIMING = ("Publish", "Activate", "Inactive", "Delete")


class KeyFileError(ValueError):
    """A key file is missing, unreadable, or does not match its zone."""


# --- keys -----------------------------------------------------------------------------------


def generate(zone: str, algorithm: int, flags: int, now: int | None = None,
             **times: int | None) -> DnssecKey:
    """A new key for `zone`; timing fields (publish=..., activate=...) default to now."""
    now = int(time.time()) if now is None else now
    if algorithm == ECDSAP256SHA256:
        private = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
        raw = private.to_bytes(32, "big")
    elif algorithm == ED25519:
        from cryptography.hazmat.primitives import serialization
        raw = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
    else:
        raise KeyFileError(f"algorithm {algorithm} is not supported (13 or 15)")
    key = _with_public(DnssecKey(zone, flags, algorithm, 0, b"", raw))
    defaults = {"publish": now, "activate": now, "inactive": None, "delete": None}
    defaults.update(times)
    return replace(key, **defaults)


def _with_public(key: DnssecKey) -> DnssecKey:
    public = public_bytes(key.algorithm, key.private)
    return replace(key, public=public, tag=dns.dnssec.key_id(_dnskey(key.flags, key.algorithm,
                                                                      public)))


def public_bytes(algorithm: int, private: bytes) -> bytes:
    """The DNSKEY public key field for a raw private key (RFC 6605, RFC 8080)."""
    obj = private_object(algorithm, private)
    if algorithm == ECDSAP256SHA256:
        nums = obj.public_key().public_numbers()
        return nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
    from cryptography.hazmat.primitives import serialization
    return obj.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def private_object(algorithm: int, private: bytes):
    """The `cryptography` private key object for raw key bytes."""
    if algorithm == ECDSAP256SHA256:
        return ec.derive_private_key(int.from_bytes(private, "big"), ec.SECP256R1())
    if algorithm == ED25519:
        return ed25519.Ed25519PrivateKey.from_private_bytes(private)
    raise KeyFileError(f"algorithm {algorithm} is not supported")


def signer(algorithm: int, private: bytes):
    """data -> DNSSEC signature bytes (ECDSA as r||s, RFC 6605 4; Ed25519 raw, RFC 8080)."""
    obj = private_object(algorithm, private)
    if algorithm == ED25519:
        return obj.sign
    # Deterministic ECDSA (RFC 6979): every worker and every name server holding
    # the key makes byte-identical signatures, so their answers agree.
    scheme = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(obj.sign(data, scheme))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return sign


def _dnskey(flags: int, algorithm: int, public: bytes) -> DNSKEY:
    return DNSKEY(dns.rdataclass.IN, dns.rdatatype.DNSKEY, flags, 3, algorithm, public)


def dnskey_rdata(key: DnssecKey) -> bytes:
    """The DNSKEY rdata in wire form."""
    return _dnskey(key.flags, key.algorithm, key.public).to_wire()


def dnskey_text(key: DnssecKey, ttl: int = 3600) -> str:
    return f"{key.zone} {ttl} IN DNSKEY {_dnskey(key.flags, key.algorithm, key.public)}"


def ds_text(key: DnssecKey, ttl: int = 3600) -> str:
    """The DS record (SHA-256, RFC 4509) the parent zone publishes for this key."""
    ds = dns.dnssec.make_ds(dns.name.from_text(key.zone),
                            _dnskey(key.flags, key.algorithm, key.public), "SHA256")
    return f"{key.zone} {ttl} IN DS {ds}"


def role(key: DnssecKey, csk: bool) -> str:
    if key.flags == ZSK_FLAGS:
        return "ZSK"
    return "CSK" if csk else "KSK"


# --- files ----------------------------------------------------------------------------------


def _stamp(t: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(t))


def _unstamp(text: str) -> int:
    return calendar.timegm(time.strptime(text.strip()[:14], "%Y%m%d%H%M%S"))


def basename(key: DnssecKey) -> str:
    return f"K{key.zone}+{key.algorithm:03d}+{key.tag:05d}"


def _private_text(key: DnssecKey, created: int) -> str:
    lines = ["Private-key-format: v1.3",
             f"Algorithm: {key.algorithm} ({ALGORITHM_NAMES[key.algorithm]})",
             f"PrivateKey: {base64.b64encode(key.private).decode()}",
             f"Created: {_stamp(created)}"]
    for field in TIMING:
        value = getattr(key, field.lower())
        if value is not None:
            lines.append(f"{field}: {_stamp(value)}")
    return "\n".join(lines) + "\n"


def _public_text(key: DnssecKey) -> str:
    kind = "key-signing" if key.flags == KSK_FLAGS else "zone-signing"
    return (f"; This is a {kind} key, keyid {key.tag}, for {key.zone}\n"
            f"{key.zone} IN DNSKEY {_dnskey(key.flags, key.algorithm, key.public)}\n")


def write(key: DnssecKey, directory: str | os.PathLike[str], created: int | None = None,
          overwrite: bool = False) -> DnssecKey:
    """Write both files; the private one is created 0600 (never world- or group-readable)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = folder / basename(key)
    private = base.with_name(base.name + ".private")
    created = int(time.time()) if created is None else created
    if not overwrite and private.exists():
        raise KeyFileError(f"{private} already exists")
    tmp = private.with_name(private.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(_private_text(key, created))
    os.replace(tmp, private)
    base.with_name(base.name + ".key").write_text(_public_text(key))
    return replace(key, path=str(private))


def _fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out


def read(path: str | os.PathLike[str], zone: str) -> DnssecKey:
    """One key from its .private file (and the .key file next to it, for the flags)."""
    private = Path(path)
    mode = private.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{private} is readable by others (mode {stat.S_IMODE(mode):o}); "
                        f"chmod 600 it")
    fields = _fields(private.read_text())
    try:
        algorithm = int(fields["Algorithm"].split()[0])
        raw = base64.b64decode(fields["PrivateKey"], validate=True)
    except (KeyError, ValueError, IndexError):
        raise KeyFileError(f"{private}: not a v1.3 private key file with Algorithm and "
                        f"PrivateKey") from None
    public = private.with_suffix(".key")
    match = re.search(r"\bDNSKEY\s+(\d+)\s+3\s+(\d+)\s", public.read_text()
                      if public.exists() else "")
    if match is None:
        raise KeyFileError(f"{public}: missing, or holds no DNSKEY record")
    if int(match.group(2)) != algorithm:
        raise KeyFileError(f"{public} and {private.name} disagree on the algorithm")
    times = {f.lower(): _unstamp(fields[f]) if f in fields else None for f in TIMING}
    try:
        key = _with_public(DnssecKey(zone, int(match.group(1)), algorithm, 0, b"", raw,
                                     str(private), **times))
    except (ValueError, KeyFileError) as exc:
        raise KeyFileError(f"{private}: unusable private key ({type(exc).__name__})") from None
    if key.flags not in (KSK_FLAGS, ZSK_FLAGS):
        raise KeyFileError(f"{public}: flags {key.flags} (expected 256 or 257)")
    if basename(key) != private.name.removesuffix(".private"):
        raise KeyFileError(f"{private.name} holds the key with tag {key.tag}, not the one its "
                        f"name says")
    return key


def load(directory: str | os.PathLike[str], zone: str) -> list[DnssecKey]:
    """Every key of `zone` in `directory`, sorted by tag."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    keys = [read(p, zone) for p in sorted(folder.glob(f"K{zone}+*.private"))]
    return sorted(keys, key=lambda k: k.tag)


def retime(key: DnssecKey, **times: int | None) -> DnssecKey:
    """Rewrite a key's timing fields (publish, activate, inactive, delete) in its files."""
    created = _fields(Path(key.path).read_text()).get("Created")
    new = replace(key, **times)
    return write(new, Path(key.path).parent, _unstamp(created) if created else None,
                 overwrite=True)


def parse_when(text: str, now: int | None = None) -> int | None:
    """`now`, `+90`, `+2h`, `+3d`, `-1h`, `none`, or YYYYMMDDHHMMSS (UTC) -> Unix seconds."""
    now = int(time.time()) if now is None else now
    text = text.strip().lower()
    if text in ("none", "never"):
        return None
    if text == "now":
        return now
    match = re.fullmatch(r"([+-])(\d+)([smhdw]?)", text)
    if match:
        unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(3)]
        delta = int(match.group(2)) * unit
        return now + delta if match.group(1) == "+" else now - delta
    if re.fullmatch(r"\d{14}", text):
        return _unstamp(text)
    raise ValueError(f"{text!r}: give now, +N[smhdw], -N[smhdw], none or YYYYMMDDHHMMSS")
