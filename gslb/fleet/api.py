"""The dashboard's fleet view: /api/fleet, the drain button, fleet metrics, time series.

Every nameserver and edge with its applied revision, record age, load against
capacity and verdict; per address every observer's verdict and the combined
state; the shed levels and their history; and 15 minutes of answers per site,
load per edge and hit ratio (series.py). Reads the supervisor's fleet
(fleet.py, fleet/health.py) only; without `--store` the fleet parts are empty
and the time series still show answers per site.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gslb import capacity as cap
from gslb import shed
from gslb.series import Rates, Series

FLEET_SUP = web.AppKey("fleet_supervisor", object)
SERIES = web.AppKey("series", Series)
LOAD_PARTS = ("requests", "bandwidth", "connections", "in_flight", "cpu")


def _site_of(sup: Any, addresses: Any) -> str:
    sites = {a.ip: s.name for s in sup.config.sites.values() for a in s.addresses}
    return next((sites[a] for a in addresses if a in sites), "")


def fleet_json(sup: Any, series: Series | None = None) -> dict[str, Any]:
    """Everything the fleet view shows, as JSON."""
    fleet = getattr(sup, "fleet", None)
    health = fleet.health if fleet is not None else None
    now = time.time()
    out: dict[str, Any] = {"generated": now, "me": fleet.node_id if fleet else "",
                           "store": health.status() if health else {"store": "none"},
                           "revision": fleet.revision() if fleet else 0,
                           "nameservers": [], "edges": [], "addresses": {}, "shed": {},
                           "history": []}
    if series is not None:
        out["series"] = series.as_json()
    if health is None:
        return out
    view = health.view
    for node in sorted(fleet.nodes().values(), key=lambda n: n.id):
        common = {"id": node.id, "applied": node.applied, "seen": round(now - node.at, 1),
                  "addresses": list(node.addresses), "workers": node.workers}
        if node.kind == "nameserver":
            down = sorted(ip for ip, v in node.verdicts.items() if v == "down")
            out["nameservers"].append({**common, "me": node.id == fleet.node_id,
                                       "sees_down": down})
        elif node.kind == "edge":
            used = health.utilization.get(f"edge {node.id}")
            out["edges"].append({
                **common, "site": _site_of(sup, node.addresses), "state": node.state,
                "idle": node.idle, "drained": health.drains.get(node.id),
                "load": dict(node.load), "capacity": dict(node.capacity),
                "utilization": round(used[0], 3) if used else None,
                "shed": max((shed.share(view.shed.get(a, 0)) for a in node.addresses),
                            default=0.0),
                "version": node.version, "origins": dict(node.origins)})
    drained_gone = set(health.drains) - {e["id"] for e in out["edges"]}
    for edge in sorted(drained_gone):           # drained, and its lease gone too
        out["edges"].append({"id": edge, "site": "", "state": "", "drained":
                             health.drains[edge], "seen": None, "addresses": []})
    for ip, entry in view.addresses.items():
        out["addresses"][ip] = {"site": entry.site, "state": entry.state.value,
                                "reason": entry.reason, "observers": health.observers(ip),
                                "shed": shed.share(view.shed.get(ip, 0))}
    for name in sup.config.sites:
        ctl = health.controllers.get(f"site {name}")
        used = health.utilization.get(f"site {name}")
        out["shed"][name] = {"share": shed.share(ctl.level) if ctl else 0.0,
                             "utilization": round(used[0], 3) if used else None,
                             "why": view.shed_notes.get(name, used[1] if used else "")}
    out["history"] = [{"at": c.at, "what": c.what, "from": shed.share(c.old),
                       "to": shed.share(c.new), "why": c.why}
                      for c in reversed(health.history)][:50]
    return out


async def api_fleet(request: web.Request) -> web.Response:
    return web.json_response(fleet_json(request.app[FLEET_SUP], request.app.get(SERIES)))


def _drain_handler(authorise: Callable[[web.Request], None]):
    async def handler(request: web.Request) -> web.Response:
        authorise(request)
        action = request.match_info["action"]
        if action not in ("drain", "undrain"):
            raise web.HTTPNotFound(text="unknown action; one of drain, undrain")
        sup = request.app[FLEET_SUP]
        if getattr(sup, "fleet", None) is None:
            raise web.HTTPConflict(text="draining an edge needs the store "
                                   "(gslb serve --store etcd://...)")
        try:
            body = await request.json()
            edge = str(body["edge"])
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text='JSON body {"edge": NODE_ID} expected') from None
        if edge not in sup.fleet.nodes() and edge not in sup.fleet.health.drains:
            raise web.HTTPNotFound(text=f"no node {edge!r} in the store")
        from cdnkit.store import StoreError  # store mode only: no grpc otherwise
        try:
            revision = await sup.fleet.drain(edge, f"dashboard {sup.fleet.node_id}",
                                             on=action == "drain")
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        except StoreError as exc:
            raise web.HTTPServiceUnavailable(text=f"the store is unavailable ({exc}); "
                                             "nothing was changed") from None
        return web.json_response({"ok": True, "action": action, "edge": edge,
                                  "revision": revision})
    return handler


class Sampler:
    """Looks at the fleet every second and records one point per step: answers per site
    as a rate, and per edge the highest load of the step and the hit ratio of its
    requests (a one-second burst between two points still shows)."""

    def __init__(self, sup: Any, series: Series):
        self.sup, self.series = sup, series
        self.answers = Rates()
        self.next = 0.0
        self._load: dict[str, float] = {}
        self._shed: dict[str, float] = {}
        self._hits: dict[str, list[float]] = {}

    def tick(self, now: float) -> None:
        fleet = getattr(self.sup, "fleet", None)
        if fleet is not None and fleet.health is not None:
            health = fleet.health
            for node in fleet.nodes().values():
                if node.kind != "edge":
                    continue
                used = health.utilization.get(f"edge {node.id}")
                value = round(used[0], 3) if used else float(node.load.get("requests", 0.0))
                self._load[node.id] = max(value, self._load.get(node.id, 0.0))
                counts = self._hits.setdefault(node.id, [0.0, 0.0])
                counts[0] += float(node.load.get("hits", 0.0))
                counts[1] += float(node.load.get("misses", 0.0))
            for key, ctl in health.controllers.items():
                if key.startswith("site "):
                    name = key[5:]
                    self._shed[name] = max(shed.share(ctl.level), self._shed.get(name, 0.0))
        if now < self.next:
            return
        self.next = now + self.series.step
        counts = {k: float(v) for k, v in self.sup.site_counts().items()}
        groups: dict[str, dict[str, float | None]] = {
            "answers": {site or "(none)": rate for site, rate in
                        self.answers(now, counts).items()},
            "load": dict(self._load), "shed": dict(self._shed),
            "hit_ratio": {edge: round(h / (h + m), 3) if h + m else None
                          for edge, (h, m) in self._hits.items()}}
        self.series.record(now, groups)
        self._load, self._shed, self._hits = {}, {}, {}


def add_routes(app: web.Application, sup: Any, authorise: Callable[[web.Request], None],
               step: float | None = None) -> None:
    """The fleet view's routes and its time-series sampler on the dashboard app."""
    app[FLEET_SUP] = sup
    series = app[SERIES] = Series(step or 5.0)
    app.router.add_get("/api/fleet", api_fleet)
    app.router.add_post("/api/admin/edge/{action}", _drain_handler(authorise))

    async def sampler(_app: web.Application) -> AsyncIterator[None]:
        sampling = Sampler(sup, series)

        async def run() -> None:
            while True:
                sampling.tick(time.time())
                await asyncio.sleep(min(1.0, series.step))

        task = asyncio.get_running_loop().create_task(run())
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    app.cleanup_ctx.append(sampler)


class FleetCollector:
    """The fleet's metrics, read from the supervisor at scrape time."""

    def __init__(self, sup: Any):
        self.sup = sup

    def collect(self):  # noqa: ANN201 - prometheus_client protocol
        sup = self.sup
        answers = CounterMetricFamily("gslb_dns_answers", "Service answers by the site they "
                                      "sent clients to, all workers", labels=["site"])
        for site, n in sorted(sup.site_counts().items()):
            answers.add_metric([site or "none"], n)
        yield answers
        fleet = getattr(sup, "fleet", None)
        health = fleet.health if fleet is not None else None
        store = GaugeMetricFamily("gslb_store_up", "1 while the store answers; 0: this "
                                  "nameserver follows its own probes only")
        store.add_metric([], 1.0 if health is not None and health.store_ok else 0.0)
        yield store
        observers = GaugeMetricFamily("gslb_health_observers", "Nameservers whose verdicts "
                                      "count now (this one included)")
        observers.add_metric([], len(health.status()["observers"]) if health else 1)
        yield observers
        verdicts = GaugeMetricFamily("gslb_observer_verdict", "Each observer's verdict on "
                                     "each address (1 for the current one)",
                                     labels=["observer", "address", "verdict"])
        nodes = GaugeMetricFamily("gslb_node_seen_seconds", "Age of each node's record in "
                                  "the store", labels=["node", "kind"])
        applied = GaugeMetricFamily("gslb_node_applied_revision", "Config revision each node "
                                    "has applied", labels=["node", "kind"])
        load = GaugeMetricFamily("gslb_edge_load", "What each edge reports, per second "
                                 "(requests, bandwidth in bit/s) or now (connections, "
                                 "in_flight, cpu)", labels=["edge", "part"])
        limit = GaugeMetricFamily("gslb_edge_capacity", "Each edge's reported capacity",
                                  labels=["edge", "part"])
        draining = GaugeMetricFamily("gslb_edge_draining", "1 while an edge is drained or "
                                     "reports draining", labels=["edge"])
        used = GaugeMetricFamily("gslb_utilization", "Load against capacity (the fullest "
                                 "part), per site and edge", labels=["kind", "name"])
        share = GaugeMetricFamily("gslb_shed_ratio", "Share of client networks a site or "
                                  "edge sends elsewhere", labels=["kind", "name"])
        changes = CounterMetricFamily("gslb_shed_changes", "Shed level changes")
        if health is not None:
            now = time.time()
            for ip in health.view.addresses:
                for observer, verdict in health.observers(ip).items():
                    verdicts.add_metric([observer, ip, verdict], 1.0)
            for node in fleet.nodes().values():
                nodes.add_metric([node.id, node.kind], max(0.0, now - node.at))
                applied.add_metric([node.id, node.kind], node.applied)
                if node.kind != "edge":
                    continue
                for part in LOAD_PARTS:
                    if part in node.load:
                        load.add_metric([node.id, part], float(node.load[part]))
                capacity = cap.capacity_of(node.capacity)
                for part, value in (capacity.parts() if capacity else {}).items():
                    limit.add_metric([node.id, part], value)
                draining.add_metric([node.id], 1.0 if node.state == "draining"
                                    or node.id in health.drains else 0.0)
            for key, (value, _) in health.utilization.items():
                kind, name = key.split(" ", 1)
                used.add_metric([kind, name], value)
            for key, ctl in health.controllers.items():
                kind, name = key.split(" ", 1)
                share.add_metric([kind, name], shed.share(ctl.level))
            changes.add_metric([], health.shed_changes)
        else:
            changes.add_metric([], 0)
        yield from (verdicts, nodes, applied, load, limit, draining, used, share, changes)
