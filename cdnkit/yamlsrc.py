"""YAML loading that remembers where every value came from.

Validators need "file:line" for each problem (octoDNS style), so mappings and
sequences are loaded as subclasses that carry the line of each key and item.
Shared by the gslb and edge configs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Where:
    """A position in a config file, printed as ``file:line``."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class LineDict(dict):
    """A mapping that knows its own line and the line of each key."""

    where: Where
    key_where: dict[Any, Where]

    def at(self, key: Any) -> Where:
        """Where ``key`` was written (the mapping's own line if unknown)."""
        return self.key_where.get(key, self.where)


class LineList(list):
    """A sequence that knows its own line and the line of each item."""

    where: Where
    item_where: list[Where]

    def at(self, index: int) -> Where:
        """Where item ``index`` was written."""
        return self.item_where[index] if index < len(self.item_where) else self.where


# libyaml's parser when PyYAML has it (ten times faster on a 10,000-customer file);
# the constructors below are the same either way, and both report marks with lines.
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    source = "<string>"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.where = Where(loader.source, node.start_mark.line + 1)
    out.key_where = {}
    duplicates: list[tuple[Any, Where]] = []
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        where = Where(loader.source, key_node.start_mark.line + 1)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "unhashable key", key_node.start_mark) from None
        if key in out:
            duplicates.append((key, where))
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_where[key] = where
    if duplicates:
        # A silently overwritten key is a classic YAML foot-gun; make it an error.
        key, where = duplicates[0]
        raise DuplicateKey(f"{where}: duplicate key {key!r}")
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.where = Where(loader.source, node.start_mark.line + 1)
    out.item_where = [Where(loader.source, child.start_mark.line + 1) for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


class DuplicateKey(ValueError):
    """A mapping repeats a key."""


class YamlError(ValueError):
    """The file is not valid YAML; the message carries file:line."""


def load_yaml(path: Path) -> Any:
    """Parse ``path``; raise YamlError with file:line on syntax errors."""
    text = path.read_text(encoding="utf-8")
    return load_yaml_text(text, str(path))


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text, labelling positions with ``source``."""
    loader = _Loader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except DuplicateKey as exc:
        raise YamlError(str(exc)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise YamlError(f"{source}:{line}: {exc.problem or exc}") from None
    finally:
        loader.dispose()
