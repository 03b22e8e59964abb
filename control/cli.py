"""`cdnctl`: the control plane. `serve` runs the API and the page; the other commands
talk to the store directly, as an operator's or a CI job's tool.

    cdnctl serve [--listen 127.0.0.1:8090]          API, page, the CNAME reaper and,
          [--acme-directory URL]                    with a CA, certificates for https: auto
    cdnctl plan -f DIR                              what apply would change
    cdnctl apply -f DIR [--max-deletes 10] [--force]  all of it in one transaction
    cdnctl customers list | show DIR | delete DIR
    cdnctl purge --url URL... | --prefix URL | --customer DIR  [--wait]
    cdnctl status                                   nodes, revisions, what is deploying
    cdnctl drain EDGE [--wait SECONDS] | undrain EDGE   out of every nameserver's answers
    cdnctl certs [--json] [--renew DIR]             customers' certificates: issuing,
                                                    active (expires), failed (why), uploaded
    cdnctl keygen > key                             a key file for sealed bucket secrets

The store is --store or $CDNCTL_STORE (default etcd://127.0.0.1:2379).
Exit codes: 0 done, 1 invalid input or not found, 2 usage, 3 store unavailable,
4 conflict (the store changed since it was read), 5 refused (a rule, or too many
deletes without --force), 6 `plan --exit-code` with changes to apply.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from cdnkit.check import ConfigError
from cdnkit.listen import listener_arg
from cdnkit.seal import Sealer, SealError, new_key
from cdnkit.store import EtcdStore, StoreError, StoreUnavailable, store_arg

from .changes import Change, Conflict, NotFound, Refused
from .documents import Invalid, Rules
from .service import ControlPlane

log = logging.getLogger("control")

OK, INVALID, USAGE, UNAVAILABLE, CONFLICT, REFUSED, CHANGES = 0, 1, 2, 3, 4, 5, 6
DEFAULT_STORE = "etcd://127.0.0.1:2379"


def _plane(args: argparse.Namespace, store: EtcdStore) -> ControlPlane:
    sealer = Sealer.from_file(args.key_file) if args.key_file else None
    rules = Rules(tuple(z.lower().rstrip(".") for z in args.zone), args.max_customers)
    return ControlPlane(store, rules, sealer, os.environ.get(args.edge_token_env, ""))


async def _with_plane(args: argparse.Namespace, work: Any) -> int:
    if args.store.kind != "etcd":
        print("cdnctl needs the shared store: --store etcd://HOST:PORT (or $CDNCTL_STORE)",
              file=sys.stderr)
        return USAGE
    store = EtcdStore(args.store)
    try:
        await store.connect()
        return await work(_plane(args, store))
    finally:
        await store.close()


# --- serve ---------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace, plane: ControlPlane) -> int:
    import signal

    from aiohttp import web

    from .api import make_app, parse_tokens
    from .acme import Issuer
    from .reaper import Reaper

    tokens = parse_tokens(os.environ.get("CDNCTL_TOKEN", ""),
                          os.environ.get("CDNCTL_READ_TOKEN", ""))
    if not tokens:
        log.warning("neither CDNCTL_TOKEN nor CDNCTL_READ_TOKEN is set: every API request "
                    "will be refused")
    runner = web.AppRunner(make_app(plane, tokens), access_log=None, shutdown_timeout=2)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.listen.host, args.listen.port).start()
    except OSError as exc:
        log.error("cannot listen on %s: %s", args.listen, exc.strerror)
        await runner.cleanup()
        return 1
    loop = asyncio.get_running_loop()
    background = [loop.create_task(Reaper(plane, args.retire_grace).run()),
                  loop.create_task(Issuer(plane, _acme_options(args)).run())]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("ready: cdnctl on http://%s/ (store %s)", args.listen, plane.store.spec)
    await stop.wait()
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await runner.cleanup()
    return 0


def _acme_options(args: argparse.Namespace) -> Any:
    from .acme import DAY, AcmeOptions

    return AcmeOptions(directory=args.acme_directory, email=args.acme_email,
                       ca_file=args.acme_ca_file, renew_before=args.renew_before * DAY,
                       retry=args.acme_retry, interval=args.acme_interval)


async def _certs(args: argparse.Namespace, plane: ControlPlane) -> int:
    if args.renew:
        from .acme import request_renewal

        await request_renewal(plane, args.renew)
        print(f"{args.renew}: a new certificate will be ordered at the issuer's next look")
        return OK
    listing = await plane.certificates()
    if args.json:
        print(json.dumps(listing, indent=2))
        return OK
    print(f"{'customer':<20}{'mode':<8}{'state':<10}{'expires':<27}names / why")
    for c in listing["certificates"]:
        detail = c.get("reason") or ", ".join(c.get("names") or ())
        if c["state"] == "failed" and c.get("next_attempt"):
            detail += f" (next attempt in {max(0, c['next_attempt'] - time.time()):.0f} s)"
        print(f"{c['directory']:<20}{c['mode']:<8}{c['state']:<10}{c.get('expires') or '-':<27}"
              f"{detail}")
    failed = [c for c in listing["certificates"] if c["state"] == "failed"]
    return REFUSED if failed and args.check else OK


# --- plan / apply --------------------------------------------------------------------------


async def _plan(args: argparse.Namespace, plane: ControlPlane, apply: bool) -> int:
    from .plan import diff, read_dir

    try:
        desired = read_dir(Path(args.file), plane.rules)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.problems)} problem(s); nothing was changed:",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return INVALID
    view = await plane.view()
    changes = diff(desired, view, plane.sealer)
    print(changes.text())
    if not apply:
        return CHANGES if args.exit_code and not changes.empty else OK
    if changes.empty:
        return OK
    if len(changes.deletes) > args.max_deletes and not args.force:
        print(f"refusing to delete {len(changes.deletes)} customers (more than --max-deletes "
              f"{args.max_deletes}); check the plan, then run again with --force",
              file=sys.stderr)
        return REFUSED
    shields, extra = _shield_ops(plane, desired, changes)
    revision = await plane.write(changes.batch, _who(), "apply", shields, extra)
    print(f"applied in one transaction at revision {revision}")
    return OK


def _shield_ops(plane: ControlPlane, desired: Any, changes: Any) -> tuple[Any, list[Any]]:
    if not changes.shields:
        return None, []
    from cdnkit.check import Checker
    from cdnkit.jsondoc import Pointer, lines
    from cdnkit.shields import parse_shields

    store, keys = plane.store, plane.keys
    extra = [store.delete(keys.shields + s[1:]) if s[0] == "-" else
             store.put(keys.shields + s[1:], json.dumps(desired.shields[s[1:]]))
             for s in changes.shields]
    raw = list(desired.shields.values())
    return parse_shields(Checker("apply"), lines(raw, keys.shields),
                         Pointer(keys.shields, 0)), extra


def _who() -> str:
    return os.environ.get("CDNCTL_WHO") or f"cdnctl:{os.environ.get('USER', 'unknown')}"


# --- customers / purge / status ------------------------------------------------------------


async def _customers(args: argparse.Namespace, plane: ControlPlane) -> int:
    if args.action == "list":
        listing = await plane.customers()
        if args.json:
            print(json.dumps(listing, indent=2))
            return OK
        print(f"{'directory':<24}{'revision':>10}  {'status':<44}cnames")
        for c in listing["customers"]:
            state = f"{c['status']} ({c['progress']})"
            print(f"{c['directory']:<24}{c['revision']:>10}  {state:<44}"
                  f"{', '.join(c['customer'].get('cnames') or []) or '-'}")
        print(f"{len(listing['customers'])} of at most {listing['max_customers']} customers")
        return OK
    if not args.directory:
        print(f"customers {args.action}: which directory?", file=sys.stderr)
        return USAGE
    if args.action == "show":
        print(json.dumps(await plane.customer(args.directory), indent=2))
        return OK
    card = await plane.customer(args.directory)
    revision = await plane.write([Change(args.directory, None, card["revision"])], _who(),
                                 "delete")
    print(f"deleted {args.directory} at revision {revision}")
    return OK


async def _purge(args: argparse.Namespace, plane: ControlPlane) -> int:
    job = {"urls": args.url} if args.url else {"prefix": args.prefix} if args.prefix \
        else {"customer": args.customer}
    made = await plane.purge(job, _who())
    print(f"purge {made['id']} at revision {made['revision']}")
    if not args.wait:
        return OK
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        status = await plane.purge_status(made["id"])
        if status["status"] == "done":
            print(f"done on {status['done']}/{status['of']} edges")
            return OK
        await asyncio.sleep(0.1)
    print(f"not done on every edge after {args.wait} s: {status['edges']}", file=sys.stderr)
    return REFUSED


async def _status(args: argparse.Namespace, plane: ControlPlane) -> int:
    fleet, listing = await asyncio.gather(plane.fleet(), plane.customers())
    if args.json:
        print(json.dumps({"fleet": fleet, "customers": listing}, indent=2))
        return OK
    print(f"config revision {fleet['revision']}")
    print(f"{'node':<20}{'kind':<12}{'applied':>9}{'lag':>6}  {'seen':>6}  {'state':<16}"
          "addresses")
    for n in fleet["nodes"]:
        state = (n["state"] or "-") + (" (drained)" if n["drained"] and n["state"] != "draining"
                                       else "") + (", idle" if n["idle"] else "")
        print(f"{n['id']:<20}{n['kind']:<12}{n['applied']:>9}{n['lag']:>6}  "
              f"{n['seen']:>5}s  {state:<16}{', '.join(n['addresses'])}")
    busy = [c for c in listing["customers"] if c["status"] != "deployed"]
    print(f"{len(listing['customers'])} customers, {len(busy)} deploying" +
          "".join(f"\n  {c['directory']}: {c['progress']}" for c in busy))
    return OK if not busy else REFUSED if args.check else OK


async def _drain(args: argparse.Namespace, plane: ControlPlane) -> int:
    on = args.command == "drain"
    done = await plane.drain(args.edge, _who(), on)
    if on:
        print(f"drained {args.edge} at revision {done['revision']}: every nameserver stops "
              "answering it within a second; what is open is served to its end")
    else:
        print(f"undrained {args.edge} at revision {done['revision']}: answered again once "
              "its probes pass")
    if not on or not args.wait:
        return OK
    deadline = time.monotonic() + args.wait
    while True:
        status = await plane.drain_status(args.edge)
        if status["idle"]:
            print(f"{args.edge} is idle" + (" (its record is gone)"
                                            if status["state"] == "gone" else ""))
            return OK
        if time.monotonic() >= deadline:
            print(f"{args.edge} still has {status['in_flight']} request(s) in flight after "
                  f"{args.wait:g} s", file=sys.stderr)
            return REFUSED
        await asyncio.sleep(0.2)


# --- main ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdnctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=store_arg,
                        default=store_arg(os.environ.get("CDNCTL_STORE", DEFAULT_STORE)),
                        help="etcd://HOST:PORT[,...] (default $CDNCTL_STORE or %(default)s)")
    common.add_argument("--key-file", default=os.environ.get("CDNCTL_KEY_FILE", ""),
                        help="seals bucket secrets (default $CDNCTL_KEY_FILE)")
    common.add_argument("--zone", action="append", default=[],
                        help="our CDN zone, never an origin (repeatable; default "
                             "cdn.example.net)")
    common.add_argument("--max-customers", type=int, default=100)
    common.add_argument("--edge-token-env", default="EDGE_ADMIN_TOKEN",
                        help="the edges' admin token, for Validate (default $%(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", parents=[common], help="the API and the Customer Origin page")
    p.add_argument("--listen", type=listener_arg, default=listener_arg("127.0.0.1:8090"))
    p.add_argument("--retire-grace", type=float, default=0.0,
                   help="seconds at least between nameservers stopping a CNAME and the "
                        "edges dropping it (default: the nameservers' longest TTL)")
    p.add_argument("--acme-directory", default=os.environ.get("CDNCTL_ACME_DIRECTORY", ""),
                   metavar="URL", help="the ACME CA's directory, for customers marked "
                   "https: auto (default $CDNCTL_ACME_DIRECTORY; none: they stay failed)")
    p.add_argument("--acme-email", default="", help="the ACME account's contact")
    p.add_argument("--acme-ca-file", default="", metavar="PEM",
                   help="CAs to trust for the ACME server's HTTPS (default: the system's)")
    p.add_argument("--renew-before", type=float, default=30.0, metavar="DAYS",
                   help="renew certificates this long before they expire (default 30)")
    p.add_argument("--acme-retry", type=float, default=60.0, metavar="SECONDS",
                   help="first wait after a failed order, doubling to 6 h (default 60)")
    p.add_argument("--acme-interval", type=float, default=5.0, metavar="SECONDS",
                   help="how often the issuer looks for certificates to order (default 5)")
    for name in ("plan", "apply"):
        p = sub.add_parser(name, parents=[common], help=f"{name} the customers of DIR")
        p.add_argument("-f", "--file", required=True, metavar="DIR")
        p.add_argument("--exit-code", action="store_true",
                       help="plan: exit 6 when there are changes")
        p.add_argument("--max-deletes", type=int, default=10)
        p.add_argument("--force", action="store_true")
    p = sub.add_parser("customers", parents=[common], help="list, show or delete customers")
    p.add_argument("action", choices=["list", "show", "delete"])
    p.add_argument("directory", nargs="?")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("purge", parents=[common], help="purge on every edge")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--url", action="append")
    what.add_argument("--prefix")
    what.add_argument("--customer")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    p = sub.add_parser("status", parents=[common], help="nodes and what is deploying")
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true", help="exit 5 while anything is deploying")
    p = sub.add_parser("drain", parents=[common], help="take an edge out of every "
                       "nameserver's answers; what is open is served to its end")
    p.add_argument("edge", help="the edge's node id")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="then wait until it is idle (exit 5 if not within SECONDS)")
    p = sub.add_parser("undrain", parents=[common], help="answer a drained edge again")
    p.add_argument("edge", help="the edge's node id")
    p = sub.add_parser("certs", parents=[common], help="customers' HTTPS certificates")
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true", help="exit 5 when any order failed")
    p.add_argument("--renew", metavar="DIR", help="order DIR's certificate anew now")
    sub.add_parser("keygen", help="print a new key file for sealed secrets")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    if args.command == "keygen":
        sys.stdout.write(new_key())
        return OK
    args.zone = args.zone or ["cdn.example.net"]
    work = {"serve": lambda p: _serve(args, p),
            "plan": lambda p: _plan(args, p, apply=False),
            "apply": lambda p: _plan(args, p, apply=True),
            "customers": lambda p: _customers(args, p),
            "purge": lambda p: _purge(args, p),
            "status": lambda p: _status(args, p),
            "drain": lambda p: _drain(args, p),
            "undrain": lambda p: _drain(args, p),
            "certs": lambda p: _certs(args, p)}[args.command]
    try:
        return asyncio.run(_with_plane(args, work))
    except SealError as exc:
        print(f"cdnctl: {exc}", file=sys.stderr)
        return INVALID
    except Invalid as exc:
        print(f"{len(exc.problems)} problem(s); nothing was changed:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return INVALID
    except NotFound as exc:
        print(f"cdnctl: no customer, job or node {exc.args[0]!r}", file=sys.stderr)
        return INVALID
    except Conflict as exc:
        print(f"cdnctl: conflict: {exc}", file=sys.stderr)
        return CONFLICT
    except Refused as exc:
        print(f"cdnctl: refused: {exc}", file=sys.stderr)
        return REFUSED
    except StoreUnavailable as exc:
        print(f"cdnctl: the store {args.store} is unavailable ({exc}); nothing was changed",
              file=sys.stderr)
        return UNAVAILABLE
    except StoreError as exc:
        print(f"cdnctl: the store refused: {exc}", file=sys.stderr)
        return UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
