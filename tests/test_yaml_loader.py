"""The catalog's fast YAML loader makes exactly what PyYAML's generic constructor makes with
the same constructors: data, lines of every key and item, duplicates, bad keys, errors."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from reconciler import catalog
from reconciler.nodes import LineDict, LineList, RawScalar


class Generic(catalog._BaseLoader):  # type: ignore[misc]
    """The same constructors, run by PyYAML's own construct_document."""


for _tag, _constructor in catalog._Loader.yaml_constructors.items():
    Generic.add_constructor(_tag, _constructor)


def shape(value: Any) -> Any:
    """Everything a check reads of loaded data, as plain values."""
    if isinstance(value, LineDict):
        return ("map", value.line, value.key_lines, value.duplicates, value.bad_keys,
                [(shape(k), shape(v)) for k, v in value.items()])
    if isinstance(value, LineList):
        return ("seq", value.line, value.lines, [shape(i) for i in value])
    if isinstance(value, RawScalar):
        return ("raw", value.text, value.kind, repr(value.value), value.reader)
    return (type(value).__name__, value)


def outcome(text: str, loader: Any) -> Any:
    try:
        data = yaml.load(text, Loader=loader)  # at the usual recursion limit
    except yaml.YAMLError as exc:
        return (type(exc).__name__, str(exc))
    with deep_recursion():  # shape() recurses once per level
        return shape(data)


@contextlib.contextmanager
def deep_recursion() -> Iterator[None]:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


DOCUMENTS = {
    "catalog": "defaults:\n  tags: [a, b]\nimages:\n  - name: web\n    min_disk: 40\n"
               "    properties: {team: web, 'on': yes}\n  - {name: db, tags: []}\n",
    "scalars": "a: yes\nb: 010\nc: 0x1f\nd: 1:30\ne: 1.5e3\nf: .inf\ng: ~\nh:\ni: 2024-05-01\n"
               "j: '010'\nk: !!binary aGVsbG8=\nl: -12\nm: +7\nn: True\n",
    "keys": "on: 1\n1.10: x\n[a, b]: list key\n{c: 1}: map key\nx: 1\nx: 2\n? complex\n: v\n",
    "merge and value keys": "base: {a: 1}\n<<: {b: 2, c: 3}\n=: value key\nd: 4\n",
    "tags": "s: !!set {x, y}\no: !!omap [{a: 1}]\np: !!pairs [{a: 1}, {a: 2}]\nt: !!str 12\n",
    "odd pairing": "images:\n  - name: !!str [1]\n",
    "unknown tag": "a: !custom 1\n",
    "deep lists": "[" * 900 + "]" * 900,
    "deep maps": "".join("  " * i + "k:\n" for i in range(600)) + "  " * 600 + "v: 1\n",
    "empty": "",
    "only a comment": "# nothing\n",
    "syntax error": "images: [\n",
}


@pytest.mark.parametrize("text", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_the_fast_loader_makes_what_the_generic_constructor_makes(text: str) -> None:
    fast, generic = outcome(text, catalog._Loader), outcome(text, Generic)
    with deep_recursion():  # comparing nested tuples recurses too
        assert fast == generic
