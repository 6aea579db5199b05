"""``reconcile apply`` as a real process, killed at arbitrary moments or racing another apply.

The sandbox runs in this test process (so its store and request counts can be inspected);
apply runs as ``.venv/bin/reconcile`` subprocesses against it over loopback HTTP. After a
SIGKILL, the next apply must finish the job: one image per name, each recorded once with the
server's id, nothing left pending, and images the killed run created adopted, not sent again.
Runs that must have several creates in flight at one moment say ``--concurrency fixed``: the
adaptive limit starts at one request and grows only as answers come.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from apply_helpers import (
    RECONCILE,
    Apply,
    SandboxFactory,
    assert_converged,
    by_name,
    image_names,
    journal,
    pending_names,
    recorded,
    runs,
    served,
    subprocess_env,
    trickling_server,
    wait_for,
    write_images,
)

from reconciler.models import MARKER_PROPERTY
from reconciler.sandbox import Sandbox

IMAGES = 40


def setup(tmp_path: Path, count: int = IMAGES) -> tuple[Path, Path, list[str]]:
    names = image_names(count)
    return write_images(tmp_path / "catalog", names), tmp_path / "state.db", names


def finish(tmp_path: Path, sb: Sandbox, state: Path, catalog: Path) -> dict[str, Any]:
    """Re-run apply, fault-free, as cron would; it must succeed at once. Returns its report.

    Every request the sandbox got has been answered by now, so a create still unseen cannot
    land any more: the settle window (how long an unanswered create may still land, 120 s by
    default) is shortened to 1 s, and waited out, so that the re-run may create it again.
    """
    time.sleep(1.0)
    rerun = Apply(tmp_path, sb, state, catalog, "--format", "json", "--settle-time", "1")
    assert rerun.wait() == 0, rerun.output()
    report = json.loads(rerun.stdout)
    assert isinstance(report, dict)
    return report


def lock_holder(state: Path) -> dict[str, Any]:
    lock = Path(f"{state}.lock")
    try:
        doc = json.loads(lock.read_bytes().strip() or b"{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


# --- 9. SIGKILL at different moments -----------------------------------------------------------

def after_seconds(seconds: float) -> Callable[[Sandbox, Apply], bool]:
    return lambda sb, run: time.monotonic() - run.started >= seconds


def after_posts(posts: int) -> Callable[[Sandbox, Apply], bool]:
    return lambda sb, run: sb.post_count >= posts


MOMENTS = [
    pytest.param(after_seconds(0.1), id="0.1s-starting-up"),  # imports alone take longer
    pytest.param(lambda sb, run: lock_holder(run.state).get("pid") == run.proc.pid,
                 id="lock-taken"),
    pytest.param(after_posts(1), id="first-POST-in-flight"),
    pytest.param(after_posts(13), id="13-POSTs"),
    pytest.param(after_posts(IMAGES - 2), id="near-the-end"),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("moment", MOMENTS)
def test_killed_apply_is_finished_by_the_next_one_without_duplicates(
        moment: Callable[[Sandbox, Apply], bool], tmp_path: Path,
        sandbox: SandboxFactory) -> None:
    sb = sandbox(latency_ms=150)
    catalog, state, names = setup(tmp_path)
    run = Apply(tmp_path, sb, state, catalog, "--parallelism", "4", "--concurrency", "fixed")
    wait_for(lambda: moment(sb, run), 30, "the kill moment", alive=run.alive)
    assert run.kill() == -signal.SIGKILL
    served(sb)
    sb.config.latency_ms = 0
    on_server = {n for n, images in by_name(sb.images()).items() if images}
    posts = sb.post_count
    report = finish(tmp_path, sb, state, catalog)
    assert_converged(sb, state, names)
    created = {o["name"] for o in report["outcomes"] if o["result"] == "created"}
    assert created.isdisjoint(on_server)  # what the killed run created is never sent again
    assert sb.post_count - posts == len(created) == len(names) - len(on_server)
    outcomes = [r["outcome"] for r in runs(state)]
    assert outcomes[-1] == "success" and "running" not in outcomes, outcomes


def lose_answers_to_timeouts(tmp_path: Path, sb: Sandbox, state: Path, catalog: Path) -> None:
    # Every request takes longer than the client waits: creates commit on the server, but
    # neither their answers nor the look-ups for them ever reach the client, which is killed.
    sb.config.latency_ms = 1000
    run = Apply(tmp_path, sb, state, catalog, "--parallelism", "4", "--concurrency", "fixed",
                "--read-timeout", "0.3",
                "--no-refresh")
    wait_for(lambda: len(sb.images()) >= 4, 30, "four creates committed", alive=run.alive)
    assert run.kill() == -signal.SIGKILL
    served(sb)


def lose_answers_to_drops(tmp_path: Path, sb: Sandbox, state: Path, catalog: Path) -> None:
    # Every create is committed and its answer dropped; the look-ups that would find them
    # are slowed down, and the process is killed while they wait.
    sb.config.latency_ms, sb.config.drop_response_rate = 100, 1.0
    run = Apply(tmp_path, sb, state, catalog, "--parallelism", "4", "--concurrency", "fixed")
    wait_for(lambda: sb.post_count >= 4, 30, "four creates sent", alive=run.alive)
    # The four POSTs commit (and are dropped) 100 ms after they arrived; the look-ups sent
    # right after the drops now take 3 s, and the process is killed while they wait.
    sb.config.latency_ms = 3000
    wait_for(lambda: len(sb.images()) >= 4, 30, "four creates committed", alive=run.alive)
    time.sleep(0.3)
    assert run.kill() == -signal.SIGKILL
    sb.config.drop_response_rate = 0.0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("lose_answers", [
    pytest.param(lose_answers_to_timeouts, id="read-timeouts"),
    pytest.param(lose_answers_to_drops, id="dropped-responses"),
])
def test_rerun_adopts_images_whose_answer_the_killed_run_never_saw(
        lose_answers: Callable[[Path, Sandbox, Path, Path], None], tmp_path: Path,
        sandbox: SandboxFactory) -> None:
    sb = sandbox()
    catalog, state, names = setup(tmp_path)
    lose_answers(tmp_path, sb, state, catalog)
    sb.config.latency_ms = 0
    markers = {i.get(MARKER_PROPERTY): i["name"] for i in sb.images()}
    pending = {nonce: name for name, st, nonce in journal(state) if st == "pending"}
    adoptable = {name for nonce, name in pending.items() if nonce in markers}
    assert adoptable, (pending, markers)  # the scenario really happened (typically 4 names)
    assert recorded(state).keys().isdisjoint(adoptable)
    images_before, posts_before = len(sb.images()), sb.post_count
    report = finish(tmp_path, sb, state, catalog)
    adopted = {o["name"] for o in report["outcomes"] if o["result"] == "adopted"}
    assert adopted == adoptable
    assert sb.post_count - posts_before == len(names) - images_before
    assert_converged(sb, state, names)
    records = recorded(state)
    assert all(records[n]["request"][MARKER_PROPERTY] in markers for n in adoptable)


@pytest.mark.timeout(90)
def test_sigterm_stops_gracefully_recording_every_create_in_flight(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    sb = sandbox(latency_ms=150)
    catalog, state, names = setup(tmp_path)
    run = Apply(tmp_path, sb, state, catalog, "--parallelism", "4", "--concurrency", "fixed")
    wait_for(lambda: sb.post_count >= 10, 30, "ten creates", alive=run.alive)
    assert run.kill(signal.SIGTERM) == 1, run.output()
    assert "Traceback" not in run.stderr
    server = by_name(sb.images())
    assert sorted(recorded(state)) == sorted(server)  # nothing created is left unrecorded
    assert pending_names(state) == []
    assert [r["outcome"] for r in runs(state)] == ["interrupted"]
    finish(tmp_path, sb, state, catalog)
    assert_converged(sb, state, names)


@pytest.mark.timeout(90)
def test_interrupted_run_writes_its_report_and_counts_what_it_recorded(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    sb = sandbox(latency_ms=150)
    catalog, state, _ = setup(tmp_path)
    report = tmp_path / "report.json"
    run = Apply(tmp_path, sb, state, catalog, "--parallelism", "4", "--concurrency", "fixed",
                "--format", "json", "-o", report)
    wait_for(lambda: sb.post_count >= 10, 30, "ten creates", alive=run.alive)
    assert run.kill(signal.SIGTERM) == 1, run.output()
    assert run.stderr.rstrip().endswith("interrupted: run `reconcile apply` again to finish")
    doc = json.loads(report.read_text(encoding="utf-8"))
    made = sorted(o["name"] for o in doc["outcomes"] if o["result"] == "created")
    assert made and made == sorted(recorded(state))  # the report tells what was recorded
    assert doc["summary"]["created"] == len(made)
    assert doc["summary"]["skipped"] > 0
    assert "run interrupted: run `reconcile apply` again to finish" in doc["warnings"]
    history = runs(state)
    assert [(r["outcome"], r["created"]) for r in history] == [("interrupted", len(made))]


# A create the server is still processing when the client stops waiting for it can land after
# the look-up that was meant to find it.
def duplicates(sb: Sandbox) -> dict[str, int]:
    return {n: len(v) for n, v in by_name(sb.images()).items() if len(v) > 1}


@pytest.mark.timeout(90)
def test_create_still_in_flight_when_killed_is_not_duplicated_by_the_rerun(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    # The server holds the killed run's creates (received, not committed) until the rerun has
    # ended, however long the rerun takes to start and to read the server's rules: the rerun
    # must block their names rather than send them again.
    sb = sandbox()
    catalog, state, _ = setup(tmp_path, 8)
    with sb.holding_creates() as land:
        run = Apply(tmp_path, sb, state, catalog, "--parallelism", "4", "--concurrency", "fixed",
                    "--no-refresh")
        wait_for(lambda: sb.post_count >= 4, 30, "four creates in flight", alive=run.alive)
        assert run.kill() == -signal.SIGKILL
    in_flight = pending_names(state)
    assert len(in_flight) == 4
    rerun = Apply(tmp_path, sb, state, catalog, "--format", "json")  # as cron would, at once
    assert rerun.wait() == 1, rerun.output()  # the in-flight creates block their names
    changes = json.loads(rerun.stdout)["changes"]
    blocked = [c for c in changes if c["action"] == "blocked"]
    assert sorted(c["name"] for c in blocked) == sorted(in_flight)
    assert {c["reason"] for c in blocked} == {"pending_create"}
    land.set()
    wait_for(lambda: len(sb.images()) == 8, 30, "the held creates to land")
    assert duplicates(sb) == {}
    finish(tmp_path, sb, state, catalog)  # the landed creates are adopted
    assert_converged(sb, state, [c["name"] for c in changes])


@pytest.mark.timeout(90)
def test_create_outliving_the_read_timeout_is_not_sent_again(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    sb = sandbox(latency_ms=3000)
    catalog, state, _ = setup(tmp_path, 2)
    run = Apply(tmp_path, sb, state, catalog, "--parallelism", "2", "--concurrency", "fixed",
                "--read-timeout", "1",
                "--no-refresh")
    wait_for(lambda: sb.post_count >= 2, 30, "two creates in flight", alive=run.alive)
    sb.config.latency_ms = 0
    assert run.wait() == 0, run.output()  # found once they land, within the settle time
    served(sb)
    assert duplicates(sb) == {}
    assert_converged(sb, state, image_names(2))


DIE_IN_MIGRATION = """
import os, signal, sys
from reconciler import state
def killed(db):
    os.kill(os.getpid(), signal.SIGKILL)
state.MIGRATIONS[1] = killed  # SIGKILL arrives after schema step 1, before the last one
state.SqliteStore.open_for_write(sys.argv[1])
"""


@pytest.mark.timeout(90)
def test_first_apply_killed_while_creating_the_state_file_does_not_brick_it(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    catalog, state, names = setup(tmp_path, 3)
    killed = subprocess.run([sys.executable, "-c", DIE_IN_MIGRATION, str(state)],
                            capture_output=True, timeout=30, env=subprocess_env())
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert state.exists()  # the kill really happened while the file was being set up
    rerun = Apply(tmp_path, sb, state, catalog)
    assert rerun.wait() == 0, rerun.output()
    assert_converged(sb, state, names)


# --- 10. two applies on one state file ---------------------------------------------------------

@pytest.mark.timeout(90)
def test_second_concurrent_apply_fails_fast_naming_the_lock_holder(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    sb = sandbox(latency_ms=300)
    catalog, state, names = setup(tmp_path, 60)  # about 9 s of creates: outlasts the second's start
    first = Apply(tmp_path, sb, state, catalog, "--parallelism", "2")
    wait_for(lambda: lock_holder(state).get("pid") == first.proc.pid, 30,
             "the first apply to take the lock", alive=first.alive)
    holder = lock_holder(state)
    second = Apply(tmp_path, sb, state, catalog)
    code = second.wait(timeout=30)
    elapsed = time.monotonic() - second.started
    assert first.alive(), "the first apply ended too early for this test"
    assert code == 1, second.output()
    assert elapsed < 5
    message = second.stderr
    assert f"pid {first.proc.pid}" in message
    assert socket.gethostname() in message and holder["since"] in message
    assert "Traceback" not in message
    assert first.wait() == 0, first.output()
    assert_converged(sb, state, names)
    assert [r["outcome"] for r in runs(state)] == ["success"]


@pytest.mark.timeout(90)
def test_sigterm_stops_promptly_even_while_a_server_trickles(tmp_path: Path) -> None:
    # Each create's answer trickles in one byte at a time and would take minutes: SIGTERM
    # waits a short grace for them, then cuts them off; they stay pending (they may have been
    # received) and the run ends with the documented message.
    catalog, state, _ = setup(tmp_path, 3)
    with trickling_server(0.2) as url:
        args = [str(RECONCILE), "apply", "--yes", "--endpoint", url, "--state", str(state),
                "--catalog", str(catalog), "--no-refresh", "--parallelism", "3",
                "--concurrency", "fixed"]
        err = tmp_path / "trickle.err"
        with err.open("wb") as stderr:
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr,
                                    env=subprocess_env(), cwd=tmp_path)
        def in_flight() -> bool:
            try:
                return len(pending_names(state)) == 3
            except sqlite3.Error:  # not created or not migrated yet
                return False

        wait_for(in_flight, 30, "three creates in flight", alive=lambda: proc.poll() is None)
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        took = time.monotonic() - sent
    text = err.read_text(encoding="utf-8")
    assert code == 1, text
    assert "error: interrupted: run `reconcile apply` again to finish" in text
    assert "Traceback" not in text and "error: aborted" not in text
    assert took < 15, f"SIGTERM took {took:.1f} s"  # grace 3 s, far below the 120 s deadline
    assert pending_names(state) == image_names(3)
    assert [r["outcome"] for r in runs(state)] == ["interrupted"]
