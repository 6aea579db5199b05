"""`apply --refresh-only` records what the cloud shows (adoptions, changes made outside
reconcile) and creates nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from apply_helpers import SandboxFactory, recorded, replace_image, write_images
from click.testing import Result

TOKEN = {"OS_AUTH_TOKEN": "t0k"}


def test_refresh_only_adopts_and_creates_nothing(
        tmp_path: Path, sandbox: SandboxFactory, run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", ["img-000", "img-001"])
    sb = sandbox(token="t0k")
    assert run_cli(["apply", "--yes", "--endpoint", sb.url], env=TOKEN).exit_code == 0
    (tmp_path / "reconcile-state.db").unlink()  # a lost state file
    write_images(tmp_path / "catalog", ["img-000", "img-001", "img-002"])
    result = run_cli(["apply", "--yes", "--refresh-only", "--endpoint", sb.url,
                      "--format", "json"], env=TOKEN)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {o["name"]: o["result"] for o in doc["outcomes"]} == {"img-000": "adopted",
                                                                 "img-001": "adopted"}
    assert sorted(recorded(tmp_path / "reconcile-state.db")) == ["img-000", "img-001"]
    assert sorted(i["name"] for i in sb.images()) == ["img-000", "img-001"]  # none created


def test_refresh_only_takes_in_a_change_made_outside_reconcile(
        tmp_path: Path, sandbox: SandboxFactory, run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", ["img-000"])
    sb = sandbox(token="t0k")
    assert run_cli(["apply", "--yes", "--endpoint", sb.url], env=TOKEN).exit_code == 0
    replace_image(sb, sb.images()[0]["id"], min_disk=80)
    plan = ["plan", "--refresh", "--endpoint", sb.url, "--format", "json", "--drift", "report"]
    before = json.loads(run_cli(plan, env=TOKEN).stdout)["changes"][0]
    assert (before["action"], before["reason"]) == ("drift", "changed_remotely")
    result = run_cli(["apply", "--yes", "--refresh-only", "--endpoint", sb.url], env=TOKEN)
    assert result.exit_code == 0, result.output
    assert "recorded the cloud's current img-000 (changed outside reconcile: min_disk)" in \
        result.stdout
    state = tmp_path / "reconcile-state.db"
    assert recorded(state)["img-000"]["response"]["min_disk"] == 80
    after = json.loads(run_cli(plan, env=TOKEN).stdout)["changes"][0]
    assert after["action"] == "unchanged"


def test_refresh_only_needs_the_cloud(tmp_path: Path,
                                      run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", ["img-000"])
    result = run_cli(["apply", "--yes", "--refresh-only", "--no-refresh", "--endpoint",
                      "http://127.0.0.1:1"], env=TOKEN)
    assert result.exit_code == 1
    assert "cannot be combined with --no-refresh" in result.stderr
