"""A team on one PostgreSQL state: applies from several working directories (as from several
machines) at once, one of them killed, and a pull-request plan from a fresh checkout.

Every apply is a real ``reconcile`` process in a directory of its own with its own copy of
the catalog; the only thing they share is the ``--state`` URL, as CI runners would.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from apply_helpers import (
    Apply,
    SandboxFactory,
    assert_converged,
    image_names,
    reconcile,
    runs,
    wait_for,
    write_images,
)
from click.testing import Result

from reconciler.sandbox import Sandbox

IMAGES = 30


@dataclass
class Team:
    """Working directories on one PostgreSQL state, each with its own copy of the catalog
    (``names``), as CI jobs on several machines have."""

    root: Path
    state: str
    names: list[str]

    def checkout(self, name: str, names: list[str] | None = None) -> Path:
        work = self.root / name
        work.mkdir()
        write_images(work / "catalog", self.names if names is None else names)
        return work

    def apply(self, name: str, sb: Sandbox, *extra: str) -> Apply:
        """``reconcile apply --yes`` from a fresh checkout ``name``."""
        work = self.checkout(name)
        return Apply(work, sb, self.state, work / "catalog", *extra)


@pytest.fixture
def team(tmp_path: Path, pg_url: str) -> Team:
    return Team(tmp_path, pg_url, image_names(IMAGES))


@pytest.mark.timeout(120)
def test_two_applies_at_once_on_one_postgresql_state_create_each_image_once(
        team: Team, sandbox: SandboxFactory) -> None:
    sb = sandbox(latency_ms=50)
    a = team.apply("one", sb, "--lock-timeout", "2m")
    b = team.apply("two", sb, "--lock-timeout", "2m")
    assert a.wait(90) == 0, a.output()
    assert b.wait(90) == 0, b.output()
    assert sb.post_count == IMAGES
    assert_converged(sb, team.state, team.names)
    assert sorted(r["created"] for r in runs(team.state)) == [0, IMAGES]


@pytest.mark.timeout(120)
def test_a_second_apply_without_lock_timeout_fails_at_once_naming_the_first(
        team: Team, sandbox: SandboxFactory) -> None:
    sb = sandbox(latency_ms=300)
    a = team.apply("one", sb, "--parallelism", "1")
    wait_for(lambda: sb.post_count >= 1, 30, "the first apply to send", alive=a.alive)
    b = team.apply("two", sb)
    assert b.wait(30) == 1, b.output()
    assert time.monotonic() - b.started < 10
    assert a.alive()
    assert f"locked by apply (pid {a.proc.pid} on host " in b.stderr
    assert "Traceback" not in b.stderr
    assert a.wait(90) == 0, a.output()
    assert_converged(sb, team.state, team.names)


@pytest.mark.timeout(150)
def test_a_killed_apply_frees_its_lock_and_the_waiting_one_finishes_without_duplicates(
        team: Team, sandbox: SandboxFactory) -> None:
    sb = sandbox(latency_ms=150)
    a = team.apply("one", sb, "--parallelism", "4")
    wait_for(lambda: sb.post_count >= 8, 30, "creates in flight", alive=a.alive)
    b = team.apply("two", sb, "--lock-timeout", "2m", "--settle-time", "1")
    time.sleep(0.5)
    assert b.alive()  # waiting for the lock
    killed_at = time.monotonic()
    assert a.kill() == -signal.SIGKILL
    # The lock went with the killed connection: b goes on at once, no stale lock to wait out.
    wait_for(lambda: len(runs(team.state)) >= 2, 20, "the waiting apply to take the lock",
             alive=b.alive)
    assert time.monotonic() - killed_at < 15
    b.wait(90)
    # Creates a sent just before it died may still have been settling for b; a later run
    # (as the next cron run would) finishes whatever b left blocked.
    time.sleep(1.0)
    c = team.apply("three", sb, "--settle-time", "1")
    assert c.wait(90) == 0, c.output()
    assert_converged(sb, team.state, team.names)
    outcomes = [r["outcome"] for r in runs(team.state)]
    assert outcomes[0] == "interrupted"  # a's run, marked by b when it took the lock


@pytest.mark.timeout(120)
def test_a_pull_request_plan_from_a_fresh_checkout_sees_every_recorded_image(
        team: Team, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    team.names = image_names(12)
    assert team.apply("cron", sb).wait(60) == 0
    pr = team.checkout("pr", [*team.names, "img-new"])
    shutil.rmtree(team.root / "cron")  # nothing of the machine that applied is left
    done = reconcile("plan", "--state", team.state, "--catalog", pr / "catalog", "--format",
                     "json", "--detailed-exitcode", cwd=pr)
    assert done.returncode == 2, done.stderr
    actions = {c["name"]: c["action"] for c in json.loads(done.stdout)["changes"]}
    assert actions == {**dict.fromkeys(team.names, "unchanged"), "img-new": "create"}


def test_a_password_in_the_state_url_is_never_printed(tmp_path: Path) -> None:
    url = "postgresql://team:s3cr3t-pw@127.0.0.1:1/state?connect_timeout=2"
    write_images(tmp_path / "catalog", ["a"])
    for command in (["plan"], ["history"], ["state", "list"],
                    ["apply", "--yes", "--endpoint", "http://127.0.0.1:1"]):
        done = reconcile(*command, "--state", url, cwd=tmp_path)
        assert done.returncode == 1
        assert "s3cr3t-pw" not in done.stdout + done.stderr
        assert "postgresql://team:***@127.0.0.1:1/state" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_apply_in_ci_with_a_local_state_file_warns_and_with_postgresql_does_not(
        tmp_path: Path, sandbox: SandboxFactory, pg_url: str) -> None:
    sb = sandbox()
    write_images(tmp_path / "catalog", ["a"])
    for state, warned in ((str(tmp_path / "state.db"), True), (pg_url, False)):
        done = reconcile("apply", "--yes", "--endpoint", sb.url, "--state", state,
                         "--catalog", tmp_path / "catalog", cwd=tmp_path, env={"CI": "true"})
        assert done.returncode == 0, done.stderr
        assert ("warning: apply in CI with a local state file" in done.stderr) is warned


@pytest.mark.timeout(120)
def test_a_lost_state_connection_stops_the_run_and_the_rerun_creates_nothing_twice(
        tmp_path: Path, sandbox: SandboxFactory, pg_url: str,
        run_cli: Callable[..., Result]) -> None:
    """The state server drops the apply's session mid-run: its lock is gone with it, so the
    run must send nothing more; what was in flight is in the journal for the next run."""
    sb = sandbox(latency_ms=100)
    names = image_names(IMAGES)
    catalog = write_images(tmp_path / "catalog", names)
    args = ["apply", "--yes", "--endpoint", sb.url, "--state", pg_url, "--catalog", catalog,
            "--parallelism", "2"]
    results: list[Result] = []
    run = threading.Thread(target=lambda: results.append(
        run_cli(args, env={"OS_AUTH_TOKEN": "tok-team"})))
    run.start()
    wait_for(lambda: sb.post_count >= 3, 30, "the apply to send", alive=run.is_alive)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        cut: Any = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()
    assert cut[0] >= 1
    run.join(60)
    lost = results[0]

    assert lost.exit_code != 0, lost.output
    assert "lost the connection to the PostgreSQL state" in lost.stderr
    assert "Traceback" not in lost.output
    assert sb.post_count < IMAGES  # it stopped sending
    again = run_cli(args, env={"OS_AUTH_TOKEN": "tok-team"})
    assert again.exit_code == 0, again.output
    assert sb.post_count == IMAGES  # what was in flight was found, not sent again
    assert_converged(sb, pg_url, names)
