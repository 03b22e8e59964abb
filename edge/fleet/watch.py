"""`edge serve --store etcd://...`: the customers come from the store, not the YAML.

The edge's own YAML still says how this edge runs (listeners, cache, TLS, its name
and place); the customers and shields are the store's documents. The follower
loads them at one revision, applies them through `EdgeState.apply` (the one way a
config takes effect: requests see the old config or the new, never half), writes
the snapshot to disk, and tells the fleet which revision it has applied
(`/cdn/nodes/{id}` under a lease). Then it follows the store from that revision.

When the store is away the edge keeps serving what it has; when it starts and the
store is away, it starts from its last snapshot. A document the edge cannot use
(tampered with outside the control plane, a secret sealed with another key) is
left out and reported in the node record; the others are served.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cdnkit import snapshot as snapfile
from cdnkit.check import ConfigError
from cdnkit.jsondoc import lines
from cdnkit.keys import Keys
from cdnkit.nodes import Registration, stop_following
from cdnkit.seal import Sealer, SealError, is_sealed
from cdnkit.snapshot import Snapshot
from cdnkit.store import EtcdStore, StoreError, StoreSpec
from cdnkit.yamlsrc import LineDict, LineList, load_yaml

from edge import config as edge_config
from edge.model import EdgeConfig
from edge.cache.purge import Ban, ban_for
from edge.fleet.certs import StoreCerts, ordered
from edge.state import EdgeState

log = logging.getLogger("edge.fleet.watch")

START_WAIT = 3.0        # how long a starting edge waits for the store before its snapshot
RENEW = 1.0             # the lease is renewed every second (a dead edge leaves within its TTL)
SECRET_FIELD = "secret_access_key"


@dataclass(frozen=True)
class FleetOptions:
    """How this edge appears in the fleet."""

    store: StoreSpec
    node_id: str
    kind: str = "edge"                       # edge | shield
    site: str = ""
    addresses: tuple[str, ...] = ()          # what DNS hands out for this edge
    key_file: str = ""                       # opens sealed bucket secrets
    snapshot: str = ""                       # default: <state_dir or cache_disk>/store.json
    worker: int = 0
    capacity: tuple[tuple[str, float], ...] = ()   # what it can serve (report.py)


def snapshot_path(cfg: EdgeConfig, opts: FleetOptions) -> Path:
    if opts.snapshot:
        return Path(opts.snapshot)
    home = cfg.state_dir or cfg.cache_disk
    if not home:
        raise ConfigError([f"{cfg.source}: with --store, give state_dir: (or --snapshot PATH): "
                           "the edge keeps its last applied config there"])
    return Path(home) / f"store-{opts.node_id}.json"


def open_secrets(doc: dict[str, Any], where: str, sealer: Sealer | None) -> dict[str, Any]:
    """The document with its sealed bucket secret opened (SealError when it cannot be)."""
    origin = doc.get("origin")
    if not isinstance(origin, dict) or not is_sealed(origin.get(SECRET_FIELD)):
        return doc
    if sealer is None:
        raise SealError(f"{where}: the bucket secret is sealed; start the edge with --key-file")
    opened = sealer.open(origin[SECRET_FIELD], f"{where}/origin/{SECRET_FIELD}")
    return {**doc, "origin": {**origin, SECRET_FIELD: opened}}


class Follower:
    """Keeps one edge process's customers in step with the store."""

    def __init__(self, state: EdgeState, local: Path, opts: FleetOptions,
                 listen: tuple = ()):
        self.state, self.local, self.opts, self.listen = state, local, opts, listen
        self.keys = Keys(opts.store.prefix)
        self.sealer = Sealer.from_file(opts.key_file) if opts.key_file else None
        self.snap: Snapshot | None = None
        self.rejected: dict[str, list[str]] = {}
        self.store: EtcdStore | None = None
        self.registration: Registration | None = None
        self._tasks: list[asyncio.Task] = []
        self.path = snapshot_path(state.config, opts)
        # This process's own directory: workers must not remove each other's files.
        self.certs = StoreCerts(self.keys, self.sealer, self.path.parent / "certs" /
                                f"{opts.node_id}-{opts.worker}")

    # --- building a config from a snapshot -----------------------------------------------

    def _raw(self, snap: Snapshot, skip: set[str]) -> tuple[LineDict, dict[str, list[str]]]:
        top = load_yaml(self.local)
        if not isinstance(top, LineDict):
            raise ConfigError([f"{self.local}:1: the edge config must be a mapping"])
        bad: dict[str, list[str]] = {}
        retiring = _retiring(snap, self.keys.cnames)
        items = LineList()
        items.where, items.item_where = top.where, []
        for name, entry in sorted(snap.under(self.keys.customers).items()):
            key = self.keys.customer(name)
            if name in skip:
                continue
            try:
                doc = open_secrets(json.loads(entry.value), key, self.sealer)
                doc = _with_retiring(doc, retiring.get(name, ()))
            except (ValueError, SealError) as exc:
                bad[name] = [str(exc) if isinstance(exc, SealError) else f"{key}: not JSON"]
                continue
            items.append(lines(doc, key))
            items.item_where.append(items[-1].where if isinstance(items[-1], LineDict)
                                    else top.where)
        shields = LineList()
        shields.where, shields.item_where = top.where, []
        for name, entry in sorted(snap.under(self.keys.shields).items()):
            try:
                shields.append(lines(json.loads(entry.value), self.keys.shields + name))
                shields.item_where.append(shields[-1].where)
            except ValueError:
                continue
        top["customers"], top["shields"] = items, shields
        return top, bad

    def build(self, snap: Snapshot) -> tuple[EdgeConfig, dict[str, list[str]]]:
        """The config for `snap`; customers that do not validate are left out, with why."""
        skip: set[str] = set()
        for _ in range(3):
            raw, bad = self._raw(snap, skip)
            try:
                cfg = edge_config.build(raw, str(self.local), self.local.resolve().parent,
                                        max_customers=None, local_refs=False)
                rejected = {**bad, **{k: v for k, v in self.rejected.items() if k in skip}}
                return self._store_parts(self._local(cfg), snap, rejected)
            except ConfigError as exc:
                blamed = _blame(exc.problems, self.keys.customers)
                if not blamed or set(blamed) <= skip:
                    raise
                for name, problems in blamed.items():
                    self.rejected[name] = problems
                skip |= set(blamed)
        raise ConfigError(["too many customers the edge cannot use"])

    def _store_parts(self, cfg: EdgeConfig, snap: Snapshot, rejected: dict[str, list[str]]
                     ) -> tuple[EdgeConfig, dict[str, list[str]]]:
        """`cfg` with the store's certificates (edge/fleet/certs.py; only where there is a
        TLS listener) and ACME HTTP-01 challenges; certificates that cannot be used join
        `rejected`, under their customer's directory."""
        changes: dict[str, Any] = {"acme_challenges": _challenges(snap, self.keys.challenges,
                                                                  time.time())}
        if cfg.tls_listen:
            found = self.certs.find(snap, cfg.by_directory)
            changes["certificates"] = ordered(cfg.certificates, found)
            for directory, problems in found.problems.items():
                rejected = {**rejected, directory: rejected.get(directory, []) + problems}
        return replace(cfg, **changes), rejected

    def _local(self, cfg: EdgeConfig) -> EdgeConfig:
        changes: dict[str, Any] = {"name": self.opts.node_id,
                                   "source": f"{self.opts.store} (rev {self.snap.revision})"
                                   if self.snap else str(self.opts.store)}
        if self.listen:
            changes["listen"] = self.listen
        return replace(cfg, **changes)

    # --- applying ----------------------------------------------------------------------

    def apply(self, snap: Snapshot, save: bool = True) -> bool:
        """Make `snap` the running config; False (and the old one kept) if it cannot be."""
        previous, self.snap = self.snap, snap
        started = time.monotonic()
        try:
            cfg, rejected = self.build(snap)
        except ConfigError as exc:
            self.snap = previous
            log.error("store revision %d rejected, keeping the previous config:\n  %s",
                      snap.revision, "\n  ".join(exc.problems))
            return False
        for name, problems in rejected.items():
            log.error("customer %s at revision %d left out: %s", name, snap.revision,
                      "; ".join(problems))
        self.rejected = rejected
        self.state.apply(cfg)
        self.certs.prune(cfg.certificates)     # the contexts are built: old files can go
        if previous is not None:
            self._purge(previous, snap, cfg)
        if save:
            try:
                snapfile.save(self.path, snap)
            except OSError as exc:
                log.error("cannot write the snapshot %s: %s", self.path, exc)
        if self.registration is not None:
            self.registration.update(applied=snap.revision, rejected=rejected)
        log.info("applied store revision %d: %d customers in %.3f s", snap.revision,
                 len(cfg.customers), time.monotonic() - started)
        return True

    def _purge(self, old: Snapshot, new: Snapshot, cfg: EdgeConfig) -> None:
        before = old.under(self.keys.purge)
        for name, entry in sorted(new.under(self.keys.purge).items(),
                                  key=lambda item: item[1].mod_revision):
            if name in before or entry.mod_revision <= old.revision:
                continue
            for ban in _bans(cfg, entry.value):
                dropped = self.state.cache.purge(ban.matches)
                log.info("purge %s: %s%s of %s, %d objects here", name, ban.path or "all",
                         "*" if ban.prefix else "", ban.directory, dropped)

    # --- running -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load (store, else the snapshot), apply, then follow the store in the background."""
        self.store = EtcdStore(self.opts.store)
        snap = None
        try:
            async with asyncio.timeout(START_WAIT):
                await self.store.connect()
                snap = await self.store.load(self.keys.config)
        except (StoreError, asyncio.TimeoutError, OSError) as exc:
            snap = snapfile.load(self.path, self.keys.config)
            if snap is None:
                log.error("the store is unreachable (%s) and there is no snapshot at %s: "
                          "serving no customers until the store answers", exc, self.path)
            else:
                log.warning("the store is unreachable (%s): serving the snapshot of revision "
                            "%d from %s until it answers", exc, snap.revision, self.path)
            if snap is not None:
                self.apply(snap, save=False)
        else:
            self.snap = snapfile.load(self.path, self.keys.config)    # for purges since
            self.apply(snap)
        self._tasks.append(asyncio.get_running_loop().create_task(self._follow()))

    def _record(self) -> dict[str, Any]:
        cfg = self.state.config
        addresses = self.opts.addresses or tuple(
            str(l.host) for l in cfg.listen if l.host not in ("0.0.0.0", "::"))
        admin = next((str(l) for l in cfg.listen), "")
        return {"id": self.opts.node_id, "kind": self.opts.kind, "site": self.opts.site,
                "addresses": list(addresses), "egress": list(cfg.egress),
                "admin": f"http://{admin}" if admin else "", "worker": self.opts.worker,
                "pid": os.getpid(), "applied": self.snap.revision if self.snap else 0,
                "rejected": self.rejected}

    async def _follow(self) -> None:
        assert self.store is not None
        while not self.store.ready:
            try:
                await self.store.connect()
            except StoreError:
                await asyncio.sleep(1.0)
        suffix = f"~{self.opts.worker}" if self.opts.worker else ""
        self.registration = Registration(self.store, self.keys.node(self.opts.node_id + suffix),
                                         renew=RENEW)
        self.registration.update(**self._record())
        self.registration.start()
        while True:
            try:
                if self.snap is None or self.snap.revision == 0:
                    self.apply(await self.store.load_retrying(self.keys.config))
                async for snap in self.store.follow(self.snap):
                    self.apply(snap)
            except asyncio.CancelledError:
                raise
            except Exception:               # a bug must not stop the following for good
                log.exception("following the store failed; starting again in 1 s")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        await stop_following(self._tasks, self.registration, self.store)


async def validate_request(request: Any, state: EdgeState,
                           sealer: Sealer | None) -> tuple[int, Any]:
    """POST /.edge/validate {"customer": DOC}, with the admin token: `edge validate` for a
    document (saved or not), from this edge, as the control plane's Validate button.
    Returns (status, JSON answer)."""
    import hmac

    from cdnkit import schema
    from cdnkit.check import Checker

    from edge.tools import validate

    token = state.config.admin_token
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        return 401, {"error": "a valid admin token is needed"}
    try:
        raw = await request.body.read(1 << 20) if request.body is not None else b""
        body = json.loads(raw)
        doc = body["customer"]
        where = str(body.get("key", ""))
        doc = open_secrets(doc, where, sealer) if where else doc
    except (ValueError, KeyError, TypeError, SealError) as exc:
        return 400, {"error": str(exc)}
    cfg = state.config
    ck = Checker("api")
    found = schema.customer(ck, lines(doc), lines(doc).where, "", schema.Context(
        cfg.shields, cfg.name, cfg.region, cfg.location, local_refs=False))
    if ck.problems:
        return 422, {"problems": ck.problems}
    probes = await validate(cfg, found, float(body.get("timeout", 5.0)))
    return 200, {"edge": cfg.name, "path": found.origin.validation_path or "/",
                 "ok": bool(probes) and all(p.ok for p in probes),
                 "probes": [{"protocol": p.scheme, "server": p.server.host +
                             (f":{p.server.port}" if p.server.port else ""),
                             "address": p.address, "status": p.status,
                             "ms": round(p.seconds * 1000, 1), "error": p.error}
                            for p in probes]}


def _retiring(snap: Snapshot, folder: str) -> dict[str, list[str]]:
    """Edge CNAMEs being retired, by directory: nameservers no longer answer them, and
    the edges keep serving them until the control plane deletes the index entry."""
    out: dict[str, list[str]] = {}
    for name, entry in snap.under(folder).items():
        try:
            value = json.loads(entry.value)
            if value.get("retiring"):
                out.setdefault(str(value["directory"]), []).append(name)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return out


def _challenges(snap: Snapshot, folder: str, now: float) -> dict[str, str]:
    """ACME HTTP-01 challenges: token -> key authorization ("<token>.<thumbprint>");
    expired and malformed ones are left out (the edge then answers 404 for them)."""
    out = {}
    for token, entry in snap.under(folder).items():
        try:
            doc = json.loads(entry.value)
            answer, expires = doc["authorization"], doc["expires"]
        except (ValueError, KeyError, TypeError):
            continue
        if (TOKEN.fullmatch(token) and isinstance(answer, str) and
                answer.startswith(token + ".") and AUTHORIZATION.fullmatch(answer) and
                isinstance(expires, (int, float)) and expires > now):
            out[token] = answer
    return out


TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")                 # base64url, RFC 8555 8.3
AUTHORIZATION = re.compile(r"[A-Za-z0-9_-]{1,256}\.[A-Za-z0-9_-]{1,128}")


def _with_retiring(doc: Any, names: Any) -> Any:
    if not names or not isinstance(doc, dict):
        return doc
    have = [str(n).lower().rstrip(".") for n in doc.get("cnames") or ()]
    return {**doc, "cnames": have + [n for n in names if n not in have]}


def _blame(problems: list[str], folder: str) -> dict[str, list[str]]:
    """Problems that point into one customer's document, by its directory name."""
    out: dict[str, list[str]] = {}
    pattern = re.compile(re.escape(folder) + r"([^/:]+)")
    for problem in problems:
        match = pattern.match(problem)
        if match:
            out.setdefault(match.group(1), []).append(problem)
    return out


def _bans(cfg: EdgeConfig, value: bytes) -> list[Ban]:
    try:
        job = json.loads(value)
    except ValueError:
        return []
    out = []
    for url in job.get("urls") or ():
        try:
            out.append(ban_for(cfg, url=url))
        except ValueError:
            continue
    for what in ("prefix", "customer"):
        if job.get(what):
            try:
                out.append(ban_for(cfg, **{what: job[what]}))
            except ValueError:
                continue
    return out
