"""`cdnctl plan|apply -f DIR`: customers kept in files (git), compared with the store.

Every *.yaml, *.yml or *.json file in DIR holds either a `customers:` list (and
optionally `shields:`), like data/edge.yaml, or one customer entry. They are validated
together with the edges' validator (every problem, with file:line), then compared
with the store, octoDNS style: creates, updates (which fields), deletes. `*_env`
and `credentials_file` are resolved here, on the machine that runs cdnctl, so the
files in git hold no secret; the secret itself is sealed before it is stored.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdnkit import schema
from cdnkit.check import Checker, ConfigError
from cdnkit.jsondoc import lines, plain
from cdnkit.seal import Sealer, SealError, is_sealed
from cdnkit.shields import parse_shields
from cdnkit.yamlsrc import LineDict, LineList, Where, YamlError, load_yaml

from . import documents
from .changes import Change, View


@dataclass
class Desired:
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    shields: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Diff:
    creates: list[str] = field(default_factory=list)
    updates: dict[str, list[str]] = field(default_factory=dict)    # directory -> fields
    deletes: list[str] = field(default_factory=list)
    shields: list[str] = field(default_factory=list)                # "+name" "~name" "-name"
    batch: list[Change] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.creates or self.updates or self.deletes or self.shields)

    def text(self) -> str:
        lines = [f"* customer {d}: create" for d in self.creates]
        lines += [f"* customer {d}: update {', '.join(f)}" for d, f in self.updates.items()]
        lines += [f"* customer {d}: delete" for d in self.deletes]
        lines += [f"* shield {s[1:]}: {dict(zip('+~-', ('create', 'update', 'delete')))[s[0]]}"
                  for s in self.shields]
        lines.append(f"Summary: {len(self.creates)} create(s), {len(self.updates)} update(s), "
                     f"{len(self.deletes)} delete(s)" +
                     (f", {len(self.shields)} shield change(s)" if self.shields else "")
                     if not self.empty else "No changes: the store matches the files.")
        return "\n".join(lines)


def read_dir(path: Path, rules: documents.Rules) -> Desired:
    """The customers and shields the files describe; ConfigError lists every problem."""
    files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json")) \
        if path.is_dir() else [path]
    ck = Checker(str(path))
    items, shields = LineList(), LineList()
    items.where = shields.where = Where(str(path), 0)
    items.item_where, shields.item_where = [], []
    for file in files:
        try:
            raw = _load(file)
        except YamlError as exc:
            ck.problems.append(str(exc))
            continue
        except OSError as exc:
            ck.add(Where(str(file), 0), f"cannot read: {exc.strerror}")
            continue
        if isinstance(raw, LineDict) and "directory" in raw:
            items.append(raw)
            items.item_where.append(raw.where)
        elif isinstance(raw, LineDict):
            ck.keys(raw, ("customers", "shields"), f"{file.name} (a customer or customers:)")
            for key, out in (("customers", items), ("shields", shields)):
                for value, where in ck.items(raw.get(key), raw.at(key), key) \
                        if not isinstance(raw.get(key), LineList) else \
                        [(v, raw[key].at(i)) for i, v in enumerate(raw[key])]:
                    out.append(value)
                    out.item_where.append(where)
        elif raw is not None:
            ck.add(Where(str(file), 1), "a file holds a customer or customers: [...]")
    parsed_shields = parse_shields(ck, shields, shields.where) if shields else ()
    ctx = schema.Context(shields=parsed_shields, base=path if path.is_dir() else path.parent,
                         own_domains=rules.own_domains, max_customers=rules.max_customers)
    found = schema.customers(ck, items, items.where, ctx)
    if ck.problems:
        raise ConfigError(ck.problems)
    out = Desired()
    for raw, customer in zip(items, found.items):
        out.customers[customer.directory] = _resolve(plain(raw), customer)
    for raw in shields:
        out.shields[str(raw["name"])] = plain(raw)
    return out


def _load(file: Path) -> Any:
    """A YAML file with its lines, or a JSON file with JSON pointers (`f.json#/customers/3`):
    JSON is what generated sets of thousands of customers are, and it parses in a tenth of
    the time."""
    if file.suffix != ".json":
        return load_yaml(file)
    try:
        return lines(json.loads(file.read_text()), f"{file}#")
    except ValueError as exc:
        raise YamlError(f"{file}:0: not JSON ({exc})") from None


def _resolve(doc: dict[str, Any], customer: Any) -> dict[str, Any]:
    """The document as it will be stored: local references replaced by what they name."""
    origin = doc.get("origin")
    bucket = customer.origin.bucket
    if not isinstance(origin, dict) or bucket is None:
        return doc
    origin = {k: v for k, v in origin.items()
              if k not in ("access_key_id_env", "secret_access_key_env", "credentials_file")}
    if bucket.key_id:
        origin["access_key_id"] = bucket.key_id
    if bucket.secret is not None:
        origin["secret_access_key"] = bucket.secret.value
    return {**doc, "origin": origin}


def diff(desired: Desired, view: View, sealer: Sealer | None, prune: bool = True) -> Diff:
    """What applying `desired` changes in the store (`prune`: delete what is not in it)."""
    out = Diff()
    for directory, doc in sorted(desired.customers.items()):
        found = view.customers.get(directory)
        if found is None:
            out.creates.append(directory)
            out.batch.append(Change(directory, doc, expect=0, checked=True))
            continue
        stored, entry = found
        doc = _same_secret(doc, stored, view.keys.customer(directory), sealer)
        fields = documents.changed_fields(stored, doc)
        if fields:
            out.updates[directory] = fields
            out.batch.append(Change(directory, doc, expect=entry.mod_revision, checked=True))
    if prune:
        for directory, (_, entry) in sorted(view.customers.items()):
            if directory not in desired.customers:
                out.deletes.append(directory)
                out.batch.append(Change(directory, None, expect=entry.mod_revision))
    have = {name: json.loads(e.value) for name, e in view.snap.under(view.keys.shields).items()}
    for name, shield in sorted(desired.shields.items()):
        if name not in have:
            out.shields.append("+" + name)
        elif have[name] != shield:
            out.shields.append("~" + name)
    if prune:
        out.shields += ["-" + name for name in sorted(have) if name not in desired.shields]
    return out


def _same_secret(doc: dict[str, Any], stored: dict[str, Any], key: str,
                 sealer: Sealer | None) -> dict[str, Any]:
    """Put the stored sealed value in place of an equal plain secret (no false update)."""
    secret, old = documents.secret_of(doc), documents.secret_of(stored)
    if secret is None or not is_sealed(old) or sealer is None:
        return doc
    try:
        if sealer.open(old, key + documents.SECRET_POINTER) == secret:
            return documents.with_secret(doc, old)
    except SealError:
        pass
    return doc


def key_file_default() -> str:
    return os.environ.get("CDNCTL_KEY_FILE", "")
