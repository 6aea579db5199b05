"""The state store: image records, run history, the create journal and the write lock.

``StateStore`` is the one interface the rest of reconcile sees; ``open_store`` picks the
implementation from the location: a file path is an SQLite file (the embedded default, on
sqlite-utils, readable with plain ``sqlite3``), a ``postgresql://`` or ``postgres://`` URL is a
shared PostgreSQL database (``reconciler.pgstate``). Both hold the same tables, migrate through
the same numbered steps and run the same SQL (``SqlStore``), so they behave alike.

A store opened for writing holds the write lock until it is closed, taken before anything is
migrated or written: for SQLite an flock on the state file's inode (whatever name reaches it),
for PostgreSQL a session-level advisory lock per target. Both die with their process, so a
killed run never leaves a stale lock. A store opened for reading takes no lock and writes
nothing; an old SQLite file is migrated in memory for reading, so reading never changes a byte.
Every write is one transaction that also bumps ``meta.revision``, which saved plans pin.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.errors import ConfigError, StateError, StateLockedError, StateVersionError
from reconciler.sqlstore import (
    TABLES,
    LockRequest,
    SqlStore,
    StateStore,
    holder_info,
    is_url,
    parse_duration,
    poll,
    redact,
)

if TYPE_CHECKING:
    from sqlite_utils import Database

    from reconciler.pgstate import PostgresStore

__all__ = ["DEFAULT_PATH", "MIGRATIONS", "SCHEMA_VERSION", "TABLES", "LockRequest",
           "SqliteStore", "StateStore", "is_url", "open_for_write", "open_readonly",
           "parse_duration", "redact", "schema_version"]

DEFAULT_PATH = "reconcile-state.db"


def open_readonly(location: str | Path, *, clock: Clock = SYSTEM_CLOCK) -> StateStore | None:
    """Open for reading; None when there is nothing there yet (nothing is created)."""
    if is_url(location):
        return _postgres().open_readonly(str(location), clock=clock)
    return SqliteStore.open_readonly(location, clock=clock)


def open_for_write(location: str | Path, lock: LockRequest | None = None, *,
                   clock: Clock = SYSTEM_CLOCK) -> StateStore:
    """Open (creating if needed) holding the write lock, migrated to the current schema."""
    if is_url(location):
        return _postgres().open_for_write(str(location), lock or LockRequest(), clock=clock)
    return SqliteStore.open_for_write(location, lock or LockRequest(), clock=clock)


def schema_version(location: str | Path) -> int:
    """The schema version at ``location``: 0 when there is no state yet. A PostgreSQL state
    counts as current: every writer of it migrates it under its migration lock anyway."""
    if is_url(location):
        return SCHEMA_VERSION
    p = Path(location)
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


def _postgres() -> type[PostgresStore]:
    try:
        from reconciler.pgstate import PostgresStore
    except ImportError:
        raise ConfigError("a PostgreSQL state needs psycopg: pip install "
                          "'reconcile[postgresql]'") from None
    return PostgresStore


# --- SQLite ----------------------------------------------------------------------------------

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


def _v5(db: Database) -> None:
    # v5: updates in place. A journal entry says what it is for (a create, or an update of
    # the image in image_id); runs count their updates.
    db.table("journal").add_column("kind", str, not_null_default="create")
    db.table("runs").add_column("updated", int, not_null_default=0)


#: MIGRATIONS[i] upgrades a schema of version i to version i + 1. Each step has its twin in
#: ``reconciler.pgstate.MIGRATIONS``.
MIGRATIONS: list[Callable[[Database], None]] = [_v1, _v2, _v3, _v4, _v5]
SCHEMA_VERSION = len(MIGRATIONS)


def _migrate(conn: sqlite3.Connection, current: int, upto: int = SCHEMA_VERSION) -> None:
    """All steps and the new version in one transaction: a kill leaves the old file intact.
    (Python's sqlite3 would commit each CREATE TABLE on its own.)"""
    from sqlite_utils import Database  # here: a command that only reads starts without it

    db = Database(conn)
    with db.atomic():
        for version in range(current, upto):
            MIGRATIONS[version](db)
        conn.execute(f"PRAGMA user_version = {upto}")


class SqliteStore(SqlStore):
    """Records, runs and journal of one SQLite state file."""

    _db_errors = (sqlite3.Error,)

    def __init__(self, conn: sqlite3.Connection, path: str, *, writable: bool,
                 lock: FileLock | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(path, writable=writable, clock=clock)
        self.conn, self.path, self._lock = conn, path, lock
        self._wal = False

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(sql, params)

    def _transaction(self, durable: bool = True) -> contextlib.AbstractContextManager[Any]:
        return self.conn  # WAL with synchronous = NORMAL: see _before_write

    def _error(self, exc: Exception, doing: str) -> StateError:
        if isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc):
            return StateError(f"state file {self.path} is damaged ({exc}); restore it from a "
                              f"backup, or save what it still holds with `sqlite3 {self.path} "
                              ".recover`")
        return StateError(f"cannot {doing} state file {self.path}: {exc}")

    # --- opening -----------------------------------------------------------------------

    @classmethod
    def open_readonly(cls, path: str | Path, *,
                      clock: Clock = SYSTEM_CLOCK) -> SqliteStore | None:
        """Open for reading, never writing; None when the file does not exist yet."""
        p = Path(path)
        if not p.exists():
            if not p.parent.is_dir():  # a typo in --state, not "nothing recorded yet"
                raise StateError(f"state file {p}: directory {p.parent} does not exist; "
                                 "check --state (or RECONCILE_STATE)")
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

    @classmethod
    def empty(cls, path: str | Path, *, clock: Clock = SYSTEM_CLOCK) -> SqliteStore:
        """A new, empty state in memory, read-only: what ``path`` would hold once created."""
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        _migrate(conn, 0)
        return cls(conn, str(path), writable=False, clock=clock)

    @classmethod
    def open_for_write(cls, path: str | Path, lock: LockRequest | None = None, *,
                       clock: Clock = SYSTEM_CLOCK) -> SqliteStore:
        """Take the lock, then open (creating if needed) and migrate, backing up first."""
        p = Path(path)
        if p.is_dir():
            raise StateError(f"state file {p} is a directory; pass a file path with --state")
        if not p.parent.exists():
            raise StateError(f"cannot create state file {p}: directory {p.parent} does not exist")
        file_lock = FileLock.acquire(p, lock or LockRequest(), clock)
        try:
            conn = sqlite3.connect(str(p), check_same_thread=False, timeout=30)
            conn.execute("PRAGMA synchronous = FULL")
            version = _check_version(conn, str(p))
            _check_intact(conn, str(p))
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
            file_lock.release()
            raise StateError(f"cannot open state file {p} for writing: {exc}") from None
        except OSError as exc:
            file_lock.release()
            raise StateError(f"cannot back up state file {p}: {exc.strerror}") from None
        except BaseException:
            file_lock.release()
            raise
        return cls(conn, str(p), writable=True, lock=file_lock, clock=clock)

    def _before_write(self) -> None:
        """From the first write until close(): WAL, so a commit is an append rather than an
        fsync'd rollback journal. A killed process loses nothing; a power cut may lose the
        last commits but never corrupts, and the next apply finds what they created by its
        marker. Deferred to the first write, so a refused apply leaves the file as it was."""
        if not self._wal:
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self._wal = True

    def close(self) -> None:
        try:
            if self._wal:  # back to one self-contained file
                with contextlib.suppress(sqlite3.Error):  # another process may be reading
                    self.conn.execute("PRAGMA journal_mode = DELETE")
            self.conn.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None


#: The lock file holds its holder as JSON padded with spaces to this size: it is rewritten in
#: place, never truncated.
_HOLDER_SIZE = 1024


class FileLock:
    """The write lock of an SQLite state file: an flock on the state file itself.

    The flock is on the file's inode, so every name of the file (symlink, hard link, another
    relative path) meets the same lock; the kernel drops it when the process dies. Who holds
    it is written to ``<real path>.lock`` beside the file, opened without following a
    symlink and never truncated, so a planted link cannot make us clobber another file.
    """

    def __init__(self, fd: int, holder_fd: int | None) -> None:
        self._fd, self._holder_fd = fd, holder_fd

    @classmethod
    def acquire(cls, path: Path, request: LockRequest, clock: Clock = SYSTEM_CLOCK) -> FileLock:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open state file {path} for writing: "
                             f"{exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StateError(f"state file {path} is not a regular file; pass a file "
                                 "path with --state")

            def attempt() -> bool:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    return False

            holder_path = Path(f"{os.path.realpath(path)}.lock")
            if not poll(attempt, request.timeout_s, clock):
                holder = _read_holder(holder_path)
                raise StateLockedError(str(path), holder, waited_s=request.timeout_s)
            holder_fd = _write_holder(holder_path, holder_info(request.operation, clock))
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, holder_fd)

    def release(self) -> None:
        if self._holder_fd is not None:
            with contextlib.suppress(OSError):
                os.pwrite(self._holder_fd, b" " * _HOLDER_SIZE, 0)
            os.close(self._holder_fd)
            self._holder_fd = None
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = -1


def _open_holder(path: Path, flags: int) -> int:
    """Open the holder file without following a symlink or blocking on a FIFO."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > _HOLDER_SIZE:
        os.close(fd)
        raise OSError(0, "it is not a lock file reconcile wrote (not a regular file of its "
                         "own, or too large); remove it")
    return fd


def _write_holder(path: Path, info: dict[str, Any]) -> int:
    try:
        fd = _open_holder(path, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        reason = "it is a symbolic link; remove it" if exc.errno == 40 else exc.strerror
        raise StateError(f"cannot create the lock file {path}: {reason}; the state file's "
                         "directory must be writable") from None
    data = json.dumps(info).encode()[:_HOLDER_SIZE]
    os.pwrite(fd, data.ljust(_HOLDER_SIZE), 0)
    return fd


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        fd = _open_holder(path, os.O_RDONLY)
    except OSError:
        return {}
    try:
        data = json.loads(os.pread(fd, _HOLDER_SIZE, 0).strip() or b"{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)


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
    if version > 0:
        _check_columns(conn, path, version)
    return version


def _check_intact(conn: sqlite3.Connection, path: str) -> None:
    """Before a run writes: the whole file is sound. A damaged page can read as no rows,
    and an apply that saw no records would create every image again."""
    try:
        problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    if problems != ["ok"]:
        raise StateError(f"state file {path} is damaged ({'; '.join(problems)[:300]}); "
                         f"restore it from a backup, or save what it still holds with "
                         f"`sqlite3 {path} .recover`")


def _check_columns(conn: sqlite3.Connection, path: str, version: int) -> None:
    """Every column the schema of ``version`` has must be there: a file with the right table
    names but other columns is refused before anything reads or writes it."""
    try:
        for table, wanted in _schema_columns(version).items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            missing = sorted(wanted - have)
            if missing:
                raise StateError(
                    f"state file {path} is not a reconcile state file of schema version "
                    f"{version}, or it is damaged: table {table} lacks the columns "
                    f"{', '.join(missing)}; point --state at the right file or restore it "
                    "from a backup (the file was left untouched)")
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path} is not a reconcile state file ({exc}); point --state at the "
                         "right file or move this one away") from None


@functools.cache
def _schema_columns(version: int) -> dict[str, frozenset[str]]:
    """The columns of each table at ``version``, from running the migrations in memory."""
    conn = sqlite3.connect(":memory:")
    try:
        _migrate(conn, 0, version)
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: frozenset(r[1] for r in conn.execute(f"PRAGMA table_info({t})"))
                for t in tables}
    finally:
        conn.close()
