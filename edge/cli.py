"""`edge serve`: the edge proxy."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from cdnkit.listen import Listener, listener_arg
from cdnkit.store import store_arg

from . import config as edge_config
from .eventloop import run as run_loop
from .front import Listeners
from .proxy import EdgeApp
from .scratch import remove, shared_dirs
from .state import EdgeState

log = logging.getLogger("edge")


def _load(args: argparse.Namespace) -> edge_config.EdgeConfig:
    listen = tuple(args.listen or ())
    if getattr(args, "store", None) is not None and args.store.kind == "file":
        args.config = args.store.path          # file:PATH is the YAML file, as -c
    if args.origin:
        return edge_config.quick(args.origin, args.host, listen or (Listener("127.0.0.1", 8081),))
    cfg = edge_config.load(args.config)
    if listen:
        cfg = dataclasses.replace(cfg, listen=listen)
    return cfg


async def serve(args: argparse.Namespace, cfg: edge_config.EdgeConfig,
                reuse_port: bool = False, worker: int = 0) -> int:
    state = EdgeState(cfg)
    follower = None
    if args.store is not None and args.store.kind == "etcd":
        from .fleet import Follower
        follower = Follower(state, Path(args.config), _fleet_options(args, cfg, worker),
                            tuple(args.listen or ()))
        await follower.start()        # the store's customers (or the snapshot's) first
        cfg = state.config
    app = EdgeApp(state)
    if follower is not None:
        app.sealer = follower.sealer
    await app.start()
    listeners = Listeners(state, app.handle)
    for listener in cfg.listen:
        await listeners.add(listener.host, listener.port, reuse_port=reuse_port)
    tls = state.certs.server_context()
    for listener in cfg.tls_listen:
        await listeners.add(listener.host, listener.port, ssl=tls, reuse_port=reuse_port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        if args.origin:
            return
        if follower is not None:       # the local part of the config; customers stay
            if follower.snap is not None:
                follower.apply(follower.snap, save=False)
            return
        try:
            new = _load(args)
        except edge_config.ConfigError as exc:
            log.error("reload of %s rejected, keeping the previous config:\n  %s",
                      args.config, "\n  ".join(exc.problems))
            return
        state.apply(new)
        log.info("reloaded %s: %d customers", args.config, len(new.customers))

    def drain(on: bool) -> None:
        app.draining = on
        log.info("draining: /healthz answers %s", 503 if on else 200)

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGUSR1, lambda: drain(True))
    loop.add_signal_handler(signal.SIGUSR2, lambda: drain(False))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    log.info("ready: %d customers on %s", len(cfg.customers),
             ", ".join([str(l) for l in cfg.listen] + [f"{l} (TLS)" for l in cfg.tls_listen]))
    await stop.wait()
    if follower is not None:
        await follower.stop()
    listeners.close()
    await listeners.wait_closed()
    await app.stop()
    return 0


def _fleet_options(args: argparse.Namespace, cfg: edge_config.EdgeConfig, worker: int):
    from .fleet import FleetOptions

    return FleetOptions(args.store, args.node_id or cfg.name, args.kind, args.site,
                        tuple(args.address or ()), args.key_file or "", args.snapshot or "",
                        worker)


def cmd_validate(args: argparse.Namespace) -> int:
    from .tools import validate, validation_table

    cfg = edge_config.load(args.config)
    customer = cfg.by_directory.get(args.name) or cfg.by_cname.get(args.name.lower())
    if customer is None:
        print(f"no customer with directory or edge CNAME {args.name!r}", file=sys.stderr)
        return 2
    probes = asyncio.run(validate(cfg, customer, args.timeout))
    print(validation_table(customer, probes))
    return 0 if probes and all(p.ok for p in probes) else 1


def cmd_purge(args: argparse.Namespace) -> int:
    from .purge import append, ban_for

    cfg = edge_config.load(args.config)
    if not cfg.state_dir:
        print("the config has no state_dir: the workers have no bans file to follow",
              file=sys.stderr)
        return 2
    try:
        ban = ban_for(cfg, args.url, args.prefix, args.customer)
    except ValueError as exc:
        print(f"purge: {exc}", file=sys.stderr)
        return 2
    append(Path(cfg.state_dir) / "bans.jsonl", ban)
    what = "everything" if not ban.path else ("prefix " if ban.prefix else "") + ban.path
    print(f"purged {what} of {ban.directory} (every worker applies it within a second)")
    return 0


def cmd_whitelist(args: argparse.Namespace) -> int:
    from .tools import site_addresses, whitelist, whitelist_text

    cfg = edge_config.load(args.config)
    edges = site_addresses(Path(args.gslb)) if args.gslb else []
    print(whitelist_text(whitelist(cfg, edges), args.json))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the edge proxy")
    p.add_argument("-c", "--config", default=str(edge_config.DEFAULT_CONFIG))
    p.add_argument("--listen", action="append", type=listener_arg, metavar="ADDR:PORT")
    p.add_argument("--origin", help="quick mode: proxy every Host to this origin URL")
    p.add_argument("--host", help="quick mode: Host header to send to the origin")
    p.add_argument("--workers", type=int, default=0,
                   help="processes sharing the port with SO_REUSEPORT and the disk cache "
                        "(default: one per CPU, as nginx's worker_processes auto)")
    fleet = p.add_argument_group("fleet (customers from the store; docs/control.md)")
    fleet.add_argument("--store", type=store_arg, metavar="STORE",
                       help="file:PATH (the -c file, the default) or etcd://HOST:PORT[,...]")
    fleet.add_argument("--node-id", help="this edge in the fleet (default: the config's name)")
    fleet.add_argument("--kind", choices=["edge", "shield"], default="edge")
    fleet.add_argument("--site", default="", help="the gslb site this edge belongs to")
    fleet.add_argument("--address", action="append", metavar="IP",
                       help="an address DNS answers for this edge (repeatable; default: "
                            "the listen addresses)")
    fleet.add_argument("--key-file", help="opens the bucket secrets sealed in the store")
    fleet.add_argument("--snapshot", help="where the last applied store config is kept "
                                          "(default: STATE_DIR/store-NODE.json)")
    p.set_defaults(func=None)

    p = sub.add_parser("validate", help="GET the validation path from every origin server")
    p.add_argument("-c", "--config", default=str(edge_config.DEFAULT_CONFIG))
    p.add_argument("name", help="customer directory name or edge CNAME")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("purge", help="remove cached objects in every worker")
    p.add_argument("-c", "--config", default=str(edge_config.DEFAULT_CONFIG))
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--url", help="one URL, e.g. http://www.test.com/a.mp4")
    what.add_argument("--prefix", help="every URL under this one")
    what.add_argument("--customer", help="everything of this directory name (a ban)")
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("whitelist", help="print the source blocks origins must allow")
    p.add_argument("-c", "--config", default=str(edge_config.DEFAULT_CONFIG))
    p.add_argument("--gslb", help="also every edge address of this gslb config")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_whitelist)
    args = parser.parse_args(argv)
    if args.func is not None:
        try:
            return args.func(args)
        except edge_config.ConfigError as exc:
            print("\n".join(exc.problems), file=sys.stderr)
            return 1
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    try:
        cfg = _load(args)
    except edge_config.ConfigError as exc:
        print(f"{len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    workers = args.workers or os.cpu_count() or 1
    if workers == 1:
        return run_loop(serve(args, cfg))
    cfg, scratch = shared_dirs(cfg, workers)       # one cache, whatever the worker count
    try:
        return _fork_workers(args, cfg, workers)
    finally:
        remove(scratch)


def _fork_workers(args: argparse.Namespace, cfg: edge_config.EdgeConfig, workers: int) -> int:
    """N processes sharing the listeners with SO_REUSEPORT; signals are relayed to them.

    Forked before any event loop exists, so each child starts clean.
    """
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            os._exit(run_loop(serve(args, cfg, reuse_port=True, worker=len(children))))
        children.append(pid)

    def relay(sig: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, relay)
    status = 0
    for child in children:
        while True:
            try:
                _, code = os.waitpid(child, 0)
                status = status or os.waitstatus_to_exitcode(code)
                break
            except InterruptedError:
                continue
    return status


if __name__ == "__main__":
    sys.exit(main())
