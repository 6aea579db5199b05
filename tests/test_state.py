"""The state stores: migrations, refusal of newer or foreign stores, revisions, atomic writes,
the write lock across processes, and the read-only ``state`` / ``history`` commands.

Every test of what a store does takes ``state_location`` and runs once per store (an SQLite
file, a PostgreSQL database); tests of one store's own files or server are marked by name.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pg_server
import pytest
from click.testing import Result
from sqlite_utils import Database

from reconciler.errors import CatalogError, StateError, StateLockedError, StateVersionError
from reconciler.models import ImageSpec, Record
from reconciler.operations import make_plan
from reconciler.sqlstore import SqlStore
from reconciler.state import (
    MIGRATIONS,
    SCHEMA_VERSION,
    LockRequest,
    SqliteStore,
    StateStore,
    is_url,
    open_for_write,
    open_readonly,
)

TARGET = "http://127.0.0.1:9999"
V1_ROW = ("http://127.0.0.1:9999", "old-image", "img-0001", "d" * 64, '{"name": "old-image"}',
          '{"id": "img-0001", "status": "active"}', "active", "2023-01-01T00:00:00Z",
          "2023-01-01T00:00:01Z", "2023-01-01T00:00:02Z", "run-v1")

#: Every refusal of a file must hold for both ways of opening it.
EACH_OPENER = pytest.mark.parametrize(
    "opener", [open_readonly, open_for_write], ids=["readonly", "for_write"])


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def v1_file(tmp_path: Path) -> Path:
    """A state file exactly as reconcile with schema 1 wrote it, holding one record."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    MIGRATIONS[0](Database(conn))
    conn.execute("INSERT INTO images (target, name, image_id, spec_digest, request_json, "
                 "response_json, status, created_at, updated_at, recorded_at, run_id) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", V1_ROW)
    conn.commit()
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    return path


@pytest.fixture
def newer_file(tmp_path: Path) -> Path:
    """A state file from a reconcile one schema version ahead of this one."""
    path = tmp_path / "newer.db"
    open_for_write(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    return path


@pytest.fixture
def store(state_location: str) -> Iterator[StateStore]:
    s = open_for_write(state_location, LockRequest(TARGET))
    yield s
    s.close()


def a_record(name: str = "a", image_id: str = "img-a") -> Record:
    spec = ImageSpec(name=name, min_disk=40)
    return Record.of(name=name, image_id=image_id, spec_digest=spec.digest, request=spec.body(),
                     response={"id": image_id}, status="queued",
                     recorded_at="2024-05-01T00:00:00Z")


# --- migrations -----------------------------------------------------------------------------

def test_open_for_write_migrates_v1_to_current_schema(v1_file: Path) -> None:
    SqliteStore.open_for_write(v1_file).close()
    assert user_version(v1_file) == SCHEMA_VERSION


def test_migration_keeps_v1_records(v1_file: Path) -> None:
    store = SqliteStore.open_for_write(v1_file)
    try:
        rec = store.record(TARGET, "old-image")
    finally:
        store.close()
    assert rec is not None
    assert (rec.image_id, rec.status, rec.created_at, rec.origin) == (
        "img-0001", "active", "2023-01-01T00:00:00Z", "created")


def test_migration_leaves_byte_identical_backup(
        v1_file: Path, file_sha256: Callable[[Path], str]) -> None:
    original = file_sha256(v1_file)
    SqliteStore.open_for_write(v1_file).close()
    backups = list(v1_file.parent.glob(f"{v1_file.name}.bak-v1-*"))
    assert len(backups) == 1
    assert file_sha256(backups[0]) == original
    assert user_version(backups[0]) == 1


def test_open_readonly_reads_v1_without_changing_it(
        v1_file: Path, file_sha256: Callable[[Path], str]) -> None:
    before = file_sha256(v1_file)
    store = SqliteStore.open_readonly(v1_file)
    assert store is not None
    try:
        records = store.records(TARGET)
        assert store.revision() == 0
    finally:
        store.close()
    assert records["old-image"].image_id == "img-0001"
    assert file_sha256(v1_file) == before
    assert list(v1_file.parent.glob("*.bak-*")) == []


def test_plan_on_v1_file_leaves_it_untouched(
        v1_file: Path, write_catalog: Callable[..., Path], run_cli: Callable[..., Result],
        file_sha256: Callable[[Path], str]) -> None:
    before = file_sha256(v1_file)
    root = write_catalog({"a.yaml": "images:\n  - name: new\n    min_disk: 4\n"})
    result = run_cli(["plan", "--catalog", root, "--state", v1_file])
    assert result.exit_code == 0, result.output
    assert "old-image" in result.stdout
    assert file_sha256(v1_file) == before


@EACH_OPENER
def test_newer_schema_is_refused_naming_both_versions(
        newer_file: Path, opener: Callable[[Path], object],
        file_sha256: Callable[[Path], str]) -> None:
    before = file_sha256(newer_file)
    with pytest.raises(StateVersionError) as excinfo:
        opener(newer_file)
    message = str(excinfo.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"up to {SCHEMA_VERSION}" in message
    assert file_sha256(newer_file) == before
    assert user_version(newer_file) == SCHEMA_VERSION + 1
    assert list(newer_file.parent.glob("*.bak-*")) == []


def test_plan_refuses_newer_state_file_with_exit_1(
        newer_file: Path, write_catalog: Callable[..., Path],
        run_cli: Callable[..., Result], file_sha256: Callable[[Path], str]) -> None:
    before = file_sha256(newer_file)
    root = write_catalog({"a.yaml": "images:\n  - name: a\n    min_disk: 4\n"})
    result = run_cli(["plan", "--catalog", root, "--state", newer_file])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"error: state file {newer_file} has schema version {SCHEMA_VERSION + 1}" \
        in result.stderr
    assert "upgrade reconcile" in result.stderr
    assert file_sha256(newer_file) == before


# --- files that are not state files ---------------------------------------------------------

@pytest.fixture
def not_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 20)
    return path


@pytest.fixture
def foreign_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.commit()
    conn.close()
    return path


@EACH_OPENER
def test_non_sqlite_file_is_a_clear_state_error(
        not_sqlite: Path, opener: Callable[[Path], object],
        file_sha256: Callable[[Path], str]) -> None:
    before = file_sha256(not_sqlite)
    with pytest.raises(StateError, match="not a database"):
        opener(not_sqlite)
    assert file_sha256(not_sqlite) == before


@EACH_OPENER
def test_foreign_sqlite_file_is_refused_naming_its_tables(
        foreign_sqlite: Path, opener: Callable[[Path], object],
        file_sha256: Callable[[Path], str]) -> None:
    before = file_sha256(foreign_sqlite)
    with pytest.raises(StateError, match=r"not a reconcile state file \(it has tables "
                                         r"invoices\)"):
        opener(foreign_sqlite)
    assert file_sha256(foreign_sqlite) == before


@pytest.mark.parametrize("fixture", ["not_sqlite", "foreign_sqlite"])
def test_plan_with_a_file_that_is_not_a_state_file_exits_1(
        fixture: str, request: pytest.FixtureRequest, write_catalog: Callable[..., Path],
        run_cli: Callable[..., Result]) -> None:
    path: Path = request.getfixturevalue(fixture)
    root = write_catalog({"a.yaml": "images:\n  - name: a\n    min_disk: 4\n"})
    result = run_cli(["plan", "--catalog", root, "--state", path])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"error: {path} is" in result.stderr
    assert "not a reconcile state file" in result.stderr


def test_state_file_missing_tables_is_reported_damaged(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStore.open_for_write(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE journal")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="damaged"):
        SqliteStore.open_readonly(path)


def test_open_readonly_on_missing_file_returns_none_and_creates_nothing(tmp_path: Path) -> None:
    assert SqliteStore.open_readonly(tmp_path / "absent.db") is None
    assert list(tmp_path.iterdir()) == []


# --- writes ---------------------------------------------------------------------------------

def test_new_store_is_at_current_schema_with_revision_0(
        state_location: str, store: StateStore) -> None:
    if is_url(state_location):
        assert pg_server.execute(state_location, "SELECT version FROM reconcile.schema_info") \
            == [(SCHEMA_VERSION,)]
    else:
        assert user_version(Path(state_location)) == SCHEMA_VERSION
    assert store.revision() == 0


def test_revision_increments_once_per_write(store: StateStore) -> None:
    store.save_record(TARGET, a_record("a"))
    assert store.revision() == 1
    store.journal_open(nonce="n1", target=TARGET, name="b", run_id="r1", request={"name": "b"})
    assert store.revision() == 2
    store.save_record(TARGET, a_record("b", "img-b"), nonce="n1")
    assert store.revision() == 3
    assert store.forget(TARGET, "a") is True
    assert store.revision() == 4


def journal_row(location: str, nonce: str) -> tuple[object, ...]:
    sql = "SELECT state, image_id FROM {}journal WHERE nonce = ?"
    if is_url(location):
        (row,) = pg_server.execute(location, sql.format("reconcile.").replace("?", "%s"),
                                   (nonce,))
        return row
    conn = sqlite3.connect(location)
    try:
        return tuple(conn.execute(sql.format(""), (nonce,)).fetchone())
    finally:
        conn.close()


def test_save_record_closes_its_journal_entry(state_location: str, store: StateStore) -> None:
    store.journal_open(nonce="n1", target=TARGET, name="a", run_id="r1", request={"name": "a"})
    assert [p.name for p in store.pending(TARGET)] == ["a"]
    store.save_record(TARGET, a_record("a"), nonce="n1")
    assert store.pending(TARGET) == []
    assert store.record(TARGET, "a") == a_record("a")
    assert journal_row(state_location, "n1") == ("done", "img-a")


def test_pending_creates_and_pending_updates_are_each_their_own_kind(store: StateStore) -> None:
    store.journal_open(nonce="c1", target=TARGET, name="a", run_id="r1", request={"name": "a"})
    store.journal_open(nonce="u1", target=TARGET, name="b", run_id="r1", kind="update",
                       image_id="img-b", request={"patch": [], "api": "glance"})
    store.journal_open(nonce="c2", target="elsewhere", name="c", run_id="r1",
                       request={"name": "c"})
    assert [(p.nonce, p.name) for p in store.pending(TARGET)] == [("c1", "a")]
    [update] = store.pending_updates(TARGET)
    assert (update.nonce, update.name, update.image_id) == ("u1", "b", "img-b")
    assert update.intent == {"patch": [], "api": "glance"}


def refuse_journal_updates(location: str) -> None:
    """Make every UPDATE of the journal fail, as a full disk would."""
    if is_url(location):
        pg_server.execute(location, "CREATE FUNCTION reconcile.refuse() RETURNS trigger "
                          "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk gone'; END $$")
        pg_server.execute(location, "CREATE TRIGGER refuse BEFORE UPDATE ON reconcile.journal "
                          "FOR EACH ROW EXECUTE FUNCTION reconcile.refuse()")
        return
    conn = sqlite3.connect(location)
    conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON journal "
                 "BEGIN SELECT RAISE(ABORT, 'disk gone'); END")
    conn.commit()
    conn.close()


def test_save_record_and_journal_close_are_one_transaction(
        state_location: str, store: StateStore) -> None:
    store.journal_open(nonce="n1", target=TARGET, name="a", run_id="r1", request={"name": "a"})
    revision = store.revision()
    refuse_journal_updates(state_location)  # the second statement of the transaction fails
    with pytest.raises(StateError, match="disk gone"):
        store.save_record(TARGET, a_record("a"), nonce="n1")
    assert store.record(TARGET, "a") is None
    assert [p.name for p in store.pending(TARGET)] == ["a"]
    assert store.revision() == revision


def test_records_are_kept_per_target(store: StateStore) -> None:
    store.save_record(TARGET, a_record("a", "img-1"))
    store.save_record("https://other.example", a_record("a", "img-2"))
    assert store.record(TARGET, "a").image_id == "img-1"  # type: ignore[union-attr]
    assert store.targets() == ["http://127.0.0.1:9999", "https://other.example"]
    assert [(t, r.image_id) for t, r in store.records_named("a")] == [
        (TARGET, "img-1"), ("https://other.example", "img-2")]


def test_saving_a_record_again_replaces_it(store: StateStore) -> None:
    store.save_record(TARGET, a_record("a", "img-1"))
    store.save_record(TARGET, a_record("a", "img-2"))
    assert [(t, r.image_id) for t, r in store.all_records()] == [(TARGET, "img-2")]


def test_readonly_store_refuses_writes(state_location: str, store: StateStore) -> None:
    reader = open_readonly(state_location)
    assert reader is not None
    try:
        with pytest.raises(StateError, match="read-only"):
            reader.save_record(TARGET, a_record())
    finally:
        reader.close()


def test_runs_and_applied_plans_round_trip(store: StateStore) -> None:
    store.start_run("r1", target=TARGET, profile="ims", catalog_digest="c" * 64,
                    tool_version="0.1.0", started_at="2024-05-01T07:59:00Z")
    store.mark_plan_applied("plan-1", "r1")
    store.finish_run("r1", summary={"create": 1}, created=1, adopted=0, failed=0,
                     outcome="success")
    (run,) = store.runs()
    assert (run["id"], run["outcome"], run["created"], run["summary"]) == (
        "r1", "success", 1, {"create": 1})
    applied = store.plan_applied("plan-1")
    assert applied is not None and applied["run_id"] == "r1" and applied["applied_at"]
    assert store.plan_applied("plan-2") is None


def test_a_run_left_running_is_marked_interrupted_by_the_next_of_its_target(
        store: StateStore) -> None:
    for run_id, target in (("r1", TARGET), ("r2", "https://other.example")):
        store.start_run(run_id, target=target, profile="ims", catalog_digest="c" * 64,
                        tool_version="0.1.0", started_at=f"2024-05-01T07:5{run_id[1]}:00Z")
    store.start_run("r3", target=TARGET, profile="ims", catalog_digest="c" * 64,
                    tool_version="0.1.0", started_at="2024-05-01T08:00:00Z")
    outcomes = {r["id"]: r["outcome"] for r in store.runs()}
    # Another target's run may well be running now, under its own lock.
    assert outcomes == {"r1": "interrupted", "r2": "running", "r3": "running"}


def test_dump_and_load_copy_every_row(store: StateStore, tmp_path: Path) -> None:
    store.save_record(TARGET, a_record("a"))
    store.journal_open(nonce="n1", target=TARGET, name="b", run_id="r1", request={"name": "b"})
    store.start_run("r1", target=TARGET, profile="ims", catalog_digest="c" * 64,
                    tool_version="0.1.0", started_at="2024-05-01T07:59:00Z")
    other = open_for_write(tmp_path / "copy.db")
    try:
        other.load(store.dump())
        assert other.dump() == store.dump()
        assert other.pending(TARGET)[0].name == "b"
    finally:
        other.close()


def test_server_rules_are_kept_per_target_and_kind_without_moving_the_revision(
        state_location: str, store: StateStore) -> None:
    store.save_record(TARGET, a_record("a"))
    revision = store.revision()
    store.save_server_info(TARGET, "image_schema", url=f"{TARGET}/v2/schemas/image",
                           body={"properties": {"disk_format": {"enum": ["raw"]}}},
                           read_at="2026-12-01T10:00:00Z")
    store.save_server_info(TARGET, "image_schema", url=f"{TARGET}/v2/schemas/image",
                           body={"properties": {}}, read_at="2026-12-02T10:00:00Z")
    store.save_server_info("https://other", "os_versions", url="https://other/v1", body=[],
                           read_at="2026-12-03T10:00:00Z")
    assert store.revision() == revision  # a cache, not a record: saved plans stay valid
    assert store.server_info(TARGET, "image_schema") == {
        "url": f"{TARGET}/v2/schemas/image", "body": {"properties": {}},
        "read_at": "2026-12-02T10:00:00Z"}
    assert store.server_info(TARGET, "os_versions") is None
    assert store.server_info_targets("os_versions") == ["https://other"]
    reader = open_readonly(state_location)
    assert reader is not None
    try:
        assert reader.server_info("https://other", "os_versions") == {
            "url": "https://other/v1", "body": [], "read_at": "2026-12-03T10:00:00Z"}
    finally:
        reader.close()


# --- the write lock ----------------------------------------------------------------------------

HOLDER = """
import sys, time
from reconciler.state import LockRequest, open_for_write
store = open_for_write(sys.argv[1], LockRequest(sys.argv[2], "apply"))
print("locked", flush=True)
time.sleep(60)
"""


@contextlib.contextmanager
def holding(location: str, target: str = TARGET) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the write lock of ``location`` for ``target``."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, location, target],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def lock_holder(state_location: str) -> Iterator[subprocess.Popen[str]]:
    with holding(state_location) as proc:
        yield proc


def test_second_writer_from_another_process_fails_at_once_naming_the_holder(
        state_location: str, lock_holder: subprocess.Popen[str]) -> None:
    started = time.monotonic()
    with pytest.raises(StateLockedError) as excinfo:
        open_for_write(state_location, LockRequest(TARGET))
    assert time.monotonic() - started < 5
    holder = excinfo.value.holder
    assert (holder["pid"], holder["host"], holder["operation"]) == (
        lock_holder.pid, socket.gethostname(), "apply")
    assert holder["user"] and holder["since"]
    message = str(excinfo.value)
    assert f"apply (pid {lock_holder.pid} on host {socket.gethostname()}, user " in message
    assert "--lock-timeout" in message


def test_lock_is_released_when_holder_is_killed(
        state_location: str, lock_holder: subprocess.Popen[str]) -> None:
    lock_holder.send_signal(signal.SIGKILL)
    assert lock_holder.wait(timeout=10) == -signal.SIGKILL
    open_for_write(state_location, LockRequest(TARGET)).close()


def test_a_writer_waits_up_to_the_lock_timeout_for_the_holder(state_location: str) -> None:
    with holding(state_location) as proc:
        threading.Timer(1.0, proc.kill).start()
        started = time.monotonic()
        store = open_for_write(state_location, LockRequest(TARGET, timeout_s=30))
        store.close()
    assert 0.5 < time.monotonic() - started < 30


def test_a_lock_timeout_that_runs_out_names_the_holder(
        state_location: str, lock_holder: subprocess.Popen[str]) -> None:
    started = time.monotonic()
    with pytest.raises(StateLockedError, match=rf"pid {lock_holder.pid} .*waited 0.5s"):
        open_for_write(state_location, LockRequest(TARGET, timeout_s=0.5))
    assert time.monotonic() - started >= 0.5


def test_lock_can_be_taken_again_after_release(state_location: str) -> None:
    open_for_write(state_location, LockRequest(TARGET)).close()
    open_for_write(state_location, LockRequest(TARGET)).close()


def test_readers_take_no_lock(state_location: str,
                              lock_holder: subprocess.Popen[str]) -> None:
    reader = open_readonly(state_location)
    assert reader is not None
    reader.close()


def test_postgresql_writers_of_different_targets_do_not_block_each_other(pg_url: str) -> None:
    with holding(pg_url, TARGET):
        other = open_for_write(pg_url, LockRequest("https://other.example"))
        other.save_record("https://other.example", a_record())
        other.close()


def test_postgresql_whole_store_lock_waits_for_every_writer(pg_url: str) -> None:
    with holding(pg_url, TARGET) as proc, pytest.raises(StateLockedError,
                                                       match=rf"pid {proc.pid}"):
        open_for_write(pg_url, LockRequest("", "state copy"))
    open_for_write(pg_url, LockRequest("", "state copy")).close()


def test_sqlite_lock_is_one_per_file_whatever_the_target(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    with holding(path, TARGET), pytest.raises(StateLockedError):
        open_for_write(path, LockRequest("https://other.example"))


# --- the SQLite lock: one per file, whatever names it; a lock file that clobbers nothing --------

@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_sqlite_lock_holds_through_every_name_of_the_file(tmp_path: Path, link: str) -> None:
    real = tmp_path / "real.db"
    open_for_write(real).close()
    alias = tmp_path / "alias.db"
    (alias.symlink_to if link == "symlink" else alias.hardlink_to)(real)
    with holding(str(real)) as proc:
        with pytest.raises(StateLockedError) as excinfo:
            open_for_write(alias)
        if link == "symlink":  # the lock file sits beside the real file: the holder is named
            assert excinfo.value.pid == proc.pid


def test_sqlite_lock_file_that_is_a_symlink_is_neither_followed_nor_truncated(
        tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "st.db.lock").symlink_to(victim)
    with pytest.raises(StateError, match="symbolic link"):
        open_for_write(tmp_path / "st.db")
    assert victim.read_text() == "precious\n"


def test_sqlite_lock_file_that_is_a_hard_link_is_not_written(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "st.db.lock").hardlink_to(victim)
    with pytest.raises(StateError, match="not a lock file reconcile wrote"):
        open_for_write(tmp_path / "st.db")
    assert victim.read_text() == "precious\n"


def test_sqlite_lock_file_is_rewritten_in_place_never_truncated(tmp_path: Path) -> None:
    path = tmp_path / "st.db"
    open_for_write(path).close()
    lock = Path(f"{path}.lock")
    inode = lock.stat().st_ino
    open_for_write(path).close()
    assert lock.stat().st_ino == inode
    assert lock.read_bytes().strip() == b""  # released: nobody named


def test_lock_that_cannot_be_created_is_a_state_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Path(f"{path}.lock").mkdir()  # as root, an unwritable directory would not stop us
    with pytest.raises(StateError, match="cannot create the lock file"):
        open_for_write(path)


MIGRATE_SLOWLY = """
import sys, time
from reconciler import state
step = state.MIGRATIONS[1]
def slow(db):
    print("migrating", flush=True)
    time.sleep(60)
state.MIGRATIONS[1] = slow
state.open_for_write(sys.argv[1])
"""


def test_sqlite_migration_runs_under_the_lock(v1_file: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", MIGRATE_SLOWLY, str(v1_file)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "migrating"
        with pytest.raises(StateLockedError) as excinfo:
            open_for_write(v1_file)
        assert excinfo.value.pid == proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert user_version(v1_file) == 1  # the killed migration left the old file intact


# --- PostgreSQL: what the server holds and says ---------------------------------------------------

def make_pg_at_v1(url: str) -> None:
    from reconciler import pgstate
    statements = [f"CREATE SCHEMA {pgstate.SCHEMA}", f"SET search_path TO {pgstate.SCHEMA}",
                  "CREATE TABLE schema_info (version integer NOT NULL)",
                  "INSERT INTO schema_info VALUES (1)", *pgstate.MIGRATIONS[0],
                  "INSERT INTO images (target, name, image_id, spec_digest, request_json, "
                  "response_json, status, created_at, updated_at, recorded_at, run_id) VALUES "
                  + str(V1_ROW)]
    pg_server.execute(url, "; ".join(statements))


def test_postgresql_at_v1_is_migrated_by_a_writer_keeping_its_records(pg_url: str) -> None:
    make_pg_at_v1(pg_url)
    with pytest.raises(StateVersionError, match=r"schema version 1; .*next `reconcile apply`"):
        open_readonly(pg_url)
    store = open_for_write(pg_url, LockRequest(TARGET))
    try:
        rec = store.record(TARGET, "old-image")
    finally:
        store.close()
    assert rec is not None and (rec.image_id, rec.origin) == ("img-0001", "created")
    assert pg_server.execute(pg_url, "SELECT version FROM reconcile.schema_info") == [
        (SCHEMA_VERSION,)]


@EACH_OPENER
def test_postgresql_newer_schema_is_refused(
        pg_url: str, opener: Callable[[str], object]) -> None:
    open_for_write(pg_url).close()
    pg_server.execute(pg_url, "UPDATE reconcile.schema_info SET version = version + 1")
    with pytest.raises(StateVersionError, match=f"schema version {SCHEMA_VERSION + 1}, but "
                                                f"this reconcile understands up to "
                                                f"{SCHEMA_VERSION}"):
        opener(pg_url)


@EACH_OPENER
def test_postgresql_foreign_tables_are_refused_and_left_alone(
        pg_url: str, opener: Callable[[str], object]) -> None:
    pg_server.execute(pg_url, "CREATE SCHEMA reconcile; "
                      "CREATE TABLE reconcile.invoices (id integer)")
    with pytest.raises(StateError, match=r"tables \(invoices\) reconcile did not make"):
        opener(pg_url)
    assert pg_server.execute(pg_url, "SELECT count(*) FROM pg_tables "
                             "WHERE schemaname = 'reconcile'") == [(1,)]


def test_postgresql_empty_database_reads_as_no_state_and_is_not_changed(pg_url: str) -> None:
    assert open_readonly(pg_url) is None
    assert pg_server.execute(pg_url, "SELECT count(*) FROM pg_namespace "
                             "WHERE nspname = 'reconcile'") == [(0,)]


@EACH_OPENER
def test_postgresql_unreachable_server_is_one_clear_error(
        opener: Callable[[str], object]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://me:hunter2@127.0.0.1:{port}/state?connect_timeout=3"
    with pytest.raises(StateError) as excinfo:
        opener(url)
    message = str(excinfo.value)
    assert "cannot be reached" in message
    assert "hunter2" not in message and "me:***@" in message


def test_postgresql_refused_login_is_one_clear_error(pg_url: str) -> None:
    pg_server.execute(pg_url, "CREATE ROLE outsider NOLOGIN PASSWORD 'hunter2'")
    url = pg_server.as_user(pg_url, "outsider", "hunter2")
    with pytest.raises(StateError) as excinfo:
        open_for_write(url)
    message = str(excinfo.value)
    assert "refused the login" in message
    assert "hunter2" not in message


def test_postgresql_read_only_role_can_read_but_not_write(pg_url: str) -> None:
    store = open_for_write(pg_url, LockRequest(TARGET))
    store.save_record(TARGET, a_record())
    store.close()
    pg_server.execute(pg_url, "CREATE ROLE reader LOGIN; GRANT USAGE ON SCHEMA reconcile "
                      "TO reader; GRANT SELECT ON ALL TABLES IN SCHEMA reconcile TO reader")
    url = pg_server.as_user(pg_url, "reader")
    reader = open_readonly(url)
    assert reader is not None
    try:
        assert list(reader.records(TARGET)) == ["a"]
    finally:
        reader.close()
    with pytest.raises(StateError):
        open_for_write(url, LockRequest(TARGET)).save_record(TARGET, a_record("b"))


def test_postgresql_dropped_connection_stops_writes_and_says_what_to_do(pg_url: str) -> None:
    store = open_for_write(pg_url, LockRequest(TARGET))
    try:
        pg_server.execute(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_locks "
                          "WHERE locktype = 'advisory' AND pid <> pg_backend_pid()")
        with pytest.raises(StateError, match=r"lost the connection .* run `reconcile apply` "
                                             r"again"):
            store.journal_open(nonce="n1", target=TARGET, name="a", run_id="r1",
                               request={"name": "a"})
    finally:
        store.close()
    # The lock went with the connection: the next writer gets it at once.
    open_for_write(pg_url, LockRequest(TARGET)).close()


# --- state list / show / history ----------------------------------------------------------------

READ_COMMANDS = [["state", "list"], ["state", "show", "a"], ["history"]]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c))
def test_read_command_on_missing_state_exits_1_and_creates_nothing(
        command: list[str], state_location: str, run_cli: Callable[..., Result]) -> None:
    result = run_cli([*command, "--state", state_location])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "does not exist yet" in result.stderr
    if is_url(state_location):
        assert open_readonly(state_location) is None
    else:
        assert not Path(state_location).exists()


@pytest.fixture
def populated(state_location: str, make_state: Callable[..., str],
              make_record: Callable[..., Record]) -> str:
    location = make_state(state_location, [
        make_record(ImageSpec(name="ubuntu-base", min_disk=40), "11111111-aaaa"),
        make_record(ImageSpec(name="centos-base", min_disk=40), "22222222-bbbb",
                    status="active"),
    ])
    store = open_for_write(location, LockRequest(TARGET))
    try:
        store.start_run("run-0001", target=TARGET, profile="ims", catalog_digest="c" * 64,
                        tool_version="0.1.0", started_at="2024-05-01T07:59:00Z")
        store.finish_run("run-0001", summary={"create": 2}, created=2, adopted=0, failed=0,
                         outcome="success")
    finally:
        store.close()
    return location


def test_state_list_prints_every_record(populated: str, run_cli: Callable[..., Result]) -> None:
    result = run_cli(["state", "list", "--state", populated])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split() == ["centos-base", "22222222-bbbb", "active",
                                "2024-05-01T08:00:00Z", TARGET]
    assert lines[1].split()[:3] == ["ubuntu-base", "11111111-aaaa", "queued"]
    assert "2 images recorded" in result.stderr


def test_state_show_prints_ids_timestamps_and_server_fields(
        populated: str, run_cli: Callable[..., Result]) -> None:
    result = run_cli(["state", "show", "ubuntu-base", "--state", populated])
    assert result.exit_code == 0, result.output
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip()
              for line in result.stdout.splitlines() if ":" in line}
    assert fields["image_id"] == "11111111-aaaa"
    assert fields["status"] == "queued"
    assert fields["created_at"] == "2024-05-01T08:00:00Z"
    assert fields["updated_at"] == "2024-05-01T08:00:00Z"
    assert fields["self"] == "/v2/images/11111111-aaaa"
    assert fields["file"] == "/v2/images/11111111-aaaa/file"
    assert fields["schema"] == "/v2/schemas/image"
    assert fields["owner"] == "0123456789abcdef0123456789abcdef"


def test_state_show_unknown_name_exits_1(populated: str, run_cli: Callable[..., Result]) -> None:
    result = run_cli(["state", "show", "nope", "--state", populated])
    assert result.exit_code == 1
    assert "no image named 'nope' is recorded" in result.stderr


def test_history_lists_runs(populated: str, run_cli: Callable[..., Result]) -> None:
    result = run_cli(["history", "--state", populated])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert line.startswith("2024-05-01T07:59:00Z  run-0001  success")
    assert "created 2, adopted 0, failed 0" in line


def snapshot(location: str) -> object:
    """Everything a store holds, to compare before and after."""
    if is_url(location):
        reader = open_readonly(location)
        assert reader is not None
        try:
            return reader.dump(), pg_server.execute(location, "TABLE reconcile.locks")
        finally:
            reader.close()
    return Path(location).read_bytes()


def test_read_commands_do_not_change_the_state(
        populated: str, run_cli: Callable[..., Result]) -> None:
    before = snapshot(populated)
    for command in (["state", "list"], ["state", "show", "ubuntu-base"], ["history"]):
        assert run_cli([*command, "--state", populated]).exit_code == 0
    assert snapshot(populated) == before


def test_read_commands_work_while_a_writer_holds_the_lock(
        populated: str, run_cli: Callable[..., Result]) -> None:
    with holding(populated):
        for command in (["state", "list"], ["history"]):
            assert run_cli([*command, "--state", populated]).exit_code == 0


def test_concurrent_writes_all_land_through_shared_commits(store: StateStore) -> None:
    names = [f"img-{i:03d}" for i in range(200)]
    before = store.revision()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda n: store.save_record(TARGET, a_record(n, f"id-{n}")), names))
    records = store.records(TARGET)
    assert sorted(records) == names
    assert all(records[n].image_id == f"id-{n}" for n in names)
    assert before < store.revision() <= before + len(names)  # one bump per shared commit


def test_light_records_carry_only_ids_and_digests_and_records_of_reads_the_rest(
        store: StateStore) -> None:
    store.save_record(TARGET, a_record("a", "img-a"))
    store.save_record(TARGET, a_record("b", "img-b"))
    light = store.records(TARGET, full=False)
    assert {n: (r.image_id, r.spec_digest) for n, r in light.items()} == {
        n: (r.image_id, r.spec_digest) for n, r in store.records(TARGET).items()}
    assert light["a"].request == {}
    assert store.records_of(TARGET, ["b"])["b"].request == a_record("b").request


def test_every_sqlite_migration_has_its_postgresql_twin() -> None:
    from reconciler import pgstate
    assert len(pgstate.MIGRATIONS) == len(MIGRATIONS) == SCHEMA_VERSION == pgstate.SCHEMA_VERSION


# --- state copy -----------------------------------------------------------------------------------

COPY_DIRECTIONS = pytest.mark.parametrize("direction", ["sqlite-to-postgresql",
                                                        "postgresql-to-sqlite"])


def stores_for(direction: str, tmp_path: Path, pg_url: str) -> tuple[str, str]:
    sqlite_path = str(tmp_path / "state.db")
    return (sqlite_path, pg_url) if direction.startswith("sqlite") else (pg_url, sqlite_path)


def fill(location: str) -> None:
    store = open_for_write(location, LockRequest(TARGET))
    try:
        for i in range(3):
            store.save_record(TARGET, a_record(f"img-{i}", f"id-{i}"))
        store.journal_open(nonce="n1", target=TARGET, name="img-9", run_id="r1",
                           request={"name": "img-9"})
        store.start_run("r1", target=TARGET, profile="ims", catalog_digest="c" * 64,
                        tool_version="0.1.0", started_at="2024-05-01T07:59:00Z")
        store.mark_plan_applied("plan-1", "r1")
    finally:
        store.close()


def dump_of(location: str) -> dict[str, list[tuple[object, ...]]]:
    store = open_readonly(location)
    assert store is not None
    try:
        return store.dump()
    finally:
        store.close()


@COPY_DIRECTIONS
def test_state_copy_moves_every_row_and_verifies_it(
        direction: str, tmp_path: Path, pg_url: str, run_cli: Callable[..., Result]) -> None:
    source, destination = stores_for(direction, tmp_path, pg_url)
    fill(source)
    result = run_cli(["state", "copy", source, destination])
    assert result.exit_code == 0, result.output
    assert ("3 images, 1 runs, 1 journal, 1 applied_plans, 0 server_info (row counts and "
            "digests verified)") in result.stdout
    assert dump_of(destination) == dump_of(source)
    reader = open_readonly(destination)
    assert reader is not None
    try:  # the copy is a working store: revision, pending create and applied plan came along
        assert reader.revision() == 6  # the six writes of fill(): saved plans still match
        assert [p.name for p in reader.pending(TARGET)] == ["img-9"]
        assert reader.plan_applied("plan-1") is not None
    finally:
        reader.close()


@COPY_DIRECTIONS
def test_state_copy_refuses_a_non_empty_destination_unless_forced(
        direction: str, tmp_path: Path, pg_url: str, run_cli: Callable[..., Result]) -> None:
    source, destination = stores_for(direction, tmp_path, pg_url)
    fill(source)
    store = open_for_write(destination, LockRequest(TARGET))
    store.save_record(TARGET, a_record("other", "id-x"))
    store.close()
    before = dump_of(destination)
    refused = run_cli(["state", "copy", source, destination])
    assert refused.exit_code == 1
    assert "is not empty (1 images); pass --force" in refused.stderr
    assert dump_of(destination) == before
    forced = run_cli(["state", "copy", source, destination, "--force"])
    assert forced.exit_code == 0, forced.output
    assert dump_of(destination) == dump_of(source)


def test_state_copy_waits_for_no_writer_and_names_one(
        tmp_path: Path, pg_url: str, run_cli: Callable[..., Result]) -> None:
    fill(pg_url)
    with holding(pg_url) as proc:
        result = run_cli(["state", "copy", pg_url, str(tmp_path / "copy.db")])
    assert result.exit_code == 1
    assert f"pid {proc.pid}" in result.stderr


def test_a_plan_reads_the_revision_before_the_records(
        state_location: str, store: StateStore, write_catalog: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Another apply records an image while a plan reads the state: the plan must carry the
    # revision from before that write, so that `apply PLAN` finds it stale rather than
    # creating the image a second time.
    store.save_record(TARGET, a_record("a"))
    before = store.revision()
    read = SqlStore.records

    def records_then_a_write(self: SqlStore, target: str, *, full: bool = True) -> Any:
        got = read(self, target, full=full)
        store.save_record(TARGET, a_record("b", "img-b"))
        return got

    monkeypatch.setattr(SqlStore, "records", records_then_a_write)
    catalog = write_catalog({"c.yaml": "images:\n  - name: a\n    min_disk: 40\n"
                                       "  - name: b\n    min_disk: 40\n"})
    result = make_plan(catalog, state_location, profile="glance")
    assert {c.name: c.action for c in result.plan.changes}["b"] == "create"
    assert store.revision() > before
    assert result.state_revision == before


def test_a_state_error_while_the_catalog_loads_comes_after_the_catalogs_problems(
        state_location: str, store: StateStore, write_catalog: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The plan reads a drifted image's full record as soon as its file is checked, while the
    # next files are still loading: a failure then is kept until the catalog is complete.
    store.save_record(TARGET, a_record("a"))  # recorded with a digest the catalog's lacks

    def unreadable(self: SqlStore, target: str, names: Any = None) -> Any:
        raise StateError("the full records cannot be read")

    monkeypatch.setattr(SqlStore, "records_of", unreadable)
    drifted = "images:\n  - name: a\n    min_disk: 50\n"
    bad = write_catalog({"a.yaml": drifted, "b.yaml": "images:\n  - name: b\n    min_disk: x\n"})
    with pytest.raises(CatalogError):
        make_plan(bad, state_location, profile="glance", endpoint=TARGET)
    good = write_catalog({"a.yaml": drifted, "b.yaml": "images: []\n"}, "good")
    with pytest.raises(StateError, match="full records cannot be read"):
        make_plan(good, state_location, profile="glance", endpoint=TARGET)


def test_a_catalog_error_is_reported_before_a_state_error(
        state_location: str, store: StateStore, write_catalog: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(self: SqlStore, target: str, *, full: bool = True) -> Any:
        raise StateError("the records cannot be read")

    monkeypatch.setattr(SqlStore, "records", unreadable)
    bad = write_catalog({"c.yaml": "images:\n  - name: a\n    min_disk: lots\n"})
    with pytest.raises(CatalogError):
        make_plan(bad, state_location, profile="glance")
    good = write_catalog({"c.yaml": "images:\n  - name: a\n    min_disk: 40\n"}, "good")
    with pytest.raises(StateError, match="cannot be read"):
        make_plan(good, state_location, profile="glance")
