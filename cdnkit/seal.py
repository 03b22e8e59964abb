"""Bucket secrets at rest: sealed with an AEAD before they reach the store.

The control plane and every edge are given the same key file (32 random bytes,
hex); `cdnctl keygen` writes one. A sealed value is "sealed:v1:" + base64(nonce +
AES-256-GCM ciphertext). The associated data is where the secret belongs (the
customer's key and the field), so a sealed value copied to another customer does
not open: an etcd dump or a snapshot file leaks nothing, and cannot be re-used.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "sealed:v1:"
NONCE = 12


class SealError(ValueError):
    """A key file that is no key, or a sealed value that does not open with it."""


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def new_key() -> str:
    """A fresh key, as the key file's text."""
    return os.urandom(32).hex() + "\n"


class Sealer:
    """Seals and opens secrets with one key."""

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise SealError("a seal key is 32 bytes (64 hex digits)")
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "Sealer":
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise SealError(f"key file {path}: {exc.strerror}") from None
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise SealError(f"key file {path}: not 64 hex digits (make one with "
                            "`cdnctl keygen`)") from None

    def seal(self, secret: str, where: str) -> str:
        nonce = os.urandom(NONCE)
        data = self._aead.encrypt(nonce, secret.encode(), where.encode())
        return PREFIX + base64.b64encode(nonce + data).decode()

    def open(self, sealed: str, where: str) -> str:
        if not is_sealed(sealed):
            raise SealError(f"{where}: not a sealed value")
        try:
            raw = base64.b64decode(sealed[len(PREFIX):], validate=True)
            return self._aead.decrypt(raw[:NONCE], raw[NONCE:], where.encode()).decode()
        except (ValueError, InvalidTag):
            raise SealError(f"{where}: the sealed secret does not open with this key "
                            "(another key file, or a value moved from elsewhere)") from None
