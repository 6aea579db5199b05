"""What every state store shares: the ``StateStore`` interface and the SQL both stores run.

``SqlStore`` holds all reading and writing over a DB-API connection with ``?`` placeholders,
with group commit; ``reconciler.state`` (SQLite) and ``reconciler.pgstate`` (PostgreSQL)
supply the connection, transactions, migrations and locks. Also here: the lock's request and
holder, durations, and URLs made fit to print.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.errors import ConfigError, StateError
from reconciler.models import (
    JournalState,
    PendingCreate,
    PendingUpdate,
    Record,
    RecordRows,
    RunOutcome,
    build,
    iso,
)

Statement = tuple[str, tuple[Any, ...]]


class StateStore(Protocol):
    """What reconcile reads from and writes to a state store, whichever it is."""

    #: Where the store is, fit for messages: a path, or a URL without its password.
    location: str
    writable: bool

    def close(self) -> None: ...
    def revision(self) -> int: ...
    def targets(self) -> list[str]: ...
    def records(self, target: str, *,
                full: bool = True) -> dict[str, Record] | RecordRows: ...
    def records_of(self, target: str, names: list[str] | None = None) -> dict[str, Record]: ...
    def record(self, target: str, name: str) -> Record | None: ...
    def records_named(self, name: str) -> list[tuple[str, Record]]: ...
    def all_records(self) -> list[tuple[str, Record]]: ...
    def pending(self, target: str) -> list[PendingCreate]: ...
    def pending_updates(self, target: str) -> list[PendingUpdate]: ...
    def pending_request(self, nonce: str) -> dict[str, Any]: ...
    def plan_applied(self, plan_id: str) -> dict[str, Any] | None: ...
    def runs(self, limit: int = 20) -> list[dict[str, Any]]: ...
    def start_run(self, run_id: str, *, target: str, profile: str, catalog_digest: str,
                  tool_version: str, started_at: str) -> None: ...
    def mark_plan_applied(self, plan_id: str, run_id: str) -> None: ...
    def finish_run(self, run_id: str, *, summary: dict[str, int], created: int, adopted: int,
                   updated: int = 0,
                   failed: int, outcome: str, error: str | None = None) -> None: ...
    def journal_open(self, *, nonce: str, target: str, name: str, run_id: str,
                     kind: str = "create", image_id: str | None = None,
                     request: dict[str, Any]) -> None: ...
    def journal_release(self, nonce: str, note: str) -> None: ...
    def save_record(self, target: str, record: Record, *, nonce: str | None = None) -> None: ...
    def forget(self, target: str, name: str) -> bool: ...
    def dump(self) -> dict[str, list[tuple[Any, ...]]]: ...
    def load(self, tables: dict[str, list[tuple[Any, ...]]]) -> None: ...
    def server_info(self, target: str, kind: str) -> dict[str, Any] | None: ...
    def server_info_targets(self, kind: str) -> list[str]: ...
    def save_server_info(self, target: str, kind: str, *, url: str, body: Any,
                         read_at: str) -> None: ...


# --- where a store is ------------------------------------------------------------------------

_URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(location: str | Path) -> bool:
    return str(location).lower().startswith(_URL_SCHEMES)


def redact(location: str | Path) -> str:
    """``location`` fit to print: a URL's password (in userinfo or ``password=``) masked."""
    text = str(location)
    if not is_url(text):
        return text
    text = re.sub(r"^([a-zA-Z]+://[^:@/?#]*):[^@/?#]*@", r"\1:***@", text)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", text, flags=re.IGNORECASE)


@dataclass(frozen=True)
class LockRequest:
    """What a writer says about itself when it takes the lock, and how long it may wait."""

    target: str = ""  # "" for a lock over the whole store (state copy)
    operation: str = "apply"
    timeout_s: float = 0.0


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90``, ``90s``, ``5m``, ``1h``, ``1h30m``."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", value)
    if not value or parts is None:
        raise ConfigError(f"{text!r} is not a duration; write it like 30s, 5m, 1h or 1h30m")
    hours, minutes, seconds = parts.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def poll(attempt: Callable[[], bool], timeout_s: float, clock: Clock = SYSTEM_CLOCK) -> bool:
    """Call ``attempt`` until it returns True or ``timeout_s`` has passed (then False)."""
    deadline = clock.monotonic() + timeout_s
    delay = 0.05
    while not attempt():
        left = deadline - clock.monotonic()
        if left <= 0:
            return False
        clock.sleep(min(delay, left))
        delay = min(delay * 2, 1.0)
    return True


def holder_info(operation: str, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    """Who takes a lock, as its holder is named to whoever finds it taken."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "user": user,
            "since": iso(clock.now()), "operation": operation}


# --- the shared SQL ------------------------------------------------------------------------

@dataclass(eq=False)
class _Pending:
    """Statements waiting for the next group commit, and what became of them."""

    statements: tuple[Statement, ...]
    durable: bool = True  # False: a loss in a crash of the database server is recoverable
    rowcounts: list[int] | None = None
    error: StateError | None = None


#: Every table of the schema, in the order a copy loads them, with its key columns.
TABLES: dict[str, tuple[str, ...]] = {
    "meta": ("key",), "images": ("target", "name"), "runs": ("id",), "journal": ("nonce",),
    "applied_plans": ("plan_id",), "server_info": ("target", "kind"),
}

_RECORD_COLUMNS = ("name, image_id, spec_digest, request_json, response_json, status, "
                   "created_at, updated_at, recorded_at, run_id, origin")


class SqlStore:
    """Everything both stores do alike, over a DB-API connection with ``?`` placeholders.

    A subclass supplies ``_execute`` (one statement), ``_transaction`` (commit or roll back
    everything inside), ``_error`` (turn the driver's exception into a ``StateError``) and
    ``_db_errors`` (the driver's exception classes).
    """

    _db_errors: tuple[type[Exception], ...] = ()
    #: Appended to ORDER BY on text: both stores sort by code point, whatever the locale.
    _text_order = ""

    def __init__(self, location: str, *, writable: bool, clock: Clock = SYSTEM_CLOCK) -> None:
        self.location, self.writable, self.clock = location, writable, clock
        self._write_lock = threading.Lock()  # held by the one thread committing
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        raise NotImplementedError

    def _transaction(self, durable: bool = True) -> contextlib.AbstractContextManager[Any]:
        """One transaction; ``durable=False`` lets a store return before the commit is on
        disk (PostgreSQL's ``synchronous_commit = off``)."""
        raise NotImplementedError

    def _write_transaction(self, durable: bool) -> contextlib.AbstractContextManager[Any]:
        """The transaction of a group commit: only writes, whose row counts are read once it
        is over (so a store may send it all at once)."""
        return self._transaction(durable)

    def _error(self, exc: Exception, doing: str) -> StateError:
        return StateError(f"cannot {doing} state {self.location}: {exc}")

    def _now(self) -> str:
        return iso(self.clock.now())

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        try:
            return self._execute(sql, params)
        except self._db_errors as exc:
            raise self._error(exc, "read") from None

    # --- reading -------------------------------------------------------------------------

    def revision(self) -> int:
        row = self._query("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return int(row[0]) if row else 0

    def targets(self) -> list[str]:
        rows = self._query("SELECT DISTINCT target FROM images UNION "
                           "SELECT DISTINCT target FROM journal WHERE state = ?",
                           (JournalState.PENDING,))
        return sorted(r[0] for r in rows)

    def records(self, target: str, *, full: bool = True) -> dict[str, Record] | RecordRows:
        """Every record of a target. ``full=False`` reads only name, id and digest, as rows
        (an offline plan needs no more for an unchanged image: 100,000 of them then cost a
        fraction of the memory); ``records_of`` reads the rest where it is needed."""
        if full:
            return self.records_of(target)
        cursor = self._query(
            "SELECT name, image_id, spec_digest, COALESCE(origin, 'created') FROM images "
            "WHERE target = ?",
            (target,))
        return RecordRows({row[0]: row for row in cursor})

    def records_of(self, target: str, names: list[str] | None = None) -> dict[str, Record]:
        """Complete records of a target: all of them, or those of ``names``."""
        query = f"SELECT {_RECORD_COLUMNS} FROM images WHERE target = ?"
        if names is None:
            return {row[0]: _record(row) for row in self._query(query, (target,))}
        out: dict[str, Record] = {}
        for i in range(0, len(names), 500):  # SQLite's bound-parameter limit
            chunk = names[i:i + 500]
            rows = self._query(f"{query} AND name IN ({','.join('?' * len(chunk))})",
                               (target, *chunk))
            out.update((row[0], _record(row)) for row in rows)
        return out

    def record(self, target: str, name: str) -> Record | None:
        row = self._query(f"SELECT {_RECORD_COLUMNS} FROM images WHERE target = ? AND name = ?",
                          (target, name)).fetchone()
        return _record(row) if row else None

    def records_named(self, name: str) -> list[tuple[str, Record]]:
        rows = self._query(f"SELECT {_RECORD_COLUMNS}, target FROM images WHERE name = ? "
                           f"ORDER BY target{self._text_order}", (name,))
        return [(row[11], _record(row[:11])) for row in rows]

    def all_records(self) -> list[tuple[str, Record]]:
        c = self._text_order
        rows = self._query(f"SELECT {_RECORD_COLUMNS}, target FROM images "
                           f"ORDER BY target{c}, name{c}")
        return [(row[11], _record(row[:11])) for row in rows]

    def pending(self, target: str) -> list[PendingCreate]:
        """Creates an earlier run sent (or was about to) without recording the answer."""
        return [PendingCreate.model_construct(nonce=r[0], name=r[1], run_id=r[2], started_at=r[3])
                for r in self._pending(target, "create")]

    def pending_updates(self, target: str) -> list[PendingUpdate]:
        """Updates an earlier run sent (or was about to) without recording the answer."""
        return [PendingUpdate.model_construct(
            nonce=r[0], name=r[1], run_id=r[2], started_at=r[3], image_id=r[4],
            intent=json.loads(r[5] or "{}")) for r in self._pending(target, "update")]

    def _pending(self, target: str, kind: str) -> Any:
        """A target's pending journal entries of one kind (create, update), oldest first."""
        return self._query(
            "SELECT nonce, name, run_id, started_at, image_id, request_json FROM journal "
            "WHERE target = ? AND state = ? AND kind = ? "
            f"ORDER BY started_at, name{self._text_order}",
            (target, JournalState.PENDING, kind))

    def pending_request(self, nonce: str) -> dict[str, Any]:
        row = self._query("SELECT request_json FROM journal WHERE nonce = ?",
                          (nonce,)).fetchone()
        return dict(json.loads(row[0])) if row else {}

    def plan_applied(self, plan_id: str) -> dict[str, Any] | None:
        row = self._query("SELECT applied_at, run_id FROM applied_plans WHERE plan_id = ?",
                          (plan_id,)).fetchone()
        return {"applied_at": row[0], "run_id": row[1]} if row else None

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        cursor = self._query(
            "SELECT id, mode, target, profile, started_at, finished_at, host, pid, tool_version,"
            " summary_json, created, adopted, updated, failed, outcome, error FROM runs "
            f"ORDER BY started_at DESC, id{self._text_order} DESC LIMIT ?", (limit,))
        names = [d[0] for d in cursor.description]
        out = []
        for row in cursor:
            run = dict(zip(names, row, strict=True))
            run["summary"] = json.loads(run.pop("summary_json") or "{}")
            out.append(run)
        return out

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, each table sorted by its key (for copies and digests)."""
        out = {}
        for table, key in TABLES.items():
            columns = self.columns(table)
            at = [columns.index(k) for k in key]
            rows = [tuple(row) for row in
                    self._query(f"SELECT {', '.join(columns)} FROM {table}")]
            out[table] = sorted(rows, key=lambda r: tuple(str(r[i]) for i in at))
        return out

    def columns(self, table: str) -> list[str]:
        """The columns of ``table`` in a fixed order (sorted), for dumps that compare."""
        cursor = self._query(f"SELECT * FROM {table} WHERE 1 = 0")
        return sorted(d[0] for d in cursor.description)

    def server_info(self, target: str, kind: str) -> dict[str, Any] | None:
        """The last answer of ``target``'s server of that kind: url, body (JSON), read_at."""
        row = self._query("SELECT url, body_json, read_at FROM server_info "
                          "WHERE target = ? AND kind = ?", (target, kind)).fetchone()
        if row is None:
            return None
        try:
            body = json.loads(row[1])
        except ValueError:
            return None  # a damaged cache entry is as good as none; the next read replaces it
        return {"url": row[0], "body": body, "read_at": row[2]}

    def server_info_targets(self, kind: str) -> list[str]:
        rows = self._query("SELECT target FROM server_info WHERE kind = ?", (kind,))
        return sorted(r[0] for r in rows)

    # --- writing -------------------------------------------------------------------------

    def _commit(self, *statements: Statement, durable: bool = True) -> list[int]:
        """Run ``statements`` in one transaction that also bumps the revision; return each
        one's row count once it is committed.

        Concurrent callers share transactions (group commit): whoever holds the write lock
        commits everything queued so far, so sixteen workers pay for one commit, not sixteen.
        """
        if not self.writable:
            raise StateError("internal error: state store opened read-only")
        mine = _Pending(statements, durable)
        with self._queue_lock:
            self._queue.append(mine)
        while mine.rowcounts is None and mine.error is None:
            with self._write_lock:
                # Checked again under the lock: the commit we waited for may have carried
                # ours. Without this, each waiter would commit one newcomer after another.
                if mine.rowcounts is not None or mine.error is not None:
                    break
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                if batch:
                    self._run(batch)
        if mine.error is not None:
            raise mine.error
        assert mine.rowcounts is not None
        return mine.rowcounts

    def _before_write(self) -> None:
        """Called before every write transaction (SQLite switches to WAL there)."""

    def _run(self, batch: list[_Pending]) -> None:
        try:
            self._before_write()
            with self._write_transaction(durable=any(p.durable for p in batch)):
                self._execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
                              " WHERE key = 'revision'")
                cursors = [[self._execute(sql, params) for sql, params in p.statements]
                           for p in batch]
            # Read once the transaction is over: a pipelined store has the answers only then.
            counts = [[cursor.rowcount for cursor in done] for done in cursors]
        except self._db_errors as exc:
            error = self._error(exc, "write")
            if len(batch) > 1 and not self._lost():  # find the one that failed
                for pending in batch:
                    self._run([pending])
            else:
                for pending in batch:
                    pending.error = error
            return
        for pending, rowcounts in zip(batch, counts, strict=True):
            pending.rowcounts = rowcounts

    def _lost(self) -> bool:
        """Whether the connection itself is gone (then nothing more can be written)."""
        return False

    def start_run(self, run_id: str, *, target: str, profile: str, catalog_digest: str,
                  tool_version: str, started_at: str) -> None:
        self._commit(
            # A run of this target still marked running while we hold its lock was killed.
            ("UPDATE runs SET outcome = ?, error = COALESCE(error, ?) "
             "WHERE outcome = ? AND target = ?",
             (RunOutcome.INTERRUPTED, f"killed before it finished (found by run {run_id})",
              RunOutcome.RUNNING, target)),
            ("INSERT INTO runs (id, mode, target, profile, catalog_digest, started_at, host, "
             "pid, tool_version, summary_json, created, adopted, failed, outcome) "
             "VALUES (?, 'apply', ?, ?, ?, ?, ?, ?, ?, '{}', 0, 0, 0, ?)",
             (run_id, target, profile, catalog_digest, started_at, socket.gethostname(),
              os.getpid(), tool_version, RunOutcome.RUNNING)))

    def mark_plan_applied(self, plan_id: str, run_id: str) -> None:
        self._commit(("INSERT INTO applied_plans (plan_id, applied_at, run_id) "
                      "VALUES (?, ?, ?)", (plan_id, self._now(), run_id)))

    def finish_run(self, run_id: str, *, summary: dict[str, int], created: int, adopted: int,
                   updated: int = 0, failed: int, outcome: str,
                   error: str | None = None) -> None:
        self._commit(("UPDATE runs SET finished_at = ?, summary_json = ?, created = ?, "
                      "adopted = ?, updated = ?, failed = ?, outcome = ?, error = ? WHERE id = ?",
                      (self._now(), json.dumps(summary, sort_keys=True), created, adopted,
                       updated, failed, outcome, error, run_id)))

    def journal_open(self, *, nonce: str, target: str, name: str, run_id: str,
                     kind: str = "create", image_id: str | None = None,
                     request: dict[str, Any]) -> None:
        """Write the intent to create (before the POST) or to update ``image_id`` (before the
        PATCH), so a lost answer can be resolved. Returns only once the entry is committed:
        nothing is sent before."""
        self._commit(("INSERT INTO journal (nonce, target, name, run_id, request_json, state, "
                      "started_at, kind, image_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (nonce, target, name, run_id, json.dumps(request, sort_keys=True),
                       JournalState.PENDING, self._now(), kind, image_id)))

    def journal_release(self, nonce: str, note: str) -> None:
        """The create certainly did not happen: close the entry without a record."""
        # Not durable: lost in a server crash, the entry is pending again and looked up.
        self._commit(("UPDATE journal SET state = ?, resolved_at = ?, note = ? "
                      "WHERE nonce = ?", (JournalState.RELEASED, self._now(), note, nonce)),
                     durable=False)

    def save_record(self, target: str, record: Record, *, nonce: str | None = None) -> None:
        """Record an image and close its journal entry in one transaction."""
        statements: list[Statement] = [(
            "INSERT INTO images (target, name, image_id, spec_digest, request_json, "
            "response_json, status, created_at, updated_at, recorded_at, run_id, origin) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (target, name) DO UPDATE "
            "SET image_id = excluded.image_id, spec_digest = excluded.spec_digest, "
            "request_json = excluded.request_json, response_json = excluded.response_json, "
            "status = excluded.status, created_at = excluded.created_at, "
            "updated_at = excluded.updated_at, recorded_at = excluded.recorded_at, "
            "run_id = excluded.run_id, origin = excluded.origin",
            (target, record.name, record.image_id, record.spec_digest, record.request_json,
             record.response_json, record.status, record.created_at, record.updated_at,
             record.recorded_at, record.run_id, record.origin))]
        if nonce:
            statements.append(("UPDATE journal SET state = ?, resolved_at = ?, "
                               "image_id = ? WHERE nonce = ?",
                               (JournalState.DONE, self._now(), record.image_id, nonce)))
        # With a nonce, not durable: lost in a server crash, the journal entry is pending
        # again and the next apply adopts the image by its marker. Only journal_open, the
        # promise made before a POST, must be on disk before the call returns.
        self._commit(*statements, durable=nonce is None)

    def save_server_info(self, target: str, kind: str, *, url: str, body: Any,
                         read_at: str) -> None:
        """Replace the kept answer. It is a cache, not a record: the revision (which saved
        plans pin) stays, so reading the server never makes a saved plan stale."""
        with self._unrevised():
            self._execute(
                "INSERT INTO server_info (target, kind, url, body_json, read_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (target, kind) DO UPDATE SET "
                "url = excluded.url, body_json = excluded.body_json, "
                "read_at = excluded.read_at",
                (target, kind, url, json.dumps(body, sort_keys=True), read_at))

    def forget(self, target: str, name: str) -> bool:
        [deleted] = self._commit(("DELETE FROM images WHERE target = ? AND name = ?",
                                  (target, name)))
        return deleted > 0

    def load(self, tables: dict[str, list[tuple[Any, ...]]]) -> None:
        """Replace every row with ``tables`` (from ``dump``) in one transaction."""
        with self._unrevised():
            for table in reversed(TABLES):
                self._execute(f"DELETE FROM {table}")
            for table in TABLES:
                columns = self.columns(table)
                sql = (f"INSERT INTO {table} ({', '.join(columns)}) "
                       f"VALUES ({', '.join('?' * len(columns))})")
                for row in tables.get(table, []):
                    self._execute(sql, row)

    @contextlib.contextmanager
    def _unrevised(self) -> Iterator[None]:
        """One transaction of writes that leave the revision as it is (``_commit`` moves
        it), with the store's errors translated."""
        if not self.writable:
            raise StateError("internal error: state store opened read-only")
        try:
            self._before_write()
            with self._write_lock, self._transaction():
                yield
        except self._db_errors as exc:
            raise self._error(exc, "write") from None


def _record(row: tuple[Any, ...]) -> Record:
    return build(Record, _RECORD_FIELDS, {
        "name": row[0], "image_id": row[1], "spec_digest": row[2],
        "request_json": row[3] or "{}", "response_json": row[4] or "{}", "status": row[5],
        "created_at": row[6], "updated_at": row[7], "recorded_at": row[8],
        "run_id": row[9], "origin": row[10] or "created"})


_RECORD_FIELDS: set[str] = set(Record.model_fields)  # shared: see models._RECORD_FIELDS
