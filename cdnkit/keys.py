"""Where things live in the store, under one prefix (default `/cdn/`).

    {prefix}config/customers/{directory}   a customer entry, the document of data/edge.yaml (JSON)
    {prefix}config/cnames/{name}           edge CNAME -> {"directory": ..., "retiring": bool}
    {prefix}config/shields/{name}          a shield: {name, address, region, lat, lon}
    {prefix}config/purge/{id}              a purge job: {urls | prefix | customer, at, by}
    {prefix}config/drain/{node}            an edge drained by an operator: {at, by}
    {prefix}config/certs/{directory}       a customer's ACME certificate: {cert (PEM chain),
                                           key (sealed, AAD = this key), names, not_after,
                                           serial}
    {prefix}config/acme/{token}            an HTTP-01 challenge: the key authorization
    {prefix}config/rev                     touched by every config change: its mod_revision
                                           is the latest config revision
    {prefix}nodes/{id}                     an edge, shield or nameserver, under its lease:
                                           {id, kind, site, addresses, applied, ...}
    {prefix}audit/{time}-{n}               who changed what, old and new revision
    {prefix}certstatus/{directory}         issuing | active | failed, with why and when
    {prefix}acme/account                   the ACME account: {key (sealed), uri, directory}

Edges watch `config/` only (one contiguous range, so one change is one watch
response and applies atomically); nameservers also watch `nodes/` to learn which
edge has applied which revision. Node heartbeats and the audit log never reach the
edges' watches.
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "/cdn/"


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    @property
    def config(self) -> str:
        return f"{self.prefix}config/"

    @property
    def customers(self) -> str:
        return f"{self.config}customers/"

    @property
    def cnames(self) -> str:
        return f"{self.config}cnames/"

    @property
    def shields(self) -> str:
        return f"{self.config}shields/"

    @property
    def purge(self) -> str:
        return f"{self.config}purge/"

    @property
    def drains(self) -> str:
        return f"{self.config}drain/"

    @property
    def certs(self) -> str:
        return f"{self.config}certs/"

    @property
    def challenges(self) -> str:
        return f"{self.config}acme/"

    @property
    def cert_status(self) -> str:
        return f"{self.prefix}certstatus/"

    @property
    def acme_account(self) -> str:
        return f"{self.prefix}acme/account"

    @property
    def rev(self) -> str:
        return f"{self.config}rev"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}nodes/"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit/"

    def customer(self, directory: str) -> str:
        return self.customers + directory

    def cname(self, name: str) -> str:
        return self.cnames + name

    def cert(self, directory: str) -> str:
        return self.certs + directory

    def drain(self, node_id: str) -> str:
        return self.drains + node_id

    def node(self, node_id: str) -> str:
        return self.nodes + node_id

    def name_of(self, key: str, folder: str) -> str:
        """The last part of `key` below `folder` ("" when it is not below it)."""
        return key[len(folder):] if key.startswith(folder) else ""
