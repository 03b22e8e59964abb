"""`edge serve | validate | purge | whitelist`: the edge proxy and its tools."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from pathlib import Path

from cdnkit.capacity import capacity_arg
from cdnkit.check import describe
from cdnkit.listen import Listener, listener_arg
from cdnkit.storespec import store_arg

from edge import config as edge_config

log = logging.getLogger("edge")


def _load(args: argparse.Namespace) -> edge_config.EdgeConfig:
    listen = tuple(args.listen or ())
    if getattr(args, "store", None) is not None and args.store.kind == "file":
        args.config = args.store.path          # file:PATH is the YAML file, as -c
    https = tuple(getattr(args, "https", None) or ())
    cert, key = getattr(args, "cert", None) or "", getattr(args, "key", None) or ""
    if args.origin:
        return edge_config.quick(args.origin, args.host, listen or (Listener("127.0.0.1", 8081),),
                                 https, cert, key)
    cfg = edge_config.load(args.config)
    if listen:
        cfg = dataclasses.replace(cfg, listen=listen)
    if https:                       # the config's TLS listeners replaced, as --listen does
        certs = edge_config.quick_certificates(https, cert, key) if (cert or key) else (
            cfg.certificates)
        if not certs:
            raise edge_config.ConfigError(["--https needs --cert and --key, or tls "
                                           "certificates in the config"])
        cfg = dataclasses.replace(cfg, tls_listen=https, certificates=certs)
    return cfg


def _fleet_options(args: argparse.Namespace, cfg: edge_config.EdgeConfig, worker: int):
    from edge.fleet.watch import FleetOptions

    return FleetOptions(args.store, args.node_id or cfg.name, args.kind, args.site,
                        tuple(args.address or ()), args.key_file or "", args.snapshot or "",
                        worker, tuple(sorted((args.capacity or {}).items())))


def cmd_validate(args: argparse.Namespace) -> int:
    from edge.tools import validate, validation_table

    cfg = edge_config.load(args.config)
    customer = cfg.by_directory.get(args.name) or cfg.by_cname.get(args.name.lower())
    if customer is None:
        print(f"no customer with directory or edge CNAME {args.name!r}", file=sys.stderr)
        return 2
    probes = asyncio.run(validate(cfg, customer, args.timeout))
    print(validation_table(customer, probes))
    return 0 if probes and all(p.ok for p in probes) else 1


def cmd_purge(args: argparse.Namespace) -> int:
    from edge.cache.purge import append, ban_for

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
    from edge.tools import site_addresses, whitelist, whitelist_text

    cfg = edge_config.load(args.config)
    edges = site_addresses(Path(args.gslb)) if args.gslb else []
    print(whitelist_text(whitelist(cfg, edges), args.json))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge", description="The CDN edge proxy: routes by edge CNAME or CDN URL, pulls "
        "from the customer's origin, caches (RFC 9111). Docs: docs/edge.md.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=str(edge_config.DEFAULT_CONFIG), metavar="FILE",
                       help="edge config (default: data/edge.yaml)")

    p = sub.add_parser("serve", help="run the edge proxy",
                       description="Serve the config's customers. SIGHUP reloads, SIGUSR1/2 "
                                   "drain/undrain /healthz, SIGTERM stops after the drain bound.")
    with_config(p)
    p.add_argument("--listen", action="append", type=listener_arg, metavar="ADDR:PORT",
                   help="listen here instead of the config's listen; repeatable "
                        "(default: the config's, 127.0.0.1:8081)")
    p.add_argument("--origin", metavar="URL",
                   help="quick mode: proxy every Host to this origin URL, no config "
                        "(default: off)")
    p.add_argument("--host", metavar="HOST",
                   help="quick mode: Host header to send to the origin (default: the "
                        "client's)")
    tls = p.add_argument_group("HTTPS (HTTP/2 and HTTP/1.1 by ALPN; docs/edge.md)")
    tls.add_argument("--https", action="append", type=listener_arg, metavar="ADDR:PORT",
                     help="serve TLS here instead of the config's tls listen; repeatable "
                          "(default: the config's, none in quick mode)")
    tls.add_argument("--cert", metavar="FILE",
                     help="certificate chain (PEM) for --https, for every name "
                          "(default: the config's tls certificates)")
    tls.add_argument("--key", metavar="FILE", help="private key (PEM) of --cert")
    tls.add_argument("--no-h3", action="store_true",
                     help="no HTTP/3 (QUIC on the same UDP port) and no Alt-Svc "
                          "(default: on, unless the config says tls: h3: false)")
    tls.add_argument("--h3-retry", action="store_true",
                     help="send every new HTTP/3 client a QUIC Retry first (address "
                          "validation; default: only past a number of handshakes)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes sharing the port with SO_REUSEPORT and the disk cache "
                        "(default: one per CPU, as nginx's worker_processes auto)")
    p.add_argument("--drain-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="on SIGTERM, how long requests in flight may take before they are "
                        "cut off (default: %(default)g; an idle edge exits at once)")
    fleet = p.add_argument_group("fleet (customers from the store; docs/control.md)")
    fleet.add_argument("--store", type=store_arg, metavar="STORE",
                       help="file:PATH (the -c file, the default) or etcd://HOST:PORT[,...]")
    fleet.add_argument("--node-id", help="this edge in the fleet (default: the config's name)")
    fleet.add_argument("--kind", choices=["edge", "shield"], default="edge",
                       help="what this node is to the fleet (default: %(default)s)")
    fleet.add_argument("--site", default="",
                       help="the gslb site this edge belongs to (default: none)")
    fleet.add_argument("--address", action="append", metavar="IP",
                       help="an address DNS answers for this edge (repeatable; default: "
                            "the listen addresses)")
    fleet.add_argument("--key-file", metavar="FILE",
                       help="opens the bucket secrets sealed in the store (default: none)")
    fleet.add_argument("--snapshot", metavar="FILE",
                       help="where the last applied store config is kept "
                            "(default: STATE_DIR/store-NODE.json)")
    fleet.add_argument("--capacity", type=capacity_arg, metavar="PARTS",
                       help="what this edge can serve, reported to the nameservers, which "
                            "shed clients past its watermarks: requests=N (per s), "
                            "bandwidth=1Gbit, connections=N (default: none)")
    p.set_defaults(func=None)

    p = sub.add_parser("validate", help="GET the validation path from every origin server",
                       description="Fetch the customer's validation path from each origin "
                                   "server; exit 1 unless every one returns 200.")
    with_config(p)
    p.add_argument("name", help="customer directory name or edge CNAME")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="per request (default: %(default)g)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("purge", help="remove cached objects in every worker",
                       description="Append a ban to the config's state_dir; every worker "
                                   "applies it within a second.")
    with_config(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--url", help="one URL, e.g. http://www.test.com/a.mp4")
    what.add_argument("--prefix", metavar="URL", help="every URL under this one")
    what.add_argument("--customer", metavar="DIRECTORY",
                      help="everything of this directory name (a ban)")
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("whitelist", help="print the source blocks origins must allow",
                       description="The egress blocks of the config and, with --gslb, every "
                                   "edge address of a gslb config, collapsed.")
    with_config(p)
    p.add_argument("--gslb", metavar="FILE",
                   help="also every edge address of this gslb config (default: none)")
    p.add_argument("--json", action="store_true", help="JSON instead of text (default: text)")
    p.set_defaults(func=cmd_whitelist)

    p = sub.add_parser("h3get", help="GET one URL over HTTP/3 (Debian's curl has none)",
                       description="One HTTP/3 request, the response head printed as "
                                   "`curl -D -` does; exit 1 when nothing answered.")
    p.add_argument("url", help="https://HOST[:PORT]/PATH")
    p.add_argument("--cacert", default="", metavar="FILE",
                   help="CA certificates to check the edge's with (default: the system's)")
    p.add_argument("--resolve", action="append", default=[], metavar="HOST:PORT:ADDR",
                   help="connect to ADDR for HOST:PORT, as curl's --resolve (repeatable; "
                        "default: HOST itself)")
    p.add_argument("-I", "--head", action="store_true", help="HEAD instead of GET")
    p.add_argument("-o", "--output", default="", metavar="FILE",
                   help="write the body here, - for stdout (default: dropped)")
    p.add_argument("--max-time", type=float, default=30.0, metavar="SECONDS",
                   help="give up after this long (default: %(default)g)")
    p.set_defaults(func=cmd_h3get)
    return parser


def cmd_h3get(args: argparse.Namespace) -> int:
    from edge.http.h3get import run        # aioquic's client only for this command
    return run(args.url, args.cacert, args.resolve, args.head, args.output, args.max_time)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is not None:
        try:
            return args.func(args)
        except edge_config.ConfigError as exc:
            print(describe(exc.problems, args.config), file=sys.stderr)
            return 1
    return cmd_serve(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from cdnkit.logs import setup

    from edge.eventloop import run as run_loop
    from edge.scratch import remove, shared_dirs
    from edge.serving import bind, bind_h3, fork_workers, serve

    setup(logging.INFO)
    try:
        cfg = _load(args)
    except edge_config.ConfigError as exc:
        print(describe(exc.problems, args.config), file=sys.stderr)
        return 1
    if args.no_h3:
        cfg = dataclasses.replace(cfg, h3=False)
    workers = args.workers or os.cpu_count() or 1
    try:
        plain, tls = bind(cfg, workers)     # before anything else: one clear line if taken
        try:
            quic = bind_h3(cfg, workers)
        except OSError:
            for owned in plain + tls:
                owned.close()
            raise
    except OSError as exc:          # cdnkit.ports.AddressInUse, CannotListen
        print(f"edge: cannot listen on {exc}", file=sys.stderr)
        return 1

    def reload() -> edge_config.EdgeConfig | None:
        if args.origin:
            return None
        try:
            return _load(args)
        except edge_config.ConfigError as exc:
            log.error("reload of %s rejected, keeping the previous config:\n  %s",
                      args.config, "\n  ".join(exc.problems))
            return None

    def follower(index: int):
        """Worker `index`'s store follower, made around its EdgeState (None: no store)."""
        if args.store is None or args.store.kind != "etcd":
            return None
        from edge.fleet.watch import Follower

        return lambda state: Follower(state, Path(args.config), _fleet_options(args, cfg, index),
                                      tuple(args.listen or ()))

    def run(index: int) -> int:
        return run_loop(serve(cfg, [o.sockets[index] for o in plain],
                              [o.sockets[index] for o in tls], reload, args.drain_timeout,
                              follower(index), [o.sockets[index] for o in quic],
                              args.h3_retry))

    if workers == 1:
        return run(0)
    cfg, scratch = shared_dirs(cfg, workers)       # one cache, whatever the worker count
    try:
        return fork_workers(run, workers, plain + tls + quic)
    finally:
        remove(scratch)


if __name__ == "__main__":
    sys.exit(main())
