"""`gslb demo`: the whole CDN on loopback, supervised, and what to try.

    gslb demo [-c CONFIG] [--dns ADDR:PORT ...] [--http ADDR:PORT | --no-http] ...
    gslb demo stop fra | start fra | status       # talk to the running demo

The demo owns every process it starts: `gslb demo stop NAME` and `gslb demo
start NAME` ask it (over a Unix socket) to stop or restart one part, so a part
started again is still the demo's child and goes away with Ctrl-C. A part that
dies or cannot listen is reported, never counted as started.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from cdnkit.check import ConfigError, describe
from cdnkit.listen import listener_arg
from gslb.config import DEFAULT_CONFIG, load_config
from gslb.model import Config

from .cdn import Plan, children
from .certs import TLS_PORT
from .procs import Child, busy, pid_of, start, stop, stop_all

TRIES = (
    ("192.0.2.0/24", "a client in New York"),
    ("198.51.100.0/24", "a client in Frankfurt"),
    ("203.0.113.0/24", "a client in Singapore"),
    ("2001:db8:4::/48", "a client in London"),
)


def default_control() -> str:
    """Where a running demo listens for `gslb demo start|stop|status`."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return str(Path(base) / f"gslb-demo-{os.getuid()}.sock")


def program() -> str:
    """How the user runs us (e.g. .venv/bin/gslb), for lines to copy and paste."""
    return os.environ.get("GSLB_DEMO_PROGRAM") or "gslb"


def edge_program() -> str:
    """The `edge` command installed beside `gslb` (.venv/bin/gslb: .venv/bin/edge)."""
    head, _, _ = program().rpartition("gslb")
    return f"{head}edge" if program().endswith("gslb") else "edge"


# --- the running demo ----------------------------------------------------------------------


class Demo:
    """The children, the control socket, and the loop that watches both."""

    def __init__(self, plan: Plan, work: Path, control: str, fleet: object = None):
        self.plan, self.work, self.control, self.fleet = plan, work, control, fleet
        if fleet is not None:
            from .fleet import children as fleet_children
            self.children = fleet_children(plan, work, fleet)
        else:
            self.children = children(plan, work)
        self.expected: dict[str, bool] = {}     # name -> should be running
        self.server: socket.socket | None = None

    def taken(self) -> list[tuple[str, list[str]]]:
        """(part, its addresses already held by another process), for every part."""
        return [(c.name, found) for c in self.children
                if (found := busy(c.binds + c.tls, c.udp))]

    def find(self, name: str) -> Child | None:
        by_name = {c.name: c for c in self.children}
        for candidate in (name, f"edge-{name}", f"shield-{name}"):   # "fra" is the fra edge
            if candidate in by_name:
                return by_name[candidate]
        return None

    def start_one(self, child: Child) -> str:
        why = start(child)
        self.expected[child.name] = not why
        if why:
            return f"{child.role} ({child.name}) did not start: {why} (log: {child.log})"
        return f"started {child.role} ({child.name}, pid {pid_of(child)}) on {', '.join(child.binds)}"

    def stop_one(self, child: Child) -> str:
        self.expected[child.name] = False
        if not child.alive:
            return f"{child.role} ({child.name}) is not running"
        stop(child)
        return f"stopped {child.role} ({child.name})"

    def status(self) -> list[dict]:
        return [{"name": c.name, "role": c.role, "pid": pid_of(c) if c.alive else None,
                 "running": c.alive, "binds": c.binds, "log": str(c.log)}
                for c in self.children]

    def handle(self, request: dict) -> dict:
        action, name = request.get("action"), str(request.get("name", ""))
        if action == "status":
            return {"ok": True, "children": self.status()}
        child = self.find(name)
        if child is None:
            return {"ok": False, "message": f"no part named {name!r} "
                    f"(known: {', '.join(c.name for c in self.children)})"}
        if action == "stop":
            return {"ok": True, "message": self.stop_one(child)}
        if action == "start":
            if child.alive:
                return {"ok": True, "message": f"{child.role} is already running "
                        f"(pid {pid_of(child)})"}
            message = self.start_one(child)
            return {"ok": child.alive, "message": message}
        return {"ok": False, "message": f"unknown action {action!r}"}

    def open_control(self) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.control)
        os.chmod(self.control, 0o600)
        self.server.listen(8)

    def close_control(self) -> None:
        if self.server is not None:
            self.server.close()
            Path(self.control).unlink(missing_ok=True)

    def serve_one(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(5)
            try:
                request = json.loads(conn.makefile("rb").readline() or b"{}")
                reply = self.handle(request if isinstance(request, dict) else {})
            except (OSError, ValueError) as exc:
                reply = {"ok": False, "message": f"bad request: {exc}"}
            if reply.get("message"):
                print(f"demo: {reply['message']}", flush=True)
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def watch(self, stopping: list[bool]) -> None:
        """Serve control requests and report children that die, until told to stop."""
        while not stopping:
            try:
                readable, _, _ = select.select([self.server], [], [], 0.5)
            except InterruptedError:
                continue
            if readable:
                self.serve_one()
            for child in self.children:
                if stopping:         # Ctrl-C reaches the children too: no obituaries
                    return
                if self.expected.get(child.name) and not child.alive:
                    self.expected[child.name] = False
                    print(f"demo: {child.role} ({child.name}) exited with status "
                          f"{child.proc.returncode}; `{program()} demo start {child.name}` "
                          "starts it again", flush=True)


def banner(demo: Demo) -> str:
    plan, config = demo.plan, demo.plan.config
    first = plan.dns[0]
    at = f"@{first.host} -p {first.port}"
    name = "www.test.com." + config.zones[0].origin
    lines = [f"gslb demo: authoritative DNS for {', '.join(z.origin for z in config.zones)} "
             f"on {', '.join(map(str, plan.dns))}", "", "Try:"]
    for subnet, who in TRIES:
        lines.append(f"  dig {at} {name} A +subnet={subnet} +norec    # {who}")
    lines += [f"  dig {at} {name} AAAA +norec",
              f"  dig {at} {config.zones[0].origin} SOA +norec",
              f"  {program()} explain{_config_option(plan)}{_server_option(plan)} {name} "
              "--ecs 198.51.100.0/24"]
    if plan.http is not None:
        lines += [f"  open http://{plan.http}/            # health dashboard",
                  f"  curl -s http://{plan.http}/metrics | grep gslb_"]
    edges = [c for c in demo.children if c.name.startswith("edge-") and c.alive]
    if edges:
        edge = next((c for c in edges if c.name == "edge-fra"), edges[0])
        ip, port = edge.binds[0].rsplit(":", 1)
        lines += ["", "Fetch through the edge DNS answered (MISS, then HIT; the shield "
                      "absorbs the other edges' misses):",
                  f"  curl -s -o /dev/null -D - --resolve www.test.com:{port}:{ip} "
                  f"http://www.test.com:{port}/clip.webm",
                  f"  open http://{edge.binds[0]}/800001/test/      # the demo video, seekable"]
        if edge.tls:
            tls_ip, tls_port = edge.tls[0].rsplit(":", 1)
            lines += ["", "Over HTTPS: HTTP/2 (and HTTP/1.1) by ALPN, with the demo's own CA:",
                      f"  curl -s -o /dev/null -D - --http2 --cacert {demo.work / 'demo-ca.pem'} "
                      f"--resolve www.test.com:{tls_port}:{tls_ip} "
                      f"https://www.test.com:{tls_port}/clip.webm",
                      "Over HTTP/3 (QUIC, same port over UDP; Debian's curl has none):",
                      f"  {edge_program()} h3get --cacert {demo.work / 'demo-ca.pem'} "
                      f"--resolve www.test.com:{tls_port}:{tls_ip} "
                      f"https://www.test.com:{tls_port}/clip.webm"]
    if demo.fleet is not None:
        from .fleet import banner_lines
        edge = next((c for c in demo.children if c.name == "edge-fra"), None)
        lines += banner_lines(demo.plan, demo.fleet,
                              edge.binds[0] if edge else "127.0.0.12:8081", demo.work)
    control = "" if demo.control == default_control() else f" --control {demo.control}"
    lines += ["", "The CDN (stop a site and its clients move to the next nearest one; "
                  "every part is the demo's and stops with it):"]
    for child in demo.children:
        state = f"pid {pid_of(child)}" if child.alive else "NOT RUNNING"
        binds = child.binds + [f"{bind} (TLS)" for bind in child.tls]
        lines.append(f"  {child.name:<11} {child.role} on {', '.join(binds)} ({state})")
    if edges:
        lines += [f"  {program()} demo{control} stop {edge.name}     # stop {edge.role}",
                  f"  {program()} demo{control} start {edge.name}    # start it again",
                  f"  {program()} demo{control} status"]
    lines += ["", "Stop with Ctrl-C."]
    return "\n".join(lines)


def _server_option(plan: Plan) -> str:
    """`explain` finds the server at the config's dashboard listener; say where it is not."""
    if plan.http is None or plan.http == plan.config.dashboard.listen:
        return ""
    return f" --server http://{plan.http}"


def _config_option(plan: Plan) -> str:
    return "" if plan.config_path == DEFAULT_CONFIG.resolve() else f" -c {plan.config_path}"


def _talk(control: str, request: dict, timeout: float = 30.0) -> dict | None:
    """Send one request to a running demo; None when none answers at `control`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(control)
            s.sendall(json.dumps(request).encode() + b"\n")
            return json.loads(s.makefile("rb").readline() or b"{}")
    except (OSError, ValueError):
        return None


def run(args: argparse.Namespace) -> int:
    if _talk(args.control, {"action": "status"}, timeout=2) is not None:
        print(f"demo: a demo is already running (control socket {args.control}); "
              f"stop it with Ctrl-C, or talk to it with `{program()} demo status`",
              file=sys.stderr)
        return 1
    Path(args.control).unlink(missing_ok=True)           # left by a demo that was killed
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(describe(exc.problems, args.config), file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="gslb-demo-"))   # configs, caches, logs, state
    demo = Demo(_plan(args, config), work, args.control, fleet=_fleet(args))
    taken = demo.taken()
    if taken:
        shutil.rmtree(work, ignore_errors=True)
        print(f"demo: cannot start: the addresses of {len(taken)} part(s) are in use (another "
              f"demo? `{program()} demo status` lists a running one):", file=sys.stderr)
        for name, addresses in taken:
            print(f"  {name:<11} {', '.join(addresses)}", file=sys.stderr)
        return 1
    stopping: list[bool] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        demo.open_control()
        for child in demo.children:
            if stopping:
                return 130
            message = demo.start_one(child)
            if not child.alive:
                print(f"demo: {message}", file=sys.stderr, flush=True)
                if child.name in ("gslb", "etcd"):      # nothing works without them
                    return 1
        print(banner(demo), flush=True)
        demo.watch(stopping)
        return 0
    finally:
        demo.close_control()
        stop_all(demo.children)
        shutil.rmtree(work, ignore_errors=True)


def _plan(args: argparse.Namespace, config: Config) -> Plan:
    dns = tuple(args.dns) if args.dns else config.server.listen
    http = None if args.no_http else (args.http or config.dashboard.listen)
    return Plan(Path(args.config).resolve(), config, dns, http, origin=args.origin,
                shield=args.shield, workers=args.workers, https_port=args.https_port)


def _fleet(args: argparse.Namespace) -> object:
    if not args.fleet:
        return None
    from .fleet import FleetPlan
    return FleetPlan(args.etcd, args.etcd_peer, args.cdnctl, args.acme, args.acme_admin)


def remote(args: argparse.Namespace) -> int:
    request = {"action": args.action, "name": args.name or ""}
    if args.action != "status" and not args.name:
        print(f"demo {args.action}: which part? (e.g. edge-fra, shield-fra, origin)",
              file=sys.stderr)
        return 2
    reply = _talk(args.control, request)
    if reply is None:
        print(f"demo: no demo is running (nothing answers at {args.control}); "
              f"start one with `{program()} demo`", file=sys.stderr)
        return 1
    if args.action == "status" and reply.get("ok"):
        for c in reply["children"]:
            state = f"running, pid {c['pid']}" if c["running"] else "stopped"
            print(f"{c['name']:<11} {state:<20} {', '.join(c['binds'])}  ({c['log']})")
        return 0
    print(reply.get("message", ""))
    return 0 if reply.get("ok") else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{program()} demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", default="run", choices=["run", "start", "stop", "status"],
                   help="run the demo (default), or start/stop one part of a running demo, "
                        "or list its parts")
    p.add_argument("name", nargs="?", help="the part to start or stop: edge-fra (or fra), "
                                           "shield-fra, origin, gslb")
    p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG),
                   help="gslb config (default: data/gslb.yaml); an edge runs per site")
    p.add_argument("--dns", action="append", type=listener_arg, metavar="ADDR:PORT",
                   help="DNS listeners instead of the config's (repeatable)")
    p.add_argument("--http", type=listener_arg, metavar="ADDR:PORT",
                   help="dashboard address (default: the config's, 127.0.0.1:8080)")
    p.add_argument("--no-http", action="store_true", help="no dashboard")
    p.add_argument("--origin", default="127.0.0.1:9000", metavar="ADDR:PORT",
                   help="where the demo origin listens (default: %(default)s)")
    p.add_argument("--shield", default="127.0.0.14:8081", metavar="ADDR:PORT",
                   help="where the shield listens (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="DNS worker processes (default: %(default)s)")
    p.add_argument("--https-port", type=int, default=TLS_PORT, metavar="PORT",
                   help="every site edge's HTTPS port, HTTP/3 on it over UDP "
                        "(default: %(default)s)")
    p.add_argument("--fleet", action="store_true",
                   help="customers in a real etcd (127.0.0.1:2379), managed by cdnctl on "
                        "127.0.0.1:8090; edges and DNS follow it (docs/control.md)")
    p.add_argument("--etcd", default="127.0.0.1:2379", metavar="ADDR:PORT",
                   help="--fleet: etcd's client address (default: %(default)s)")
    p.add_argument("--etcd-peer", default="127.0.0.1:2380", metavar="ADDR:PORT",
                   help="--fleet: etcd's peer address (default: %(default)s)")
    p.add_argument("--cdnctl", default="127.0.0.1:8090", metavar="ADDR:PORT",
                   help="--fleet: the control plane's API and page (default: %(default)s)")
    p.add_argument("--acme", default="127.0.0.1:14000", metavar="ADDR:PORT",
                   help="--fleet: pebble, the ACME CA for https: auto (default: %(default)s)")
    p.add_argument("--acme-admin", default="127.0.0.1:15000", metavar="ADDR:PORT",
                   help="--fleet: pebble's management API (default: %(default)s)")
    p.add_argument("--control", default=default_control(), metavar="PATH",
                   help="the running demo's control socket (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "run":
        return run(args)
    return remote(args)


if __name__ == "__main__":
    sys.exit(main())
