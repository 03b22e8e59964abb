"""Customer documents as the control plane handles them: validated with the edges' own
validator (cdnkit.schema), their bucket secret sealed before it is stored, and left out
of everything it returns.

A document is the customer entry of data/edge.yaml, as JSON. Problems are reported
with JSON pointers into the body ("/origin/http/0: ..."), all at once.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from cdnkit import certs, schema
from cdnkit.check import Checker
from cdnkit.customer import Shield
from cdnkit.jsondoc import lines
from cdnkit.seal import Sealer, is_sealed

SECRET = "secret_access_key"
SECRET_POINTER = f"/origin/{SECRET}"
HTTPS_KEY_POINTER = "/https/key"        # an uploaded certificate's key: sealed, write-only


class Invalid(ValueError):
    """A document (or a set of them) was rejected; `problems` lists every reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Rules:
    """What every document is checked against besides itself."""

    own_domains: tuple[str, ...] = ("cdn.example.net",)
    max_customers: int = schema.MAX_CUSTOMERS


def check(doc: Any, shields: tuple[Shield, ...], rules: Rules, where: str = "") -> list[str]:
    """Every problem of one customer document ([] when it is valid)."""
    ck = Checker("api")
    body = lines(doc, where)
    ctx = schema.Context(shields=shields, own_domains=rules.own_domains, max_customers=None,
                         local_refs=False)
    schema.customer(ck, body, body.where if hasattr(body, "where") else None, "", ctx)
    return ck.problems


def cname_targets(doc: dict[str, Any], zones: tuple[str, ...]) -> dict[str, str]:
    """The CNAME each of the customer's own names must point at (seed 000: the customer
    adds www.test.com and is told to CNAME it to www.test.com.cdn.example.net): the name
    under our first zone, for every name outside our zones. Names already in a zone are
    answered as they are."""
    if not zones:
        return {}
    out = {}
    for raw in doc.get("cnames") or ():
        name = str(raw).lower().rstrip(".")
        if not any(name == z or name.endswith("." + z) for z in zones):
            out[name] = f"{name}.{zones[0]}"
    return out


def secret_of(doc: dict[str, Any]) -> str | None:
    origin = doc.get("origin")
    value = origin.get(SECRET) if isinstance(origin, dict) else None
    return value if isinstance(value, str) else None


def with_secret(doc: dict[str, Any], value: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["origin"][SECRET] = value
    return out


def keep_stored_secret(doc: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
    """A write that leaves the secret out keeps the stored one (it is write-only: a client
    that read the document never saw it), as long as the access key id is the same."""
    if stored is not None and isinstance(doc.get("https"), dict) and https_key_of(doc) is None \
            and is_sealed(https_key_of(stored)) and \
            doc["https"].get("cert") == stored["https"].get("cert"):
        doc = _with_https_key(doc, stored["https"]["key"])    # same certificate: same key
    if stored is None or secret_of(doc) is not None or not is_sealed(secret_of(stored)):
        return doc
    origin, old = doc.get("origin"), stored.get("origin", {})
    if not isinstance(origin, dict) or origin.get("access_key_id") != old.get("access_key_id"):
        return doc
    return with_secret(doc, old[SECRET])


def validate(doc: Any, shields: tuple[Shield, ...], rules: Rules) -> None:
    """Raise Invalid with every problem; a sealed secret counts as given."""
    if not isinstance(doc, dict):
        raise Invalid(["/: a customer must be a JSON object"])
    probe = doc
    if is_sealed(secret_of(doc)):
        probe = with_secret(doc, "stored")
    problems = check(probe, shields, rules)
    if not problems:
        problems = check_certificate(doc)
    if problems:
        raise Invalid(problems)


def https_key_of(doc: dict[str, Any]) -> str | None:
    https = doc.get("https")
    value = https.get("key") if isinstance(https, dict) else None
    return value if isinstance(value, str) else None


def check_certificate(doc: dict[str, Any]) -> list[str]:
    """An uploaded certificate must load, match its key, be valid now and cover every
    one of the customer's names (a name it misses would fail every client's check)."""
    https, key = doc.get("https"), https_key_of(doc)
    if not isinstance(https, dict) or key is None or is_sealed(key):
        return []               # a sealed key was checked when it was uploaded
    try:
        info = certs.inspect(https.get("cert"), key)
    except certs.CertError as exc:
        return [f"/https: {exc}"]
    missing = [str(n).lower().rstrip(".") for n in doc.get("cnames") or ()
               if not info.covers(str(n))]
    if missing:
        return [f"/https/cert: the certificate (for {', '.join(info.names)}) does not cover "
                f"{', '.join(missing)}"]
    return []


def uploaded_expiry(https: dict[str, Any]) -> dict[str, Any]:
    """{"expires", "names", "serial"} of an uploaded certificate (its key is not needed
    to read them); an unreadable one shows nothing rather than failing the listing."""
    try:
        leaf = x509.load_pem_x509_certificates(str(https.get("cert", "")).encode())[0]
    except ValueError:
        return {"expires": None, "names": [], "serial": ""}
    return {"expires": leaf.not_valid_after_utc.isoformat(), "names": list(certs.names_of(leaf)),
            "serial": format(leaf.serial_number, "x")}


def _with_https_key(doc: dict[str, Any], value: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["https"]["key"] = value
    return out


def seal(doc: dict[str, Any], key: str, sealer: Sealer | None) -> dict[str, Any]:
    """The document as stored: its plain secrets sealed for `key` (the customer's key)."""
    https_key = https_key_of(doc)
    if https_key is not None and not is_sealed(https_key):
        if sealer is None:
            raise Invalid([f"{HTTPS_KEY_POINTER}: this control plane has no --key-file; it "
                           "cannot store certificate keys"])
        doc = _with_https_key(doc, sealer.seal(https_key, key + HTTPS_KEY_POINTER))
    secret = secret_of(doc)
    if secret is None or is_sealed(secret):
        return doc
    if sealer is None:
        raise Invalid([f"{SECRET_POINTER}: this control plane has no --key-file; it cannot "
                       "store bucket secrets"])
    return with_secret(doc, sealer.seal(secret, key + SECRET_POINTER))


def reseal(doc: dict[str, Any], old_key: str, new_key: str,
           sealer: Sealer | None) -> dict[str, Any]:
    """Sealed secrets moved with their customer to a new key (a directory rename)."""
    https_key = https_key_of(doc)
    if is_sealed(https_key) and sealer is not None:
        plain = sealer.open(https_key, old_key + HTTPS_KEY_POINTER)
        doc = _with_https_key(doc, sealer.seal(plain, new_key + HTTPS_KEY_POINTER))
    secret = secret_of(doc)
    if not is_sealed(secret) or sealer is None:
        return doc
    plain = sealer.open(secret, old_key + SECRET_POINTER)
    return with_secret(doc, sealer.seal(plain, new_key + SECRET_POINTER))


def public(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The document without its secrets, and the pointers of the secrets left out."""
    out, left = doc, []
    if https_key_of(doc) is not None:
        out = copy.deepcopy(out)
        del out["https"]["key"]
        left.append(HTTPS_KEY_POINTER)
    if secret_of(doc) is not None:
        out = copy.deepcopy(out)
        del out["origin"][SECRET]
        left.append(SECRET_POINTER)
    return out, left


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def changed_fields(old: Any, new: Any, pointer: str = "") -> list[str]:
    """JSON pointers of what differs (for the audit log: where, never the values)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += changed_fields(old.get(key), new.get(key), f"{pointer}/{key}")
        return out
    return [] if old == new else [pointer or "/"]
