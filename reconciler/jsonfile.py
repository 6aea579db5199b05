"""Strict JSON catalog files: the standard library's parser, plus the line of every value.

A ``.json`` catalog is JSON, not YAML: no comments, no trailing commas, no single quotes, no
``NaN``/``Infinity``, and a key given twice is refused (a JSON reader would silently keep the
last one). The standard decoder is strict about syntax already; what it lacks is where each
value was, which field-level messages need. ``load`` runs its pure-Python scanner with object
and array hooks that record where every member starts, and builds the same ``LineDict`` /
``LineList`` nodes as the YAML reader, so one checker validates both kinds of file.
"""

from __future__ import annotations

import bisect
import json
import json.decoder
import json.scanner
import re
from collections.abc import Callable
from typing import Any

from reconciler.nodes import LineDict, LineList, RawScalar

_WHITESPACE = " \t\r\n"


class JsonSyntaxError(ValueError):
    """The text is not strict JSON; ``line`` and ``column`` count from 1."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"{message} (line {line}, column {column})")
        self.message, self.line, self.column = message, line, column


class _Lines:
    """Offset → line and column, by binary search over the line starts."""

    def __init__(self, text: str) -> None:
        self.starts = [0, *(m.end() for m in re.finditer("\n", text))]

    def line(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset)

    def column(self, offset: int) -> int:
        return offset - self.starts[self.line(offset) - 1] + 1


class _NotJson(Exception):
    def __init__(self, message: str, offset: int) -> None:
        self.message, self.offset = message, offset


def _null(value: Any) -> Any:
    # null is a value the checker must see as "empty", exactly like YAML's ~
    return RawScalar("null", "null", None, "JSON") if value is None else value


class _Decoder(json.JSONDecoder):
    """``json.JSONDecoder`` on the pure-Python scanner, with hooks that keep positions."""

    def __init__(self, text: str) -> None:
        super().__init__(parse_float=self._float, parse_constant=self._constant)
        self.text = text
        self.lines = _Lines(text)
        self.last_value = 0  # where the value being scanned starts (for NaN and friends)
        self.parse_object = self._object
        self.parse_array = self._array
        # the C scanner calls its own object/array parsers; the Python one calls ours
        self.scan_once = json.scanner.py_make_scanner(self)  # type: ignore[attr-defined]

    def _recorder(self, scan_once: Callable[[str, int], Any],
                  starts: list[int]) -> Callable[[str, int], Any]:
        def scan(string: str, index: int) -> Any:
            starts.append(index)
            self.last_value = index
            return scan_once(string, index)
        return scan

    def _object(self, s_and_end: tuple[str, int], strict: bool,
                scan_once: Callable[[str, int], Any], object_hook: Any, pairs_hook: Any,
                memo: dict[str, str]) -> tuple[LineDict, int]:
        text, end = s_and_end
        starts: list[int] = []

        def build(pairs: list[tuple[str, Any]]) -> LineDict:
            data = LineDict()
            data.line = self.lines.line(end - 1)
            data.key_lines, data.duplicates, data.bad_keys = {}, [], []
            for (key, value), start in zip(pairs, starts, strict=True):
                line = self._key_line(start)
                if key in data:
                    data.duplicates.append((key, line))
                data[key] = _null(value)
                data.key_lines[key] = line
            return data

        result: tuple[LineDict, int] = json.decoder.JSONObject(  # type: ignore[attr-defined]
            (text, end), strict, self._recorder(scan_once, starts), None, build, memo)
        return result

    def _array(self, s_and_end: tuple[str, int],
               scan_once: Callable[[str, int], Any]) -> tuple[LineList, int]:
        text, end = s_and_end
        starts: list[int] = []
        values, after = json.decoder.JSONArray(  # type: ignore[attr-defined]
            (text, end), self._recorder(scan_once, starts))
        data = LineList(_null(v) for v in values)
        data.line = self.lines.line(end - 1)
        data.lines = [self.lines.line(i) for i in starts]
        return data, after

    def _key_line(self, value_start: int) -> int:
        """The line of the key whose value starts at ``value_start``: that of its closing
        quote, found back across the colon (a JSON string cannot span lines)."""
        i = self.text.rfind(":", 0, value_start) - 1
        while i > 0 and self.text[i] in _WHITESPACE:
            i -= 1
        return self.lines.line(i)

    @staticmethod
    def _float(text: str) -> RawScalar:
        # keeps the spelling: "1.10" must be reported as 1.10, not 1.1
        return RawScalar(text, "number", float(text), "JSON")

    def _constant(self, name: str) -> Any:
        raise _NotJson(f"{name} is not a JSON value (JavaScript's, not JSON's)", self.last_value)


def load(text: str) -> Any:
    """Parse strict JSON into ``LineDict``/``LineList`` nodes; raise ``JsonSyntaxError``."""
    decoder = _Decoder(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    decoder.last_value = start
    try:
        return _null(decoder.decode(text))
    except _NotJson as exc:
        raise _located(decoder.lines, exc.message, exc.offset) from None
    except json.JSONDecodeError as exc:
        message, offset = _explain(text, exc.msg, exc.pos)
        raise _located(decoder.lines, message, offset) from None
    except RecursionError:
        raise _located(decoder.lines, "is nested too deeply", start) from None


def _located(lines: _Lines, message: str, offset: int) -> JsonSyntaxError:
    return JsonSyntaxError(message, lines.line(offset), lines.column(offset))


def _explain(text: str, message: str, offset: int) -> tuple[str, int]:
    """Say what YAML habits broke the JSON, where Python's message would only puzzle."""
    ahead = text[offset:offset + 2]
    if ahead in ("//", "/*") or ahead[:1] == "#":
        return "comments are not allowed in JSON", offset
    if ahead[:1] == "'":
        return "strings and keys need double quotes (\"), not single quotes", offset
    before = offset - 1
    while before >= 0 and text[before] in _WHITESPACE:
        before -= 1
    if ahead[:1] in ("}", "]") and before >= 0 and text[before] == ",":
        return f"trailing comma before {ahead[:1]!r}; JSON allows none", before
    if message == "Extra data":
        return "unexpected text after the end of the JSON document", offset
    return message, offset
