"""The value models' own helpers: ``build``, the light records of an offline plan, and
``bulk_build``, which many models are built under."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from reconciler.models import (
    Change,
    FieldDiff,
    ImageSpec,
    Record,
    RecordRows,
    body_digest,
    build,
    request_body,
)
from reconciler.operations import FREEZE_MIN_OBJECTS, bulk_build

SPEC: dict[str, Any] = {
    "name": "web", "os_version": "Ubuntu 22.04 server 64bit", "visibility": "private",
    "protected": False, "container_format": "bare", "disk_format": "qcow2", "min_ram": 1024,
    "min_disk": 40, "tags": ("b", "a"), "properties": {"team": "web"}, "file": "a.yaml",
    "line": 3, "drift": None,
}
RECORD: dict[str, Any] = {
    "name": "web", "image_id": "id-1", "spec_digest": "d" * 64, "request_json": "{}",
    "response_json": "{}", "status": "queued", "created_at": None, "updated_at": None,
    "recorded_at": "2026-12-01T00:00:00Z", "run_id": "r", "origin": "created",
}
CHANGE: dict[str, Any] = {
    "name": "web", "action": "drift", "reason": "catalog_changed", "detail": "",
    "diff": (FieldDiff(field="min_ram", before=1, after=2),), "warnings": (), "file": "a.yaml",
    "line": 3, "image_id": "id-1", "spec": ImageSpec(**SPEC), "remote": None, "patch": (),
    "patch_api": None, "target": None,
}


@pytest.mark.parametrize(("model", "values"), [(ImageSpec, SPEC), (Record, RECORD),
                                               (Change, CHANGE)],
                         ids=["ImageSpec", "Record", "Change"])
def test_build_makes_what_model_construct_makes(model: type[BaseModel],
                                                values: dict[str, Any]) -> None:
    fields = set(model.model_fields)
    assert set(values) == fields  # build needs every field
    built = build(model, fields, dict(values))
    constructed = model.model_construct(_fields_set=fields, **values)
    # every attribute pydantic keeps: a pydantic release that keeps one more fails here
    assert built.__getstate__() == constructed.__getstate__()
    assert built == constructed == model.model_validate(values)
    assert built.model_dump() == constructed.model_dump()


def test_a_specs_request_body_and_digest_come_from_its_fields() -> None:
    spec = ImageSpec(**SPEC)
    assert request_body(SPEC) == spec.body() == {
        "name": "web", "__os_version": "Ubuntu 22.04 server 64bit", "visibility": "private",
        "protected": False, "container_format": "bare", "disk_format": "qcow2",
        "min_ram": 1024, "min_disk": 40, "tags": ["b", "a"], "team": "web"}
    assert spec.digest == body_digest(request_body(SPEC))
    bare = ImageSpec(name="x")
    assert bare.body() == {"name": "x"}


def test_record_rows_make_light_records_and_let_go_of_them() -> None:
    rows = RecordRows({"a": ("a", "id-a", "d-a", "created"), "b": ("b", "id-b", "d-b",
                                                                   "adopted")})
    assert list(rows) == ["a", "b"] and len(rows) == 2
    assert (rows.digest("a"), rows.digest("b"), rows.digest("c")) == ("d-a", "d-b", None)
    a = rows["a"]
    assert (a.name, a.image_id, a.spec_digest, a.origin, a.request) == (
        "a", "id-a", "d-a", "created", {})
    assert rows.pop("b") == Record(name="b", image_id="id-b", spec_digest="d-b",
                                   recorded_at="", origin="adopted")
    assert rows.pop("b") is None and list(rows) == ["a"]


@pytest.fixture
def collecting() -> Iterator[None]:
    """The collector on, and whatever a test freezes let go of again."""
    enabled = gc.isenabled()
    gc.enable()
    yield
    gc.unfreeze()
    if not enabled:
        gc.disable()


def test_a_big_bulk_build_is_frozen_so_the_collector_does_not_walk_it(
        collecting: None) -> None:
    frozen = gc.get_freeze_count()
    with bulk_build():
        assert not gc.isenabled()
        kept = [[i] for i in range(FREEZE_MIN_OBJECTS + 1000)]  # lists: tracked objects
    assert gc.isenabled()
    assert gc.get_freeze_count() - frozen >= len(kept)
    assert gc.get_count()[0] < 1000  # nothing left for the next pass to walk


def test_a_small_bulk_build_is_left_to_the_collector(collecting: None) -> None:
    gc.collect()
    frozen = gc.get_freeze_count()
    with bulk_build():
        kept = [[i] for i in range(100)]
    assert gc.get_freeze_count() == frozen
    assert gc.get_count()[0] >= len(kept)


def test_the_collector_resumes_when_the_last_of_overlapping_builds_ends(
        collecting: None) -> None:
    # Targets are planned in threads at once; the collector is one per process.
    first, second = bulk_build(), bulk_build()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second build still runs
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_build_begun_with_the_collector_off_leaves_it_off(collecting: None) -> None:
    gc.disable()
    with bulk_build():
        pass
    assert not gc.isenabled()
