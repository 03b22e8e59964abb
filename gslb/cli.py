"""`gslb serve | check | explain | reload | dnssec | demo`."""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path

from cdnkit.check import ConfigError
from cdnkit.listen import listener_arg
from cdnkit.store import store_arg

from .config import DEFAULT_CONFIG, load_config
from .dnssec_cli import add_parser as add_dnssec_parser
from .model import Config

log = logging.getLogger("gslb")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")


def _load_or_exit(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}:",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        sys.exit(1)


def summary(config: Config) -> str:
    geo = Path(config.geoip_database).name if config.geoip_database else "no GeoIP database"
    return (f"{config.source}: OK: {len(config.zones)} zone(s), {len(config.services)} "
            f"service(s), {len(config.sites)} site(s), {len(config.nets)} nets override(s), {geo}")


# --- serve ---------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, config: Config, ready: str) -> int:
    from .supervisor import Supervisor

    listeners = tuple(args.dns) if args.dns else config.server.listen
    workers = args.workers or config.server.workers or (os.cpu_count() or 1)
    http = args.http if args.http else config.dashboard.listen
    if args.no_http:
        http = None
    if getattr(args, "pidfile", None):
        Path(args.pidfile).write_text(f"{os.getpid()}\n")
    where = ", ".join(map(str, listeners))
    ready = ready or f"ready: {summary(config)}; DNS on {where}"
    if http is not None:
        ready += f"; dashboard on http://{http}/"
    sup = Supervisor(args.config, config, listeners, workers, http, ready,
                     state_file=getattr(args, "state_file", None))
    store = getattr(args, "store", None)
    if store is not None and store.kind == "etcd":
        from .fleet import Fleet
        state = getattr(args, "state_file", None) or config.health.state_file or args.config
        home = Path(args.snapshot_dir) if args.snapshot_dir else Path(state).parent
        sup.fleet = Fleet(store, args.node_id or f"ns-{listeners[0]}", home)
    try:
        return asyncio.run(sup.run())
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    finally:
        if getattr(args, "pidfile", None):
            Path(args.pidfile).unlink(missing_ok=True)


def cmd_serve(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    if args.store is not None and args.store.kind == "file":
        args.config = args.store.path           # file:PATH is the YAML file, as -c
    return _serve(args, _load_or_exit(args.config), "")


def cmd_worker(args: argparse.Namespace) -> int:
    from .supervisor import worker_main

    _setup_logging(False)
    return asyncio.run(worker_main(args.control_fd))


# --- check / reload --------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    path = args.config_file or args.config
    config = _load_or_exit(path)
    print(summary(config))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    if args.config:
        config = _load_or_exit(args.config)   # refuse to signal a config we know is bad
        print(summary(config))
    if args.pid:
        pid = args.pid
    else:
        try:
            pid = int(Path(args.pidfile).read_text().strip())
        except (OSError, ValueError) as exc:
            print(f"cannot read pid from {args.pidfile}: {exc}", file=sys.stderr)
            return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"no process {pid}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to {pid}")
    return 0


# --- explain ---------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain

    config = _load_or_exit(args.config)
    try:
        text = explain(config, args.name, args.type, client=args.client, ecs=args.ecs)
    except ValueError as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


# --- demo ------------------------------------------------------------------------------------


def run_demo(argv: list[str]) -> int:
    """`gslb demo ...` is the demo package's command; it is kept under this name."""
    program = sys.argv[0] if os.path.basename(sys.argv[0]) == "gslb" else "gslb"
    if os.sep in program:
        rel = os.path.relpath(program)
        program = rel if rel.startswith(".") else f"./{rel}"
    os.environ.setdefault("GSLB_DEMO_PROGRAM", program)
    os.execv(sys.executable, [sys.executable, "-m", "demo.cli", *argv])
    return 1    # not reached


# --- main ------------------------------------------------------------------------------------


def _client_arg(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _ecs_arg(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CIDR like 192.0.2.0/24") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gslb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_http(p: argparse.ArgumentParser) -> None:
        p.add_argument("--http", type=listener_arg, metavar="ADDR:PORT",
                       help="dashboard, API and /metrics here (default 127.0.0.1:8080)")
        p.add_argument("--no-http", action="store_true", help="no dashboard")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG),
                       help="config file (default: data/gslb.yaml)")

    p = sub.add_parser("serve", help="run the authoritative DNS server")
    with_config(p)
    p.add_argument("--dns", action="append", type=listener_arg, metavar="ADDR:PORT",
                   help="listen here (UDP+TCP) instead of the config's listeners; repeatable")
    p.add_argument("--workers", type=int, default=0,
                   help="processes sharing the port via SO_REUSEPORT (default: one per core)")
    p.add_argument("--pidfile", help="write the serving PID here (for `gslb reload`)")
    p.add_argument("--state-file", metavar="PATH",
                   help="keep admin overrides here instead of the config's health.state_file")
    p.add_argument("--store", type=store_arg, metavar="STORE",
                   help="etcd://HOST:PORT[,...]: answer customer names only with edges that "
                        "serve them (docs/control.md); file:PATH is the -c file")
    p.add_argument("--node-id", help="this nameserver in the fleet (default ns-ADDR:PORT)")
    p.add_argument("--snapshot-dir", metavar="DIR",
                   help="where the last store state is kept (default: the state file's)")
    add_http(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate a config; print every problem with file:line")
    p.add_argument("config_file", nargs="?", help="config file")
    with_config(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("explain", help="show how a name is answered for a client")
    with_config(p)
    p.add_argument("name")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--client", type=_client_arg, help="resolver/client address")
    who.add_argument("--ecs", type=_ecs_arg, help="EDNS Client Subnet, e.g. 192.0.2.0/24")
    p.add_argument("--type", default="A", choices=["A", "AAAA"], type=str.upper)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("reload", help="make a running server re-read its config (SIGHUP)")
    p.add_argument("-c", "--config", help="validate this file first and refuse if it is bad")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--pidfile")
    target.add_argument("--pid", type=int)
    p.set_defaults(func=cmd_reload)

    add_dnssec_parser(sub, with_config)

    # Parsed by the demo itself (`gslb demo --help`); listed here for `gslb --help`.
    sub.add_parser("demo", add_help=False,
                   help="the whole CDN on loopback (DNS, dashboard, edges, shield, origin)")

    p = sub.add_parser("worker", help=argparse.SUPPRESS)   # started by the supervisor only
    p.add_argument("--control-fd", type=int, required=True)
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        return run_demo(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
