"""Secrets stay secret: one registry of the secrets in use and one function that masks them.

Credentials register their secrets as they come into being (a static token when it is read, a
password, an SK and a security token when configured, each Keystone token when it is issued).
``redact`` masks every registered secret in each form a server or a library may echo it: as is,
JSON-escaped (``\\"``, ``\\\\``, ``\\u00e9``), URL-encoded (``%20`` or ``+``) and HTML-escaped.
Every message made from outside text (an answer body, a library's exception) passes through
it in the client, and the CLI passes everything it prints or logs through it once more, so a
secret cannot reach output, logs, reports or the state file by any path.
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"
#: A 1-3 character "secret" is no secret, and masking it would garble every message.
MIN_SECRET = 4

_lock = threading.Lock()
_forms: list[str] = []  # every form of every registered secret, longest first


def forms(secret: str) -> set[str]:
    """The spellings of ``secret`` that can appear in text: raw, JSON, URL and HTML."""
    spelled = {secret, html.escape(secret), html.escape(secret, quote=False)}
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        spelled |= {escaped, escaped.replace("/", "\\/"),
                    re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m[1].upper(), escaped)}
    for encoded in (quote(secret, safe=""), quote_plus(secret, safe="")):
        spelled |= {encoded, re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), encoded)}
    return {s for s in spelled if len(s) >= MIN_SECRET}


def register(*secrets: str | None) -> None:
    """Mask these from now on, wherever ``redact`` runs. Empty and short values are ignored."""
    new = set().union(*(forms(s) for s in secrets if s and len(s) >= MIN_SECRET))
    with _lock:
        _forms[:] = sorted(new.union(_forms), key=len, reverse=True)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every registered secret (and every one of ``extra``) masked."""
    with _lock:
        spelled = list(_forms)
    more = [f for s in extra if s and len(s) >= MIN_SECRET for f in forms(s)]
    for form in sorted(more, key=len, reverse=True) + spelled:
        if form in text:
            text = text.replace(form, MASK)
    return text
