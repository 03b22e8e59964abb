"""The store's certificates for this edge: uploaded ones and ACME ones, as files.

Two kinds of store document carry a certificate for a customer's names:
a customer's own, uploaded (`https: {cert, key}` in its document, the key sealed
for `<customer key>/https/key`), and one the control plane got by ACME for a
customer with `https: auto` (`config/certs/<directory>`, the key sealed for
`<that key>/key`). Each is opened, checked with `cdnkit.certs.inspect`, written
to a pair of files named by their content, and becomes a `CertSpec` for the
customer's names the certificate covers; the one TLS path of the edge
(`EdgeConfig.certificates`, tls.CertStore and quiccert.CertTable) serves them.

Which one a name gets: uploaded > ACME > the edge YAML's `tls: certificates` >
the default (the first of those), so the YAML's come first in the table and the
uploaded ones last (later specs win a name). A certificate that does not open or
does not check is reported and the last good one of that customer and kind is
kept. Documents are opened again only when their store entry changed
(mod_revision), and files are written only when they are not there already:
content-named files never change, so a handshake never reads half of one, and the
SSL contexts of unchanged files are kept across revisions.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from cdnkit.certs import CertError, inspect
from cdnkit.keys import Keys
from cdnkit.seal import Sealer, SealError, is_sealed
from cdnkit.snapshot import Entry, Snapshot

from edge.http.tls import CertSpec
from edge.model import Customer

UPLOAD, ACME = "upload", "auto"          # Customer.https values, and the two kinds here


@dataclass(frozen=True)
class Loaded:
    """One store certificate as last read: a spec, or why there is none."""

    revision: int                        # the store entry's mod_revision
    spec: CertSpec | None
    problem: str = ""
    not_after: datetime.datetime | None = None


@dataclass(frozen=True)
class Found:
    """The store's certificates at one revision, in the order the table wants them."""

    acme: tuple[CertSpec, ...]
    uploaded: tuple[CertSpec, ...]
    problems: dict[str, list[str]]       # by customer directory, for the node record


def ordered(yaml: tuple[CertSpec, ...], found: Found) -> tuple[CertSpec, ...]:
    """The whole table: the YAML's first (its first stays the default), then ACME, then
    uploaded (later specs win a name). Without YAML certificates the first store one is
    the default."""
    return yaml + found.acme + found.uploaded


class StoreCerts:
    """Keeps the store's certificates of one edge process in files under `directory`
    (its own: workers do not remove each other's files)."""

    def __init__(self, keys: Keys, sealer: Sealer | None, directory: Path):
        self.keys, self.sealer, self.directory = keys, sealer, directory
        self._seen: dict[tuple[str, str], Loaded] = {}     # (kind, directory): last read
        self._good: dict[tuple[str, str], Loaded] = {}     # (kind, directory): last good

    def find(self, snap: Snapshot, customers: Mapping[str, Customer],
             now: datetime.datetime | None = None) -> Found:
        """The certificates of `snap` for the customers served (by directory)."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        wanted = self._wanted(snap, customers)
        for gone in set(self._seen) - set(wanted):
            del self._seen[gone]
        for gone in set(self._good) - set(wanted):
            del self._good[gone]
        out: dict[str, list[CertSpec]] = {UPLOAD: [], ACME: []}
        problems: dict[str, list[str]] = {}
        for (kind, directory), (entry, where) in sorted(wanted.items()):
            seen = self._seen.get((kind, directory))
            if seen is None or seen.revision != entry.mod_revision or _expired(seen, now):
                seen = self._load(entry, where, kind, customers[directory], now)
                self._seen[(kind, directory)] = seen
            if seen.spec is not None:
                self._good[(kind, directory)] = seen
            else:
                problems.setdefault(directory, []).append(seen.problem)
            good = self._good.get((kind, directory))
            if good is not None and _expired(good, now):
                del self._good[(kind, directory)]     # an expired one is no fallback
                good = None
            if good is not None:
                out[kind].append(good.spec)
        return Found(tuple(out[ACME]), tuple(out[UPLOAD]), problems)

    def _wanted(self, snap: Snapshot, customers: Mapping[str, Customer]
                ) -> dict[tuple[str, str], tuple[Entry, str]]:
        """(kind, directory) -> (store entry, where its key is sealed for)."""
        wanted = {}
        docs = snap.under(self.keys.customers)
        for directory, entry in snap.under(self.keys.certs).items():
            customer = customers.get(directory)
            if customer is not None and customer.https == ACME:   # else the issuer deletes it
                wanted[(ACME, directory)] = (entry, self.keys.cert(directory) + "/key")
        for directory, customer in customers.items():
            if customer.https == UPLOAD and directory in docs:
                wanted[(UPLOAD, directory)] = (docs[directory],
                                               self.keys.customer(directory) + "/https/key")
        return wanted

    def _load(self, entry: Entry, where: str, kind: str, customer: Customer,
              now: datetime.datetime) -> Loaded:
        try:
            cert, sealed = _pem_pair(entry.value, kind)
            key = self._open(sealed, where)
            info = inspect(cert, key, now)
            names = tuple(n for n in customer.cnames if info.covers(n))
            if not names:
                raise CertError(f"the certificate (for {', '.join(info.names)}) covers none "
                                f"of the customer's names")
            spec = self._files(cert, key, names)
        except (CertError, SealError) as exc:
            return Loaded(entry.mod_revision, None, _where(str(exc), where))
        except (OSError, ssl.SSLError) as exc:
            return Loaded(entry.mod_revision, None, f"{where.rsplit('/', 1)[0]}: cannot be "
                                                    f"loaded ({exc})")
        return Loaded(entry.mod_revision, spec, "", info.not_after)

    def _open(self, sealed: str, where: str) -> str:
        if not is_sealed(sealed):
            raise SealError(f"{where}: the key is not sealed (only the control plane writes "
                            "certificates)")
        if self.sealer is None:
            raise SealError(f"{where}: the key is sealed; start the edge with --key-file")
        return self.sealer.open(sealed, where)

    def _files(self, cert: str, key: str, names: tuple[str, ...]) -> CertSpec:
        """The pair of files for this certificate, written unless they are there; then
        checked by loading them as the TLS listener will."""
        digest = hashlib.sha256(f"{cert}\0{key}".encode()).hexdigest()[:20]
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_path = self.directory / f"{digest}.crt"
        key_path = self.directory / f"{digest}.key"
        for path, text, mode in ((key_path, key, 0o600), (cert_path, cert, 0o644)):
            if not path.exists():
                _write(path, text, mode)
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
        return CertSpec(names, str(cert_path), str(key_path))

    def prune(self, used: Iterable[CertSpec]) -> None:
        """Remove this process's files that no spec in `used` names (after it applied them:
        the contexts are built, and no table reads those files again)."""
        keep = {p for spec in used for p in (spec.cert, spec.key)}
        try:
            files = list(self.directory.iterdir())
        except FileNotFoundError:
            return
        for path in files:
            if str(path) not in keep and path.suffix in (".crt", ".key", ".tmp"):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass


def _pem_pair(value: bytes, kind: str) -> tuple[str, str]:
    """(cert, sealed key) of a customer document (uploaded) or an ACME document."""
    try:
        doc = json.loads(value)
    except ValueError:
        raise CertError("not JSON") from None
    block = doc.get("https") if kind == UPLOAD and isinstance(doc, dict) else doc
    if not isinstance(block, dict) or not isinstance(block.get("cert"), str) \
            or not isinstance(block.get("key"), str):
        raise CertError("needs cert and key (PEM text)")
    return block["cert"], block["key"]


def _where(text: str, where: str) -> str:
    """A problem with the store key in front, once (SealError messages carry it)."""
    return text if text.startswith(where) else f"{where.rsplit('/', 1)[0]}: {text}"


def _expired(loaded: Loaded, now: datetime.datetime) -> bool:
    return loaded.not_after is not None and loaded.not_after <= now


def _write(path: Path, text: str, mode: int) -> None:
    """Write `path` whole or not at all: a temporary file (created with `mode`, so a key
    is never readable by others), then a rename over the name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
