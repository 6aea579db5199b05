"""The state store: migrations, refusal of newer or foreign files, revisions, atomic writes,
the apply lock across processes, and the read-only ``state`` / ``history`` commands."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import Result
from sqlite_utils import Database

from reconciler.errors import StateError, StateLockedError, StateVersionError
from reconciler.models import ImageSpec, Record
from reconciler.state import MIGRATIONS, SCHEMA_VERSION, StateStore

TARGET = "http://127.0.0.1:9999"
V1_ROW = ("http://127.0.0.1:9999", "old-image", "img-0001", "d" * 64, '{"name": "old-image"}',
          '{"id": "img-0001", "status": "active"}', "active", "2023-01-01T00:00:00Z",
          "2023-01-01T00:00:01Z", "2023-01-01T00:00:02Z", "run-v1")

#: Every refusal of a file must hold for both ways of opening it.
EACH_OPENER = pytest.mark.parametrize(
    "opener", [StateStore.open_readonly, StateStore.open_for_write], ids=["readonly", "for_write"])


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
    StateStore.open_for_write(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore.open_for_write(tmp_path / "state.db")
    yield s
    s.close()


def a_record(name: str = "a", image_id: str = "img-a") -> Record:
    spec = ImageSpec(name=name, min_disk=40)
    return Record.of(name=name, image_id=image_id, spec_digest=spec.digest, request=spec.body(),
                     response={"id": image_id}, status="queued",
                     recorded_at="2024-05-01T00:00:00Z")


# --- migrations -----------------------------------------------------------------------------

def test_open_for_write_migrates_v1_to_current_schema(v1_file: Path) -> None:
    StateStore.open_for_write(v1_file).close()
    assert user_version(v1_file) == SCHEMA_VERSION


def test_migration_keeps_v1_records(v1_file: Path) -> None:
    store = StateStore.open_for_write(v1_file)
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
    StateStore.open_for_write(v1_file).close()
    backups = list(v1_file.parent.glob(f"{v1_file.name}.bak-v1-*"))
    assert len(backups) == 1
    assert file_sha256(backups[0]) == original
    assert user_version(backups[0]) == 1


def test_open_readonly_reads_v1_without_changing_it(
        v1_file: Path, file_sha256: Callable[[Path], str]) -> None:
    before = file_sha256(v1_file)
    store = StateStore.open_readonly(v1_file)
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
    StateStore.open_for_write(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE journal")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="damaged"):
        StateStore.open_readonly(path)


def test_open_readonly_on_missing_file_returns_none_and_creates_nothing(tmp_path: Path) -> None:
    assert StateStore.open_readonly(tmp_path / "absent.db") is None
    assert list(tmp_path.iterdir()) == []


# --- writes ---------------------------------------------------------------------------------

def test_new_state_file_is_at_current_schema_with_revision_0(
        tmp_path: Path, store: StateStore) -> None:
    assert user_version(tmp_path / "state.db") == SCHEMA_VERSION
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


def test_save_record_closes_its_journal_entry(store: StateStore) -> None:
    store.journal_open(nonce="n1", target=TARGET, name="a", run_id="r1", request={"name": "a"})
    assert [p.name for p in store.pending(TARGET)] == ["a"]
    store.save_record(TARGET, a_record("a"), nonce="n1")
    assert store.pending(TARGET) == []
    assert store.record(TARGET, "a") == a_record("a")
    row = store.conn.execute("SELECT state, image_id FROM journal WHERE nonce = 'n1'").fetchone()
    assert row == ("done", "img-a")


def test_save_record_and_journal_close_are_one_transaction(store: StateStore) -> None:
    store.journal_open(nonce="n1", target=TARGET, name="a", run_id="r1", request={"name": "a"})
    revision = store.revision()
    # Make the second statement of the transaction (closing the journal entry) fail.
    store.conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON journal "
                       "BEGIN SELECT RAISE(ABORT, 'disk gone'); END")
    store.conn.commit()
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


def test_readonly_store_refuses_writes(tmp_path: Path, store: StateStore) -> None:
    reader = StateStore.open_readonly(tmp_path / "state.db")
    assert reader is not None
    try:
        with pytest.raises(StateError, match="read-only"):
            reader.save_record(TARGET, a_record())
    finally:
        reader.close()


# --- the apply lock ---------------------------------------------------------------------------

HOLDER = """
import sys, time
from reconciler.state import StateStore
store = StateStore.open_for_write(sys.argv[1])
with store.lock():
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def lock_holder(tmp_path: Path, store: StateStore) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock of the ``store`` fixture's file."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "state.db")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_second_lock_from_another_process_names_the_holder(
        store: StateStore, lock_holder: subprocess.Popen[str]) -> None:
    with pytest.raises(StateLockedError) as excinfo, store.lock():
        pass
    assert excinfo.value.pid == lock_holder.pid
    assert excinfo.value.host == socket.gethostname()
    assert f"pid {lock_holder.pid} on host {socket.gethostname()}" in str(excinfo.value)


def test_lock_is_released_when_holder_is_killed(
        store: StateStore, lock_holder: subprocess.Popen[str]) -> None:
    lock_holder.send_signal(signal.SIGKILL)
    assert lock_holder.wait(timeout=10) == -signal.SIGKILL
    entered = False
    with store.lock():
        entered = True
    assert entered


def test_lock_can_be_taken_again_after_release(store: StateStore) -> None:
    with store.lock():
        pass
    entered = False
    with store.lock():
        entered = True
    assert entered


# --- state list / show / history ----------------------------------------------------------------

READ_COMMANDS = [["state", "list"], ["state", "show", "a"], ["history"]]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c))
def test_read_command_on_missing_state_file_exits_1_and_creates_nothing(
        command: list[str], tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    missing = tmp_path / "absent.db"
    result = run_cli([*command, "--state", missing])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"error: state file {missing} does not exist yet" in result.stderr
    assert not missing.exists()


@pytest.fixture
def populated(tmp_path: Path, make_state: Callable[..., Path],
              make_record: Callable[..., Record]) -> Path:
    path = make_state(tmp_path / "state.db", [
        make_record(ImageSpec(name="ubuntu-base", min_disk=40), "11111111-aaaa"),
        make_record(ImageSpec(name="centos-base", min_disk=40), "22222222-bbbb",
                    status="active"),
    ])
    store = StateStore.open_for_write(path)
    try:
        store.start_run("run-0001", target=TARGET, profile="ims", catalog_digest="c" * 64,
                        tool_version="0.1.0", started_at="2024-05-01T07:59:00Z")
        store.finish_run("run-0001", summary={"create": 2}, created=2, adopted=0, failed=0,
                         outcome="success")
    finally:
        store.close()
    return path


def test_state_list_prints_every_record(populated: Path, run_cli: Callable[..., Result]) -> None:
    result = run_cli(["state", "list", "--state", populated])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split() == ["centos-base", "22222222-bbbb", "active",
                                "2024-05-01T08:00:00Z", TARGET]
    assert lines[1].split()[:3] == ["ubuntu-base", "11111111-aaaa", "queued"]
    assert "2 images recorded" in result.stderr


def test_state_show_prints_ids_timestamps_and_server_fields(
        populated: Path, run_cli: Callable[..., Result]) -> None:
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


def test_state_show_unknown_name_exits_1(populated: Path, run_cli: Callable[..., Result]) -> None:
    result = run_cli(["state", "show", "nope", "--state", populated])
    assert result.exit_code == 1
    assert "no image named 'nope' is recorded" in result.stderr


def test_history_lists_runs(populated: Path, run_cli: Callable[..., Result]) -> None:
    result = run_cli(["history", "--state", populated])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert line.startswith("2024-05-01T07:59:00Z  run-0001  success")
    assert "created 2, adopted 0, failed 0" in line


def test_read_commands_do_not_change_the_state_file(
        populated: Path, run_cli: Callable[..., Result],
        file_sha256: Callable[[Path], str]) -> None:
    before = file_sha256(populated)
    for command in (["state", "list"], ["state", "show", "ubuntu-base"], ["history"]):
        assert run_cli([*command, "--state", populated]).exit_code == 0
    assert file_sha256(populated) == before


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


def test_lock_that_cannot_be_created_is_a_state_error(store: StateStore) -> None:
    Path(f"{store.path}.lock").mkdir()  # as root, an unwritable directory would not stop us
    with pytest.raises(StateError, match="cannot create the lock file"), store.lock():
        pass
