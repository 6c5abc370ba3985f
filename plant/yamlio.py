"""Reading plant files: YAML that remembers where every mapping and key came from.

A ``SafeLoader`` (libyaml's when available) composes the document; its mappings become ``LineDict``: a ``dict`` that also
holds the line of the mapping and of each key, so that a validation error deep inside a plant
file can name the line it comes from.  Duplicate keys in one mapping are an error (plain YAML
silently keeps the last one, which would hide a typo'd second declaration).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from plant.errors import PlantError

__all__ = ["LineDict", "PlantError", "load_yaml", "line_of"]

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LineDict(dict):
    """A YAML mapping with the (1-based) line of the mapping and of each of its keys."""

    __slots__ = ("line", "key_lines")

    def __init__(self, *args: Any, line: int = 0, key_lines: dict[Any, int] | None = None):
        super().__init__(*args)
        self.line = line
        self.key_lines = key_lines or {}


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


_STR, _MAP, _SEQ = (f"tag:yaml.org,2002:{t}" for t in ("str", "map", "seq"))
_MERGE = "tag:yaml.org,2002:merge"


class _LineLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader that memoises the implicit tag of repeated plain scalars (a plant file
    repeats its kinds, units and numbers thousands of times)."""

    _tags: dict[str, str] = {}

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = self._tags.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(self._tags) < 100_000:
                    self._tags[value] = tag
            return tag
        return super().resolve(kind, value, implicit)


def _construct(loader: _LineLoader, node: yaml.Node, memo: dict[tuple[str, str], Any]) -> Any:
    """The node as Python data, ``LineDict`` for mappings; plain tags are built directly,
    anything else by the SafeConstructor (which rejects unsafe tags)."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _STR:
            return node.value
        key = (node.tag, node.value)
        if key not in memo:
            memo[key] = loader.construct_object(node, deep=True)
        return memo[key]
    if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
        return [_construct(loader, child, memo) for child in node.value]
    if isinstance(node, yaml.MappingNode) and node.tag == _MAP:
        if any(k.tag == _MERGE for k, _ in node.value):
            loader.flatten_mapping(node)
        out = LineDict(line=node.start_mark.line + 1)
        for key_node, value_node in node.value:
            key = _construct(loader, key_node, memo)
            try:
                seen = key in out
            except TypeError:
                raise _DuplicateKey(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if seen:
                raise _DuplicateKey(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {out.key_lines[key]})",
                    key_node.start_mark,
                )
            out[key] = _construct(loader, value_node, memo)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out
    return loader.construct_object(node, deep=True)  # raises for tags a SafeLoader refuses


def _load(text: str) -> Any:
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _construct(loader, node, {})
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> Any:
    """The YAML document at ``path`` with ``LineDict`` mappings; ``PlantError`` on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlantError(path, None, "", f"cannot read the plant file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise PlantError(path, None, "", "not a UTF-8 text file") from None
    try:
        return _load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        kind = "" if isinstance(exc, _DuplicateKey) else "YAML syntax: "
        raise PlantError(path, mark.line + 1 if mark else None, "", f"{kind}{problem}") from None
    except yaml.YAMLError as exc:
        raise PlantError(path, None, "", f"YAML syntax: {exc}") from None


def line_of(root: Any, loc: tuple[Any, ...]) -> int | None:
    """The line of the deepest node of ``root`` reached along ``loc`` (a pydantic error
    location; entries that are not in the data, such as a union's tag, are skipped)."""
    node, line = root, getattr(root, "line", None) or None
    for part in loc:
        if isinstance(node, LineDict) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            line = getattr(node, "line", None) or line
        # anything else: a tag or a field the data lacks; stay at the deepest node found
    return line
