"""Escaping for untrusted text (image names, ids and messages from a catalog or a server).

Nothing read from a catalog file or an API answer may forge output: a name holding an ANSI
escape must not recolour a terminal, a CR or LF must not start a fake line in ``state list``
or a report, a backtick or ``</details>`` must not break out of a pull-request comment.

- ``terminal``: control characters (C0, DEL, C1 with ESC and CSI), line and paragraph
  separators and bidirectional overrides become visible escapes (``\\x1b``, ``\\n``,
  ``\\u202e``); a byte that was not UTF-8 in a file name (a lone surrogate from the file
  system) becomes ``\\xNN``. Everything else, non-ASCII text included, stays as it is.
- ``md_text`` and ``md_code``: the same, then markdown's inline syntax is neutralised:
  backslash escapes in text, a code span with a long enough fence for code.

HTML needs none of this: Jinja2's autoescape does it (reports render control characters
visibly there too).
"""

from __future__ import annotations

import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0, DEL, C1, U+2028/2029 (line/paragraph separators), bidi marks, embeddings, overrides and
# isolates (the "Trojan Source" characters), and lone surrogates.
_OTHER = "\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff"
_CONTROL = re.compile(f"[\x00-\x1f{_OTHER}]")
_CONTROL_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f{_OTHER}]")


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal(text: object, *, newlines: bool = False) -> str:
    """``text`` safe to print: no character in it can move the cursor or change colours.

    ``newlines=True`` keeps LF (for messages that reconcile itself splits into lines).
    """
    s = str(text)
    pattern = _CONTROL_BUT_NEWLINE if newlines else _CONTROL
    return pattern.sub(_visible, s) if pattern.search(s) else s


def json_for_terminal(text: str) -> str:
    """JSON text (``json.dumps(..., ensure_ascii=False)``, which escapes C0 itself) with the
    other unsafe characters as ``\\uXXXX`` escapes: the same JSON value, safe to print."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_JSON_UNSAFE = re.compile(f"[{_OTHER}]")


# Inline markdown: code spans, emphasis, links and images, raw HTML, entities, tables'
# cell separators, GFM strikethrough and @mentions. `_` only where it can open or close
# emphasis (CommonMark ignores it inside a word), so `os_version` stays as it is.
_MD_INLINE = re.compile(r"[\\`*\[\]<&|~@]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# What would make the start of a line a heading, quote, list item or thematic break.
_MD_BLOCK_START = re.compile(r"^(?:\d+(?=[.)])|(?=[#>+=-]))")


def md_text(text: object) -> str:
    """``text`` as literal inline markdown (GitHub flavoured), on one line."""
    s = _MD_INLINE.sub(lambda m: "\\" + m.group(), terminal(text))
    return _MD_BLOCK_START.sub(lambda m: m.group() + "\\", s, count=1)


def md_code(text: object, *, table: bool = False) -> str:
    """``text`` as one markdown code span, whatever backticks it holds. In a table cell
    (``table=True``) a ``|`` is escaped, which GitHub honours even inside code spans."""
    s = terminal(text)
    if table:
        s = s.replace("|", "\\|")
    runs = [len(r) for r in re.findall(r"`+", s)]
    if not runs:
        return f"`{s}`"
    fence = "`" * (max(runs) + 1)
    return f"{fence} {s} {fence}"  # the spaces let the span start or end with a backtick
