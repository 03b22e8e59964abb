"""Customer changes as one etcd transaction, with the seed's rules checked first.

Every change (an API write, a `cdnctl apply`, the reaper retiring a CNAME) is
planned against a `View` of the whole config at one revision and committed with
a compare on the config marker (`config/rev`): if anything in the config changed
since the view was read, the transaction fails and the change is planned again on
a fresh view. So the rules that span customers (at most `max_customers`, an edge
CNAME belongs to one customer, no delete while a CNAME points at a customer) hold
even with writers racing each other.

Edge CNAMEs have an index, `config/cnames/{name}` -> {"directory", "retiring"}:
what nameservers answer. A customer's name outside our zones (www.test.com) gets
its CNAME target under our first zone (www.test.com.cdn.example.net) in the index
too, so the customer only adds the domain and points it where the API says. A CNAME taken out of a customer is first marked
retiring: nameservers stop answering it, edges keep serving it (they serve the
union of the document's names and the index's), and the reaper deletes the index
entry only once every nameserver has applied that and their answers' TTL has run
out. That is the safe order on removal; on addition, nameservers answer a name
with an edge only once that edge has applied the name's revision.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from cdnkit.check import Checker
from cdnkit.jsondoc import Pointer, lines
from cdnkit.keys import Keys
from cdnkit.seal import Sealer
from cdnkit.shields import parse_shields
from cdnkit.snapshot import Entry, Snapshot
from cdnkit.store import EtcdStore

from . import documents
from .documents import Invalid, Rules


class Refused(Exception):
    """A seed rule forbids the change (HTTP 409); the message says why and what to do."""


class Conflict(Exception):
    """The document is not at the revision the writer expected (HTTP 412)."""


class Raced(Exception):
    """Someone else changed the config between our read and our write: plan again."""


class NotFound(KeyError):
    """No customer with that directory."""


@dataclass(frozen=True)
class Cname:
    directory: str
    retiring: bool
    entry: Entry
    since: float = 0.0


@dataclass
class View:
    """The config at one revision, parsed."""

    snap: Snapshot
    keys: Keys
    customers: dict[str, tuple[dict[str, Any], Entry]] = field(default_factory=dict)
    cnames: dict[str, Cname] = field(default_factory=dict)
    shields: tuple = ()
    marker: int = 0

    @classmethod
    def of(cls, snap: Snapshot, keys: Keys) -> "View":
        view = cls(snap, keys)
        for name, entry in snap.under(keys.customers).items():
            try:
                view.customers[name] = (json.loads(entry.value), entry)
            except ValueError:
                view.customers[name] = ({}, entry)
        for name, entry in snap.under(keys.cnames).items():
            try:
                value = json.loads(entry.value)
                view.cnames[name] = Cname(str(value["directory"]), bool(value.get("retiring")),
                                          entry, float(value.get("since", 0)))
            except (ValueError, KeyError, TypeError):
                continue
        raw = [json.loads(e.value) for e in snap.under(keys.shields).values()]
        view.shields = parse_shields(Checker("store"), lines(raw, keys.shields),
                                     Pointer(keys.shields, 0)) if raw else ()
        marker = snap.entries.get(keys.rev)
        view.marker = marker.mod_revision if marker else 0
        return view

    def pointing_at(self, directory: str) -> list[str]:
        """Edge CNAMEs (active or retiring) whose index entry names `directory`."""
        return list(self._by_directory.get(directory, ()))

    @cached_property
    def _by_directory(self) -> dict[str, list[str]]:
        # one pass for the whole view: a listing asks for every customer's names, and a
        # scan of every CNAME per customer took 45 s for 10,000 customers
        out: dict[str, list[str]] = {}
        for name in sorted(self.cnames):
            out.setdefault(self.cnames[name].directory, []).append(name)
        return out

    def latest(self) -> int:
        """The latest config revision (what an up-to-date node has applied)."""
        return self.marker or self.snap.revision


@dataclass(frozen=True)
class Change:
    """One customer written or deleted. `directory` is its key now (before a rename)."""

    directory: str
    doc: dict[str, Any] | None            # None: delete
    expect: int | None = None             # If-Match: the revision the writer last read
    checked: bool = False                 # validated already (cdnctl apply's files)


@dataclass
class Plan:
    compare: list[Any] = field(default_factory=list)
    ops: list[Any] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)   # for the audit record


def _refuse_if_pointed(view: View, directory: str, doing: str) -> None:
    names = view.pointing_at(directory)
    if not names:
        return
    retiring = [n for n in names if view.cnames[n].retiring]
    text = (f"cannot {doing} customer {directory}: edge CNAME(s) {', '.join(names)} point at "
            "it; delete the edge CNAME(s) first (PUT it with them removed from cnames)")
    if retiring and len(retiring) == len(names):
        text = (f"cannot {doing} customer {directory} yet: edge CNAME(s) {', '.join(names)} "
                "are being retired (nameservers stop answering first, then the edges drop "
                "them); try again when they are gone")
    raise Refused(text)


def plan(store: EtcdStore, view: View, changes: list[Change], rules: Rules,
         sealer: Sealer | None, who: str, action: str, shields: tuple | None = None,
         extra: list[Any] = ()) -> Plan:
    """The transaction for `changes` on `view`; Invalid, Refused or Conflict if it is not
    allowed. Nothing is written here. `shields` (with their writes in `extra`) replaces
    the stored shields for the validation, when a change brings its own."""
    keys, out = view.keys, Plan(ops=list(extra))
    if shields is not None:
        view = replace(view, shields=shields)
    problems: list[str] = []
    after = {d: doc for d, (doc, _) in view.customers.items()}
    touched_names: dict[str, dict[str, Any] | None] = {}
    for change in changes:
        current = view.customers.get(change.directory)
        if change.expect == 0 and current is not None:
            raise Refused(f"customer {change.directory} already exists (PUT it to change it)")
        if change.expect is not None:
            have = current[1].mod_revision if current else 0
            if have != change.expect:
                raise Conflict(f"customer {change.directory} is at revision {have}, not "
                               f"{change.expect}: read it again and re-apply your change")
        if change.doc is None:
            if current is None:
                raise NotFound(change.directory)
            _refuse_if_pointed(view, change.directory, "delete")
            after.pop(change.directory, None)
            out.ops.append(store.delete(keys.customer(change.directory)))
            out.compare.append(store.same_revision(keys.customer(change.directory),
                                                   current[1].mod_revision))
            out.summary.append({"action": "delete", "directory": change.directory,
                                "old": current[1].mod_revision})
            continue
        doc = documents.keep_stored_secret(change.doc, current[0] if current else None)
        try:
            if not change.checked:
                documents.validate(doc, view.shields, rules)
        except Invalid as exc:
            problems += exc.problems if len(changes) == 1 else \
                [f"{change.directory}: {p}" for p in exc.problems]
            continue
        new_dir = str(doc["directory"]).strip("/")
        old_key, new_key = keys.customer(change.directory), keys.customer(new_dir)
        if new_dir != change.directory:
            if current is not None:
                _refuse_if_pointed(view, change.directory, "rename")
                doc = documents.reseal(doc, old_key, new_key, sealer)
                out.ops.append(store.delete(old_key))
                after.pop(change.directory, None)
            if new_dir in view.customers or new_dir in after:
                raise Refused(f"customer {new_dir} already exists")
        stored = documents.seal(doc, new_key, sealer)
        after[new_dir] = stored
        out.compare.append(store.same_revision(old_key, current[1].mod_revision if current
                                               else 0))
        out.ops.append(store.put(new_key, documents.encode(stored)))
        old_doc = current[0] if current else {}
        out.summary.append({"action": "update" if current else "create", "directory": new_dir,
                            "old": current[1].mod_revision if current else 0,
                            "fields": documents.changed_fields(old_doc, stored)})
        _cnames(view, change.directory if current else new_dir, new_dir, old_doc, stored,
                touched_names, rules.own_domains)
    if problems:
        raise Invalid(problems)
    if len(after) > rules.max_customers:
        raise Refused(f"{len(after)} customers; at most {rules.max_customers} are allowed "
                      f"(max_customers)")
    _loops(view, after, touched_names)
    for name, value in sorted(touched_names.items()):
        out.ops.append(store.put(keys.cname(name), json.dumps(value)) if value is not None
                       else store.delete(keys.cname(name)))
    out.compare.append(store.same_revision(keys.rev, view.marker))
    now = time.time()
    out.ops.append(store.put(keys.rev, json.dumps({"at": now, "by": who})))
    out.ops.append(store.put(f"{keys.audit}{time.time_ns():020d}-{os.urandom(3).hex()}",
                             json.dumps({"at": now, "who": who, "action": action,
                                         "config_revision_before": view.latest(),
                                         "changes": out.summary})))
    return out


def _cnames(view: View, old_dir: str, new_dir: str, old_doc: dict[str, Any],
            new_doc: dict[str, Any], touched: dict[str, dict[str, Any] | None],
            zones: tuple[str, ...] = ()) -> None:
    """Index entries for the names a customer gained (new) and lost (retiring): its own
    names and, for those outside our zones, the CNAME targets we give them."""
    new_names = [str(n).lower().rstrip(".") for n in new_doc.get("cnames") or ()]
    new_names += [t for t in documents.cname_targets(new_doc, zones).values()
                  if t not in new_names]
    for name in new_names:
        owner = view.cnames.get(name)
        if name in touched and touched[name] is not None and \
                touched[name]["directory"] != new_dir:
            raise Refused(f"edge CNAME {name} is given to two customers")
        if owner is not None and owner.directory != old_dir:
            raise Refused(f"edge CNAME {name} belongs to customer {owner.directory}"
                          + (" (being retired; try again when it is gone)" if owner.retiring
                             else "; remove it there first"))
        if owner is None or owner.retiring:
            touched[name] = {"directory": new_dir, "retiring": False}
    for name in view.pointing_at(old_dir):
        if name not in new_names and not view.cnames[name].retiring:
            touched[name] = {"directory": old_dir, "retiring": True, "since": time.time()}


def _loops(view: View, after: dict[str, dict[str, Any]],
           touched: dict[str, dict[str, Any] | None]) -> None:
    """An origin that is any customer's edge CNAME would send our edges to themselves."""
    names = {n: c.directory for n, c in view.cnames.items()}
    names.update({n: v["directory"] for n, v in touched.items() if v is not None})
    for directory, doc in after.items():
        origin = doc.get("origin") if isinstance(doc, dict) else None
        servers = (origin.get("http") or []) + (origin.get("https") or []) \
            if isinstance(origin, dict) else []
        if isinstance(origin, dict) and origin.get("address"):
            servers.append(origin["address"])
        for server in servers if isinstance(servers, list) else []:
            host = str(server).rsplit(":", 1)[0].strip("[]").lower() \
                if str(server).count(":") == 1 or str(server).startswith("[") else str(server)
            if host in names:
                raise Refused(f"customer {directory}: origin {host} is the edge CNAME of "
                              f"customer {names[host]} (requests would loop through our edges)")


async def commit(store: EtcdStore, planned: Plan) -> int:
    """Run the transaction; the new revision, or Raced when the config moved meanwhile."""
    resp = await store.txn(planned.compare, planned.ops)
    if not resp.succeeded:
        raise Raced()
    return resp.header.revision
