"""``reconciler.redaction``: every registered secret is masked in every spelling it can be
echoed in, and nothing else is touched."""

from __future__ import annotations

import html
import json
import re
from urllib.parse import quote, quote_plus

import pytest

from reconciler import redaction

SECRET = 'Pw"X\\Y-\u00e9/+ &<-REDACTION-PLANTED'


@pytest.fixture(autouse=True)
def registered() -> None:
    redaction.register(SECRET)


@pytest.mark.parametrize("spelled", [
    SECRET,
    json.dumps(SECRET)[1:-1],                           # Pw\"X\\Y-\u00e9\/...
    json.dumps(SECRET)[1:-1].replace("\\u00e9", "\\u00E9"),
    json.dumps(SECRET, ensure_ascii=False)[1:-1],
    json.dumps(SECRET)[1:-1].replace("/", "\\/"),
    quote(SECRET, safe=""),
    re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), quote(SECRET, safe="")),
    quote_plus(SECRET, safe=""),
    html.escape(SECRET),
], ids=["raw", "json", "json upper hex", "json utf-8", "json escaped slash", "url",
        "url lower hex", "url plus", "html"])
def test_every_spelling_of_a_registered_secret_is_masked(spelled: str) -> None:
    text = redaction.redact(f"the server said: {spelled} (end)")
    assert text == "the server said: *** (end)"


def test_an_extra_secret_is_masked_without_being_registered() -> None:
    assert redaction.redact("token tok-EXTRA-only-once", ["tok-EXTRA-only-once"]) == "token ***"
    assert redaction.redact("token tok-EXTRA-only-once") == "token tok-EXTRA-only-once"


def test_short_values_are_no_secrets_and_are_left_alone() -> None:
    redaction.register("abc", "", None)
    assert redaction.redact("abc abc") == "abc abc"
