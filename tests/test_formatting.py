"""What the smaller commands print, line by line and stream by stream (reconciler.formatting)."""

from __future__ import annotations

import json

from reconciler.errors import Problem
from reconciler.formatting import Line, problems, records, runs, valid_catalog
from reconciler.models import Record
from reconciler.profiles import PROFILES


def _record(name: str, image_id: str, status: str | None = "queued") -> Record:
    return Record(name=name, image_id=image_id, spec_digest="d", status=status,
                  created_at="2026-01-01T00:00:00Z" if status else None,
                  recorded_at="2026-01-01T00:00:01Z")


def test_state_list_is_a_table_on_stdout_and_a_count_on_stderr() -> None:
    rows = [("k1", _record("a-long-name", "id-1")), ("k2", _record("b\x1b[31m", "id-2", None))]
    assert records(rows, as_json=False) == [
        Line("a-long-name  id-1  queued    2026-01-01T00:00:00Z  k1"),
        Line("b\\x1b[31m    id-2  -         -  k2"),
        Line("2 images recorded", err=True),
    ]
    assert records([], as_json=False) == [Line("no images recorded")]
    assert json.loads(records(rows[:1], as_json=True)[0].text)["target"] == "k1"


def test_history_says_a_run_whose_process_is_gone_was_interrupted() -> None:
    run = {"started_at": "T", "id": "r1", "outcome": "running", "created": 1, "adopted": 0,
           "failed": 0, "target": "k", "pid": 42, "process_gone": True}
    assert [line.text for line in runs([run], as_json=False)] == [
        "T  r1  interrupted  created 1, adopted 0, failed 0  k",
        "    process 42 is gone: killed before it finished (the next apply records it as "
        "interrupted)"]
    assert runs([], as_json=False) == [Line("no runs recorded")]


def test_github_annotations_escape_what_would_end_a_property_or_the_message() -> None:
    problem = Problem("cat/a,b.yaml", 3, "images[0].min_disk", "50%\nlow", column=7)
    assert problems("github", "cat", "ims", errors=[problem], warnings=[]) == [
        Line("::error file=cat/a%2Cb.yaml,line=3,col=7,title=reconcile images[0].min_disk"
             "::50%25%0Alow")]


def test_a_valid_catalog_warns_on_stderr_then_says_what_was_checked() -> None:
    warning = Problem("cat/a.yaml", 2, "images[0].name", "long", "warning")
    lines = valid_catalog("text", "cat", "ims", PROFILES["ims"], images=1, files=1,
                          warnings=[warning], notes=["kept rules"], targets={"r1": 2})
    assert lines == [
        Line("warning: kept rules", err=True),
        Line("warning: cat/a.yaml:2: images[0].name: long", err=True),
        Line("catalog cat is valid: 1 image in 1 file (profile ims), 1 warning"),
        Line("targets: r1 (2 images)"),
    ]
    doc = json.loads(valid_catalog("json", "cat", "ims", PROFILES["ims"], images=1, files=1,
                                   warnings=[], notes=["kept rules"], targets={})[0].text)
    assert doc["valid"] and doc["warnings"][0]["message"] == "kept rules"
