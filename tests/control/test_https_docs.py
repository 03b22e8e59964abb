"""`https:` in a customer document: an uploaded certificate is checked (422 reasons),
its key sealed for the customer and write-only; `https: auto` is accepted."""
from __future__ import annotations

import pytest

from cdnkit.seal import Sealer, new_key
from control import documents
from tests.tlsutil import CA

RULES = documents.Rules()
KEY = "/cdn/config/customers/a"


def _doc(tmp_path, *names):
    cert, key = CA(tmp_path).issue("www.a.com")
    return {"directory": "a", "cnames": list(names or ("www.a.com",)),
            "origin": {"http": ["127.0.0.1:1"]},
            "https": {"cert": cert.read_text(), "key": key.read_text()}}


def test_an_uploaded_key_is_sealed_write_only_and_kept_on_a_put_without_it(tmp_path):
    doc = _doc(tmp_path)
    documents.validate(doc, (), RULES)
    sealer = Sealer(bytes.fromhex(new_key().strip()))
    stored = documents.seal(doc, KEY, sealer)
    assert stored["https"]["key"].startswith("sealed:v1:")
    assert sealer.open(stored["https"]["key"], KEY + "/https/key") == doc["https"]["key"]
    public, secrets = documents.public(stored)
    assert "key" not in public["https"] and secrets == ["/https/key"]
    kept = documents.keep_stored_secret(public, stored)
    assert kept["https"]["key"] == stored["https"]["key"]
    documents.validate(kept, (), RULES)


@pytest.mark.parametrize("change, reason", [
    ({"cnames": ["www.b.com"]}, "does not cover www.b.com"),
    ({"https": {"cert": "x", "key": "y"}}, "not a PEM certificate chain"),
    ({"https": "manual"}, "https must be auto or"),
])
def test_a_bad_certificate_is_refused_with_its_reason(tmp_path, change, reason):
    with pytest.raises(documents.Invalid) as exc:
        documents.validate({**_doc(tmp_path), **change}, (), RULES)
    assert reason in exc.value.problems[0]


def test_https_auto_is_accepted(tmp_path):
    documents.validate({**_doc(tmp_path), "https": "auto"}, (), RULES)
