"""`reconcile show PLANFILE` renders a saved plan; `--only NAME` (repeatable, globs) limits plan
and apply to some images, also through a saved plan."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from apply_helpers import SandboxFactory, write_images
from click.testing import Result

TOKEN = {"OS_AUTH_TOKEN": "t0k"}
NAMES = ["centos-7", "ubuntu-18.04", "ubuntu-20.04"]


def test_show_renders_a_saved_plan_in_every_format(
        tmp_path: Path, sandbox: SandboxFactory, run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", NAMES)
    sb = sandbox(token="t0k")
    made = run_cli(["plan", "--refresh", "--endpoint", sb.url, "--out", "plan.json"], env=TOKEN)
    assert made.exit_code == 0, made.output
    saved = json.loads((tmp_path / "plan.json").read_text())
    text = run_cli(["show", "plan.json"])
    assert text.exit_code == 0, text.output
    assert all(f"+ create    {n}" in text.stdout for n in NAMES)
    assert f"plan {saved['plan_id']}" in text.stdout and "refreshed" in text.stdout
    doc = json.loads(run_cli(["show", "plan.json", "--format", "json"]).stdout)
    assert doc["plan_id"] == saved["plan_id"]
    requests = {c["name"]: c["request"] for c in doc["changes"]}
    assert requests == {c["name"]: c["request"] for c in saved["changes"]}  # the exact bodies
    md = run_cli(["show", "plan.json", "--format", "markdown"]).stdout
    assert "| `ubuntu-18.04` | os " in md and "To apply exactly this plan, once" in md
    assert sb.images() == []


def test_show_of_a_broken_plan_file_is_a_clean_error(
        tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    (tmp_path / "plan.json").write_text('{"kind": "something else"}')
    result = run_cli(["show", "plan.json"])
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.output


def test_only_limits_plan_with_globs_and_repeats(
        tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", NAMES)
    doc = json.loads(run_cli(["plan", "--only", "ubuntu-*", "--format", "json"]).stdout)
    assert [c["name"] for c in doc["changes"]] == ["ubuntu-18.04", "ubuntu-20.04"]
    assert doc["summary"]["create"] == 2
    both = json.loads(run_cli(["plan", "--only", "centos-7", "--only", "ubuntu-20.04",
                               "--format", "json"]).stdout)
    assert [c["name"] for c in both["changes"]] == ["centos-7", "ubuntu-20.04"]


def test_only_matching_nothing_is_an_error(tmp_path: Path,
                                           run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", NAMES)
    result = run_cli(["plan", "--only", "debian-*"])
    assert result.exit_code == 1
    assert "--only debian-*: no image of the catalog or the state file" in result.stderr


def test_only_limits_apply_and_a_saved_plan(
        tmp_path: Path, sandbox: SandboxFactory, run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", NAMES)
    sb = sandbox(token="t0k")
    result = run_cli(["apply", "--yes", "--endpoint", sb.url, "--only", "centos-*"], env=TOKEN)
    assert result.exit_code == 0, result.output
    assert [i["name"] for i in sb.images()] == ["centos-7"]
    made = run_cli(["plan", "--refresh", "--endpoint", sb.url, "--only", "ubuntu-18*",
                    "--out", "plan.json"], env=TOKEN)
    assert made.exit_code == 0, made.output
    applied = run_cli(["apply", "plan.json", "--yes", "--endpoint", sb.url], env=TOKEN)
    assert applied.exit_code == 0, applied.output
    assert sorted(i["name"] for i in sb.images()) == ["centos-7", "ubuntu-18.04"]
    refused = run_cli(["apply", "plan.json", "--yes", "--endpoint", sb.url, "--only", "x"],
                      env=TOKEN)
    assert refused.exit_code == 1 and "--only" in refused.stderr
