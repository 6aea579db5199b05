"""The installed ``reconcile`` against hostile inputs and servers, as a real process.

Each test runs ``.venv/bin/reconcile`` as a subprocess against the sandbox or the scripted
``HostileServer`` over loopback, and checks what a user (or an attacker) would see: the exit
code, stderr, the state file, and what the servers received.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apply_helpers import (
    RECONCILE,
    SandboxFactory,
    pending_names,
    recorded,
    subprocess_env,
    total_requests,
    write_images,
)
from hostile import Answer, HostileServer, Seen

from reconciler.sandbox import Sandbox

TOKEN = "tok-HOSTILE-CLI-8d2f1a7c"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def reconcile(cwd: Path, *args: Any, env: Mapping[str, str] | None = None,
              token: str | None = TOKEN) -> Run:
    full = subprocess_env(token or "")
    if token is None:
        full.pop("OS_AUTH_TOKEN")
    full.update(env or {})
    proc = subprocess.run([str(RECONCILE), *(str(a) for a in args)], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=120)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_clean_error(run: Run, *needles: str) -> None:
    assert run.code == 1, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    for needle in needles:
        assert needle in run.stderr, run.stderr


def never_answer(seen: Seen) -> Answer:
    return Answer.json(500, {"message": "this server must not be contacted"})


# --- item 3: a saved plan cannot redirect credentials ---------------------------------------

@dataclass
class SavedPlanWorld:
    sb: Sandbox
    state: Path
    plan_file: Path


@pytest.fixture
def edited_plan(tmp_path: Path, sandbox: SandboxFactory) -> SavedPlanWorld:
    """A plan saved (not applied) against the sandbox."""
    sb = sandbox()
    catalog = write_images(tmp_path / "catalog", ["img-000", "img-001"])
    state, plan_file = tmp_path / "state.db", tmp_path / "plan.json"
    made = reconcile(tmp_path, "plan", "--refresh", "--out", plan_file, "--state", state,
                     "--catalog", catalog, "--endpoint", sb.url)
    assert made.code == 0, made.stderr
    return SavedPlanWorld(sb, state, plan_file)


def retarget(plan_file: Path, url: str) -> None:
    doc = json.loads(plan_file.read_text(encoding="utf-8"))
    plan_file.write_text(json.dumps({**doc, "target": url}), encoding="utf-8")


def test_an_edited_plan_target_receives_no_request_and_no_token(
        tmp_path: Path, edited_plan: SavedPlanWorld) -> None:
    state, plan_file = edited_plan.state, edited_plan.plan_file
    with HostileServer(never_answer) as attacker:
        retarget(plan_file, attacker.url)

        run = reconcile(tmp_path, "apply", plan_file, "--yes", "--state", state)

        assert_clean_error(run, "--endpoint")
        assert attacker.seen == []
    assert TOKEN not in run.stderr + run.stdout
    assert not state.exists()


def test_a_plan_for_another_target_is_refused_before_any_request(
        tmp_path: Path, edited_plan: SavedPlanWorld) -> None:
    sb, state, plan_file = edited_plan.sb, edited_plan.state, edited_plan.plan_file
    before = total_requests(sb)
    with HostileServer(never_answer) as attacker:
        retarget(plan_file, attacker.url)

        run = reconcile(tmp_path, "apply", plan_file, "--yes", "--state", state,
                        "--endpoint", sb.url)

        assert_clean_error(run, f"made for {attacker.url}", "nothing was sent")
        assert attacker.seen == []
    assert total_requests(sb) == before
    assert not state.exists()


def test_an_unedited_plan_applies_with_the_endpoint_from_the_settings(
        tmp_path: Path, edited_plan: SavedPlanWorld) -> None:
    sb, state, plan_file = edited_plan.sb, edited_plan.state, edited_plan.plan_file

    run = reconcile(tmp_path, "apply", plan_file, "--yes", "--state", state,
                    env={"RECONCILE_ENDPOINT": sb.url})

    assert run.code == 0, run.stderr
    assert sorted(recorded(state)) == ["img-000", "img-001"]
    assert pending_names(state) == []
