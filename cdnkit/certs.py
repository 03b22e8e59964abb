"""Customer TLS certificates as data: a PEM chain and its key, checked before use.

The control plane checks an uploaded certificate with `inspect` (a refusal is a 422
with the reason), and so does every edge before it loads one from the store (a bad
one is left out, the edge keeps its last good certificate for those names).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID

MAX_PEM = 64 * 1024          # a chain of a few certificates; more is not a certificate


class CertError(ValueError):
    """A certificate (or its key) that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What matters of a leaf certificate: the names it covers and until when."""

    names: tuple[str, ...]
    not_after: datetime.datetime
    serial: str

    def covers(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for name in self.names:
            if name == host or (name.startswith("*.") and "." in host
                                and host.split(".", 1)[1] == name[2:]):
                return True
        return False

    @property
    def expires(self) -> str:
        return self.not_after.strftime("%Y-%m-%d %H:%M UTC")


def names_of(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names a certificate covers (subjectAltName, else its common name)."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(str(n).lower() for n in names)


def inspect(cert_pem: str, key_pem: str, now: datetime.datetime | None = None) -> CertInfo:
    """The leaf's names and expiry; CertError when the chain or key is unusable
    (not PEM, expired, not yet valid, or a key that is not the leaf's)."""
    if not isinstance(cert_pem, str) or not isinstance(key_pem, str):
        raise CertError("cert and key must be PEM text")
    if len(cert_pem) > MAX_PEM or len(key_pem) > MAX_PEM:
        raise CertError(f"cert and key are at most {MAX_PEM // 1024} KiB of PEM each")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem.encode())
    except ValueError:
        raise CertError("cert is not a PEM certificate chain (-----BEGIN CERTIFICATE-----)") \
            from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise CertError("key is not an unencrypted PEM private key") from None
    leaf = chain[0]
    leaf_public = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    own_public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf_public != own_public:
        raise CertError("key does not belong to the certificate (the first one of the chain)")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc <= now:
        raise CertError(f"certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    if leaf.not_valid_before_utc > now:
        raise CertError(f"certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d}")
    names = names_of(leaf)
    if not names:
        raise CertError("certificate names no host (no DNS name in subjectAltName)")
    return CertInfo(names, leaf.not_valid_after_utc, format(leaf.serial_number, "x"))
