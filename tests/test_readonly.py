"""The read-only commands' library functions: they return data, never lock, never write."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.errors import CatalogError, ConfigError, StateError
from reconciler.models import ImageSpec, Record
from reconciler.operations import (
    list_records,
    run_history,
    show_records,
    validate_catalog,
)
from reconciler.state import open_for_write

TARGETS = ("https://ims.a.example", "https://ims.b.example")


def _record(name: str, image_id: str) -> Record:
    spec = ImageSpec(name=name, min_disk=40)
    return Record.of(name=name, image_id=image_id, spec_digest=spec.digest, request=spec.body(),
                     response={"id": image_id, "owner": "p"}, status="queued",
                     recorded_at="2024-05-01T00:00:00Z")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    store = open_for_write(path)
    store.save_record(TARGETS[1], _record("web", "id-web-b"))
    store.save_record(TARGETS[0], _record("web", "id-web-a"))
    store.save_record(TARGETS[0], _record("db", "id-db"))
    store.close()
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_list_records_by_target_then_name(state: Path) -> None:
    assert [(t, r.name, r.image_id) for t, r in list_records(state)] == [
        (TARGETS[0], "db", "id-db"), (TARGETS[0], "web", "id-web-a"),
        (TARGETS[1], "web", "id-web-b")]


def test_show_records_gives_one_document_per_target(state: Path) -> None:
    docs = show_records(state, "web")
    assert [(d["target"], d["image_id"]) for d in docs] == [
        (TARGETS[0], "id-web-a"), (TARGETS[1], "id-web-b")]
    assert docs[0]["response"] == {"id": "id-web-a", "owner": "p"}
    assert docs[0]["request"]["min_disk"] == 40
    assert "request_json" not in docs[0] and "response_json" not in docs[0]


def test_show_records_of_an_unknown_name_says_where_to_look(state: Path) -> None:
    with pytest.raises(ConfigError, match=r"no image named .nope.*state list"):
        show_records(state, "nope")


def test_run_history_of_a_state_without_runs_is_empty(state: Path) -> None:
    assert run_history(state, 5) == []


@pytest.mark.parametrize("read", [list_records, lambda p: show_records(p, "web"),
                                  lambda p: run_history(p, 5)])
def test_reading_changes_nothing_and_takes_no_lock(state: Path,
                                                   read: Callable[[Path], object]) -> None:
    before = sorted(p.name for p in state.parent.iterdir()), _digest(state)
    read(state)
    assert (sorted(p.name for p in state.parent.iterdir()), _digest(state)) == before


@pytest.mark.parametrize("read", [list_records, lambda p: show_records(p, "web"),
                                  lambda p: run_history(p, 5)])
def test_a_missing_state_file_is_an_error_and_stays_missing(
        tmp_path: Path, read: Callable[[Path], object]) -> None:
    with pytest.raises(StateError, match="does not exist yet"):
        read(tmp_path / "none.db")
    assert list(tmp_path.iterdir()) == []


def test_validate_catalog_returns_the_catalog_and_its_warnings(
        write_catalog: Callable[..., Path]) -> None:
    root = write_catalog({"a.yaml": {"images": [{"name": "ok", "min_disk": 40,
                                                 "os_version": "Ubuntu 18.04 server 64bit"},
                                                {"name": "bare"}]}})
    result = validate_catalog(root, profile="ims")
    assert sorted(s.name for s in result.catalog.images) == ["bare", "ok"]
    assert result.warnings and all(w.file == f"{root / 'a.yaml'}" for w in result.warnings)
    assert all(w.image == "bare" and str(w).startswith(f"{w.file}:{w.line}: bare.")
               for w in result.warnings)


def test_validate_catalog_strict_turns_warnings_into_errors(
        write_catalog: Callable[..., Path]) -> None:
    root = write_catalog({"a.yaml": {"images": [{"name": "bare"}]}})
    with pytest.raises(CatalogError):
        validate_catalog(root, profile="ims", strict=True)
