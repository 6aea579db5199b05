"""Reports are written as they are produced: the json report of a big plan is never one string.

``report.chunks`` must give exactly what one ``json.dumps`` of the whole document gives (the
golden files pin the format; these tests pin the equivalence on shapes the golden scenario
lacks: outcomes, empty lists, many changes), in pieces whose size does not grow with the report.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from reconciler.clock import ManualClock
from reconciler.models import Catalog, ErrorInfo, FieldDiff, ImageSpec, Outcome, RunReport
from reconciler.operations import plan_report
from reconciler.planner import plan
from reconciler.report import _indented, chunks, to_json

TARGET = "http://127.0.0.1:9999"


def planned(n: int) -> RunReport:
    specs = tuple(ImageSpec(name=f"image-{i:05d}", min_disk=40, tags=("a", "b"),
                            properties={"note": "line\nbreak \u2028 ünïcode \"q\""},
                            file="catalog/a.yaml", line=i + 2) for i in range(n))
    catalog = Catalog(directory="catalog", profile="ims", images=specs)
    clock = ManualClock(datetime(2024, 5, 17, 12, 30, tzinfo=UTC))
    return plan_report(catalog, plan(catalog, {}, target=TARGET), clock=clock)


def whole(report: RunReport) -> str:
    return json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n"


def test_json_pieces_are_the_document_and_stay_small() -> None:
    report = planned(3_000)
    pieces = list(chunks(report, "json"))
    assert "".join(pieces) == whole(report)
    assert len(pieces) > 10
    assert max(len(p) for p in pieces) < 80_000  # about 64 KB each, whatever the report's size


def test_json_pieces_of_an_apply_report_with_outcomes() -> None:
    base = planned(3)
    outcomes = (
        Outcome(name="image-00000", result="created", image_id="id-0", status="queued",
                created_at="2024-05-17T12:30:01Z", updated_at="2024-05-17T12:30:01Z",
                attempts=1, duration_s=0.1234),
        Outcome(name="image-00001", result="failed", attempts=3,
                error=ErrorInfo(message="boom", status=500, code="x", request_id="req-1")),
    )
    report = base.model_copy(update={"mode": "apply", "outcomes": outcomes, "run_id": "r1",
                                     "warnings": ("w1",), "duration_s": 1.5})
    assert "".join(chunks(report, "json")) == whole(report)


AWKWARD: list[Any] = [
    "", "plain", "quote \" backslash \\ slash /", "\x00\x01\x1f\x7f\n\r\t\b\f",
    "\u2028\u2029 ünïcode 漢字 \U0001f600", "\ud800 lone surrogate", 0, -1, 2**70, 1.5, -0.0,
    1e-7, 1e300, float("nan"), float("inf"), float("-inf"), True, False, None, [], {}, (),
    [1, [2, [3, {}]]], {"k": {"nested": [None, {"x": ""}]}, "": 1, "é": []}, ("t", 1),
]


def test_the_report_encoder_writes_what_the_json_module_writes() -> None:
    for value in [*AWKWARD, {str(i): v for i, v in enumerate(AWKWARD)}, AWKWARD]:
        assert _indented(value, "") == json.dumps(value, indent=2, ensure_ascii=False)
        deeper = json.dumps({"a": [value]}, indent=2, ensure_ascii=False)
        assert deeper == "{\n  \"a\": [\n    " + _indented(value, "    ") + "\n  ]\n}"


def test_values_the_report_encoder_does_not_know_go_to_the_json_module() -> None:
    for value in ({1: "int key"}, {"set": {1}}, {"x": object()}, OrderedDict(a=1)):
        with pytest.raises(TypeError):
            _indented(value, "")
    report = planned(2)
    diff = (FieldDiff(field="odd", before={1: "int key"}, after=OrderedDict(a=1)),)
    odd = report.model_copy(update={"changes": (report.changes[0].model_copy(
        update={"diff": diff}), *report.changes[1:])})
    text = "".join(chunks(odd, "json"))
    assert text == whole(odd)
    assert '"1": "int key"' in text


def test_json_pieces_of_empty_lists() -> None:
    empty = planned(0)
    assert "".join(chunks(empty, "json")) == whole(empty)
    applied = empty.model_copy(update={"mode": "apply"})
    assert '"outcomes": []' in "".join(chunks(applied, "json"))
    assert "".join(chunks(applied, "json")) == whole(applied)


def test_a_template_failing_halfway_leaves_no_report_file(
        tmp_path: Path, write_catalog: Callable[..., Path],
        run_cli: Callable[..., Result]) -> None:
    write_catalog({"a.yaml": "images:\n  - name: a\n    min_disk: 40\n"})
    custom = tmp_path / "tpl"
    custom.mkdir()
    # Output first, then an undefined name: the error comes after pieces were written.
    (custom / "report.txt.j2").write_text("{{ plan_line }}\n" * 2000 + "{{ no_such_name }}\n",
                                          encoding="utf-8")
    (tmp_path / "report.txt").write_text("the previous report\n", encoding="utf-8")
    result = run_cli(["plan", "--catalog", "catalog", "--state", "state.db", "--templates",
                      custom, "--output", "report.txt"])
    assert result.exit_code == 1
    assert "no_such_name" in result.stderr
    assert (tmp_path / "report.txt").read_text(encoding="utf-8") == "the previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog", "report.txt", "tpl"]
