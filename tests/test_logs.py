"""reconciler.logs: text warnings by default, every event as a JSON line on request."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from reconciler import logs


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    logs.configure("text")


def test_json_lines_carry_the_event_and_its_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json")
    assert logs.json_lines()
    logging.getLogger("reconciler.apply").info(
        "created %s", "a", extra={"event": "created", "image": "a", "request_id": "r-1",
                                  "secret_stuff": "not a known field"})
    [line] = capsys.readouterr().err.splitlines()
    doc = json.loads(line)
    assert doc["event"] == "created" and doc["level"] == "info"
    assert doc["message"] == "created a"
    assert doc["image"] == "a" and doc["request_id"] == "r-1"
    assert "secret_stuff" not in doc


def test_text_shows_warnings_only(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("text")
    assert not logs.json_lines()
    log = logging.getLogger("reconciler.client")
    log.info("a retry detail")
    log.warning("retrying in 1.0s")
    assert capsys.readouterr().err == "WARNING: retrying in 1.0s\n"
