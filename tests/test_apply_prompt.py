"""apply on a terminal, through a pseudo-terminal: the plan is shown as `plan` prints it
before the question, `n` cancels cleanly (exit 0, nothing sent, nothing written), `y` applies
exactly what was shown."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest
from apply_helpers import RECONCILE, SandboxFactory, image_names, write_images

from reconciler.sandbox import Sandbox
from reconciler.sandbox.app import SandboxApp
from reconciler.sandbox.replies import Reply


def on_terminal(args: list[str], answer: str, cwd: Path,
                env: dict[str, str]) -> tuple[int, str]:
    """Run reconcile with stdin, stdout and stderr on a pseudo-terminal; type ``answer`` once
    the question shows; return the exit code and everything the terminal showed."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(RECONCILE), *args], stdin=follower, stdout=follower,
                            stderr=follower, cwd=cwd, env={**os.environ, **env},
                            close_fds=True)
    os.close(follower)
    seen, answered, deadline = b"", False, time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if not answered and b"[y/N]" in seen:
            os.write(leader, answer.encode() + b"\n")
            answered = True
        if proc.poll() is not None and not ready:
            break
    os.close(leader)
    code = proc.wait(timeout=30)
    return code, seen.decode(errors="replace").replace("\r\n", "\n")


def setup(tmp_path: Path, sandbox: SandboxFactory) -> tuple[list[str], dict[str, str], Sandbox]:
    write_images(tmp_path / "catalog", image_names(3))
    sb = sandbox(token="t0k")
    args = ["apply", "--endpoint", sb.url, "--state", "state.db"]
    return args, {"OS_AUTH_TOKEN": "t0k", "NO_COLOR": "1"}, sb


def test_the_plan_is_shown_before_the_question_and_no_cancels(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    args, env, sb = setup(tmp_path, sandbox)
    code, screen = on_terminal(args, "n", tmp_path, env)
    assert code == 0, screen
    question = screen.index("[y/N]")
    plan_part = screen[:question]
    for name in image_names(3):
        assert f"+ create    {name}" in plan_part  # the per-image plan, before the question
    assert "Plan: 3 to create" in plan_part
    assert "Apply this plan to" in plan_part
    assert "Apply cancelled." in screen[question:]
    assert "error" not in screen
    assert sb.images() == []
    assert not (tmp_path / "state.db").exists()


def test_yes_applies_what_was_shown(tmp_path: Path, sandbox: SandboxFactory) -> None:
    args, env, sb = setup(tmp_path, sandbox)
    code, screen = on_terminal(args, "y", tmp_path, env)
    assert code == 0, screen
    after = screen[screen.index("[y/N]"):]
    assert "+ create" not in after  # the results, not the plan again
    assert "Apply: 3 created, 0 adopted, 0 failed, 0 skipped." in after
    assert sorted(i["name"] for i in sb.images()) == image_names(3)


def test_the_server_rules_are_read_once_and_a_failed_read_is_said_before_the_question(
        tmp_path: Path, sandbox: SandboxFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The preview's rules are the apply's: one read, and its failure is said in the plan
    # shown (and once more in the run's report, which is the record of the run).
    args, env, sb = setup(tmp_path, sandbox)
    monkeypatch.setattr(SandboxApp, "_server_info",
                        lambda self, kind: Reply(200, b'[{"platform": ', "application/json"))
    code, screen = on_terminal(args, "y", tmp_path, env)
    assert code == 0, screen
    assert sb.request_count[("GET", "os_versions")] == 1
    question = screen.index("[y/N]")
    note = (f"warning: could not read the server's OS list: GET {sb.url}/v1/cloudimages/"
            "os_version HTTP 200: unexpected response: the body is not JSON")
    assert screen[:question].count(note) == 1
    assert screen[question:].count(note) == 1
    assert "using reconcile's built-in rules" in screen[:question]
    assert sorted(i["name"] for i in sb.images()) == image_names(3)


def test_the_plan_of_every_target_is_shown_and_confirmed_once(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    boxes = [sandbox(token="t0k"), sandbox(token="t0k")]
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "a.yaml").write_text(
        "targets:\n" + "".join(f"  r{i}: {{endpoint: '{sb.url}'}}\n" for i, sb in
                               enumerate(boxes))
        + "images:\n  - name: everywhere\n  - name: only-r1\n    targets: [r1]\n",
        encoding="utf-8")
    args, env = ["apply", "--state", "state.db"], {"OS_AUTH_TOKEN": "t0k", "NO_COLOR": "1"}
    code, screen = on_terminal(args, "n", tmp_path, env)
    assert code == 0, screen
    question = screen.index("[y/N]")
    assert "Total (2 targets): Plan: 3 to create" in screen[:question]
    assert "Apply this plan to r0, r1: create 3, adopt 0 image(s)?" in screen
    assert all(sb.images() == [] for sb in boxes)
    assert not (tmp_path / "state.db").exists()
    code, screen = on_terminal(args, "y", tmp_path, env)
    assert code == 0, screen
    assert [len(sb.images()) for sb in boxes] == [1, 2]
