"""The parsed form of a catalog file: mappings and lists that remember their lines.

Both readers build these (``catalog`` for YAML, ``jsonfile`` for JSON), so one checker
validates either kind of file and names the same lines.
"""

from __future__ import annotations

from typing import Any


class LineDict(dict[Any, Any]):
    """A mapping that remembers the line of itself and of each key."""

    line: int = 0
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int]]
    bad_keys: list[tuple[str, int]]


class LineList(list[Any]):
    """A sequence that remembers the line of each item."""

    line: int = 0
    lines: list[int]


class RawScalar:
    """A scalar that must not pass for text: a YAML 1.1 bool, number, date or null, or a
    JSON fraction or null. ``reader`` names the format that read it, for messages."""

    __slots__ = ("kind", "reader", "text", "value")

    def __init__(self, text: str, kind: str, value: Any, reader: str = "YAML") -> None:
        self.text, self.kind, self.value, self.reader = text, kind, value, reader

    def __repr__(self) -> str:
        return self.text
