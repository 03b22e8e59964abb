"""The `dnssec:` block of a zone: validated settings, keys loaded from the key directory."""
from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cdnkit.check import Checker
from cdnkit.yamlsrc import Where

from gslb.model import DNSSEC_ALGORITHMS, KSK_FLAGS, ZSK_FLAGS, Denial, DnssecSettings

KEYS = ("algorithm", "keys", "key_directory", "signature_validity", "signature_refresh",
        "denial", "dnskey_ttl")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(ck: Checker, block: Any, key: str, default: int, what: str) -> int:
    """Seconds from an integer or a string such as `14d`, `36h`, `90m`."""
    if key not in block:
        return default
    value = block[key]
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"(\d+)\s*([smhdw])", str(value).strip().lower())
    if match and int(match.group(1)) > 0:
        return int(match.group(1)) * UNITS[match.group(2)]
    ck.add(block.at(key), f"{what}.{key} = {value!r}: give seconds or a number with s, m, h, "
           "d or w (14d)")
    return default


def parse_dnssec(ck: Checker, raw: Any, where: Where, origin: str, base: Path,
                 max_ttl: int, load_keys: bool = True) -> DnssecSettings | None:
    """Settings for one zone; with `load_keys`, its keys must exist and be able to sign now."""
    what = f"zone {origin} dnssec"
    block = ck.mapping(raw, where, what)
    ck.keys(block, KEYS, what)
    algorithm_name = ck.text(block, "algorithm", what, "ecdsap256sha256").lower()
    algorithm = DNSSEC_ALGORITHMS.get(algorithm_name)
    if algorithm is None:
        ck.add(block.at("algorithm"), f"{what}.algorithm = {algorithm_name!r} is not one of: "
               f"{', '.join(DNSSEC_ALGORITHMS)}")
        algorithm = DNSSEC_ALGORITHMS["ecdsap256sha256"]
    layout = ck.text(block, "keys", what, "ksk_zsk")
    if layout not in ("ksk_zsk", "csk"):
        ck.add(block.at("keys"), f"{what}.keys = {layout!r} is not one of: ksk_zsk, csk")
    directory = Path(ck.text(block, "key_directory", what, "keys"))
    directory = directory if directory.is_absolute() else base / directory
    validity = duration(ck, block, "signature_validity", 14 * 86400, what)
    refresh = duration(ck, block, "signature_refresh", 3 * 86400, what)
    denial = ck.choice(block, "denial", Denial, Denial.COMPACT, what)
    dnskey_ttl = ck.integer(block, "dnskey_ttl", 3600, 0, 86400 * 7, what)
    if refresh >= validity:
        ck.add(block.at("signature_refresh"), f"{what}: signature_refresh ({refresh} s) must be "
               f"shorter than signature_validity ({validity} s)")
    elif validity - refresh < max(max_ttl, dnskey_ttl):
        # A resolver may keep an RRset for its TTL: the signature must outlive that.
        ck.add(block.at("signature_validity"), f"{what}: signatures made at the start of a "
               f"refresh period must outlive the longest TTL ({max(max_ttl, dnskey_ttl)} s); "
               f"validity - refresh is only {validity - refresh} s")
    settings = DnssecSettings(str(directory), algorithm, layout == "csk", validity, refresh,
                              denial, dnskey_ttl)
    if load_keys:
        settings = _with_keys(ck, block, settings, origin, what)
    return settings


def _with_keys(ck: Checker, block: Any, settings: DnssecSettings, origin: str,
               what: str) -> DnssecSettings:
    # Deferred: unsigned configs never load the crypto and DNS libraries.
    from gslb.dnssec import keys as dnssec_keys
    where = block.at("key_directory") if "key_directory" in block else block.where
    try:
        keys = dnssec_keys.load(settings.key_directory, origin)
    except (OSError, dnssec_keys.KeyFileError) as exc:
        ck.add(where, f"{what}: {exc}")
        return settings
    if not keys:
        ck.add(where, f"{what}: no keys for {origin} in {settings.key_directory}; create them "
               f"with `gslb dnssec init {origin}`")
        return settings
    other = [k for k in keys if k.algorithm != settings.algorithm]
    for key in other:
        ck.add(where, f"{what}: key {key.tag} ({Path(key.path).name}) uses algorithm "
               f"{key.algorithm}, the zone is set to {settings.algorithm}")
    now = time.time()
    signing = [k for k in keys if k.signing(now)]
    if not any(k.flags == KSK_FLAGS for k in signing):
        ck.add(where, f"{what}: no active key-signing key (flags 257) in "
               f"{settings.key_directory}")
    if not settings.csk and not any(k.flags == ZSK_FLAGS for k in signing):
        ck.add(where, f"{what}: no active zone-signing key (flags 256) in "
               f"{settings.key_directory} (or set keys: csk)")
    return replace(settings, keys=tuple(keys))
