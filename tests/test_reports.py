"""Reports: golden files for the four formats, escaping, size limits, colour, templates, output.

The golden files in tests/golden/ are the plan of one small catalog against a state holding one
unchanged, one drifted (reported only), one to update in place, one orphaned and one pending
image, with two creates (one carrying a lint warning), at a fixed time. Regenerate them after
an intended change with

    .venv/bin/pytest tests/test_reports.py --update-golden

and review the diff like code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import Result

from reconciler.catalog import load_catalog
from reconciler.clock import ManualClock
from reconciler.models import Action, Catalog, Change, FieldDiff, ImageSpec, Record, RunReport
from reconciler.operations import plan_report
from reconciler.planner import plan
from reconciler.profiles import IMS
from reconciler.report import MARKDOWN_LIMIT, render

GOLDEN = Path(__file__).parent / "golden"
TARGET = "http://127.0.0.1:9999"  # the target conftest.make_state records under
FORMATS = {"text": "plan.txt", "markdown": "plan.md", "html": "plan.html", "json": "plan.json"}

SCENARIO = """\
defaults:
  disk_format: zvhd2
  min_disk: 40
  tags: [managed-by-reconcile]

images:
  - name: alpha-unchanged
    os_version: Ubuntu 18.04 server 64bit

  - name: bravo-drift
    os_version: Ubuntu 18.04 server 64bit
    drift: report
    min_disk: 60
    tags: [docker]
    properties:
      docker_version: "24.0"

  - name: charlie-pending
    os_version: CentOS 7.6 64bit

  - name: delta-new
    os_version: Debian GNU/Linux 10.0.0 64bit
    properties:
      hw_firmware_type: uefi

  - name: echo-new
    os_version: Plan9 4th edition

  - name: foxtrot-update
    os_version: Ubuntu 18.04 server 64bit
    tags: [web]
    properties:
      build: "2"
"""


@pytest.fixture
def scenario(tmp_path: Path, write_catalog: Callable[..., Path],
             make_state: Callable[..., Path], make_record: Callable[..., Record]) -> Path:
    """catalog/ and state.db in tmp_path (the CLI's working directory); returns tmp_path."""
    root = write_catalog({"a.yaml": SCENARIO})
    specs = {s.name: s for s in load_catalog(root, IMS).images}
    drifted = specs["bravo-drift"]
    sent_before = {**drifted.body(), "min_disk": 40, "tags": ["managed-by-reconcile"]}
    del sent_before["docker_version"]
    updated = specs["foxtrot-update"]
    sent_update = {**updated.body(), "build": "1", "team": "web"}
    make_state(tmp_path / "state.db", [
        make_record(updated, "0c0c0c0c-0000-4000-8000-000000000004", request=sent_update),
        make_record(specs["alpha-unchanged"], "0a0a0a0a-0000-4000-8000-000000000001"),
        make_record(drifted, "0b0b0b0b-0000-4000-8000-000000000002", request=sent_before),
        make_record(ImageSpec(name="zulu-orphan", min_disk=40),
                    "0f0f0f0f-0000-4000-8000-000000000003"),
    ], pending={"charlie-pending": "nonce-1"})
    return tmp_path


def plan_output(run_cli: Callable[..., Result], *args: str) -> Result:
    result = run_cli(["plan", "--catalog", "catalog", "--state", "state.db", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize(("fmt", "golden"), FORMATS.items(), ids=FORMATS.keys())
def test_plan_report_matches_golden_file(
        fmt: str, golden: str, scenario: Path, run_cli: Callable[..., Result],
        update_golden: bool) -> None:
    text = plan_output(run_cli, "--format", fmt).stdout
    path = GOLDEN / golden
    if update_golden:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing; run pytest --update-golden"
    assert text == path.read_text(encoding="utf-8"), (
        f"{fmt} report changed; if intended, run pytest --update-golden and review the diff")


def test_golden_scenario_covers_every_action(scenario: Path,
                                             run_cli: Callable[..., Result]) -> None:
    report = json.loads(plan_output(run_cli, "--format", "json").stdout)
    assert report["summary"] == {"create": 2, "adopt": 0, "update": 1, "unchanged": 1,
                                 "drift": 1, "orphan": 1, "blocked": 1}
    assert report["generated_at"] == "2024-05-17T12:30:00Z"
    assert report["target"] == TARGET
    by_name = {c["name"]: c for c in report["changes"]}
    assert by_name["echo-new"]["warnings"]
    assert {d["field"] for d in by_name["bravo-drift"]["diff"]} == {"min_disk", "tags",
                                                                   "docker_version"}
    update = by_name["foxtrot-update"]["patch"]
    assert update["body"] == [{"op": "add", "path": "/build", "value": "2"},
                              {"op": "remove", "path": "/team"}]


# --- html ------------------------------------------------------------------------------------

XSS_NAME = "<script>alert(1)</script>"
XSS_VALUE = "<img src=x onerror=alert(2)>"


@pytest.fixture
def hostile(tmp_path: Path, write_catalog: Callable[..., Path],
            make_state: Callable[..., Path], make_record: Callable[..., Record]) -> Path:
    """A catalog whose name and property values are markup, one of them drifted."""
    root = write_catalog({"a.yaml": (
        "images:\n"
        f"  - name: \"{XSS_NAME}\"\n"
        "    min_disk: 4\n"
        "  - name: drifted\n"
        "    min_disk: 4\n"
        "    properties:\n"
        f"      note: \"{XSS_VALUE}\"\n")})
    spec = next(s for s in load_catalog(root, IMS).images if s.name == "drifted")
    make_state(tmp_path / "state.db",
               [make_record(spec, "id-1", request={**spec.body(), "note": "plain"})])
    return tmp_path


def test_html_escapes_image_names(hostile: Path, run_cli: Callable[..., Result]) -> None:
    html = plan_output(run_cli, "--format", "html").stdout
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()


def test_html_escapes_diff_values(hostile: Path, run_cli: Callable[..., Result]) -> None:
    html = plan_output(run_cli, "--format", "html").stdout
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "<img" not in html


def test_html_override_template_is_autoescaped_too(
        hostile: Path, tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    custom = tmp_path / "tpl"
    custom.mkdir()
    (custom / "report.html.j2").write_text(
        "{% for c in r.changes %}<p>{{ c.name }}</p>{% endfor %}\n")
    html = plan_output(run_cli, "--format", "html", "--templates", str(custom)).stdout
    assert "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>" in html


# --- markdown size -------------------------------------------------------------------------------

def report_of(changes: list[Change]) -> RunReport:
    summary = dict.fromkeys(("create", "adopt", "unchanged", "drift", "orphan", "blocked"), 0)
    for c in changes:
        summary[c.action] += 1
    return RunReport(mode="plan", generated_at="2024-05-17T12:30:00Z", tool_version="0.1.0",
                     catalog="catalog", target=TARGET, profile="ims", catalog_digest="c" * 64,
                     summary=summary, changes=tuple(changes))


def planned(n: int, prefix: str = "image") -> RunReport:
    specs = tuple(ImageSpec(name=f"{prefix}-{i:05d}", min_disk=40, file="catalog/a.yaml",
                            line=i + 2) for i in range(n))
    catalog = Catalog(directory="catalog", profile="ims", images=specs)
    result = plan(catalog, {}, target=TARGET)
    clock = ManualClock(datetime(2024, 5, 17, 12, 30, tzinfo=UTC))
    return plan_report(catalog, result, clock=clock)


def test_markdown_for_20000_images_fits_a_pr_comment_and_says_it_was_shortened() -> None:
    text = render(planned(20_000), "markdown")
    assert len(text) <= MARKDOWN_LIMIT
    assert "shortened" in text
    assert "| 20000 | 0 | 0 | 0 | 0 |" in text


def test_markdown_worst_case_20000_long_entries_still_fits() -> None:
    actions: tuple[Action, ...] = ("create", "unchanged", "drift", "orphan", "blocked")
    long_value = "v" * 255
    changes = [
        Change(name=f"{i:05d}-" + "n" * 249, action=actions[i % 5], reason="r" * 40,
               detail="d" * 300, file="catalog/" + "f" * 200 + ".yaml", line=i,
               image_id=f"{i:08d}-0000-4000-8000-000000000000",
               diff=tuple(FieldDiff(field=f"prop_{k}", before=long_value, after=long_value + "w")
                          for k in range(5)),
               warnings=("w" * 255, "x" * 255))
        for i in range(20_000)
    ]
    text = render(report_of(changes), "markdown")
    assert len(text) <= MARKDOWN_LIMIT
    assert "shortened" in text or "cut to fit" in text


def test_small_markdown_is_not_marked_shortened(scenario: Path,
                                                run_cli: Callable[..., Result]) -> None:
    text = plan_output(run_cli, "--format", "markdown").stdout
    assert "shortened" not in text
    assert "`zulu-orphan`" in text


# --- json at scale ------------------------------------------------------------------------------

def test_json_plan_of_10000_image_catalog_lists_every_create(
        write_catalog: Callable[..., Path], run_cli: Callable[..., Result],
        tmp_path: Path) -> None:
    lines = ["defaults:\n  min_disk: 40\n  os_version: Ubuntu 18.04 server 64bit\nimages:\n"]
    lines += [f"  - name: img-{i:05d}\n" for i in range(10_000)]
    root = write_catalog({"big.yaml": "".join(lines)})
    result = run_cli(["plan", "--catalog", root, "--state", tmp_path / "state.db",
                      "--format", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["create"] == 10_000
    assert len(report["changes"]) == 10_000
    assert {c["action"] for c in report["changes"]} == {"create"}
    assert report["changes"][-1]["request"]["name"] == "img-09999"


# --- colour ---------------------------------------------------------------------------------------

def test_text_has_colour_only_when_requested() -> None:
    report = planned(3)
    assert "\x1b[" in render(report, "text", color=True)
    assert "\x1b" not in render(report, "text")


@pytest.mark.parametrize("fmt", ["markdown", "html", "json"])
def test_only_text_is_ever_coloured(fmt: str) -> None:
    assert "\x1b" not in render(planned(3), fmt, color=True)


def test_cli_output_to_a_pipe_has_no_colour(scenario: Path,
                                            run_cli: Callable[..., Result]) -> None:
    assert "\x1b" not in plan_output(run_cli).stdout


# --- templates and --output -----------------------------------------------------------------------

@pytest.fixture
def custom_text_template(tmp_path: Path) -> Path:
    custom = tmp_path / "tpl"
    custom.mkdir()
    (custom / "report.txt.j2").write_text("CUSTOM {{ plan_line }}\n")
    return custom


def test_templates_dir_overrides_the_text_report(
        scenario: Path, custom_text_template: Path, run_cli: Callable[..., Result]) -> None:
    text = plan_output(run_cli, "--templates", str(custom_text_template)).stdout
    assert text == ("CUSTOM Plan: 2 to create, 1 to update, 1 unchanged, 1 drifted, 1 orphaned, "
                    "1 blocked.\n")


@pytest.mark.parametrize("fmt", ["markdown", "html"])
def test_formats_not_overridden_fall_back_to_builtin_templates(
        fmt: str, scenario: Path, custom_text_template: Path,
        run_cli: Callable[..., Result]) -> None:
    custom = plan_output(run_cli, "--format", fmt, "--templates",
                         str(custom_text_template)).stdout
    assert custom == plan_output(run_cli, "--format", fmt).stdout
    assert "CUSTOM" not in custom


def test_missing_templates_dir_is_an_error(scenario: Path, run_cli: Callable[..., Result],
                                           tmp_path: Path) -> None:
    result = run_cli(["plan", "--catalog", "catalog", "--state", "state.db", "--templates",
                      tmp_path / "nope"])
    assert result.exit_code == 1
    assert "--templates" in result.stderr


def test_output_writes_the_report_to_the_file(scenario: Path, tmp_path: Path,
                                              run_cli: Callable[..., Result]) -> None:
    target = tmp_path / "report.html"
    result = plan_output(run_cli, "--format", "html", "--output", str(target))
    assert result.stdout == ""
    assert result.stderr == (f"Plan: 2 to create, 1 to update, 1 unchanged, 1 drifted, "
                             f"1 orphaned, 1 blocked. "
                             f"Report written to {target}.\n")  # one line, for cron's mail
    assert target.read_text(encoding="utf-8") == plan_output(run_cli, "--format", "html").stdout


def test_output_into_missing_directory_is_an_error(scenario: Path, tmp_path: Path,
                                                   run_cli: Callable[..., Result]) -> None:
    result = run_cli(["plan", "--catalog", "catalog", "--state", "state.db",
                      "--output", tmp_path / "no-dir" / "report.md"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "error: cannot write report to" in result.stderr


@pytest.mark.parametrize(("template", "message"), [
    ("{% for %}\n", "report.txt.j2:1: Expected an expression"),
    ("{{ r.no_such_field }}\n", "report.txt.j2:1: 'reconciler.models.RunReport object' has no"),
], ids=["syntax-error", "undefined-field"])
def test_broken_override_template_is_a_clean_error_naming_it(
        template: str, message: str, scenario: Path, tmp_path: Path,
        run_cli: Callable[..., Result]) -> None:
    override = tmp_path / "broken"
    override.mkdir()
    (override / "report.txt.j2").write_text(template, encoding="utf-8")
    result = run_cli(["plan", "--catalog", "catalog", "--state", "state.db", "--templates",
                      str(override)])
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output
