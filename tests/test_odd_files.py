"""Hostile and odd files end in one readable message, exit 1, no traceback and an untouched
state: catalog files that leave the catalog directory, block or never end; a file that is no
catalog at all (its content is never quoted); a non-UTF-8 file name; nesting deep enough to
break a parser; state files with other columns or a damaged page; a busy sandbox port. Run
through the installed ``reconcile``, as a user would."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from apply_helpers import RECONCILE, subprocess_env, write_images

from reconciler.catalog import MAX_DEPTH, MAX_FILE_BYTES, read_catalog_file

SECRET = "gAAAAAB-SECRET-TOKEN-0123456789"


def reconcile(*args: object, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RECONCILE), *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout,
                          errors="surrogateescape")


def refused(result: subprocess.CompletedProcess[str], *messages: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for message in messages:
        assert message in result.stderr, result.stderr


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    return write_images(tmp_path / "catalog", ["alpha"])


# --- item 9: the catalog stays inside its directory and never blocks ----------------------------

def test_symlink_out_of_the_catalog_is_refused_and_its_content_never_shown(
        tmp_path: Path, catalog: Path) -> None:
    (tmp_path / "token.txt").write_text(SECRET + "\n")
    (catalog / "stolen.yaml").symlink_to(tmp_path / "token.txt")
    result = reconcile("validate", cwd=tmp_path)
    refused(result, "catalog/stolen.yaml: is a symbolic link to a file outside the catalog "
                    "directory; refused")
    assert "gAAAA" not in result.stderr + result.stdout


def test_symlink_to_dev_zero_is_refused_at_once(tmp_path: Path, catalog: Path) -> None:
    (catalog / "zero.yaml").symlink_to("/dev/zero")
    refused(reconcile("validate", cwd=tmp_path, timeout=30),
            "catalog/zero.yaml: is a symbolic link to a file outside the catalog directory")


def test_fifo_in_the_catalog_is_refused_without_blocking(tmp_path: Path, catalog: Path) -> None:
    os.mkfifo(catalog / "pipe.yaml")
    refused(reconcile("plan", cwd=tmp_path, timeout=30),
            "catalog/pipe.yaml: is not a regular file (it is a FIFO)")


def test_link_to_a_fifo_inside_the_catalog_is_refused_too(tmp_path: Path,
                                                          catalog: Path) -> None:
    os.mkfifo(catalog / ".pipe")
    (catalog / "pipe.yaml").symlink_to(".pipe")
    refused(reconcile("validate", cwd=tmp_path, timeout=30), "is not a regular file")


def test_symlink_inside_the_catalog_is_followed(tmp_path: Path, catalog: Path) -> None:
    (catalog / "shared").mkdir()
    (catalog / "images.yaml").rename(catalog / "shared" / "base.txt")  # not read by itself
    (catalog / "images.yaml").symlink_to("shared/base.txt")
    result = reconcile("validate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 image in 1 file" in result.stdout


def test_file_over_the_size_cap_is_refused_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    data, problems = read_catalog_file(big, tmp_path, "big.yaml")
    assert data is None
    assert [p.message for p in problems] == [
        "is larger than 64 MiB, the limit for one catalog file; split it into several files"]


def test_small_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_bytes(b"#" * 10)
    data, problems = read_catalog_file(tmp_path / "ok.yaml", tmp_path, "ok.yaml")
    assert (data, problems) == (b"#" * 10, [])


@pytest.mark.parametrize("content", [
    f"{SECRET}\n", f"- {SECRET}\n", f"{{token: {SECRET}}}\n", f"defaults: {SECRET}\n",
    f"token: {SECRET}\ndefaults:\n  min_disk: {SECRET}\n",
], ids=["text", "list", "mapping-without-images", "defaults-text", "defaults-field"])
def test_a_file_that_is_no_catalog_is_never_quoted(tmp_path: Path, catalog: Path,
                                                   content: str) -> None:
    (catalog / "secrets.yaml").write_text(content)
    result = reconcile("validate", cwd=tmp_path)
    refused(result, "catalog/secrets.yaml")
    assert "gAAAA" not in result.stderr + result.stdout


# --- item 12: a non-UTF-8 file name with -o FILE -------------------------------------------

def test_non_utf8_file_name_shows_escaped_and_reports_are_written(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    write_images(root, ["alpha"], file=os.fsdecode(b"caf\xe9.yaml"))
    result = reconcile("plan", "-o", "report.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "catalog/caf\\xe9.yaml:" in (tmp_path / "report.txt").read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_non_utf8_file_name_in_an_error_is_escaped(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    root.mkdir()
    (root / os.fsdecode(b"bad\xff.yaml")).write_text("images: 3\n")
    result = reconcile("validate", cwd=tmp_path)
    refused(result, "catalog/bad\\xff.yaml:1: images: must be a list of images")


# --- item 15: deep nesting with aliases is named for what it is ----------------------------------

def test_deep_nesting_in_a_file_with_aliases_says_so(tmp_path: Path, catalog: Path) -> None:
    depth = 3000
    (catalog / "deep.yaml").write_text(
        "x: &a 1\nimages:\n  - name: n\n    properties: {k: *a}\n"
        f"deep: {'[' * depth}{']' * depth}\n")
    result = reconcile("validate", cwd=tmp_path)
    refused(result, f"catalog/deep.yaml:5: is nested more than {MAX_DEPTH} levels deep")
    assert "alias" not in result.stderr


def test_deep_nesting_without_aliases_is_a_clean_error_too(tmp_path: Path,
                                                           catalog: Path) -> None:
    depth = 3000
    (catalog / "deep.yaml").write_text(f"images: {'[' * depth}{']' * depth}\n")
    refused(reconcile("validate", cwd=tmp_path), "catalog/deep.yaml:1:",
            "exceeded maximum nesting depth")


# --- item 12: state files that are not what they say ------------------------------------------

@pytest.fixture
def other_columns(tmp_path: Path) -> Path:
    """A file with reconcile's table names and schema version, but other columns."""
    state = tmp_path / "other.db"
    conn = sqlite3.connect(state)
    for table in ("meta", "images", "runs", "journal", "applied_plans"):
        conn.execute(f"CREATE TABLE {table} (a TEXT, b TEXT)")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    return state


@pytest.mark.parametrize("command", [
    ["plan"], ["history"], ["state", "list"], ["state", "show", "alpha"],
    ["state", "forget", "alpha"],
    ["apply", "--yes", "--endpoint", "http://127.0.0.1:9", "--no-refresh"],
], ids=" ".join)
def test_state_file_with_other_columns_is_refused_untouched(
        command: list[str], other_columns: Path, catalog: Path, tmp_path: Path,
        file_sha256: Callable[[Path], str]) -> None:
    before = file_sha256(other_columns)
    result = reconcile(*command, "--state", other_columns, cwd=tmp_path)
    refused(result, f"state file {other_columns} is not a reconcile state file of schema "
                    "version 3, or it is damaged: table meta lacks the columns key, value")
    assert file_sha256(other_columns) == before


@pytest.fixture
def damaged(tmp_path: Path, catalog: Path, make_state: Callable[..., Path],
            make_record: Callable[..., object]) -> Path:
    """A real state file whose images table's page is overwritten in the middle of the file."""
    from reconciler.catalog import load_catalog
    from reconciler.profiles import IMS

    spec = load_catalog(catalog, IMS).images[0]
    state = make_state(tmp_path / "state.db", [make_record(spec, "id-1")])
    conn = sqlite3.connect(state)
    page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'images'").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(state, "r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\xde\xad\xbe\xef" * 64)
    return state


@pytest.mark.parametrize("command", [
    ["plan"], ["state", "list"], ["state", "show", "alpha"],
    ["apply", "--yes", "--endpoint", "http://127.0.0.1:9", "--no-refresh"],
], ids=" ".join)
def test_damaged_state_file_is_one_clear_error(command: list[str], damaged: Path,
                                               tmp_path: Path,
                                               file_sha256: Callable[[Path], str]) -> None:
    before = file_sha256(damaged)
    result = reconcile(*command, "--state", damaged, cwd=tmp_path)
    refused(result, f"state file {damaged} is damaged (database disk image is malformed); "
                    "restore it from a backup")
    assert len(result.stderr.strip().splitlines()) == 1
    assert file_sha256(damaged) == before


# --- item 12: sandbox on a busy port ---------------------------------------------------------

def test_sandbox_on_a_busy_port_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = reconcile("sandbox", "--port", port, cwd=tmp_path, timeout=30)
    refused(result, f"error: cannot listen on 127.0.0.1 port {port}: Address already in use; "
                    "choose another --port, or --port 0 for a free one")
    assert len(result.stderr.strip().splitlines()) == 1


# --- item 15: killed runs are called interrupted --------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def server(sandbox: Callable[..., Any]) -> Any:
    return sandbox()


@pytest.fixture
def killed_run(tmp_path: Path, catalog: Path, make_state: Callable[..., Path],
               server: Any) -> Path:
    """A state file whose last run (against ``server``) was killed: still `running`, its
    process gone. (Runs of a target are marked under that target's lock.)"""
    state = make_state(tmp_path / "state.db")
    conn = sqlite3.connect(state)
    with conn:
        conn.execute("INSERT INTO runs (id, mode, target, profile, started_at, host, pid, "
                     "outcome, created, adopted, failed, summary_json) VALUES ('run-killed', "
                     "'apply', ?, 'ims', '2024-01-01T00:00:00Z', ?, ?, 'running', 0, 0, 0, '{}')",
                     (server.url, socket.gethostname(), dead_pid()))
    conn.close()
    return state


def test_history_says_a_killed_run_was_interrupted(killed_run: Path, tmp_path: Path) -> None:
    result = reconcile("history", "--state", killed_run, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first, note = result.stdout.splitlines()[:2]
    assert "run-killed  interrupted" in first
    assert "is gone: killed before it finished" in note
    assert '"process_gone": true' in reconcile("history", "--json", "--state", killed_run,
                                               cwd=tmp_path).stdout


def test_next_apply_records_a_killed_run_as_interrupted(killed_run: Path, tmp_path: Path,
                                                        server: Any) -> None:
    result = reconcile("apply", "--yes", "--endpoint", server.url, "--state", killed_run,
                       "--catalog", "catalog", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    conn = sqlite3.connect(killed_run)
    row = conn.execute("SELECT outcome, error FROM runs WHERE id = 'run-killed'").fetchone()
    conn.close()
    assert row[0] == "interrupted"
    assert row[1].startswith("killed before it finished (found by run ")
    shown = reconcile("history", "--state", killed_run, cwd=tmp_path).stdout
    assert "run-killed  interrupted" in shown
    assert "    killed before it finished (found by run " in shown


def test_refused_saved_plan_creates_no_state_file(tmp_path: Path, catalog: Path,
                                                  server: Any) -> None:
    made = reconcile("plan", "--endpoint", server.url, "--state", "state.db", "--out",
                     "plan.json", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    write_images(catalog, ["alpha", "bravo"])  # the catalog moves on
    result = reconcile("apply", "plan.json", "--yes", "--endpoint", server.url, "--state",
                       "state.db", cwd=tmp_path)
    refused(result, "the saved plan is stale; nothing was done")
    assert not (tmp_path / "state.db").exists()
    assert server.images() == []


def test_saved_plan_without_a_state_file_still_applies(tmp_path: Path, catalog: Path,
                                                       server: Any) -> None:
    reconcile("plan", "--endpoint", server.url, "--state", "state.db", "--out", "plan.json",
              cwd=tmp_path)
    result = reconcile("apply", "plan.json", "--yes", "--endpoint", server.url, "--state",
                       "state.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [i["name"] for i in server.images()] == ["alpha"]
    assert server.request_count[("GET", "images")] <= 2  # the cloud read once per check
