"""Shared fixtures: catalog files on disk, a fixed clock, the CLI through CliRunner, state files,
sandboxes.

``run_cli`` runs every command in the test's own ``tmp_path`` (so a stray ``reconcile.toml`` in
the checkout never leaks in) with ``RECONCILE_*`` and ``NO_COLOR`` cleared, a manual clock
injected through ``obj=Runtime(...)``, and ``catch_exceptions=False`` so an unexpected exception
fails the test loudly instead of hiding behind exit code 1.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pg_server
import pytest
import yaml
from apply_helpers import SandboxFactory, sandboxes
from click.testing import CliRunner, Result

from reconciler.cli import Runtime, cli
from reconciler.clock import ManualClock
from reconciler.models import ImageSpec, Record
from reconciler.state import open_for_write

FIXED_NOW = datetime(2024, 5, 17, 12, 30, 0, tzinfo=UTC)
TARGET = "http://127.0.0.1:9999"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="Rewrite tests/golden/* from the current output instead of comparing.")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def fixed_clock() -> ManualClock:
    """Starts at FIXED_NOW and moves only when reconcile sleeps on it (backoff, settling)."""
    return ManualClock(FIXED_NOW)


CatalogContent = str | bytes | Mapping[str, Any] | list[Any]


@pytest.fixture
def write_catalog(tmp_path: Path) -> Callable[..., Path]:
    """write_catalog({"a.yaml": text_or_data, "sub/b.json": data}, directory="catalog") -> dir.

    Strings and bytes are written as they are (so line numbers are the test's own); dicts and
    lists are dumped as YAML, or as JSON for ``*.json`` names.
    """

    def write(files: Mapping[str, CatalogContent], directory: str = "catalog") -> Path:
        root = tmp_path / directory
        root.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            elif isinstance(content, str):
                path.write_text(content, encoding="utf-8")
            elif name.endswith(".json"):
                path.write_text(json.dumps(content, indent=2), encoding="utf-8")
            else:
                path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
        return root

    return write


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            fixed_clock: ManualClock) -> Callable[..., Result]:
    """run_cli(args, env=None) -> click Result (``.stdout``, ``.stderr``, ``.output``)."""
    for var in list(os.environ):
        if var.startswith("RECONCILE_") or var in ("NO_COLOR", "CI"):  # CI: as on a desk
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)

    def run(args: Iterable[Any], env: Mapping[str, str] | None = None,
            obj: Runtime | None = None) -> Result:
        return CliRunner().invoke(cli, [str(a) for a in args], env=env,
                                  obj=obj or Runtime(clock=fixed_clock),
                                  catch_exceptions=False, prog_name="reconcile")

    return run


def record_for(spec: ImageSpec, image_id: str, *, request: Mapping[str, Any] | None = None,
               status: str = "queued") -> Record:
    """A record as apply would write it; ``request`` defaults to the spec's own body."""
    from reconciler.models import body_digest

    body = dict(request) if request is not None else spec.body()
    stamp = "2024-05-01T08:00:00Z"
    response = {**body, "id": image_id, "status": status, "created_at": stamp,
                "updated_at": stamp, "self": f"/v2/images/{image_id}",
                "file": f"/v2/images/{image_id}/file", "schema": "/v2/schemas/image",
                "owner": "0123456789abcdef0123456789abcdef"}
    return Record.of(name=spec.name, image_id=image_id, spec_digest=body_digest(body),
                     request=body, response=response, status=status, created_at=stamp,
                     updated_at=stamp, recorded_at=stamp, run_id="run-0001")


@pytest.fixture
def make_record() -> Callable[..., Record]:
    return record_for


@pytest.fixture
def make_state() -> Callable[..., Path]:
    """make_state(path, records=[Record...], pending=[name...], target=TARGET) -> path."""

    def make(path: Any, records: Iterable[Record] = (), *, pending: Iterable[str] = (),
             target: str = TARGET) -> Any:
        store = open_for_write(path)
        try:
            for record in records:
                store.save_record(target, record)
            for i, name in enumerate(pending):
                store.journal_open(nonce=f"nonce-{i:04d}", target=target, name=name,
                                   run_id="run-0002", request={"name": name})
        finally:
            store.close()
        return path

    return make


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def file_sha256() -> Callable[[Path], str]:
    return sha256_of


@pytest.fixture
def sandbox() -> Iterator[SandboxFactory]:
    """sandbox(**SandboxConfig fields) -> a started Sandbox; all are stopped after the test."""
    yield from sandboxes()


# --- state stores -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_admin() -> Iterator[str]:
    """An administrative URL of the PostgreSQL server of this test session."""
    with pg_server.server() as url:
        yield url


@pytest.fixture
def pg_url(pg_admin: str) -> Iterator[str]:
    """A PostgreSQL state URL: an empty database of this test's own."""
    with pg_server.database(pg_admin) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def state_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A state store location of each kind: an SQLite file path, a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return str(request.getfixturevalue("pg_url"))
