"""Health dashboard, JSON API, Prometheus metrics and admin actions (aiohttp).

Reads snapshots only: the `HealthBoard` view, the supervisor's counters and
config. Admin actions need the dashboard token (config `dashboard.token` or
the environment variable it names); without a configured token they are
refused outright.
"""
from __future__ import annotations

import hmac
import ipaddress
import time
from pathlib import Path
from typing import Any, Mapping, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cdnkit.listen import Listener
from cdnkit.ports import TCP, own

from gslb.fleet import api as fleetapi
from gslb import select
from gslb.geo import Decision
from gslb.health import HealthBoard, HealthView, Target, site_summary, view_to_json
from gslb.model import AdminState, Location


class Supervisor(Protocol):
    """What the dashboard reads from the process that runs it (gslb.supervisor's
    Supervisor): the health board and the workers' counters."""

    board: HealthBoard
    workers: Mapping[int, Any]
    rebuilds: dict[str, int]
    reloads: dict[str, int]

    def query_counts(self) -> dict[tuple[int, str], int]: ...

    def extra_counts(self) -> dict[tuple[str, str], int]: ...


SUPERVISOR = web.AppKey("supervisor", Supervisor)
REGISTRY = web.AppKey("registry", CollectorRegistry)
PAGE = (Path(__file__).parent / "dashboard.html").read_text()

# Where the services view shows "who would be answered from where".
SAMPLES = (("New York", 40.71, -74.01), ("Frankfurt", 50.11, 8.68), ("London", 51.51, -0.13),
           ("Singapore", 1.35, 103.82), ("Tokyo", 35.68, 139.65), ("Sao Paulo", -23.55, -46.63),
           ("Sydney", -33.87, 151.21))
ACTIONS = {"drain": AdminState.DRAIN, "force-down": AdminState.DOWN,
           "force-up": AdminState.UP, "clear": None}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
          16: "BADVERS"}


class _Collector:
    """Metrics read from the supervisor at scrape time."""

    def __init__(self, sup: Supervisor):
        self.sup = sup

    def collect(self):  # noqa: ANN201 - prometheus_client protocol
        sup = self.sup
        view = getattr(sup, "view", None) or sup.board.view
        state = GaugeMetricFamily("gslb_edge_state", "Edge address state (1 for the current one)",
                                  labels=["site", "address", "state"])
        for ip, h in view.addresses.items():
            for s in ("up", "down", "drain", "unknown"):
                state.add_metric([h.site, ip, s], 1.0 if h.state.value == s else 0.0)
        yield state
        changes = CounterMetricFamily("gslb_edge_state_changes", "Edge state changes",
                                      labels=["address", "state"])
        for (ip, new), n in sup.board.change_counts.items():
            changes.add_metric([ip, new], n)
        yield changes
        queries = CounterMetricFamily("gslb_dns_queries", "DNS queries answered, all workers",
                                      labels=["rcode", "service"])
        for (rcode, service), n in sorted(sup.query_counts().items()):
            queries.add_metric([RCODES.get(rcode, str(rcode)), service or "zone"], n)
        yield queries
        rebuilds = CounterMetricFamily("gslb_answer_rebuilds", "Answer table rebuilds pushed "
                                       "to workers", labels=["reason"])
        for reason, n in sup.rebuilds.items():
            rebuilds.add_metric([reason], n)
        yield rebuilds
        reloads = CounterMetricFamily("gslb_config_reloads", "Config reloads", labels=["result"])
        for result, n in sup.reloads.items():
            reloads.add_metric([result], n)
        yield reloads
        extra = sup.extra_counts()
        rrl = CounterMetricFamily("gslb_rrl_responses", "UDP responses rate limited, by action",
                                  labels=["action"])
        for action in ("dropped", "slipped"):
            rrl.add_metric([action], extra.get(("rrl", action), 0))
        yield rrl
        tcp = CounterMetricFamily("gslb_tcp_connections_closed", "TCP connections refused or "
                                  "closed early by the connection limits", labels=["reason"])
        for reason in ("refused", "evicted"):
            tcp.add_metric([reason], extra.get(("tcp", reason), 0))
        yield tcp
        workers = GaugeMetricFamily("gslb_workers", "DNS worker processes running")
        workers.add_metric([], len(sup.workers))
        yield workers


def _metrics(board: HealthBoard, sup: Supervisor) -> CollectorRegistry:
    registry = CollectorRegistry()
    results = Counter("gslb_check_results", "Health check results", ["site", "address", "result"],
                      registry=registry)
    latency = Histogram("gslb_check_latency_seconds", "Latency of successful health checks",
                        ["address"],
                        buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                        registry=registry)

    def observe(target: Target, ok: bool, seconds: float) -> None:
        results.labels(target.site, target.ip, "ok" if ok else "fail").inc()
        if ok:          # a failure's time is its timeout or a refusal: not a latency
            latency.labels(target.ip).observe(seconds)

    board.result_listeners.append(observe)
    registry.register(_Collector(sup))
    registry.register(fleetapi.FleetCollector(sup))
    return registry


def health_json(board: HealthBoard, view: HealthView | None = None) -> dict[str, Any]:
    """The health page's data; `view` is what the answers use (the fleet's, with a store)."""
    config = board.config
    view = board.current(view)
    return {
        "generated": time.time(),
        "config": str(Path(config.source).resolve()),
        "first_round_done": board.first_round_done,
        "admin": {"enabled": bool(config.dashboard.token)},
        "addresses": view_to_json(view),
        "shed": dict(view.shed),                 # address -> level (of shed.STEPS)
        "shed_notes": dict(view.shed_notes),     # site -> why it sheds
        "sites": {name: {"city": s.city, "lat": s.lat, "lon": s.lon, "state": s.state.value,
                         "check": s.check, "addresses": [a.ip for a in s.addresses],
                         "overall": site_summary(view, [a.ip for a in s.addresses])}
                  for name, s in config.sites.items()},
        "overrides": board.overrides(),
        "history": [{"at": c.at, "site": c.site, "address": c.ip, "from": c.old.value,
                     "to": c.new.value, "reason": c.reason}
                    for c in reversed(board.history)][:50],
    }


def services_json(board: HealthBoard, view: HealthView | None = None) -> dict[str, Any]:
    config, view = board.config, view or board.view
    out = []
    for svc in config.services:
        samples = []
        for city, lat, lon in SAMPLES:
            decision = Decision(Location(lat, lon, city), ipaddress.ip_network("0.0.0.0/0"),
                                "sample")
            ranked = select.rank(svc, config.sites, decision)
            row: dict[str, Any] = {"city": city}
            for family, key in ((4, "a"), (6, "aaaa")):
                sel = select.select(svc, ranked, family, view)
                row[key] = {"site": sel.site, "addresses": list(sel.variants[0]) if sel.variants
                            else [], "all_down": sel.all_down}
            samples.append(row)
        out.append({"name": svc.name, "pool": list(svc.pool), "algorithm": svc.algorithm.value,
                    "ip_version": svc.ip_version.value, "all_down": svc.all_down.value,
                    "answers": svc.answers, "ttl": svc.ttl, "samples": samples})
    return {"zones": [z.origin for z in config.zones], "services": out}


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def api_health(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    return web.json_response(health_json(sup.board, getattr(sup, "view", None)))


async def api_services(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    return web.json_response(services_json(sup.board, getattr(sup, "view", None)))


async def api_edges(request: web.Request) -> web.Response:
    """Each configured edge's and shield's /metrics, summed per customer."""
    from gslb.fleet.edgeview import scrape

    edges = request.app[SUPERVISOR].board.config.dashboard.edges
    return web.json_response({"edges": await scrape(edges)})


async def api_explain(request: web.Request) -> web.Response:
    from gslb.explain import explain

    sup = request.app[SUPERVISOR]
    name = request.query.get("name", "")
    client = request.query.get("client") or None
    ecs = request.query.get("ecs") or None
    qtype = request.query.get("type", "A").upper()
    if not name or qtype not in ("A", "AAAA"):
        raise web.HTTPBadRequest(text="name= is required; type= is A or AAAA")
    try:
        if client:
            client = str(ipaddress.ip_address(client))
        if ecs:
            ecs = str(ipaddress.ip_network(ecs, strict=False))
        text = explain(sup.board.config, name, qtype, client=client, ecs=ecs,
                       health=getattr(sup, "view", None) or sup.board.view)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return web.json_response({"name": name, "type": qtype, "client": client, "ecs": ecs,
                              "explanation": text})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def _authorised(request: web.Request) -> None:
    token = request.app[SUPERVISOR].board.config.dashboard.token
    if not token:
        raise web.HTTPForbidden(text="admin actions are disabled: set dashboard.token "
                                "or the GSLB_ADMIN_TOKEN environment variable")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise web.HTTPUnauthorized(text="a valid admin token is needed (Authorization: Bearer …)",
                                   headers={"WWW-Authenticate": "Bearer"})


async def admin(request: web.Request) -> web.Response:
    _authorised(request)
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise web.HTTPNotFound(text=f"unknown action; one of {', '.join(ACTIONS)}")
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='JSON body {"site": NAME} or {"address": IP} expected')
    board = request.app[SUPERVISOR].board
    try:
        if isinstance(body, dict) and "site" in body:
            board.set_site(str(body["site"]), ACTIONS[action])
        elif isinstance(body, dict) and "address" in body:
            board.set_address(str(body["address"]), ACTIONS[action])
        else:
            raise web.HTTPBadRequest(text='JSON body {"site": NAME} or {"address": IP} expected')
    except KeyError as exc:
        raise web.HTTPNotFound(text=str(exc.args[0])) from None
    return web.json_response({"ok": True, "action": action, **body,
                              "overrides": board.overrides()})


def make_app(sup: Supervisor) -> web.Application:
    """A fresh dashboard app reading from `sup`."""
    app = web.Application()
    app[SUPERVISOR] = sup
    app[REGISTRY] = _metrics(sup.board, sup)
    app.router.add_get("/", page)
    app.router.add_get("/api/health", api_health)
    app.router.add_get("/api/services", api_services)
    app.router.add_get("/api/edges", api_edges)
    app.router.add_get("/api/explain", api_explain)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/api/admin/{action}", admin)
    fleetapi.add_routes(app, sup, _authorised)
    return app


async def start_dashboard(sup: Supervisor, listen: Listener) -> web.AppRunner:
    """Serve the dashboard on `listen`; `cdnkit.ports.AddressInUse` if another has it."""
    owned = own(listen, TCP)
    app = make_app(sup)

    async def release(_app: web.Application) -> None:
        owned.close()          # the claim lives as long as the dashboard

    app.on_cleanup.append(release)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, owned.sockets[0]).start()
    return runner
