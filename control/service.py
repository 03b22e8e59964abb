"""The control plane's operations, shared by the API, the page and `cdnctl`.

Reads go to etcd each time (linearizable), so a GET after a write sees it. Writes
are planned on a fresh view and committed in one transaction (changes.py); when
another writer got in between, the write is planned again on the new view, so a
racing writer costs a retry, never a rule. A write is accepted only once etcd has
committed it: the API never answers 2xx for a write etcd does not hold.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from cdnkit.drains import drains, set_drain
from cdnkit.keys import Keys
from cdnkit.netblocks import collapse
from cdnkit.nodes import Node, merge
from cdnkit.schema import is_ip
from cdnkit.seal import Sealer
from cdnkit.store import EtcdStore

from . import changes, documents
from .changes import Change, NotFound, Raced, View
from .documents import Rules

RETRIES = 8
EDGE_KINDS = ("edge", "shield")


@dataclass(frozen=True)
class Deployment:
    """Where one revision of a customer is: on how many edges, answered by how many
    nameservers, and which.

    `deployed` means every registered edge (and shield) applied the revision without
    rejecting it AND every registered nameserver answers the customer's names with an
    edge that serves it (its record's `serving` reached the revision; gslb/fleet/gate.py), so
    a resolver asking any nameserver then gets an answer, never a cached NXDOMAIN.
    """

    status: str                      # deploying | deployed
    deployed: int                    # edges (and shields) that applied it
    of: int
    edges: dict[str, int]            # edge id -> applied revision
    rejected: dict[str, list[str]]   # edge id -> why it left this customer out
    nameservers: dict[str, int] = field(default_factory=dict)   # id -> serving revision
    answering: int = 0               # nameservers that answer it

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "deployed": self.deployed, "of": self.of,
                "edges": self.edges, "rejected": self.rejected,
                "nameservers": self.nameservers, "answering": self.answering,
                "nameservers_of": len(self.nameservers),
                "progress": f"edges {self.deployed}/{self.of}, nameservers "
                            f"{self.answering}/{len(self.nameservers)}"}


def deployment(directory: str, revision: int, nodes: dict[str, Node],
               names: bool = True) -> Deployment:
    """`names`: the revision gives names that nameservers must answer (not a purge)."""
    edges = {n.id: n for n in nodes.values() if n.kind in EDGE_KINDS}
    done = [n for n in edges.values() if n.applied >= revision]
    rejected = {n.id: list(n.rejected[directory]) for n in edges.values()
                if directory in n.rejected}
    servers = {n.id: n.serving for n in nodes.values() if n.kind == "nameserver"} \
        if names else {}
    answering = sum(1 for serving in servers.values() if serving >= revision)
    status = "deployed" if edges and len(done) == len(edges) and not rejected \
        and answering == len(servers) else "deploying"
    return Deployment(status, len(done), len(edges), {n.id: n.applied for n in edges.values()},
                      rejected, servers, answering)


def certificate_state(doc: dict[str, Any], status: bytes | None) -> dict[str, Any] | None:
    """What the API shows of a customer's certificate (None: the customer has no HTTPS).

    `https: auto`: the issuer's record (control/acme.py), "issuing" until it wrote one.
    An uploaded certificate: "uploaded", with the expiry read from the certificate."""
    mode = doc.get("https")
    if mode == "auto":
        try:
            found = json.loads(status) if status else {}
        except ValueError:
            found = {}
        found = found if isinstance(found, dict) else {}
        return {"mode": "auto", "state": found.get("state") or "issuing",
                "expires": found.get("expires"), "reason": found.get("reason", ""),
                "since": found.get("since"), "next_attempt": found.get("next_attempt"),
                "attempts": found.get("attempts", 0), "serial": found.get("serial", ""),
                "names": found.get("names") or []}
    if isinstance(mode, dict):
        return {"mode": "upload", "state": "uploaded", **documents.uploaded_expiry(mode)}
    return None


class ControlPlane:
    """Customers, purges, nodes and the whitelist, over one etcd store."""

    def __init__(self, store: EtcdStore, rules: Rules, sealer: Sealer | None = None,
                 edge_token: str = ""):
        self.store, self.rules, self.sealer = store, rules, sealer
        self.keys = Keys(store.spec.prefix)
        self.edge_token = edge_token

    # --- reading -------------------------------------------------------------------------

    async def view(self) -> View:
        return View.of(await self.store.load(self.keys.config), self.keys)

    async def nodes(self) -> dict[str, Node]:
        return merge((await self.store.load(self.keys.nodes)).under(self.keys.nodes))

    async def cert_statuses(self) -> dict[str, bytes]:
        """The issuer's certstatus/ records (control/acme.py), by directory."""
        snap = await self.store.load(self.keys.cert_status)
        return {d: e.value for d, e in snap.under(self.keys.cert_status).items()}

    def _card(self, directory: str, doc: dict[str, Any], revision: int,
              nodes: dict[str, Node], view: View, statuses: dict[str, bytes]) -> dict[str, Any]:
        public, secrets = documents.public(doc)
        names = view.pointing_at(directory)
        return {"directory": directory, "revision": revision, "customer": public,
                "cname_target": documents.cname_targets(doc, self.rules.own_domains),
                "secrets": secrets, **deployment(directory, revision, nodes).as_json(),
                "retiring": [n for n in names if view.cnames[n].retiring],
                "certificate": certificate_state(doc, statuses.get(directory))}

    async def customers(self) -> dict[str, Any]:
        view, nodes, statuses = await asyncio.gather(self.view(), self.nodes(),
                                                     self.cert_statuses())
        cards = [self._card(d, doc, e.mod_revision, nodes, view, statuses)
                 for d, (doc, e) in sorted(view.customers.items())]
        return {"revision": view.latest(), "customers": cards,
                "max_customers": self.rules.max_customers}

    async def customer(self, directory: str) -> dict[str, Any]:
        view, nodes, statuses = await asyncio.gather(self.view(), self.nodes(),
                                                     self.cert_statuses())
        found = view.customers.get(directory)
        if found is None:
            raise NotFound(directory)
        return self._card(directory, found[0], found[1].mod_revision, nodes, view, statuses)

    async def certificates(self) -> dict[str, Any]:
        """Every customer's HTTPS certificate: ACME (issuing | active | failed) or
        uploaded, with its expiry."""
        view, statuses = await asyncio.gather(self.view(), self.cert_statuses())
        return {"certificates": [{"directory": d, **state} for d, (doc, _) in
                                 sorted(view.customers.items())
                                 if (state := certificate_state(doc, statuses.get(d)))]}

    # --- writing -------------------------------------------------------------------------

    async def write(self, batch: list[Change], who: str, action: str,
                    shields: tuple | None = None, extra: list[Any] = ()) -> int:
        """Plan and commit `batch` as one transaction; the revision it got."""
        for _ in range(RETRIES):
            view = await self.view()
            planned = changes.plan(self.store, view, batch, self.rules, self.sealer, who,
                                   action, shields, extra)
            try:
                return await changes.commit(self.store, planned)
            except Raced:
                await asyncio.sleep(0.01)
        raise changes.Refused("the config kept changing under this write; try again")

    async def create(self, doc: Any, who: str) -> int:
        if not isinstance(doc, dict):
            raise documents.Invalid(["/: a customer must be a JSON object"])
        directory = str(doc.get("directory", "")).strip("/")
        return await self.write([Change(directory, doc, expect=0)], who, "create")

    async def update(self, directory: str, doc: Any, expect: int | None, who: str) -> int:
        if not isinstance(doc, dict):
            raise documents.Invalid(["/: a customer must be a JSON object"])
        return await self.write([Change(directory, doc, expect)], who, "update")

    async def delete(self, directory: str, expect: int | None, who: str) -> int:
        return await self.write([Change(directory, None, expect)], who, "delete")

    # --- purge ---------------------------------------------------------------------------

    async def purge(self, job: dict[str, Any], who: str) -> dict[str, Any]:
        """A purge job for every edge: `urls`, `prefix` or `customer`."""
        kinds = [k for k in ("urls", "prefix", "customer") if job.get(k)]
        if len(kinds) != 1:
            raise documents.Invalid(["/: give exactly one of urls (a list), prefix or customer"])
        if "urls" in kinds and not (isinstance(job["urls"], list) and
                                    all(isinstance(u, str) for u in job["urls"])):
            raise documents.Invalid(["/urls: a list of URLs"])
        view = await self.view()
        if job.get("customer") and job["customer"] not in view.customers:
            raise NotFound(job["customer"])
        job_id = f"{time.time_ns():020d}-{os.urandom(2).hex()}"
        body = {k: job[k] for k in kinds} | {"at": time.time(), "by": who}
        store, keys = self.store, self.keys
        resp = await store.txn([], [store.put(keys.purge + job_id, json.dumps(body)),
                                    store.put(f"{keys.audit}{job_id}", json.dumps(
                                        {"at": body["at"], "who": who, "action": "purge",
                                         "changes": [{k: job[k] for k in kinds}]}))])
        return {"id": job_id, "revision": resp.header.revision}

    async def purge_status(self, job_id: str) -> dict[str, Any]:
        view, nodes = await asyncio.gather(self.view(), self.nodes())
        entry = view.snap.entries.get(self.keys.purge + job_id)
        if entry is None:
            raise NotFound(job_id)
        dep = deployment("", entry.mod_revision, nodes, names=False)
        return {"id": job_id, "job": json.loads(entry.value), "revision": entry.mod_revision,
                "status": "done" if dep.status == "deployed" else "running",
                "done": dep.deployed, "of": dep.of,
                "edges": {k: v >= entry.mod_revision for k, v in dep.edges.items()}}

    # --- the fleet -----------------------------------------------------------------------

    async def fleet(self) -> dict[str, Any]:
        view, nodes = await asyncio.gather(self.view(), self.nodes())
        latest, now = view.latest(), time.time()
        drained = drains(view.snap.entries, self.keys)
        return {"revision": latest, "nodes": [
            {"id": n.id, "kind": n.kind, "site": n.site, "addresses": list(n.addresses),
             "applied": n.applied, **({"serving": n.serving} if n.kind == "nameserver"
                                      else {}), "lag": max(0, latest - n.applied) if n.applied < latest
             else 0, "up_to_date": n.applied >= latest, "seen": round(now - n.at, 1),
             "workers": n.workers, "rejected": dict(n.rejected), "state": n.state,
             "drained": n.id in drained, "idle": n.idle, "load": dict(n.load)}
            for n in sorted(nodes.values(), key=lambda n: (n.kind, n.id))]}

    # --- drain ---------------------------------------------------------------------------

    async def drain(self, edge: str, who: str, on: bool = True) -> dict[str, Any]:
        """Take an edge out of every nameserver's answers (or back in): cdnkit/drains.py."""
        nodes = await self.nodes()
        known = edge in nodes or edge in drains((await self.view()).snap.entries, self.keys)
        if not known and on:
            raise NotFound(edge)
        revision = await set_drain(self.store, self.keys, edge, who, on)
        return {"edge": edge, "drained": on, "revision": revision, **self._drain_state(
            edge, nodes)}

    def _drain_state(self, edge: str, nodes: dict[str, Node]) -> dict[str, Any]:
        node = nodes.get(edge)
        if node is None:
            return {"state": "gone", "idle": True, "in_flight": 0}
        return {"state": node.state or "serving", "idle": node.idle,
                "in_flight": int(node.load.get("in_flight", 0))}

    async def drain_status(self, edge: str) -> dict[str, Any]:
        view, nodes = await asyncio.gather(self.view(), self.nodes())
        drained = drains(view.snap.entries, self.keys)
        if edge not in nodes and edge not in drained:
            raise NotFound(edge)
        return {"edge": edge, "drained": edge in drained, "since": drained.get(edge, {}),
                **self._drain_state(edge, nodes)}

    async def whitelist(self) -> dict[str, list[str]]:
        """The seed's Whitelist IP Blocks: every edge's and shield's source blocks."""
        view, nodes = await asyncio.gather(self.view(), self.nodes())
        blocks = [b for n in nodes.values() if n.kind in EDGE_KINDS
                  for b in (n.egress or n.addresses)]
        blocks += [s.server.host for s in view.shields if is_ip(s.server.host)]
        return collapse(blocks)

    async def validate(self, directory: str, doc: Any | None,
                       timeout: float = 5.0) -> dict[str, Any]:
        """The validation path GET from every edge to every origin server (seed 003)."""
        key = self.keys.customer(directory)
        if doc is None:
            found = (await self.view()).customers.get(directory)
            if found is None:
                raise NotFound(directory)
            doc = found[0]
        else:
            view = await self.view()
            stored = view.customers.get(directory)
            doc = documents.keep_stored_secret(doc, stored[0] if stored else None)
            documents.validate(doc, view.shields, self.rules)
            doc = documents.seal(doc, key, self.sealer)
        edges = [n for n in (await self.nodes()).values() if n.kind == "edge" and n.admin]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout + 2)) \
                as session:
            results = await asyncio.gather(*(self._validate_at(session, n, key, doc, timeout)
                                             for n in edges))
        return {"directory": directory, "ok": bool(results) and all(r.get("ok")
                                                                    for r in results),
                "edges": {n.id: r for n, r in zip(edges, results)}}

    async def _validate_at(self, session: aiohttp.ClientSession, node: Node, key: str,
                           doc: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            async with session.post(node.admin + "/.edge/validate",
                                    json={"customer": doc, "key": key, "timeout": timeout},
                                    headers={"Authorization": f"Bearer {self.edge_token}"}) as r:
                if r.status in (200, 422):
                    return await r.json()
                return {"ok": False, "error": f"the edge answered {r.status}: "
                        f"{(await r.text()).strip()[:200]}"}
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return {"ok": False, "error": f"the edge did not answer ({exc or type(exc).__name__})"}
