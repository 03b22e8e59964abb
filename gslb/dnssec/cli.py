"""`gslb dnssec init | ds | keys | add | schedule ZONE`: the operator's key commands.

Keys live in the zone's `key_directory` (docs/dnssec.md); a running server
picks up new or re-timed key files on `gslb reload`, and timing events that
are already in the files (activate, inactive, delete) without one.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cdnkit.check import ConfigError

from gslb.config import load_config, normalize_name
from gslb.model import DnssecSettings, ZoneConfig


def _keys():
    """The key module, imported when a command runs: every `gslb` process (workers
    too) imports this module for its parser, and need not load cryptography."""
    from gslb.dnssec import keys as dnssec_keys
    return dnssec_keys


def _zone(config_path: str, zone: str, with_keys: bool) -> tuple[ZoneConfig, DnssecSettings]:
    try:
        config = load_config(config_path, dnssec_keys=with_keys)
    except ConfigError as exc:
        raise SystemExit(f"{config_path}: {len(exc.problems)} problem(s):\n  "
                         + "\n  ".join(exc.problems)) from None
    origin = normalize_name(zone)
    found = next((z for z in config.zones if z.origin == origin), None)
    if found is None:
        raise SystemExit(f"{config_path}: no zone {origin}")
    if found.dnssec is None:
        raise SystemExit(f"{config_path}: zone {origin} has no dnssec: block "
                         "(see docs/dnssec.md)")
    return found, found.dnssec


def _when(text: str | None, now: int) -> int | None:
    keys = _keys()
    try:
        return keys.parse_when(text, now) if text is not None else None
    except ValueError as exc:
        raise SystemExit(f"gslb dnssec: {exc}") from None


def cmd_init(args: argparse.Namespace) -> int:
    keys = _keys()
    zone, settings = _zone(args.config, args.zone, with_keys=False)
    existing = keys.load(settings.key_directory, zone.origin)
    if existing:
        print(f"{zone.origin} already has keys in {settings.key_directory} (tags "
              f"{', '.join(str(k.tag) for k in existing)}); use `gslb dnssec add` to roll "
              "them", file=sys.stderr)
        return 1
    now = int(time.time())
    flags = [keys.KSK_FLAGS] if settings.csk else [keys.KSK_FLAGS, keys.ZSK_FLAGS]
    for flag in flags:
        key = keys.write(keys.generate(zone.origin, settings.algorithm, flag, now),
                         settings.key_directory, now)
        print(f"created {keys.role(key, settings.csk)} {key.tag}: {Path(key.path).name} "
              "(mode 0600) and its .key")
    print("give the parent zone this DS (also: gslb dnssec ds):")
    return cmd_ds(args)


def cmd_ds(args: argparse.Namespace) -> int:
    keys = _keys()
    zone, settings = _zone(args.config, args.zone, with_keys=True)
    now = time.time()
    ksks = [k for k in settings.keys if k.flags == keys.KSK_FLAGS and k.published(now)]
    for key in ksks:
        print(keys.ds_text(key))
        print(keys.dnskey_text(key, settings.dnskey_ttl))
    return 0 if ksks else 1


def _state(key, now: float) -> str:
    if not key.published(now):
        return "removed" if key.delete is not None and key.delete <= now else "pending"
    if key.signing(now):
        return "signing"
    return "retired" if key.inactive is not None and key.inactive <= now else "published"


def cmd_keys(args: argparse.Namespace) -> int:
    keys = _keys()
    zone, settings = _zone(args.config, args.zone, with_keys=True)
    now = time.time()
    print(f"{'tag':>5}  {'role':<4} {'alg':>3}  {'state':<9} "
          f"{'publish':<15}{'activate':<15}{'inactive':<15}{'delete':<15}file")
    for key in settings.keys:
        times = [time.strftime("%Y%m%d%H%M%S", time.gmtime(t)) if t is not None else "-"
                 for t in (key.publish, key.activate, key.inactive, key.delete)]
        print(f"{key.tag:>5}  {keys.role(key, settings.csk):<4} {key.algorithm:>3}  "
              f"{_state(key, now):<9} " + "".join(f"{t:<15}" for t in times)
              + Path(key.path).name)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    keys = _keys()
    zone, settings = _zone(args.config, args.zone, with_keys=True)
    now = int(time.time())
    flag = keys.ZSK_FLAGS if args.role == "zsk" else keys.KSK_FLAGS
    key = keys.generate(zone.origin, settings.algorithm, flag, now,
                        publish=_when(args.publish, now), activate=_when(args.activate, now))
    key = keys.write(key, settings.key_directory, now)
    print(f"created {args.role.upper()} {key.tag}: {Path(key.path).name}; then "
          "`gslb reload` the server")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    keys = _keys()
    zone, settings = _zone(args.config, args.zone, with_keys=True)
    key = next((k for k in settings.keys if k.tag == args.tag), None)
    if key is None:
        print(f"no key {args.tag} for {zone.origin} in {settings.key_directory}",
              file=sys.stderr)
        return 1
    now = int(time.time())
    times = {name: _when(getattr(args, name), now)
             for name in ("publish", "activate", "inactive", "delete")
             if getattr(args, name) is not None}
    keys.retime(key, **times)
    print(f"key {key.tag}: " + ", ".join(f"{k} {v if v is not None else 'none'}"
                                         for k, v in times.items()))
    return 0


WHEN = "now, +N[smhdw], YYYYMMDDHHMMSS (UTC) or none"


def add_parser(sub: argparse._SubParsersAction, with_config) -> None:
    """Register `gslb dnssec ...` on the main parser."""
    p = sub.add_parser("dnssec", help="DNSSEC keys: init, ds, keys, add, schedule")
    dsub = p.add_subparsers(dest="dnssec_command", required=True)
    for name, func, text in (("init", cmd_init, "create the zone's first keys"),
                             ("ds", cmd_ds, "print the DS (SHA-256) and DNSKEY for the parent"),
                             ("keys", cmd_keys, "list the zone's keys and their states"),
                             ("add", cmd_add, "add a key (rollovers: docs/dnssec.md)"),
                             ("schedule", cmd_schedule, "change a key's timing")):
        q = dsub.add_parser(name, help=text)
        with_config(q)
        q.add_argument("zone")
        if name == "add":
            q.add_argument("--role", choices=["ksk", "zsk", "csk"], required=True)
            q.add_argument("--publish", metavar="WHEN", default="now", help=WHEN)
            q.add_argument("--activate", metavar="WHEN", default="now", help=WHEN)
        if name == "schedule":
            q.add_argument("tag", type=int)
            for field in ("publish", "activate", "inactive", "delete"):
                q.add_argument(f"--{field}", metavar="WHEN", help=WHEN)
        q.set_defaults(func=func)
