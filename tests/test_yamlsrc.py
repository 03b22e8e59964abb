"""cdnkit.yamlsrc: values with their lines, as PyYAML would load them."""
from __future__ import annotations

import datetime
import gc

import pytest
import yaml

from cdnkit.yamlsrc import LineDict, LineList, YamlError, load_yaml_text

DOC = """\
base: &base
  weight: 2
  up: true
svc:
  <<: *base
  pool: [nyc, fra]
  ttl: 30
  none: null
  when: 2026-12-02
  ratio: 0.5
  tags: !!set {a, b}
again: *base
"""


def test_values_lines_merges_and_aliases_are_as_pyyaml_loads_them():
    doc = load_yaml_text(DOC, "f.yaml")
    assert doc == yaml.load(DOC, Loader=yaml.SafeLoader)
    assert isinstance(doc, LineDict) and isinstance(doc["svc"]["pool"], LineList)
    assert str(doc.at("svc")) == "f.yaml:4" and str(doc["svc"].at("ttl")) == "f.yaml:7"
    assert str(doc["svc"]["pool"].at(1)) == "f.yaml:6"
    assert doc["again"] is doc["base"]                   # an alias is the anchor's object
    assert doc["svc"]["when"] == datetime.date(2026, 12, 2) and doc["svc"]["tags"] == {"a", "b"}


def test_a_duplicate_key_is_an_error_with_its_line():
    with pytest.raises(YamlError, match=r"f.yaml:3: duplicate key 'a'"):
        load_yaml_text("a: 1\nb: 2\na: 3\n", "f.yaml")


def test_a_recursive_alias_is_an_error_not_a_hang():
    with pytest.raises(YamlError, match="f.yaml:1"):
        load_yaml_text("a: &x [1, *x]\n", "f.yaml")


def test_an_empty_document_is_none_and_the_collector_is_left_as_found():
    assert load_yaml_text("", "f.yaml") is None
    assert gc.isenabled()
    gc.disable()
    try:
        load_yaml_text("a: 1\n", "f.yaml")
        assert not gc.isenabled()
    finally:
        gc.enable()
