"""Where reports and saved plans go: ``-o/--output`` and ``plan --out`` write through what is
not a regular file (a FIFO, a device, /dev/stdout) and follow symbolic links; only a regular
file is replaced, atomically. Run through the installed ``reconcile``, as a user would."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from apply_helpers import reconcile, write_images

from reconciler.output import write_text


@pytest.fixture
def world(tmp_path: Path) -> Path:
    write_images(tmp_path / "catalog", ["alpha", "bravo"])
    return tmp_path


def plan(world: Path, *args: object,
         stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """``reconcile plan ARGS`` in ``world``, which must succeed."""
    result = reconcile("plan", *args, cwd=world, stdout=stdout)
    assert result.returncode == 0, result.stderr
    return result


def expected_report(world: Path) -> str:
    return plan(world).stdout


def no_temporaries(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def plan_into_fifo(world: Path, option: str) -> bytes:
    """``reconcile plan OPTION FIFO`` with a reader at the FIFO's other end: what the reader
    got. The FIFO must still be one afterwards."""
    fifo = world / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    plan(world, option, fifo)
    thread.join(10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert len(got) == 1, "the reader got nothing"
    return got[0]


def test_report_to_a_fifo_is_written_into_it_and_the_fifo_stays(world: Path) -> None:
    assert plan_into_fifo(world, "-o") == expected_report(world).encode()
    assert no_temporaries(world) == []


def test_saved_plan_to_a_fifo_is_written_into_it(world: Path) -> None:
    assert b'"kind": "reconcile-plan"' in plan_into_fifo(world, "--out")


def test_symlink_to_a_regular_file_is_followed_and_kept(world: Path) -> None:
    real = world / "reports" / "plan.md"
    real.parent.mkdir()
    real.write_text("old report\n")
    real.chmod(0o640)
    link = world / "latest.md"
    link.symlink_to(Path("reports") / "plan.md")
    plan(world, "-o", link)
    assert link.is_symlink() and os.readlink(link) == "reports/plan.md"
    assert real.read_text() == expected_report(world)
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # the replaced file keeps its mode
    assert no_temporaries(world) == no_temporaries(real.parent) == []


def test_dangling_symlink_creates_its_target_and_stays_a_link(world: Path) -> None:
    link = world / "plan.json"
    link.symlink_to("saved/plan.json")
    (world / "saved").mkdir()
    plan(world, "--out", link)
    assert link.is_symlink()
    assert '"kind": "reconcile-plan"' in (world / "saved" / "plan.json").read_text()


# These tests never name /dev/null or /dev/stdout themselves: a regression run as root would
# replace the machine's own. Through a link in the test's directory, the same bug only
# replaces the link.

def test_symlink_to_dev_null_is_written_through(world: Path) -> None:
    link = world / "null"
    link.symlink_to(os.devnull)
    plan(world, "-o", link, "--out", link)
    assert link.is_symlink() and os.readlink(link) == os.devnull
    assert stat.S_ISCHR(os.stat(link).st_mode)
    assert no_temporaries(world) == []


def test_link_to_dev_stdout_writes_to_standard_output(world: Path) -> None:
    link = world / "out"
    link.symlink_to("/dev/stdout")
    assert plan(world, "-o", link).stdout == expected_report(world)
    assert link.is_symlink()


def test_dev_stdout_redirected_to_a_file_appends_and_never_replaces_it(world: Path) -> None:
    link = world / "stdout"
    link.symlink_to("/proc/self/fd/1")
    log = world / "cron.log"
    log.write_text("earlier runs\n")
    with open(log, "a") as out:
        plan(world, "-o", link, stdout=out.fileno())
    assert log.read_text() == "earlier runs\n" + expected_report(world)
    assert link.is_symlink()


def test_output_into_a_missing_directory_is_refused_before_any_work(world: Path) -> None:
    result = reconcile("apply", "--yes", "--endpoint", "http://127.0.0.1:9", "-o",
                       world / "no-such-dir" / "report.txt", cwd=world)
    assert result.returncode == 1
    assert "error: cannot write report to" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (world / "reconcile-state.db").exists()  # refused before anything was done


def test_failed_write_leaves_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.txt"
    target.write_text("old\n")

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert no_temporaries(tmp_path) == []


def test_new_file_gets_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "r.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.txt").stat().st_mode) == 0o640
