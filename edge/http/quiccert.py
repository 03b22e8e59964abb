"""Certificates for QUIC connections, chosen by the ClientHello's SNI.

The edge's TCP listeners choose with ssl's SNI callback (tls.CertStore); aioquic
has none, and wants its own certificate objects, so this is the QUIC side of
the same `tls: certificates` table.
"""
from __future__ import annotations

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import pull_client_hello

from edge.http.tls import identity


class CertTable:
    """Certificate and key per name for QUIC (aioquic's objects, not ssl's), rebuilt
    when the edge's config changes (a reload), chosen by SNI as tls.CertStore does."""

    def __init__(self) -> None:
        self._specs = None
        self._table: dict[str, QuicConfiguration] = {}
        self._built: dict[tuple, QuicConfiguration] = {}
        self.default: QuicConfiguration | None = None

    def update(self, specs) -> None:
        """Load `specs` (tls.CertSpec) unless they are the ones loaded already."""
        if specs is self._specs:
            return
        table, default, built = {}, None, {}
        for spec in specs:
            same = identity(spec)           # unchanged files: the certificate loaded before
            loaded = built.get(same) or self._built.get(same)
            if loaded is None:
                loaded = QuicConfiguration(is_client=False)
                loaded.load_cert_chain(spec.cert, spec.key)
            built[same] = loaded
            default = default or loaded
            for name in spec.names:
                table[name.lower()] = loaded
        self._specs, self._table, self._built, self.default = specs, table, built, default

    def pick(self, name: str | None) -> QuicConfiguration | None:
        """The loaded certificate for a server name: exact, then wildcard, then default."""
        if not name:
            return self.default
        name = name.lower().rstrip(".")
        found = self._table.get(name)
        if found is None and "." in name:
            found = self._table.get("*." + name.split(".", 1)[1])
        return found or self.default


class SniQuic(QuicConnection):
    """A server QuicConnection whose certificate is chosen by the ClientHello's SNI.

    aioquic has no SNI callback: the TLS context is made in `_initialize` and reads
    the ClientHello in `_server_handle_hello`, so that method is wrapped to read the
    server name first and put the certificate for it in place."""

    certs: CertTable

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        tls = self.tls
        handle = tls._server_handle_hello
        certs = self.certs

        def by_sni(input_buf, initial_buf, handshake_buf):
            start = input_buf.tell()
            hello = pull_client_hello(input_buf)
            input_buf.seek(start)
            chosen = certs.pick(hello.server_name)
            if chosen is not None:
                tls.certificate = chosen.certificate
                tls.certificate_chain = chosen.certificate_chain
                tls.certificate_private_key = chosen.private_key
            return handle(input_buf, initial_buf, handshake_buf)

        tls._server_handle_hello = by_sni
