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

from .gcpause import gc_paused


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


_STR, _MAP, _SEQ = (f"tag:yaml.org,2002:{t}" for t in ("str", "map", "seq"))
_BUSY = object()


def _construct(loader: _Loader, root: yaml.Node) -> Any:
    """The document of `root` with LineDicts and LineLists.

    Walks libyaml's node tree directly instead of through PyYAML's constructor
    machinery (per-node generators and state), which cost three times the parse
    on a 10,000-service file. Other tags and non-string scalars (ints, booleans,
    null, sets, ...) still go through the loader's constructors.
    """
    source = loader.source
    made: dict[int, Any] = {}         # id(node) -> value: an alias gets the anchor's object

    def build(node: yaml.Node) -> Any:
        tag = node.tag
        if tag == _STR and isinstance(node, yaml.ScalarNode):
            return node.value
        value = made.get(id(node))
        if value is _BUSY:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias inside its own anchor (a recursive structure)",
                node.start_mark)
        if value is not None:
            return value
        if tag == _MAP and isinstance(node, yaml.MappingNode):
            made[id(node)] = _BUSY
            value = mapping(node)
        elif tag == _SEQ and isinstance(node, yaml.SequenceNode):
            made[id(node)] = _BUSY
            value = LineList([build(child) for child in node.value])
            value.where = Where(source, node.start_mark.line + 1)
            value.item_where = [Where(source, child.start_mark.line + 1)
                                for child in node.value]
        else:
            value = loader.construct_object(node, deep=True)
        made[id(node)] = value
        return value

    def mapping(node: yaml.MappingNode) -> LineDict:
        loader.flatten_mapping(node)
        out = LineDict()
        out.where = Where(source, node.start_mark.line + 1)
        key_where = out.key_where = {}
        for key_node, value_node in node.value:
            key = build(key_node)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "unhashable key", key_node.start_mark) from None
            where = Where(source, key_node.start_mark.line + 1)
            if key in out:
                # A silently overwritten key is a classic YAML foot-gun; make it an error.
                raise DuplicateKey(f"{where}: duplicate key {key!r}")
            out[key] = build(value_node)
            key_where[key] = where
        return out

    return build(root)


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
        with gc_paused():
            root = loader.get_single_node()
            return None if root is None else _construct(loader, root)
    except DuplicateKey as exc:
        raise YamlError(str(exc)) from None
    except yaml.YAMLError:
        raise YamlError(diagnose(text, source)) from None
    finally:
        loader.dispose()


def diagnose(text: str, source: str) -> str:
    """`file:line: what is wrong (hint: how to fix it)` for YAML that does not parse.

    An unclosed bracket or quote is reported where it was opened -- the parser only
    notices at the next line or at the end of the file; other mistakes where they
    are, naming the line of the construct they break. Found again with PyYAML's own
    scanner and parser, whose wording (unlike libyaml's) we know.
    """
    openers: list[tuple[str, yaml.Mark]] = []
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken)):
                openers.append(("[" if isinstance(token, yaml.FlowSequenceStartToken) else "{",
                                token.start_mark))
            elif isinstance(token, (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)):
                if openers:
                    openers.pop()
    except yaml.MarkedYAMLError as exc:
        return _scanner(exc, text, source, openers)
    if openers:
        return _unclosed(openers[0], source)
    try:
        yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        return _parser(exc, source)
    return f"{source}:1: not valid YAML"


def _line(mark: yaml.Mark | None) -> int:
    return mark.line + 1 if mark is not None else 1


def _unclosed(opener: tuple[str, yaml.Mark], source: str) -> str:
    bracket, mark = opener
    close, what = ("]", "list") if bracket == "[" else ("}", "mapping")
    return (f"{source}:{_line(mark)}: this {bracket} is never closed (hint: end the {what} "
            f"with {close}; its items are separated by commas)")


def _scanner(exc: yaml.MarkedYAMLError, text: str, source: str,
             openers: list[tuple[str, yaml.Mark]]) -> str:
    problem, context = exc.problem or "", exc.context or ""
    where = _line(exc.problem_mark)
    if "quoted scalar" in context and exc.context_mark is not None:
        quote = text[exc.context_mark.index] if exc.context_mark.index < len(text) else '"'
        return (f"{source}:{_line(exc.context_mark)}: the string opened here with {quote} is "
                f"never closed (hint: add the closing {quote}; the file ends at line {where})")
    if "'\\t'" in problem or "\\t" in problem:
        return (f"{source}:{where}: a tab character in the indentation (hint: YAML indents "
                "with spaces only)")
    if "mapping values are not allowed" in problem:
        return (f"{source}:{where}: a second ': ' on this line (hint: a key needs a space "
                "after its ':', here or on the line above; quote a value that contains ': ', "
                "like \"a: b\")")
    if openers and "flow" in context:
        return _unclosed(openers[0], source)
    return _generic(exc, source)


def _parser(exc: yaml.MarkedYAMLError, source: str) -> str:
    problem, context = exc.problem or "", exc.context or ""
    where, opened = _line(exc.problem_mark), _line(exc.context_mark)
    if "block mapping" in context and "expected <block end>" in problem:
        if "block sequence start" in problem:
            return (f"{source}:{where}: a list item ('- ...') where a key belongs (the "
                    f"mapping starts at line {opened}) (hint: indent the list under its key)")
        return (f"{source}:{where}: this line is not indented like the keys above it (the "
                f"mapping starts at line {opened}) (hint: keys of one mapping start in the "
                "same column; a nested one is indented under its 'key:')")
    if "block collection" in context and "expected <block end>" in problem:
        return (f"{source}:{where}: this line is not an item of the list that starts at line "
                f"{opened} (hint: every item starts with '- ' in the same column)")
    if "undefined alias" in problem:
        return f"{source}:{where}: {problem} (hint: define the anchor with & before using *)"
    return _generic(exc, source)


def _generic(exc: yaml.MarkedYAMLError, source: str) -> str:
    where = _line(exc.problem_mark or exc.context_mark)
    text = exc.problem or str(exc)
    if exc.context and exc.context_mark is not None:
        text += f" ({exc.context} at line {_line(exc.context_mark)})"
    return f"{source}:{where}: {text}"


class ConfigFileError(OSError):
    """A config file that cannot be read; the message is one line for the operator."""


def read_config(path: str | Path) -> Any:
    """Parse a config file: YamlError for bad YAML (with file:line), ConfigFileError when
    it is missing, a directory, unreadable or not UTF-8."""
    path = Path(path)
    try:
        return load_yaml(path)
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigFileError(f"{path}: is a directory, not a config file") from None
    except PermissionError:
        raise ConfigFileError(f"{path}: not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
