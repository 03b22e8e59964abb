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
from typing import TYPE_CHECKING

from cdnkit.check import ConfigError, describe
from cdnkit.gcpause import gc_paused
from cdnkit.listen import listener_arg
from cdnkit.storespec import store_arg

from gslb.config import DEFAULT_CONFIG, load_config
from gslb.dnssec.cli import add_parser as add_dnssec_parser
from gslb.model import Config

if TYPE_CHECKING:
    from gslb.supervisor import Supervisor

log = logging.getLogger("gslb")


def _setup_logging(verbose: bool = False) -> None:
    from cdnkit.logs import setup

    setup(logging.DEBUG if verbose else logging.INFO)


def _load_or_exit(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(describe(exc.problems, path), file=sys.stderr)
        sys.exit(1)


def summary(config: Config) -> str:
    geo = Path(config.geoip_database).name if config.geoip_database else "no GeoIP database"
    return (f"{config.source}: OK: {len(config.zones)} zone(s), {len(config.services)} "
            f"service(s), {len(config.sites)} site(s), {len(config.nets)} nets override(s), {geo}")


# --- serve ---------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, ready: str) -> int:
    try:
        with gc_paused():       # the config, answers and signatures: big trees, no garbage
            config = _load_or_exit(args.config)
            sup = _supervisor(args, config, ready)
            sup.fork_workers()           # before any thread or event loop: fork is safe
        return asyncio.run(sup.run())
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    finally:
        if getattr(args, "pidfile", None):
            Path(args.pidfile).unlink(missing_ok=True)


def _supervisor(args: argparse.Namespace, config: Config, ready: str) -> "Supervisor":
    from gslb.supervisor import Supervisor

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
        from gslb.fleet.watch import Fleet
        state = getattr(args, "state_file", None) or config.health.state_file or args.config
        home = Path(args.snapshot_dir) if args.snapshot_dir else Path(state).parent
        sup.fleet = Fleet(store, args.node_id or f"ns-{listeners[0]}", home)
    return sup


def cmd_serve(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    if args.store is not None and args.store.kind == "file":
        args.config = args.store.path           # file:PATH is the YAML file, as -c
    return _serve(args, "")


def cmd_worker(args: argparse.Namespace) -> int:
    from gslb.supervisor import worker_main

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
    from gslb.explain import NoServer, default_server, explain, server_health

    config = _load_or_exit(args.config)
    health, source = None, "health: none (--no-server); every address counts as not yet checked"
    if not args.no_server:
        url = args.server or default_server(config)
        try:
            health, source = server_health(url, args.config)
        except NoServer as exc:
            if args.server:                 # asked for: an error, not a silent fallback
                print(f"explain: {exc}", file=sys.stderr)
                return 1
            source = (f"health: none: {exc}; every address counts as not yet checked "
                      "(--server URL names the server's dashboard)")
    try:
        text = explain(config, args.name, args.type, client=args.client, ecs=args.ecs,
                       health=health)
    except ValueError as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return 2
    print(source)
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
    parser = argparse.ArgumentParser(
        prog="gslb", description="Authoritative GSLB DNS: answers each client with the "
        "nearest healthy CDN edge. Docs: docs/dns.md, docs/gslb-config.md, docs/health.md.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_http(p: argparse.ArgumentParser) -> None:
        p.add_argument("--http", type=listener_arg, metavar="ADDR:PORT",
                       help="dashboard, API and /metrics here (default: the config's "
                            "dashboard.listen, 127.0.0.1:8080)")
        p.add_argument("--no-http", action="store_true",
                       help="no dashboard, API or /metrics (default: served)")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), metavar="FILE",
                       help="config file (default: data/gslb.yaml)")

    p = sub.add_parser("serve", help="run the authoritative DNS server",
                       description="Serve DNS on the config's listeners with N worker "
                                   "processes; one supervisor probes the edges and serves the "
                                   "dashboard. SIGHUP reloads, SIGTERM stops.")
    with_config(p)
    p.add_argument("--dns", action="append", type=listener_arg, metavar="ADDR:PORT",
                   help="listen here (UDP+TCP) instead of the config's server.listen; "
                        "repeatable (default: the config's)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="worker processes, each with its own SO_REUSEPORT share of the port "
                        "(default: the config's server.workers, auto = one per core)")
    p.add_argument("--pidfile", metavar="FILE",
                   help="write the serving PID here, for `gslb reload` (default: none)")
    p.add_argument("--state-file", metavar="PATH",
                   help="keep admin overrides here (default: the config's health.state_file)")
    p.add_argument("--store", type=store_arg, metavar="STORE",
                   help="etcd://HOST:PORT[,...]: answer customer names only with edges that "
                        "serve them (docs/control.md); file:PATH is the -c file "
                        "(default: the -c file)")
    p.add_argument("--node-id", help="this nameserver in the fleet (default ns-ADDR:PORT)")
    p.add_argument("--snapshot-dir", metavar="DIR",
                   help="where the last store state is kept (default: the state file's)")
    add_http(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log at debug level (default: info)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate a config; print every problem with file:line",
                       description="Validate a config: every problem as file:line: reason "
                                   "and exit 1, or one summary line and exit 0.")
    p.add_argument("config_file", nargs="?", metavar="FILE",
                   help="the config to check (default: -c, else data/gslb.yaml)")
    with_config(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("explain", help="show how a name is answered for a client",
                       description="The decision chain behind one answer, computed by the "
                                   "server's own code, with the running server's health.")
    with_config(p)
    p.add_argument("name", help="the name asked for, e.g. www.test.com.cdn.example.net")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--client", type=_client_arg, metavar="IP",
                     help="the resolver's (client's) address (default: 127.0.0.1)")
    who.add_argument("--ecs", type=_ecs_arg, metavar="CIDR",
                     help="the EDNS Client Subnet it sends, e.g. 192.0.2.0/24 (default: none)")
    p.add_argument("--type", default="A", choices=["A", "AAAA"], type=str.upper,
                   help="the query type (default: %(default)s)")
    server = p.add_mutually_exclusive_group()
    server.add_argument("--server", metavar="URL",
                        help="read the health from this running server's dashboard, e.g. "
                             "http://127.0.0.1:8080 (default: the config's dashboard.listen, "
                             "if a server answers there)")
    server.add_argument("--no-server", action="store_true",
                        help="do not ask a running server: every address counts as not yet "
                             "checked (default: ask)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("reload", help="make a running server re-read its config (SIGHUP)",
                       description="Send SIGHUP to a running `gslb serve`; with -c, only "
                                   "after that file passed `gslb check`.")
    p.add_argument("-c", "--config", metavar="FILE",
                   help="validate this file first and refuse if it is bad (default: no check)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--pidfile", metavar="FILE",
                        help="the file `gslb serve --pidfile` wrote")
    target.add_argument("--pid", type=int, help="the serving process's PID")
    p.set_defaults(func=cmd_reload)

    add_dnssec_parser(sub, with_config)

    # Parsed by the demo itself (`gslb demo --help`); listed here for `gslb --help`.
    sub.add_parser("demo", add_help=False,
                   help="the whole CDN on loopback (DNS, dashboard, edges, shield, origin); "
                        "`gslb demo --help` for its options")
    return parser


def worker_parser() -> argparse.ArgumentParser:
    """`gslb worker`: started by the supervisor only, so not among the commands."""
    p = argparse.ArgumentParser(prog="gslb worker", description="a DNS worker of `gslb serve`")
    p.add_argument("--control-fd", type=int, required=True,
                   help="the supervisor's end of the socketpair")
    p.set_defaults(func=cmd_worker)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        return run_demo(argv[1:])
    if argv[:1] == ["worker"]:
        args = worker_parser().parse_args(argv[1:])
    else:
        args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
