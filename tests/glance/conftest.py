"""Fixtures for the integration suite against a real OpenStack Glance (``-m glance``).

The suite is deselected by default (``addopts = -m "not glance"``); ``make test-glance`` runs
it with ``-m glance``. A Glance that cannot be built or started is an error, never a skip: the
only way to skip is ``RECONCILE_SKIP_GLANCE=1``.

* ``glance_venv`` (session): builds or reuses ``.glance-venv/``.
* ``glance_template`` (session): one ``db_sync``'d database, copied into every server.
* ``glance`` (function): a fresh, empty Glance for one test; stopped afterwards, its log
  printed when the test failed.
* ``glance_shared`` (module): one Glance for a whole table of cases.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from glance_server import GlanceError, GlanceServer, ensure_venv

SKIP_VARIABLE = "RECONCILE_SKIP_GLANCE"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(request.node, f"rep_{when}", None) is not None
               and getattr(request.node, f"rep_{when}").failed for when in ("setup", "call"))


@pytest.fixture(scope="session")
def glance_venv() -> Path:
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1: the Glance integration suite was NOT run")
    try:
        return ensure_venv()
    except GlanceError as exc:
        pytest.fail(f"cannot build the Glance venv (set {SKIP_VARIABLE}=1 to skip the Glance "
                    f"suite explicitly):\n{exc}", pytrace=False)


@pytest.fixture(scope="session")
def glance_template(glance_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Glance database with the schema created once (db_sync takes seconds)."""
    server = GlanceServer(tmp_path_factory.mktemp("glance-template"), port=1, venv=glance_venv)
    try:
        server.write_config()
        server.db_sync()
    except GlanceError as exc:
        pytest.fail(f"glance-manage db_sync failed:\n{exc}", pytrace=False)
    return server.database


def _started(workdir: Path, venv: Path, template: Path, **options: int) -> GlanceServer:
    workdir.mkdir(parents=True, exist_ok=True)
    server = GlanceServer(workdir, venv=venv, **options)
    shutil.copyfile(template, server.database)
    try:
        server.start()
    except GlanceError as exc:
        pytest.fail(f"Glance did not start:\n{exc}", pytrace=False)
    return server


@pytest.fixture
def glance(glance_venv: Path, glance_template: Path, tmp_path: Path,
           request: pytest.FixtureRequest) -> Iterator[GlanceServer]:
    """A fresh Glance with no images, for this test only."""
    server = _started(tmp_path / "glance", glance_venv, glance_template)
    yield server
    server.stop()
    if _failed(request):
        print(f"----- Glance log ({server.log_path}) -----\n{server.log_text()}")


@pytest.fixture
def glance_low_quota(glance_venv: Path, glance_template: Path, tmp_path: Path,
                     request: pytest.FixtureRequest) -> Iterator[GlanceServer]:
    """A fresh Glance whose operator lowered image_property_quota to 4, as operators may:
    a limit reconcile cannot know, so only the server refuses."""
    server = _started(tmp_path / "glance", glance_venv, glance_template, property_quota=4)
    yield server
    server.stop()
    if _failed(request):
        print(f"----- Glance log ({server.log_path}) -----\n{server.log_text()}")


@pytest.fixture(scope="module")
def glance_shared(glance_venv: Path, glance_template: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceServer]:
    """One Glance for every case of a module (each case cleans up after itself)."""
    server = _started(tmp_path_factory.mktemp("glance-shared"), glance_venv, glance_template)
    yield server
    server.stop()
