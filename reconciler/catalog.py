"""Load, merge and validate a catalog directory into a ``Catalog``.

Every ``*.yaml``, ``*.yml`` and ``*.json`` file under the directory is read (recursively, in
sorted order). Problems are collected, never raised one at a time: the user gets every problem
of every file at once as ``FILE:LINE: images[3].min_disk: message``. YAML 1.1's surprises
(``no`` as a bool, ``1.10`` as a float, ``~`` as null) are errors that say to quote the value,
because a catalog must never silently turn a name into a number.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import dataclasses
import difflib
import itertools
import multiprocessing
import os
import re
import signal
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from reconciler import jsonfile
from reconciler.errors import CatalogError, Problem
from reconciler.escape import terminal
from reconciler.models import Catalog, ImageSpec, Target, body_digest, build, request_body
from reconciler.nodes import LineDict, LineList, RawScalar
from reconciler.profiles import FIELDS, INT_FIELDS, PROFILES, STRING_FIELDS, Profile

_BaseLoader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SUFFIXES = (".yaml", ".yml", ".json")
_TOP_KEYS = ("defaults", "images", "targets")
#: The keys of one entry of ``targets:`` (README "Targets"); all optional text.
TARGET_KEYS = ("cloud", "region", "project", "endpoint", "profile")
#: A target's name: no glob characters (``--target`` takes globs), no spaces.
_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_NO_ENDPOINT = ("has nothing that gives an endpoint; set `endpoint:` (the Image API URL), "
                "`region:` (found in the token's service catalog) or `cloud:` (a clouds.yaml "
                "entry)")
_URL = re.compile(r"https?://[^/\s@]+(/\S*)?\Z")
_TRUE_FALSE = {"true": True, "false": False}


# --- YAML loading with line numbers and strict scalars -------------------------------------

class _Loader(_BaseLoader):  # type: ignore[misc]
    """The fast loader: the C parser and composer when available, and ``_built``, which
    makes the data of the composed nodes directly (files with aliases use _AliasLoader)."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        try:
            return _built(self, node)
        except RecursionError:  # deeper than Python's stack: the iterative generic way
            return self.construct_document(node)


#: Levels of nesting a file with aliases may have (a catalog needs five: images, an image,
#: its tags or properties). libyaml, which reads the other files, stops at 1000 by itself.
MAX_DEPTH = 100


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _AliasLoader(yaml.SafeLoader):
    """For files that use aliases: the Python composer, taught to give ``*alias`` its own
    line (both composers hand back the anchored node itself). Slower, and rarely needed."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # The Python composer recurses once per level: stop long before Python's stack does.
        # (libyaml, used for files without aliases, stops at 1000 levels with its own error.)
        if self._depth >= MAX_DEPTH:
            raise _TooDeep(self.peek_event().start_mark.line + 1)  # type: ignore[no-untyped-call]
        self._depth += 1
        try:
            return self._compose_node(parent, index)
        finally:
            self._depth -= 1

    def _compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            node: Any = copy.copy(super().compose_node(parent, index))
            node.start_mark = mark
            return node
        return super().compose_node(parent, index)


_ALIAS = re.compile(r"(^|[\s\[{,:-])\*[^\s,\]}]+", re.MULTILINE)


def _construct_map(loader: Any, node: yaml.MappingNode) -> Iterator[LineDict]:
    data = _empty_map(node)
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = _map_key(data, loader.construct_object(key_node, deep=False), key_node)
        if key is not _BAD:
            data[key] = loader.construct_object(value_node, deep=False)


def _empty_map(node: yaml.Node) -> LineDict:
    data = LineDict()
    data.line = node.start_mark.line + 1
    data.key_lines, data.duplicates, data.bad_keys = {}, [], []
    return data


_BAD = object()


def _map_key(data: LineDict, key: Any, node: yaml.Node) -> Any:
    """``key`` as the checks read it, its line noted; ``_BAD`` (noted too) for a list or a
    mapping used as a key."""
    line = node.start_mark.line + 1
    if isinstance(key, RawScalar):
        key = key.text  # a key like `on:` or `1.10:` is meant as text
    if isinstance(key, (list, dict)):
        data.bad_keys.append((_describe(key), line))
        return _BAD
    if key in data:
        data.duplicates.append((key, line))
    data.key_lines[key] = line
    return key


def _construct_seq(loader: Any, node: yaml.SequenceNode) -> Iterator[LineList]:
    data = LineList()
    data.line = node.start_mark.line + 1
    data.lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_object(item, deep=False) for item in node.value)


def _construct_bool(loader: Any, node: yaml.ScalarNode) -> Any:
    value = _TRUE_FALSE.get(node.value.lower())
    return RawScalar(node.value, "bool", node.value) if value is None else value


def _raw(kind: str, constructor: Any) -> Any:
    def construct(loader: Any, node: yaml.ScalarNode) -> RawScalar:
        return RawScalar(node.value, kind, constructor(loader, node))
    return construct


_PLAIN_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)\Z")


def _construct_int(loader: Any, node: yaml.ScalarNode) -> Any:
    # YAML 1.1 reads 010 as 8, 0x10 as 16 and 1:30 as 90: only plain decimals are numbers here.
    if _PLAIN_INT.match(node.value):
        return int(node.value)
    return RawScalar(node.value, "number", yaml.SafeLoader.construct_yaml_int(loader, node))


def _construct_null(loader: Any, node: yaml.ScalarNode) -> RawScalar:
    return RawScalar(node.value or "", "null", None)


_STR, _MAP, _SEQ = (f"tag:yaml.org,2002:{t}" for t in ("str", "map", "seq"))
_FLATTEN = frozenset({"tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"})


def _built(loader: Any, node: yaml.Node) -> Any:
    """What the constructors above make of ``node`` and its children, without PyYAML's
    generic machinery (a third of a file's load): no aliases reach here, so nothing is
    shared and nothing needs deferring. Text, mappings and lists are made here; any other
    tag goes to its constructor, and an odd pairing (``!!str`` on a list) to the generic
    way, which raises what it always raised."""
    tag, kind = node.tag, type(node)
    if tag == _STR and kind is yaml.ScalarNode:
        return node.value
    if tag == _MAP and kind is yaml.MappingNode:
        data = _empty_map(node)
        if any(k.tag in _FLATTEN for k, _ in node.value):
            loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = _map_key(data, _built(loader, key_node), key_node)
            if key is not _BAD:
                data[key] = _built(loader, value_node)
        return data
    if tag == _SEQ and kind is yaml.SequenceNode:
        items = LineList(_built(loader, item) for item in node.value)
        items.line = node.start_mark.line + 1
        items.lines = [item.start_mark.line + 1 for item in node.value]
        return items
    if kind is yaml.ScalarNode and tag in loader.yaml_constructors:
        return loader.yaml_constructors[tag](loader, node)
    return loader.construct_object(node, deep=True)


for _loader in (_Loader, _AliasLoader):
    _loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
    _loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
    _loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
    _loader.add_constructor("tag:yaml.org,2002:null", _construct_null)
    _loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
    _loader.add_constructor("tag:yaml.org,2002:float",
                            _raw("number", yaml.SafeLoader.construct_yaml_float))
    _loader.add_constructor("tag:yaml.org,2002:timestamp",
                            _raw("date", yaml.SafeLoader.construct_yaml_timestamp))


#: The largest catalog file read (a 100,000-image catalog is about 20 MiB in all).
MAX_FILE_BYTES = 64 * 1024 * 1024


def read_catalog_file(path: Path, root: Path, display: str) -> tuple[bytes | None,
                                                                      list[Problem]]:
    """The bytes of one catalog file, or why it is refused: a symbolic link that leaves the
    catalog directory (``root``, resolved), anything but a regular file (a FIFO would block,
    ``/dev/zero`` never ends), or a file over ``MAX_FILE_BYTES``. Never blocks."""
    def refused(message: str) -> tuple[None, list[Problem]]:
        return None, [Problem(display, None, "", message)]

    real = Path(os.path.realpath(path))
    if path.is_symlink() and not real.is_relative_to(root):
        return refused("is a symbolic link to a file outside the catalog directory; refused "
                       "(copy the file into the catalog, or link to one inside it)")
    try:
        # O_NONBLOCK: opening a FIFO returns at once; fstat then tells what was opened.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return refused(f"cannot read file: {exc.strerror}")
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return refused(f"is not a regular file (it is {_file_kind(mode)}); a catalog file "
                           "must be a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return refused(f"cannot read file: {exc.strerror}")
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        return refused(f"is larger than {MAX_FILE_BYTES // 2**20} MiB, the limit for one "
                       "catalog file; split it into several files")
    return raw, []


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return kind
    return "not a regular file"


def parse_file(path: Path, display: str, root: Path | None = None) -> tuple[Any, list[Problem]]:
    """Read one file of the catalog directory ``root`` (default: the file's own directory);
    return its data or the problems that stopped it."""
    base = Path(os.path.realpath(root if root is not None else path.parent))
    raw, problems = read_catalog_file(path, base, display)
    if raw is None:
        return None, problems
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start]
        return None, [Problem(display, bad_line, "", f"is not valid UTF-8 (byte 0x{byte:02x} "
                                                     f"at offset {exc.start}); save it as UTF-8")]
    if text.startswith("\ufeff"):
        text = text[1:]
    if path.suffix == ".json":
        data, problems = _parse_json(text, display)
        return data, [dataclasses.replace(p, snippet=_snippet(text, p.line, p.column))
                      for p in problems]
    loader = _AliasLoader if "*" in text and _ALIAS.search(text) else _Loader
    try:
        return yaml.load(text, Loader=loader), []
    except _TooDeep as exc:
        return None, [Problem(display, exc.line, "", f"is nested more than {MAX_DEPTH} levels "
                              "deep; a catalog needs only a few (images, an image, its tags "
                              "or properties)")]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark and exc.context_mark and mark.line >= len(text.splitlines()):
            mark = exc.context_mark  # "at the end of the file": point at what was left open
        line = mark.line + 1 if mark else None
        what = " ".join(filter(None, [exc.context, exc.problem]))
        column = mark.column + 1 if mark else None
        return None, [Problem(display, line, "", f"is not valid YAML: {what}", column=column,
                              snippet=_snippet(text, line, column))]
    except yaml.YAMLError as exc:
        return None, [Problem(display, None, "", f"is not valid YAML: {exc}")]


def _parse_json(text: str, display: str) -> tuple[Any, list[Problem]]:
    """A ``.json`` file is strict JSON (``reconciler.jsonfile``), never YAML."""
    try:
        return jsonfile.load(text), []
    except jsonfile.JsonSyntaxError as exc:
        return None, [Problem(display, exc.line, "", f"is not valid JSON: {exc.message}",
                              column=exc.column)]


# --- validation --------------------------------------------------------------------------

def did_you_mean(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(known)}"


def _field_hint(key: str, known: tuple[str, ...]) -> str:
    """A typo of a field (``min_disc``) gets the field; anything else is most likely an extra
    property written one level too high, so say where properties go."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    if close:
        return f"; did you mean {close[0]}?"
    return (f"; if it is an extra property, indent it under `properties:`; the fields are "
            f"{', '.join(known)}")


def _snippet(text: str, line: int | None, column: int | None) -> str:
    """The offending source line with a caret under the column (tabs shown as spaces)."""
    lines = text.splitlines()
    if not line or not column or not 1 <= line <= len(lines):
        return ""
    source = lines[line - 1].replace("\t", " ")
    start = max(0, column - 60)  # long lines: a window around the column
    shown = source[start:start + 100]
    gutter = " " * len(str(line))
    return f"  {line} | {shown}\n  {gutter} | {' ' * (column - 1 - start)}^"


def _describe(value: Any) -> str:
    if isinstance(value, RawScalar):
        if value.kind == "null":
            return "empty or null" + (f" ({value.text})" if value.text else "")
        return f"read by {value.reader} as a {value.kind} ({value.text})"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"a number ({value})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, str):
        return f"text ({value[:40]!r})"
    return f"a {type(value).__name__}"


def _kind(value: Any) -> str:
    """What a value is, without any of its content."""
    if isinstance(value, RawScalar):
        return f"a {value.kind}" if value.kind != "null" else "empty"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return _describe(value)


def _quote_hint(value: Any) -> str:
    if isinstance(value, RawScalar) and value.text:
        if value.reader == "JSON" and value.kind == "null":
            return ""  # nobody writes null meaning the text "null"
        return f'; quote it to keep the text: "{value.text}"'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'; quote it: "{value}"'
    return ""


class _FileChecker:
    """Validates one parsed file against a profile, collecting problems."""

    def __init__(self, display: str, profile: Profile, strict: bool) -> None:
        self.display, self.profile, self.strict = display, profile, strict
        self.reader = "JSON" if display.endswith(".json") else "YAML"
        self.problems: list[Problem] = []
        self.image: str | None = None  # the name of the image being checked, if it has one
        self.targets: list[_TargetEntry] = []  # the file's `targets:` entries that are valid

    def error(self, line: int | None, path: str, message: str) -> None:
        self.problems.append(Problem(self.display, line, path, message, image=self.image))

    def check(self, data: Any) -> list[tuple[dict[str, Any], int, str, dict[str, int]]]:
        """Return (merged fields, line, path, the line of each field) per valid image."""
        if data is None or (isinstance(data, RawScalar) and data.kind == "null"):
            self.error(1, "", "is empty; a catalog file holds `images:` (a list) and optional "
                              "`defaults:`")
            return []
        if not isinstance(data, LineDict):
            # Not a catalog at all (maybe a file that was never meant to be one): its content
            # is not quoted, only what kind of value it holds.
            self.error(getattr(data, "line", 1), "", f"must be a mapping with `images:` and "
                       f"optional `defaults:`, but it is {_kind(data)}")
            return []
        self._duplicates(data, "")
        for key in data:
            if key not in _TOP_KEYS:
                self.error(data.key_lines.get(key), str(key), "unknown top-level key"
                           + did_you_mean(str(key), _TOP_KEYS))
        if "targets" in data:
            self._targets(data["targets"], data.key_lines["targets"])
            if "images" not in data:
                return []  # a file may declare targets only
        if "images" not in data:  # not a catalog: its values are not looked at (nor quoted)
            self.error(data.line, "images", "is missing; list the images under `images:`")
            return []
        defaults: dict[str, Any] = {}
        default_lines: dict[str, int] = {}
        if "defaults" in data:
            raw_defaults = data["defaults"]
            if not isinstance(raw_defaults, LineDict):
                self.error(data.key_lines["defaults"], "defaults",
                           f"must be a mapping, but it is {_describe(raw_defaults)}")
            else:
                defaults = self._fields(raw_defaults, "defaults", allow_name=False) or {}
                default_lines = _field_lines(raw_defaults)
        images = data.get("images")
        if "images" not in data:
            self.error(data.line, "images", "is missing; list the images under `images:`")
            return []
        if not isinstance(images, LineList):
            self.error(data.key_lines["images"], "images",
                       f"must be a list of images, but it is {_describe(images)}")
            return []
        out = []
        for i, (item, line) in enumerate(zip(images, images.lines, strict=True)):
            path = f"images[{i}]"
            if not isinstance(item, LineDict):
                self.error(line, path, f"must be a mapping with at least `name:`, but it is "
                                       f"{_describe(item)}")
                continue
            name = item.get("name")
            self.image = name if isinstance(name, str) and name else None
            fields = self._fields(item, path, allow_name=True)
            if fields is not None and "name" not in fields:
                self.error(item.line, f"{path}.name", "is required")
            elif fields is not None:
                out.append((_merge(defaults, fields), line, path,
                            {**default_lines, **_field_lines(item)}))
            self.image = None
        return out

    def _targets(self, value: Any, line: int) -> None:
        """``targets:``: a mapping of target names to their (optional) settings."""
        if not isinstance(value, LineDict):
            self.error(line, "targets", f"must be a mapping of target names to their "
                       f"settings ({', '.join(TARGET_KEYS)}), but it is {_describe(value)}")
            return
        self._duplicates(value, "targets")
        if not value:
            self.error(line, "targets", "is empty; declare at least one target, or remove "
                                        "`targets:` to use the run's endpoint")
        for name, settings in value.items():
            at = value.key_lines.get(name, line)
            where = f"targets.{name}"
            if not isinstance(name, str) or not _TARGET_NAME.match(name):
                self.error(at, where, "is not a usable target name: letters, digits, `.`, `_` "
                                      "and `-`, starting with a letter or digit, at most 64")
                continue
            if isinstance(settings, RawScalar) and settings.kind == "null":
                self.error(at, where, _NO_ENDPOINT)
                continue
            if not isinstance(settings, LineDict):
                self.error(at, where, f"must be a mapping of {', '.join(TARGET_KEYS)}, but it "
                                      f"is {_describe(settings)}")
                continue
            fields = self._target_fields(settings, where)
            if fields is None:
                continue
            if not {"endpoint", "region", "cloud"} & fields.keys():
                self.error(at, where, _NO_ENDPOINT)
                continue
            self.targets.append((name, fields, at))

    def _target_fields(self, settings: LineDict, where: str) -> dict[str, str] | None:
        before = len(self.problems)
        self._duplicates(settings, where)
        fields: dict[str, str] = {}
        for key, item in settings.items():
            at = settings.key_lines.get(key, settings.line)
            if key not in TARGET_KEYS:
                self.error(at, f"{where}.{key}", "unknown target setting"
                           + did_you_mean(str(key), TARGET_KEYS))
            elif not isinstance(item, str) or not item.strip():
                self.error(at, f"{where}.{key}", f"must be text, but it is {_describe(item)}"
                           + _quote_hint(item))
            elif key == "profile" and item not in PROFILES:
                self.error(at, f"{where}.{key}", f"unknown profile {item!r}; use one of: "
                           + ", ".join(PROFILES))
            elif key == "endpoint" and not _URL.match(item):
                self.error(at, f"{where}.{key}", "must be an http:// or https:// URL without "
                           "a user or password (credentials go in clouds.yaml or the "
                           "environment)")
            else:
                fields[str(key)] = item.strip()
        return fields if len(self.problems) == before else None

    def _selection(self, value: Any, line: int, where: str) -> tuple[tuple[str, int], ...] | None:
        """An image's (or the defaults') ``targets:``: a non-empty list of target names."""
        if isinstance(value, LineList) and not value:
            self.error(line, where, "is empty, so the image would go nowhere; name at least "
                                    "one target, or remove the key to mean every target")
            return None
        return self._texts(value, line, where, "target names", "a target name")

    def _texts(self, value: Any, line: int, where: str, items: str, item: str,
               check: Callable[[str], str | None] = lambda text: None,
               ) -> tuple[tuple[str, int], ...] | None:
        """A list of text (``items``), each item passing ``check``: every item with its line,
        or None once every bad item is reported."""
        if not isinstance(value, LineList):
            self.error(line, where, f"must be a list of {items}, but it is {_describe(value)}")
            return None
        ok = True
        for i, (text, at) in enumerate(zip(value, value.lines, strict=True)):
            message = f"must be {item}, but it is {_describe(text)}{_quote_hint(text)}" \
                if not isinstance(text, str) else check(text)
            if message:
                self.error(at, f"{where}[{i}]", message)
                ok = False
        return tuple(zip(value, value.lines, strict=True)) if ok else None

    def _duplicates(self, data: LineDict, path: str) -> None:
        for key, line in data.duplicates:
            self.error(line, f"{path}.{key}" if path else str(key),
                       "is given twice in the same mapping; keep one")
        for what, line in data.bad_keys:
            self.error(line, path, f"has a key that is {what}; keys must be text")

    def _fields(self, data: LineDict, path: str, *, allow_name: bool) -> dict[str, Any] | None:
        """Type-check the known fields of an image or defaults mapping."""
        before = len(self.problems)
        self._duplicates(data, path)
        out: dict[str, Any] = {}
        known = FIELDS if allow_name else FIELDS[1:]
        for key, value in data.items():
            line = data.key_lines.get(key, data.line)
            field = "os_version" if key == "__os_version" else key
            where = f"{path}.{key}"
            if field not in known and field != "targets":
                hint = "; `name` belongs to each image, not to defaults" if key == "name" else \
                    _field_hint(str(key), known)
                self.error(line, where, "unknown field" + hint)
                continue
            if field in out:
                self.error(line, where, "os_version and __os_version are the same field; keep one")
                continue
            if field == "targets":
                selection = self._selection(value, line, where)
                if selection is not None:
                    out[field] = selection
                continue
            checked = self._typed(field, value, line, where)
            if checked is not None:
                out[field] = checked
        return out if len(self.problems) == before else None

    def _typed(self, field: str, value: Any, line: int, where: str) -> Any:
        if isinstance(value, RawScalar) and value.kind == "null":
            self.error(line, where, f"is {_describe(value)}; give a value, quote it to mean the "
                                    "text, or remove the key")
            return None
        if field in STRING_FIELDS:
            if not isinstance(value, str):
                what = _describe(value).removeprefix(f"read by {self.reader} as ")
                self.error(line, where, f"must be text, but {self.reader} read it as {what}"
                           + _quote_hint(value))
                return None
            return self._value(field, value, line, where)
        if field in INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int):
                hint = "; write a plain decimal number" if isinstance(value, RawScalar) else ""
                self.error(line, where, f"must be a whole number, but it is "
                           f"{_describe(value)}{hint}")
                return None
            return self._value(field, int(value), line, where)
        if field == "protected":
            if isinstance(value, RawScalar) and value.kind == "bool":
                self.error(line, where, f"is `{value.text}`, which YAML 1.1 reads as a boolean "
                           "and YAML 1.2 as text; write true or false")
                return None
            if not isinstance(value, bool):
                self.error(line, where, f"must be true or false, but it is {_describe(value)}")
                return None
            return value
        if field == "tags":
            return self._tags(value, line, where)
        return self._properties(value, line, where)

    def _value(self, field: str, value: Any, line: int, where: str) -> Any:
        message = self.profile.check_value(field, value)
        if message:
            self.error(line, where, message)
            return None
        return value

    def _tags(self, value: Any, line: int, where: str) -> tuple[str, ...] | None:
        tags = self._texts(value, line, where, "text", "text", self.profile.check_tag)
        if isinstance(value, LineList) and len(value) > self.profile.max_tags:
            # the server counts duplicates too
            self.error(line, where, f"has {len(value)} tags; the API allows at most "
                                    f"{self.profile.max_tags}")
            return None
        return tuple(tag for tag, _ in tags) if tags is not None else None

    def _properties(self, value: Any, line: int, where: str) -> dict[str, str] | None:
        if not isinstance(value, LineDict):
            self.error(line, where, f"must be a mapping of text to text, but it is "
                                    f"{_describe(value)}")
            return None
        self._duplicates(value, where)
        ok = True
        if len(value) + 1 > self.profile.max_properties:  # + reconcile's marker
            self.error(line, where, f"has {len(value)} properties; with reconcile's marker the "
                                    f"API allows at most {self.profile.max_properties - 1}")
            ok = False
        for key, item in value.items():
            key_line = value.key_lines.get(key, value.line)
            if not isinstance(key, str):
                self.error(key_line, f"{where}.{key}", "property names must be text; quote it")
                ok = False
                continue
            message = self.profile.check_property_key(key)
            if message is None and not isinstance(item, str):
                message = (f"property values must be text, but it is {_describe(item)}"
                           f"{_quote_hint(item)}")
            if message is None:
                message = self.profile.check_value(key, item)
            if message:
                self.error(key_line, f"{where}.{key}", message)
                ok = False
        return dict(value) if ok else None


def _merge(defaults: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    """Scalars override defaults; tags are united (defaults first); properties merge."""
    merged = {**defaults, **image}
    if "tags" in defaults and "tags" in image:
        merged["tags"] = tuple(dict.fromkeys((*defaults["tags"], *image["tags"])))
    if "properties" in defaults and "properties" in image:
        merged["properties"] = {**defaults["properties"], **image["properties"]}
    return merged


def display_path(path: Path) -> str:
    """A file's name fit for any output: a byte that is not UTF-8 shows as ``\\xNN`` (the
    file system hands it over as a lone surrogate, which no report could encode) and control
    characters as escapes."""
    return terminal(path.as_posix())


def catalog_files(directory: Path) -> list[Path]:
    return sorted(
        (Path(root) / name for root, _, names in os.walk(directory) for name in names
         if name.endswith(SUFFIXES) and not name.startswith(".")),
        key=lambda p: p.relative_to(directory).as_posix(),
    )


#: Catalogs at least this large (bytes of catalog files) are parsed by worker processes.
PARALLEL_MIN_BYTES = 2 * 1024 * 1024
# One checked image as a worker sends it: the ``ImageSpec``'s fields with its digest (its
# cached property), its line, its path (`images[N]`), its count of extra properties, its
# lint warnings (field, message, line) and the targets it is limited to (name, line), or
# None for every target.
_Selection = tuple[tuple[str, int], ...] | None
_Image = tuple[dict[str, Any], int, str, int, tuple[tuple[str, str, int], ...], _Selection]
# One valid entry of `targets:`: its name, its settings and its line.
_TargetEntry = tuple[str, dict[str, str], int]
_Checked = tuple[list[Problem], list[_Image], list[_TargetEntry]]


#: What ``load_catalog`` hands its caller file by file: the file's new specs, and the lint
#: warnings of the catalog so far (by image name).
FileSpecs = Callable[[Sequence[ImageSpec], Mapping[str, tuple[str, ...]]], None]


def load_catalog(directory: str | Path, profile: Profile, *, strict: bool = False,
                 workers: int | None = None,
                 meanwhile: Callable[[], None] = lambda: None,
                 each: FileSpecs | None = None) -> Catalog:
    """Load and validate every catalog file; raise CatalogError listing every problem.

    Files are independent until names are compared, so a large catalog is parsed and checked
    by ``workers`` processes (default: one per available CPU, or none below
    PARALLEL_MIN_BYTES); each sends back plain values, and this process checks names across
    files and builds the specs. Problems come in file order either way. ``meanwhile`` is
    called once the files are found, while the workers start on them (a plan reads its
    state then); a catalog that loads has always called it. ``each`` is given each file's
    specs as they are built, in file order, while no problem has been found (a plan makes
    their changes then, as the workers parse the next files); a catalog that loads has
    given it every spec it holds, and none twice.
    """
    root = Path(directory)
    if not root.exists():
        raise CatalogError([Problem(str(root), None, "", "catalog directory does not exist; "
                                    "pass --catalog DIR or set RECONCILE_CATALOG")])
    if not root.is_dir():
        raise CatalogError([Problem(str(root), None, "", "is not a directory; --catalog takes "
                                    "the directory holding the *.yaml files")])
    files = catalog_files(root)
    if not files:
        raise CatalogError([Problem(str(root), None, "", "holds no *.yaml, *.yml or *.json "
                                    "catalog files")])
    problems: list[Problem] = []
    lint: list[Problem] = []
    seen: dict[str, tuple[str, int]] = {}
    specs: list[ImageSpec] = []
    warnings: dict[str, tuple[str, ...]] = {}
    declared: dict[str, Target] = {}
    selections: list[tuple[str, str, str, tuple[tuple[str, int], ...]]] = []
    base = Path(os.path.realpath(root))
    with _checked_files(files, profile, strict, base, workers, meanwhile) as results:
        for path, (file_problems, images, targets) in zip(files, results, strict=True):
            display = display_path(path)
            problems.extend(file_problems)
            _declare(declared, targets, display, problems)
            first = len(specs)
            for fields, line, where, extras, messages, selection in images:
                name = fields["name"]
                if name in seen:
                    first_file, first_line = seen[name]
                    problems.append(Problem(display, line, f"{where}.name", f"duplicate image "
                                            f"name {name!r}; first defined at "
                                            f"{first_file}:{first_line}", image=name))
                    continue
                seen[name] = (display, line)
                if selection is not None:
                    selections.append((display, where, name, selection))
                if extras > profile.max_properties:
                    problems.append(Problem(display, line, f"{where}.properties", f"has "
                                            f"{extras} extra properties with os_version and "
                                            "reconcile's marker; the API allows at most "
                                            f"{profile.max_properties}", image=name))
                    continue
                if messages:
                    lint.extend(Problem(display, at, f"{where}.{f}", m, "warning", image=name)
                                for f, m, at in messages)
                    warnings[name] = tuple(f"{f} {m}" for f, m, _ in messages)
                if problems:
                    continue  # the catalog is invalid: no need to build specs any more
                specs.append(build(ImageSpec, _SPEC_FIELDS, fields))
            if each is not None and not problems and len(specs) > first:
                each(specs[first:], warnings)
    placement = _placement(declared, selections, problems)
    files_order = {display_path(p): i for i, p in enumerate(files)}
    if strict:
        problems.extend(dataclasses.replace(p, message=f"{p.message} (--strict)",
                                            severity="error") for p in lint)
    if problems:
        raise CatalogError(sorted(problems, key=lambda p: (files_order.get(p.file, 0), p.line or 0))
                           if selections or declared else problems)
    specs.sort(key=lambda s: s.name)
    return Catalog.model_construct(
        directory=str(root), profile=profile.name, images=tuple(specs),
        warnings=warnings, files=tuple(display_path(p) for p in files), lint=tuple(lint),
        targets=tuple(sorted(declared.values(), key=lambda t: t.name)), placement=placement,
    )


#: A file that may declare targets: a top-level `targets:` (YAML) or a "targets" key (JSON).
#: Three patterns, each starting with a literal, which the regex engine finds at memory-search
#: speed; one alternation anchored at line starts is tried at every byte (12x slower).
_DECLARES = (re.compile(rb'\ntargets[ \t]*:').search, re.compile(rb'targets[ \t]*:').match,
             re.compile(rb'"targets"[ \t\r\n]*:').search)


def declared_targets(directory: str | Path) -> tuple[Target, ...]:
    """The targets a catalog declares, read before the images are checked (their rules may
    depend on the target's server). Only files that mention ``targets`` are parsed, so a
    catalog without targets costs a scan of its bytes. Problems of the declarations are
    raised (located); anything else wrong is left to ``load_catalog``."""
    root = Path(directory)
    if not root.is_dir():
        return ()
    base = Path(os.path.realpath(root))
    declared: dict[str, Target] = {}
    problems: list[Problem] = []
    for path in catalog_files(root):
        display = display_path(path)
        raw, _ = read_catalog_file(path, base, display)
        if raw is None or not any(declares(raw) for declares in _DECLARES):
            continue
        data, parse_problems = parse_file(path, display, base)
        if parse_problems or not isinstance(data, LineDict) or "targets" not in data:
            continue
        checker = _FileChecker(display, PROFILES["glance"], strict=False)
        checker._targets(data["targets"], data.key_lines["targets"])
        problems.extend(checker.problems)
        _declare(declared, checker.targets, display, problems)
    if problems:
        raise CatalogError(problems)
    return tuple(sorted(declared.values(), key=lambda t: t.name))


#: Stand-ins for where a profile's rules come from (``Profile.source``, ``os_source``), which
#: only messages show: one load made with them serves every profile with the same rules.
_LABELS = (f"{{source {os.urandom(8).hex()}}}", f"{{os_source {os.urandom(8).hex()}}}")


def load_catalogs(directory: str | Path, profiles: Sequence[Profile], *,
                  strict: bool = False) -> list[Catalog | CatalogError]:
    """``load_catalog`` with each of ``profiles``: its catalog, or its error. The files are
    read and checked once per distinct set of rules, in the calling thread (a plan or apply
    of several targets calls it before their threads start: docs/architecture.md §13).

    What a load depends on is the profile's rules and defaults (and ``strict``). Where the
    rules come from, a server's URL and when it was read, differs for every target that read
    or kept its server's rules, and shows only in messages. So profiles that differ only
    there share one load, made with stand-ins for those two labels, and each gets a copy with
    its own labels put back: every problem and warning is the one its own load would give,
    in the same order.
    """
    loads: list[tuple[Profile, Catalog | CatalogError]] = []
    out: list[Catalog | CatalogError] = []
    for profile in profiles:
        rules = dataclasses.replace(profile, source=_LABELS[0], os_source=_LABELS[1])
        loaded = next((done for known, done in loads if known == rules), None)
        if loaded is None:
            try:
                loaded = load_catalog(directory, rules, strict=strict)
            except CatalogError as exc:
                loaded = exc
            loads.append((rules, loaded))
        out.append(_labelled(loaded, (profile.source, profile.os_source)))
    return out


def _labelled(loaded: Catalog | CatalogError,
              labels: tuple[str, str]) -> Catalog | CatalogError:
    """A shared load with a profile's own labels in place of the stand-ins."""
    def text(message: str) -> str:
        for stand_in, label in zip(_LABELS, labels, strict=True):
            if stand_in in message:
                message = message.replace(stand_in, label)
        return message

    def put(problem: Problem) -> Problem:
        message = text(problem.message)
        return problem if message is problem.message else dataclasses.replace(
            problem, message=message)

    if isinstance(loaded, CatalogError):
        return CatalogError([put(p) for p in loaded.problems])
    if not any(stand_in in w for stand_in in _LABELS for ws in loaded.warnings.values()
               for w in ws):
        return loaded  # nothing says where the rules came from: the same object serves
    warnings = {name: tuple(map(text, ws)) for name, ws in loaded.warnings.items()}
    return Catalog.model_construct(
        directory=loaded.directory, profile=loaded.profile, images=loaded.images,
        warnings=warnings, files=loaded.files, lint=tuple(put(p) for p in loaded.lint),
        targets=loaded.targets, placement=loaded.placement)


def image_names(directory: str | Path) -> set[str]:
    """The image names the catalog's files hold, read without checking them (``--only``
    over several targets is checked against them when a target's load failed)."""
    root = Path(directory)
    base = Path(os.path.realpath(root))
    names: set[str] = set()
    for path in catalog_files(root) if root.is_dir() else []:
        data, problems = parse_file(path, display_path(path), base)
        images = data.get("images") if isinstance(data, LineDict) else None
        if not problems and isinstance(images, LineList):
            names.update(i["name"] for i in images
                         if isinstance(i, LineDict) and isinstance(i.get("name"), str))
    return names


def _declare(declared: dict[str, Target], entries: list[_TargetEntry], display: str,
             problems: list[Problem]) -> None:
    """Add a file's targets; a name may be declared once in the whole catalog."""
    for name, fields, line in entries:
        first = declared.get(name)
        if first is not None:
            problems.append(Problem(display, line, f"targets.{name}", f"target {name!r} is "
                                    f"declared twice; first declared at {first.file}:"
                                    f"{first.line}. Declare each target once"))
            continue
        declared[name] = Target.model_validate({**fields, "name": name, "file": display,
                                                "line": line})


def _placement(declared: dict[str, Target],
               selections: list[tuple[str, str, str, tuple[tuple[str, int], ...]]],
               problems: list[Problem]) -> dict[str, tuple[str, ...]]:
    """Image name -> the targets it goes to, every name checked against the declared ones."""
    placement: dict[str, tuple[str, ...]] = {}
    known = tuple(sorted(declared))
    for display, where, image, selection in selections:
        ok = True
        for i, (name, line) in enumerate(selection):
            if name in declared:
                continue
            ok = False
            hint = (did_you_mean(name, known).replace("known keys", "declared targets")
                    if known else "; no target is declared: add them under `targets:` "
                    "in any catalog file")
            problems.append(Problem(display, line, f"{where}.targets[{i}]",
                                    f"unknown target {name!r}{hint}", image=image))
        if ok:
            placement[image] = tuple(dict.fromkeys(name for name, _ in selection))
    return placement


def _shared(spec: dict[str, Any], shared: dict[Any, Any]) -> dict[str, Any]:
    """The spec with repeated text and tag lists replaced by one object each (a catalog
    repeats a few dozen OS versions, tags and property names): a worker's answer keeps them
    shared, since pickling keeps an object sent twice one object."""
    for key, value in spec.items():
        if key == "properties":
            spec[key] = {shared.setdefault(k, k): shared.setdefault(v, v) if len(v) < 64 else v
                         for k, v in value.items()}
        elif key != "name" and isinstance(value, (str, tuple)):
            spec[key] = shared.setdefault(value, value)
    return spec


def check_file(path: Path, profile: Profile, strict: bool, base: Path) -> _Checked:
    """Parse and check one file of the catalog at ``base``: its problems and its images as
    plain values (``_Image``)."""
    display = display_path(path)
    data, problems = parse_file(path, display, base)
    if problems:
        return problems, [], []
    checker = _FileChecker(display, profile, strict)
    images: list[_Image] = []
    shared: dict[Any, Any] = {}
    for fields, line, where, field_lines in checker.check(data):
        selection = fields.pop("targets", None)
        extras = len(fields.get("properties", ())) + ("os_version" in fields) + 1
        spec = _shared({**_SPEC_DEFAULTS, **profile.defaults, **fields}, shared)
        lint = tuple((f, m, field_lines.get(f, line)) for f, m in profile.lint(spec)) \
            if extras <= profile.max_properties else ()
        spec.update(file=display, line=line, digest=body_digest(request_body(spec)))
        images.append((spec, line, where, extras, lint, selection))
    return checker.problems, images, checker.targets


# What a worker checks with: its pool's, set in the worker as it starts (a plan of several
# targets loads catalogs in several threads at once, each with its own profile).
_job: tuple[Profile, bool, Path] | None = None


def _check_in_worker(path: Path) -> _Checked:
    assert _job is not None
    return check_file(path, *_job)


@contextlib.contextmanager
def _checked_files(files: list[Path], profile: Profile, strict: bool, base: Path,
                   workers: int | None,
                   meanwhile: Callable[[], None]) -> Iterator[Iterator[_Checked]]:
    """``check_file`` of each file, in order: here, or in forked worker processes."""
    if workers is None:
        workers = _default_workers(files)
    workers = min(workers, len(files))
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        meanwhile()
        yield (check_file(path, profile, strict, base) for path in files)
        return
    # fork: workers start in milliseconds with the modules loaded and the job inherited, not
    # pickled. A lock another thread holds at the fork stays held in the worker, so the
    # caller's ``meanwhile`` runs here, in this thread, once the workers are forked.
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_start,
        initargs=((profile, strict, base),))
    try:
        queued = iter(files)
        waiting = collections.deque(pool.submit(_check_in_worker, path)
                                    for path in itertools.islice(queued, _AHEAD * workers))
        meanwhile()
        yield _in_order(pool, waiting, queued, files, profile, strict, base)
    finally:
        pool.shutdown(cancel_futures=True)


def _worker_start(job: tuple[Profile, bool, Path]) -> None:
    global _job
    _job = job
    # Ctrl-C stops the command in the main process, which then cancels the rest; a worker
    # finishes its file instead of printing a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


#: Files handed to each worker ahead of the one this process takes next: enough that a
#: worker never waits for work, few enough that results outrunning this process do not pile
#: up in memory (a 50-file catalog of 100,000 images: about 3 MB per file).
_AHEAD = 4


def _in_order(pool: concurrent.futures.Executor,
              waiting: collections.deque[concurrent.futures.Future[_Checked]],
              queued: Iterator[Path], files: list[Path], profile: Profile, strict: bool,
              base: Path) -> Iterator[_Checked]:
    """The workers' results in file order; one more file is handed out as each is taken."""
    done = 0
    while waiting:
        try:
            result = waiting.popleft().result()
            waiting.extend(pool.submit(_check_in_worker, p) for p in itertools.islice(queued, 1))
        except concurrent.futures.process.BrokenProcessPool:
            # A worker died (killed, out of memory): the rest is checked here instead.
            yield from (check_file(path, profile, strict, base) for path in files[done:])
            return
        done += 1
        yield result


def _default_workers(files: list[Path]) -> int:
    """One worker per CPU this process may use, for a catalog worth the start-up."""
    try:
        size = sum(path.stat().st_size for path in files)
    except OSError:
        return 1  # the problem is reported by the file's own check
    if size < PARALLEL_MIN_BYTES:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def _field_lines(data: LineDict) -> dict[str, int]:
    return {("os_version" if k == "__os_version" else str(k)): line
            for k, line in data.key_lines.items()}


# One fields-set shared by every spec (model_construct would make one per object).
_SPEC_FIELDS: set[str] = set(ImageSpec.model_fields)
# Every optional field, explicitly: model_construct skips validation, so nothing may be missing.
_SPEC_DEFAULTS: dict[str, Any] = {
    "os_version": None, "visibility": None, "protected": None, "container_format": None,
    "disk_format": None, "min_ram": None, "min_disk": None, "tags": (), "properties": {},
    "drift": None,
}


def lint_problems(catalog: Catalog) -> list[Problem]:
    """Lint warnings at their fields' lines, in file order."""
    return sorted(catalog.lint, key=lambda p: (p.file, p.line or 0))
