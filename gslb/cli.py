"""`gslb serve | check | explain | reload | demo`."""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .config import DEFAULT_CONFIG, ConfigError, load_config, parse_listener
from .model import Config, Listener

log = logging.getLogger("gslb")

EXIT_BIND_FAILED = 3


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


async def run_worker(config: Config, listeners: tuple[Listener, ...], reuse_port: bool,
                     ready: str | None = None) -> None:
    """One serving process: sockets, SIGHUP reload, SIGTERM/SIGINT stop."""
    from .server import DnsServer

    server = DnsServer(config, listeners, reuse_port=reuse_port)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(server.reload()))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if ready:
        log.info("%s", ready)
    await stop.wait()
    await server.stop()


def _worker_main(config: Config, listeners: tuple[Listener, ...], reuse_port: bool,
                 ready: str | None) -> int:
    try:
        asyncio.run(run_worker(config, listeners, reuse_port, ready))
    except OSError as exc:
        log.error("cannot listen on %s: %s", ", ".join(map(str, listeners)), exc)
        return EXIT_BIND_FAILED
    return 0


def _supervise(config: Config, listeners: tuple[Listener, ...], workers: int, ready: str) -> int:
    """Fork `workers` processes sharing the ports via SO_REUSEPORT; relay signals."""
    children: dict[int, float] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            os._exit(_worker_main(config, listeners, True, ready if index == 0 else None))
        children[pid] = time.monotonic()

    def relay(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, relay)
    for index in range(workers):
        spawn(index)
    log.info("supervisor %d: %d workers on %s", os.getpid(), workers,
             ", ".join(map(str, listeners)))
    status = 0
    while children:
        try:
            pid, wstatus = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        started = children.pop(pid, time.monotonic())
        code = os.waitstatus_to_exitcode(wstatus)
        if stopping:
            continue
        if code == EXIT_BIND_FAILED:
            log.error("a worker could not bind its sockets; stopping")
            stopping, status = True, 1
            relay(signal.SIGTERM, None)
            continue
        log.error("worker %d exited with %d; restarting", pid, code)
        if time.monotonic() - started < 1:
            time.sleep(1)   # do not spin on a worker that dies at start
        spawn(len(children))
    return status


def cmd_serve(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    config = _load_or_exit(args.config)
    listeners = tuple(args.dns) if args.dns else config.server.listen
    workers = args.workers or config.server.workers or (os.cpu_count() or 1)
    if args.pidfile:
        Path(args.pidfile).write_text(f"{os.getpid()}\n")
    ready = f"ready: {summary(config)}; DNS on {', '.join(map(str, listeners))}"
    try:
        if workers == 1:
            return _worker_main(config, listeners, False, ready)
        return _supervise(config, listeners, workers, ready)
    finally:
        if args.pidfile:
            Path(args.pidfile).unlink(missing_ok=True)


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


DEMO_TRIES = (
    ("192.0.2.0/24", "a client in New York"),
    ("198.51.100.0/24", "a client in Frankfurt"),
    ("203.0.113.0/24", "a client in Singapore"),
    ("2001:db8:4::/48", "a client in London"),
)


def demo_banner(config: Config, listeners: tuple[Listener, ...]) -> str:
    first = listeners[0]
    at = f"@{first.host} -p {first.port}"
    name = "www.test.com." + config.zones[0].origin
    lines = [f"gslb demo: authoritative DNS for {', '.join(z.origin for z in config.zones)} "
             f"on {', '.join(map(str, listeners))}", "", "Try:"]
    for subnet, who in DEMO_TRIES:
        lines.append(f"  dig {at} {name} A +subnet={subnet} +norec    # {who}")
    lines += [f"  dig {at} {name} AAAA +norec",
              f"  dig {at} {config.zones[0].origin} SOA +norec",
              f"  gslb explain {name} --ecs 198.51.100.0/24",
              "", "Stop with Ctrl-C."]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    config = _load_or_exit(args.config)
    listeners = tuple(args.dns) if args.dns else config.server.listen
    print(demo_banner(config, listeners), flush=True)
    return _worker_main(config, listeners, False, f"ready: {summary(config)}")


# --- main ------------------------------------------------------------------------------------


def _listener_arg(text: str) -> Listener:
    try:
        return parse_listener(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG),
                       help="config file (default: data/gslb.yaml)")

    p = sub.add_parser("serve", help="run the authoritative DNS server")
    with_config(p)
    p.add_argument("--dns", action="append", type=_listener_arg, metavar="ADDR:PORT",
                   help="listen here (UDP+TCP) instead of the config's listeners; repeatable")
    p.add_argument("--workers", type=int, default=0,
                   help="processes sharing the port via SO_REUSEPORT (default: one per core)")
    p.add_argument("--pidfile", help="write the serving PID here (for `gslb reload`)")
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

    p = sub.add_parser("demo", help="serve the default config on loopback and print what to try")
    with_config(p)
    p.add_argument("--dns", action="append", type=_listener_arg, metavar="ADDR:PORT")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
