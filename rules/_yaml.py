"""Read a rule-set YAML document together with the source position of every value.

The only place ``rules`` touches PyYAML, imported inside :func:`parse_yaml`
so the pure core (compiling, evaluating) never needs it. Positions are
1-based lines and 1-based columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Pos:
    """Where a value starts in the source, and how to find a character inside it."""

    line: int
    col: int
    text: str | None = None  # the whole document (only for scalars)
    start: int = 0  # index of the scalar's first source character
    end: int = 0
    style: str | None = None  # YAML scalar style: None (plain), "'", '"', "|", ">"

    def at(self, value: str, offset: int) -> tuple[int, int]:
        """Line and column in the document of character ``offset`` of the scalar ``value``."""
        if self.text is None:
            return self.line, self.col
        raw = self.text[self.start : self.end]
        j = 0
        if self.style in ("|", ">"):
            j = raw.find("\n") + 1
        elif self.style in ("'", '"'):
            j = 1
        pos = j
        # Greedy alignment of the value's characters with the raw source: they
        # appear in order (folding only drops or turns line breaks into spaces).
        for i in range(min(offset, len(value)) + 1):
            if i == len(value):
                pos = j
                break
            k = raw.find(value[i], j)
            if k < 0:
                break
            pos, j = k, k + 1
        index = self.start + min(pos, len(raw))
        line = self.text.count("\n", 0, index) + 1
        col = index - (self.text.rfind("\n", 0, index) + 1) + 1
        return line, col


class YamlProblem(Exception):
    """The document is not valid YAML (line, column, message)."""

    def __init__(self, line: int, col: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.col = col
        self.message = message


def parse_yaml(text: str) -> tuple[Any, dict[Path, Pos], list[tuple[Path, Pos, str]]]:
    """Parse ``text``; return (data, positions by path, duplicate keys found).

    ``positions[("rules", 0, "when")]`` is where rule 0's ``when`` value starts;
    ``positions[("rules", 0)]`` where the rule's mapping starts.
    """
    import yaml  # imported here: the pure core never needs it

    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise YamlProblem(line, col, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(1, 1, f"invalid YAML: {exc}") from None

    positions: dict[Path, Pos] = {}
    duplicates: list[tuple[Path, Pos, str]] = []

    visited: set[int] = set()

    def walk(n: Any, path: Path) -> None:
        # Aliases make the node graph a DAG: visit each node once, so a
        # "billion laughs" document costs its size, not its expansion.
        if id(n) in visited:
            return
        visited.add(id(n))
        mark = n.start_mark
        if isinstance(n, yaml.ScalarNode):
            positions[path] = Pos(mark.line + 1, mark.column + 1, text, mark.index, n.end_mark.index, n.style)
            return
        positions[path] = Pos(mark.line + 1, mark.column + 1)
        if isinstance(n, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in n.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
                if key in seen:
                    km = key_node.start_mark
                    duplicates.append((path, Pos(km.line + 1, km.column + 1), str(key)))
                seen.add(key)
                walk(value_node, (*path, key))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    if node is not None:
        walk(node, ())
    return data, positions, duplicates
