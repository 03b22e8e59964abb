"""TLS for clients: one certificate per edge CNAME, chosen by SNI, reloadable.

Modern defaults: TLS 1.2 and 1.3 only, the standard library's default
ciphers, ALPN "h2" then "http/1.1". The SNI callback reads the current table on every handshake, so a
reload (new files) takes effect for new connections without a restart.
"""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class CertSpec:
    names: tuple[str, ...]      # host names (lower case; "*.example.com" allowed)
    cert: str
    key: str


def _context(spec: CertSpec) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(spec.cert, spec.key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])      # HTTP/2 first (edge/http/h2.py)
    return ctx


def identity(spec: CertSpec) -> tuple:
    """What says a spec's files are the ones already loaded: their paths, sizes, mtimes
    and inodes (a file replaced by os.replace has a new inode)."""
    out: tuple = (spec.cert, spec.key)
    for path in out[:2]:
        st = os.stat(path)
        out += (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


class CertStore:
    """Name -> SSLContext; `server_context()` is what the TLS listener uses."""

    def __init__(self, specs: tuple[CertSpec, ...]):
        self._table: dict[str, ssl.SSLContext] = {}
        self._default: ssl.SSLContext | None = None
        self._built: dict[tuple, ssl.SSLContext] = {}     # identity() -> context
        self.load(specs)
        self._server = _context(specs[0]) if specs else None
        if self._server is not None:
            self._server.sni_callback = self._pick

    def load(self, specs: tuple[CertSpec, ...]) -> None:
        """Build every context first, then swap: a bad file leaves the old table in place.

        A context is built once per pair of files and kept while a later load names the
        same files unchanged (same size, mtime and inode): a store revision with many
        customers (edge/fleet/certs.py) rebuilds only the certificates that changed, and
        a SIGHUP after the operator replaced a file still loads the new one."""
        table: dict[str, ssl.SSLContext] = {}
        built: dict[tuple, ssl.SSLContext] = {}
        default = None
        for spec in specs:
            same = identity(spec)           # raises OSError on a missing file
            ctx = built.get(same) or self._built.get(same) or _context(spec)  # raises on bad files
            built[same] = ctx
            default = default or ctx
            for name in spec.names:
                table[name.lower()] = ctx
        self._table, self._built, self._default = table, built, default

    def context_for(self, name: str | None) -> ssl.SSLContext | None:
        if not name:
            return self._default
        name = name.lower().rstrip(".")
        found = self._table.get(name)
        if found is None and "." in name:
            found = self._table.get("*." + name.split(".", 1)[1])
        return found or self._default

    def _pick(self, sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        ctx = self.context_for(name)
        if ctx is not None:
            sock.context = ctx

    def server_context(self) -> ssl.SSLContext | None:
        return self._server
