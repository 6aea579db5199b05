"""The SQLite state store: image records, run history, the create journal and the apply lock.

One file, readable with plain ``sqlite3``. The schema version lives in ``PRAGMA user_version``
and changes only through ``MIGRATIONS``; a file from a newer reconcile is refused, an older
one is copied to a backup and migrated when it is opened for writing. Read-only commands open
the file with ``mode=ro`` and migrate an old file in memory, so reading never changes a byte.
Every write is one transaction that also bumps ``meta.revision``, which saved plans pin.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.errors import StateError, StateLockedError, StateVersionError
from reconciler.models import JournalState, PendingCreate, Record, RunOutcome, iso

DEFAULT_PATH = "reconcile-state.db"

Statement = tuple[str, tuple[Any, ...]]


@dataclass(eq=False)
class _Pending:
    """Statements waiting for the next group commit, and what became of them."""

    statements: tuple[Statement, ...]
    rowcounts: list[int] | None = None
    error: StateError | None = None


def _v1(db: Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("images").create({
        "target": str, "name": str, "image_id": str, "spec_digest": str,
        "request_json": str, "response_json": str, "status": str, "created_at": str,
        "updated_at": str, "recorded_at": str, "run_id": str,
    }, pk=("target", "name"), not_null={"image_id", "spec_digest", "recorded_at"})
    db.table("runs").create({
        "id": str, "mode": str, "target": str, "profile": str, "catalog_digest": str,
        "started_at": str, "finished_at": str, "host": str, "pid": int, "tool_version": str,
        "summary_json": str, "created": int, "failed": int, "outcome": str, "error": str,
    }, pk="id")
    db.table("journal").create({
        "nonce": str, "target": str, "name": str, "run_id": str, "request_json": str,
        "state": str, "started_at": str, "resolved_at": str, "image_id": str, "note": str,
    }, pk="nonce")
    db.execute("INSERT INTO meta (key, value) VALUES ('revision', '0')")


def _v2(db: Database) -> None:
    # v2: records say how they came to be (created, adopted, imported); runs count adoptions;
    # pending journal entries are found by index at the start of every apply.
    db.table("images").add_column("origin", str, not_null_default="created")
    db.table("runs").add_column("adopted", int, not_null_default=0)
    db.table("journal").create_index(["target", "state"], if_not_exists=True)


def _v3(db: Database) -> None:
    # v3: saved plans that were applied, so that a plan file can be applied once only.
    db.table("applied_plans").create({"plan_id": str, "applied_at": str, "run_id": str},
                                     pk="plan_id")


def _v4(db: Database) -> None:
    # v4: what each target's server said it accepts (its image schema, IMS's OS list), with
    # when it was read, so that offline runs validate against the last answer seen.
    db.table("server_info").create({"target": str, "kind": str, "url": str, "body_json": str,
                                    "read_at": str}, pk=("target", "kind"),
                                   not_null={"url", "body_json", "read_at"})


#: MIGRATIONS[i] upgrades a schema of version i to version i + 1.
MIGRATIONS: list[Callable[[Database], None]] = [_v1, _v2, _v3, _v4]
SCHEMA_VERSION = len(MIGRATIONS)


def _migrate(conn: sqlite3.Connection, current: int, upto: int = SCHEMA_VERSION) -> None:
    """All steps and the new version in one transaction: a kill leaves the old file intact.
    (Python's sqlite3 would commit each CREATE TABLE on its own.)"""
    db = Database(conn)
    with db.atomic():
        for version in range(current, upto):
            MIGRATIONS[version](db)
        conn.execute(f"PRAGMA user_version = {upto}")


class StateStore:
    """Records, runs and journal of one state file. Writes are serialised by a lock."""

    def __init__(self, conn: sqlite3.Connection, path: str, *, writable: bool,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.conn, self.path, self.writable, self.clock = conn, path, writable, clock
        self._write_lock = threading.Lock()  # held by the one thread committing
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._wal = False

    # --- opening -----------------------------------------------------------------------

    @classmethod
    def open_readonly(cls, path: str | Path, *, clock: Clock = SYSTEM_CLOCK) -> StateStore | None:
        """Open for reading, never writing; None when the file does not exist yet."""
        p = Path(path)
        if not p.exists():
            return None
        if p.is_dir():
            raise StateError(f"state file {p} is a directory; pass a file path with --state")
        try:
            conn = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True,
                                   check_same_thread=False)
            version = _check_version(conn, str(p))
            if version < SCHEMA_VERSION:
                # Migrate a copy in memory: reading an old file must not change it.
                memory = sqlite3.connect(":memory:", check_same_thread=False)
                conn.backup(memory)
                conn.close()
                _migrate(memory, version)
                conn = memory
        except sqlite3.Error as exc:
            raise StateError(f"cannot read state file {p}: {exc}") from None
        return cls(conn, str(p), writable=False, clock=clock)

    @staticmethod
    def version_of(path: str | Path) -> int:
        """The schema version of the file at ``path``; 0 when there is none yet."""
        p = Path(path)
        if not p.is_file():
            return 0
        try:
            conn = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True)
            try:
                return _check_version(conn, str(p))
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StateError(f"cannot read state file {p}: {exc}") from None

    @classmethod
    def open_for_write(cls, path: str | Path, *, clock: Clock = SYSTEM_CLOCK) -> StateStore:
        """Open (creating if needed) and migrate to the current schema, backing up first."""
        p = Path(path)
        if p.is_dir():
            raise StateError(f"state file {p} is a directory; pass a file path with --state")
        if not p.parent.exists():
            raise StateError(f"cannot create state file {p}: directory {p.parent} does not exist")
        try:
            conn = sqlite3.connect(str(p), check_same_thread=False, timeout=30)
            conn.execute("PRAGMA synchronous = FULL")
            version = _check_version(conn, str(p))
            if 0 < version < SCHEMA_VERSION:
                backup = p.with_name(f"{p.name}.bak-v{version}-"
                                     f"{clock.now().strftime('%Y%m%dT%H%M%SZ')}")
                conn.close()
                shutil.copy2(p, backup)
                conn = sqlite3.connect(str(p), check_same_thread=False, timeout=30)
                conn.execute("PRAGMA synchronous = FULL")
            if version < SCHEMA_VERSION:
                _migrate(conn, version)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state file {p} for writing: {exc}") from None
        except OSError as exc:
            raise StateError(f"cannot back up state file {p}: {exc.strerror}") from None
        return cls(conn, str(p), writable=True, clock=clock)

    def _now(self) -> str:
        return iso(self.clock.now())

    def _use_wal(self) -> None:
        """From the first write until close(): WAL, so a commit is an append rather than an
        fsync'd rollback journal. A killed process loses nothing; a power cut may lose the
        last commits but never corrupts, and the next apply finds what they created by its
        marker. Deferred to the first write, so a refused apply leaves the file as it was."""
        if not self._wal:
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self._wal = True

    def close(self) -> None:
        if self._wal:  # back to one self-contained file
            with contextlib.suppress(sqlite3.Error):  # another process may still be reading
                self.conn.execute("PRAGMA journal_mode = DELETE")
        self.conn.close()

    # --- reading -------------------------------------------------------------------------

    def revision(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return int(row[0]) if row else 0

    def targets(self) -> list[str]:
        rows = self.conn.execute("SELECT DISTINCT target FROM images UNION "
                                 "SELECT DISTINCT target FROM journal WHERE state = ?",
                                 (JournalState.PENDING,))
        return sorted(r[0] for r in rows)

    def records(self, target: str, *, full: bool = True) -> dict[str, Record]:
        """Every record of a target. ``full=False`` reads only name, id and digest (an
        offline plan needs no more for an unchanged image: 100,000 of them then cost a
        fraction of the memory); ``records_of`` reads the rest where it is needed."""
        if full:
            return self.records_of(target)
        cursor = self.conn.execute(
            "SELECT name, image_id, spec_digest, origin FROM images WHERE target = ?",
            (target,))
        return {row[0]: Record.model_construct(
            _fields_set=_RECORD_FIELDS, name=row[0], image_id=row[1], spec_digest=row[2],
            request_json="{}", response_json="{}", status=None, created_at=None,
            updated_at=None, recorded_at="", run_id=None, origin=row[3]) for row in cursor}

    def records_of(self, target: str, names: list[str] | None = None) -> dict[str, Record]:
        """Complete records of a target: all of them, or those of ``names``."""
        query = ("SELECT name, image_id, spec_digest, request_json, response_json, status, "
                 "created_at, updated_at, recorded_at, run_id, origin FROM images "
                 "WHERE target = ?")
        if names is None:
            return {row[0]: _record(row) for row in self.conn.execute(query, (target,))}
        out: dict[str, Record] = {}
        for i in range(0, len(names), 500):  # SQLite's bound-parameter limit
            chunk = names[i:i + 500]
            rows = self.conn.execute(f"{query} AND name IN ({','.join('?' * len(chunk))})",
                                     (target, *chunk))
            out.update((row[0], _record(row)) for row in rows)
        return out

    def record(self, target: str, name: str) -> Record | None:
        row = self.conn.execute(
            "SELECT name, image_id, spec_digest, request_json, response_json, status, "
            "created_at, updated_at, recorded_at, run_id, origin FROM images "
            "WHERE target = ? AND name = ?", (target, name)).fetchone()
        return _record(row) if row else None

    def records_named(self, name: str) -> list[tuple[str, Record]]:
        rows = self.conn.execute(
            "SELECT name, image_id, spec_digest, request_json, response_json, status, "
            "created_at, updated_at, recorded_at, run_id, origin, target FROM images "
            "WHERE name = ? ORDER BY target", (name,))
        return [(row[11], _record(row[:11])) for row in rows]

    def all_records(self) -> list[tuple[str, Record]]:
        rows = self.conn.execute(
            "SELECT name, image_id, spec_digest, request_json, response_json, status, "
            "created_at, updated_at, recorded_at, run_id, origin, target FROM images "
            "ORDER BY target, name")
        return [(row[11], _record(row[:11])) for row in rows]

    def pending(self, target: str) -> list[PendingCreate]:
        rows = self.conn.execute(
            "SELECT nonce, name, run_id, started_at FROM journal "
            "WHERE target = ? AND state = ? ORDER BY started_at, name",
            (target, JournalState.PENDING))
        return [PendingCreate.model_construct(nonce=r[0], name=r[1], run_id=r[2], started_at=r[3])
                for r in rows]

    def pending_request(self, nonce: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT request_json FROM journal WHERE nonce = ?",
                                (nonce,)).fetchone()
        return dict(json.loads(row[0])) if row else {}

    def plan_applied(self, plan_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT applied_at, run_id FROM applied_plans WHERE plan_id = ?",
                                (plan_id,)).fetchone()
        return {"applied_at": row[0], "run_id": row[1]} if row else None

    def server_info(self, target: str, kind: str) -> dict[str, Any] | None:
        """The last answer of ``target``'s server of that kind: url, body (JSON), read_at."""
        row = self.conn.execute("SELECT url, body_json, read_at FROM server_info "
                                "WHERE target = ? AND kind = ?", (target, kind)).fetchone()
        if row is None:
            return None
        try:
            body = json.loads(row[1])
        except ValueError:
            return None  # a damaged cache entry is as good as none; the next read replaces it
        return {"url": row[0], "body": body, "read_at": row[2]}

    def server_info_targets(self, kind: str) -> list[str]:
        rows = self.conn.execute("SELECT target FROM server_info WHERE kind = ? ORDER BY target",
                                 (kind,))
        return [r[0] for r in rows]

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        cursor = self.conn.execute(
            "SELECT id, mode, target, profile, started_at, finished_at, host, pid, tool_version,"
            " summary_json, created, adopted, failed, outcome, error FROM runs "
            "ORDER BY started_at DESC, id DESC LIMIT ?", (limit,))
        names = [d[0] for d in cursor.description]
        out = []
        for row in cursor:
            run = dict(zip(names, row, strict=True))
            run["summary"] = json.loads(run.pop("summary_json") or "{}")
            out.append(run)
        return out

    # --- writing -------------------------------------------------------------------------

    def _commit(self, *statements: Statement) -> list[int]:
        """Run ``statements`` in one transaction that also bumps the revision; return each
        one's row count once it is committed.

        Concurrent callers share transactions (group commit): whoever holds the write lock
        commits everything queued so far, so sixteen workers pay for one fsync, not sixteen.
        """
        if not self.writable:
            raise StateError("internal error: state store opened read-only")
        mine = _Pending(statements)
        with self._queue_lock:
            self._queue.append(mine)
        while mine.rowcounts is None and mine.error is None:
            with self._write_lock:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                if batch:
                    self._run(batch)
        if mine.error is not None:
            raise mine.error
        assert mine.rowcounts is not None
        return mine.rowcounts

    def _run(self, batch: list[_Pending]) -> None:
        try:
            self._use_wal()
            with self.conn:
                self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
                                  "WHERE key = 'revision'")
                counts = [[self.conn.execute(sql, params).rowcount for sql, params in p.statements]
                          for p in batch]
        except sqlite3.Error as exc:
            if len(batch) > 1:  # find the one that failed; the others still commit
                for pending in batch:
                    self._run([pending])
            else:
                batch[0].error = StateError(f"cannot write state file {self.path}: {exc}")
            return
        for pending, rowcounts in zip(batch, counts, strict=True):
            pending.rowcounts = rowcounts

    def start_run(self, run_id: str, *, target: str, profile: str, catalog_digest: str,
                  tool_version: str, started_at: str) -> None:
        self._commit(
            # A run still marked running while we hold the lock was killed.
            ("UPDATE runs SET outcome = ? WHERE outcome = ?",
             (RunOutcome.INTERRUPTED, RunOutcome.RUNNING)),
            ("INSERT INTO runs (id, mode, target, profile, catalog_digest, started_at, host, "
             "pid, tool_version, summary_json, created, adopted, failed, outcome) "
             "VALUES (?, 'apply', ?, ?, ?, ?, ?, ?, ?, '{}', 0, 0, 0, ?)",
             (run_id, target, profile, catalog_digest, started_at, socket.gethostname(),
              os.getpid(), tool_version, RunOutcome.RUNNING)))

    def mark_plan_applied(self, plan_id: str, run_id: str) -> None:
        self._commit(("INSERT INTO applied_plans (plan_id, applied_at, run_id) "
                      "VALUES (?, ?, ?)", (plan_id, self._now(), run_id)))

    def finish_run(self, run_id: str, *, summary: dict[str, int], created: int, adopted: int,
                   failed: int, outcome: str, error: str | None = None) -> None:
        self._commit(("UPDATE runs SET finished_at = ?, summary_json = ?, created = ?, "
                      "adopted = ?, failed = ?, outcome = ?, error = ? WHERE id = ?",
                      (self._now(), json.dumps(summary, sort_keys=True), created, adopted, failed,
                       outcome, error, run_id)))

    def journal_open(self, *, nonce: str, target: str, name: str, run_id: str,
                     request: dict[str, Any]) -> None:
        """Write the intent to create before the POST, so a lost answer can be found again."""
        self._commit(("INSERT INTO journal (nonce, target, name, run_id, request_json, state, "
                      "started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (nonce, target, name, run_id, json.dumps(request, sort_keys=True),
                       JournalState.PENDING, self._now())))

    def journal_release(self, nonce: str, note: str) -> None:
        """The create certainly did not happen: close the entry without a record."""
        self._commit(("UPDATE journal SET state = ?, resolved_at = ?, note = ? "
                      "WHERE nonce = ?", (JournalState.RELEASED, self._now(), note, nonce)))

    def save_record(self, target: str, record: Record, *, nonce: str | None = None) -> None:
        """Record an image and close its journal entry in one transaction."""
        statements: list[Statement] = [(
            "INSERT OR REPLACE INTO images (target, name, image_id, spec_digest, "
            "request_json, response_json, status, created_at, updated_at, recorded_at, "
            "run_id, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (target, record.name, record.image_id, record.spec_digest, record.request_json,
             record.response_json, record.status, record.created_at, record.updated_at,
             record.recorded_at, record.run_id, record.origin))]
        if nonce:
            statements.append(("UPDATE journal SET state = ?, resolved_at = ?, "
                               "image_id = ? WHERE nonce = ?",
                               (JournalState.DONE, self._now(), record.image_id, nonce)))
        self._commit(*statements)

    def save_server_info(self, target: str, kind: str, *, url: str, body: Any,
                         read_at: str) -> None:
        """Replace the cached answer. It is a cache, not a record: the revision (which saved
        plans pin) stays, so reading the server never makes a saved plan stale."""
        if not self.writable:
            raise StateError("internal error: state store opened read-only")
        with self._write_lock:
            try:
                with self.conn:
                    self.conn.execute(
                        "INSERT OR REPLACE INTO server_info (target, kind, url, body_json, "
                        "read_at) VALUES (?, ?, ?, ?, ?)",
                        (target, kind, url, json.dumps(body, sort_keys=True), read_at))
            except sqlite3.Error as exc:
                raise StateError(f"cannot write state file {self.path}: {exc}") from None

    def forget(self, target: str, name: str) -> bool:
        [deleted] = self._commit(("DELETE FROM images WHERE target = ? AND name = ?",
                                  (target, name)))
        return deleted > 0

    # --- the apply lock ------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the apply lock. The kernel releases it if the process dies, even by SIGKILL."""
        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"cannot create the lock file {lock_path}: {exc.strerror}; the "
                             "state file's directory must be writable") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                raise StateLockedError(self.path, holder.get("pid"), holder.get("host"),
                                       holder.get("started_at")) from None
            info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "started_at": self._now()}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _check_version(conn: sqlite3.Connection, path: str) -> int:
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path} is not a reconcile state file ({exc}); point --state at the "
                         "right file or move this one away") from None
    if version > SCHEMA_VERSION:
        raise StateVersionError(
            f"state file {path} has schema version {version}, but this reconcile understands "
            f"up to {SCHEMA_VERSION}; upgrade reconcile (the file was left untouched)")
    if version == 0 and tables:
        raise StateError(f"{path} is an SQLite file but not a reconcile state file (it has "
                         f"tables {', '.join(sorted(tables))}); use another --state path")
    if version > 0 and not {"meta", "images", "runs", "journal"} <= tables:
        raise StateError(f"state file {path} is damaged: tables are missing; restore it from "
                         "a backup")
    return version


def _record(row: tuple[Any, ...]) -> Record:
    return Record.model_construct(
        _fields_set=_RECORD_FIELDS, name=row[0], image_id=row[1], spec_digest=row[2],
        request_json=row[3] or "{}", response_json=row[4] or "{}", status=row[5],
        created_at=row[6], updated_at=row[7], recorded_at=row[8], run_id=row[9],
        origin=row[10] or "created")


_RECORD_FIELDS: set[str] = set(Record.model_fields)  # shared: see models._RECORD_FIELDS
