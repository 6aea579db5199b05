"""The PostgreSQL state store: the SQLite store's tables and SQL in a shared database.

Selected by a ``postgresql://`` or ``postgres://`` URL (any libpq URL: ``sslmode`` and the
other parameters pass through to libpq untouched). The tables live in their own PostgreSQL
schema, ``reconcile``, so they never meet another application's; the schema version is kept
in ``reconcile.schema_info`` and changes only through ``MIGRATIONS``, step for step the twins
of the SQLite ones.

Locks are session-level advisory locks, so they go with the connection: a killed run's lock
frees itself, there is nothing to force-unlock. A writer holds one exclusive lock per target
(a stable hash of it), so runs against different targets never block each other, plus the
store key in shared mode; ``state copy`` takes the store key exclusively. Who holds a lock is
written to ``reconcile.locks`` and read back, checked against ``pg_locks``, by whoever finds it
taken. Read-only sessions are ``default_transaction_read_only``: they cannot write by mistake
and work with a role that may only SELECT.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo

from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.errors import StateConnectionLost, StateError, StateLockedError, StateVersionError
from reconciler.sqlstore import (
    LockRequest,
    SqlStore,
    holder_info,
    poll,
    redact,
)

SCHEMA = "reconcile"

_V1 = (
    "CREATE TABLE meta (key text PRIMARY KEY, value text)",
    "CREATE TABLE images (target text, name text, image_id text NOT NULL, "
    "spec_digest text NOT NULL, request_json text, response_json text, status text, "
    "created_at text, updated_at text, recorded_at text NOT NULL, run_id text, "
    "PRIMARY KEY (target, name))",
    "CREATE TABLE runs (id text PRIMARY KEY, mode text, target text, profile text, "
    "catalog_digest text, started_at text, finished_at text, host text, pid integer, "
    "tool_version text, summary_json text, created integer, failed integer, outcome text, "
    "error text)",
    "CREATE TABLE journal (nonce text PRIMARY KEY, target text, name text, run_id text, "
    "request_json text, state text, started_at text, resolved_at text, image_id text, "
    "note text)",
    "INSERT INTO meta (key, value) VALUES ('revision', '0')",
    # PostgreSQL only: who holds which advisory lock (SQLite keeps that in its lock file).
    "CREATE TABLE locks (lock_key bigint PRIMARY KEY, target text, host text, pid integer, "
    "os_user text, since text, operation text, backend_pid integer)",
)
_V2 = (
    "ALTER TABLE images ADD COLUMN origin text NOT NULL DEFAULT 'created'",
    "ALTER TABLE runs ADD COLUMN adopted integer NOT NULL DEFAULT 0",
    "CREATE INDEX IF NOT EXISTS idx_journal_target_state ON journal (target, state)",
)
_V3 = ("CREATE TABLE applied_plans (plan_id text PRIMARY KEY, applied_at text, run_id text)",)
_V4 = ("CREATE TABLE server_info (target text, kind text, url text NOT NULL, "
       "body_json text NOT NULL, read_at text NOT NULL, PRIMARY KEY (target, kind))",)
_V5 = (
    "ALTER TABLE journal ADD COLUMN kind text NOT NULL DEFAULT 'create'",
    "ALTER TABLE runs ADD COLUMN updated integer NOT NULL DEFAULT 0",
)

#: MIGRATIONS[i] upgrades a schema of version i to version i + 1, like
#: ``reconciler.state.MIGRATIONS`` does for SQLite.
MIGRATIONS: list[tuple[str, ...]] = [_V1, _V2, _V3, _V4, _V5]
SCHEMA_VERSION = len(MIGRATIONS)  # equal to the SQLite one (tests/test_state.py checks)

_CORE_TABLES = {"meta", "images", "runs", "journal", "locks", "schema_info"}


def lock_key(*parts: str) -> int:
    """A stable signed 64-bit advisory lock key for ``parts`` (the same on every machine)."""
    digest = hashlib.sha256("\0".join(("reconcile", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


STORE_KEY = lock_key("store")  # shared by every writer, exclusive for a whole-store copy
MIGRATE_KEY = lock_key("migrate")


def target_key(target: str) -> int:
    return lock_key("target", target)


class PostgresStore(SqlStore):
    """Records, runs and journal in a PostgreSQL database, shared by a team."""

    _db_errors = (psycopg.Error,)
    _text_order = ' COLLATE "C"'

    def __init__(self, conn: psycopg.Connection[Any], location: str, *, writable: bool,
                 url: str, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(location, writable=writable, clock=clock)
        self.conn, self._url = conn, url

    # --- the SQL edge ------------------------------------------------------------------

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), params or None)

    @contextlib.contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[Any]:
        with self.conn.transaction() as tx:
            if not durable:
                self.conn.execute("SET LOCAL synchronous_commit = off")
            yield tx

    @contextlib.contextmanager
    def _write_transaction(self, durable: bool) -> Iterator[Any]:
        # Pipelined: BEGIN, the statements and COMMIT go out together and their answers come
        # back together, one round trip per group commit instead of one per statement. An
        # error still rolls the whole transaction back; it is raised when the pipeline syncs.
        with self.conn.pipeline(), self._transaction(durable) as tx:
            yield tx

    def _lost(self) -> bool:
        return bool(self.conn.broken or self.conn.closed)

    def _error(self, exc: Exception, doing: str) -> StateError:
        message = _clean(exc, self._url)
        if self._lost():
            return StateConnectionLost(
                f"lost the connection to the PostgreSQL state {self.location} ({message}); "
                "its lock went with it, so this run stopped sending creates. What was in "
                "flight is in the journal: run `reconcile apply` again to resolve it")
        return StateError(f"cannot {doing} the PostgreSQL state {self.location}: {message}")

    # --- opening -----------------------------------------------------------------------

    @classmethod
    def open_readonly(cls, url: str, *, clock: Clock = SYSTEM_CLOCK) -> PostgresStore | None:
        """Read-only session; None when the database holds no reconcile state yet."""
        conn = _connect(url)
        with _closed_on_error(conn, url, "read"):
            conn.execute("SET default_transaction_read_only = on")
            version = _check_version(conn, redact(url))
            if version == 0:
                conn.close()
                return None
            if version < SCHEMA_VERSION:
                raise StateVersionError(
                    f"the PostgreSQL state {redact(url)} has schema version {version}; this "
                    f"reconcile reads version {SCHEMA_VERSION}. The next `reconcile apply` "
                    "with this version upgrades it (reading never changes it)")
            conn.execute(f"SET search_path TO {SCHEMA}")
        return cls(conn, redact(url), writable=False, url=url, clock=clock)

    @classmethod
    def open_for_write(cls, url: str, lock: LockRequest, *,
                       clock: Clock = SYSTEM_CLOCK) -> PostgresStore:
        """Take the lock, then create or migrate the schema, then name ourselves holder."""
        location = redact(url)
        conn = _connect(url)
        with _closed_on_error(conn, url, "open", " for writing"):
            _check_version(conn, location)  # refuse a newer or foreign schema before all else
            keys = _take_locks(conn, location, lock, clock)
            _migrate(conn, location)
            conn.execute(f"SET search_path TO {SCHEMA}")
            info = holder_info(lock.operation, clock)
            with conn.transaction():
                for key in keys:
                    conn.execute(
                        "INSERT INTO locks (lock_key, target, host, pid, os_user, since, "
                        "operation, backend_pid) VALUES (%s, %s, %s, %s, %s, %s, %s, "
                        "pg_backend_pid()) ON CONFLICT (lock_key) DO UPDATE SET "
                        "target = excluded.target, host = excluded.host, pid = excluded.pid, "
                        "os_user = excluded.os_user, since = excluded.since, "
                        "operation = excluded.operation, backend_pid = excluded.backend_pid",
                        (key, lock.target, info["host"], info["pid"], info["user"],
                         info["since"], info["operation"]))
        return cls(conn, location, writable=True, url=url, clock=clock)

    def close(self) -> None:
        # Closing the session releases its advisory locks; the rows naming us go first.
        if self.writable and not self._lost():
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("DELETE FROM locks WHERE backend_pid = pg_backend_pid()")
        self.conn.close()


@contextlib.contextmanager
def _closed_on_error(conn: psycopg.Connection[Any], url: str, doing: str,
                     how: str = "") -> Iterator[None]:
    """Close *conn* on any error while opening; a database error becomes one StateError."""
    try:
        yield
    except psycopg.Error as exc:
        conn.close()
        raise StateError(f"cannot {doing} the PostgreSQL state {redact(url)}{how}: "
                         f"{_clean(exc, url)}") from None
    except BaseException:
        conn.close()
        raise


_LOGIN_REFUSED = ("password authentication failed", "pg_hba.conf", "authentication failed",
                  "no password supplied", "not permitted to log in",
                  "permission denied for database")


def _connect(url: str) -> psycopg.Connection[Any]:
    location = redact(url)
    try:
        params = pg_conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StateError(f"{location} is not a valid PostgreSQL URL: "
                         f"{_clean(exc, url)}") from None
    extra: dict[str, Any] = {}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = 10
    if "application_name" not in params:
        extra["application_name"] = "reconcile"
    try:
        return psycopg.connect(url, autocommit=True, **extra)
    except psycopg.Error as exc:
        message = _clean(exc, url)
        lowered = message.lower()
        if any(s in lowered for s in _LOGIN_REFUSED) or (
                "role" in lowered and "does not exist" in lowered):
            hint = "the server refused the login; check the user and password (PGPASSWORD " \
                   "or ~/.pgpass keep the password out of the URL)"
        elif "database" in lowered and "does not exist" in lowered:
            hint = "the database does not exist; create it first (createdb)"
        else:
            hint = "the server cannot be reached; check host, port and that it is running"
        raise StateError(f"cannot connect to the PostgreSQL state {location}: {hint} "
                         f"({message})") from None


def _clean(exc: Exception, url: str) -> str:
    """The driver's message on one line, with no password in it."""
    text = " ".join(str(exc).split())
    password = pg_conninfo.conninfo_to_dict(url).get("password") if _parses(url) else None
    if password:
        text = text.replace(str(password), "***")
    return redact(text)


def _parses(url: str) -> bool:
    try:
        pg_conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return False
    return True


def _tables(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')", (SCHEMA,))
    return {r[0] for r in rows}


def _check_version(conn: psycopg.Connection[Any], location: str) -> int:
    """The schema version; 0 when there is no reconcile schema yet."""
    tables = _tables(conn)
    if not tables:
        return 0
    if "schema_info" not in tables:
        raise StateError(
            f"the PostgreSQL database {location} has a schema {SCHEMA!r} whose tables "
            f"({', '.join(sorted(tables))}) reconcile did not make; point --state at another "
            "database (nothing was changed)")
    row = conn.execute(f"SELECT max(version) FROM {SCHEMA}.schema_info").fetchone()
    version = int(row[0]) if row and row[0] is not None else 0
    if version > SCHEMA_VERSION:
        raise StateVersionError(
            f"the PostgreSQL state {location} has schema version {version}, but this "
            f"reconcile understands up to {SCHEMA_VERSION}; upgrade reconcile (nothing was "
            "changed)")
    if version > 0 and not tables >= _CORE_TABLES:
        raise StateError(f"the PostgreSQL state {location} is damaged: tables "
                         f"{', '.join(sorted(_CORE_TABLES - tables))} are missing; restore it "
                         "from a backup")
    return version


def _migrate(conn: psycopg.Connection[Any], location: str) -> None:
    """Bring the schema to SCHEMA_VERSION in one transaction, one migrator at a time."""
    if _check_version(conn, location) == SCHEMA_VERSION:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_KEY,))
        version = _check_version(conn, location)  # another writer may have just done it
        if version == SCHEMA_VERSION:
            return
        if version == 0:
            exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                                  (SCHEMA,)).fetchone()
            if not exists:
                conn.execute(f"CREATE SCHEMA {SCHEMA}")
            conn.execute(f"CREATE TABLE {SCHEMA}.schema_info (version integer NOT NULL)")
            conn.execute(f"INSERT INTO {SCHEMA}.schema_info (version) VALUES (0)")
        conn.execute(f"SET LOCAL search_path TO {SCHEMA}")
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute("UPDATE schema_info SET version = %s", (SCHEMA_VERSION,))


def _take_locks(conn: psycopg.Connection[Any], location: str, request: LockRequest,
                clock: Clock) -> list[int]:
    """Take the advisory locks a writer of ``request.target`` needs, waiting up to the
    request's timeout; raise StateLockedError naming the holder."""
    if request.target:
        mine, shared = target_key(request.target), True
    else:
        mine, shared = STORE_KEY, False
    blocker = mine

    def attempt() -> bool:
        nonlocal blocker
        if not _try(conn, "pg_try_advisory_lock", mine):
            blocker = mine
            return False
        if shared and not _try(conn, "pg_try_advisory_lock_shared", STORE_KEY):
            conn.execute("SELECT pg_advisory_unlock(%s)", (mine,))
            blocker = STORE_KEY
            return False
        return True

    if not poll(attempt, request.timeout_s, clock):
        what = f" (target {request.target})" if request.target else ""
        raise StateLockedError(location, _holder(conn, blocker), waited_s=request.timeout_s,
                               what=what)
    return [mine]


def _try(conn: psycopg.Connection[Any], function: str, key: int) -> bool:
    row = conn.execute(f"SELECT {function}(%s)", (key,)).fetchone()
    return bool(row and row[0])


def _holder(conn: psycopg.Connection[Any], key: int) -> dict[str, Any]:
    """Who holds advisory lock ``key`` now, from the row its holder wrote (if any)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    backends = [r[0] for r in conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND classid::bigint = %s AND objid::bigint = %s AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        (unsigned >> 32, unsigned & 0xFFFFFFFF))]
    if not backends or "locks" not in _tables(conn):
        return {}
    row = conn.execute(
        f"SELECT host, pid, os_user, since, operation FROM {SCHEMA}.locks "
        "WHERE backend_pid = ANY(%s) ORDER BY since LIMIT 1", (backends,)).fetchone()
    if row is None:
        return {}
    return dict(zip(("host", "pid", "user", "since", "operation"), row, strict=True))
