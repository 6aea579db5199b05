"""The planner as a pure function over plain values: tables of (catalog, records) -> changes."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.models import MARKER_PROPERTY, Catalog, FieldDiff, ImageSpec, Record, body_digest
from reconciler.planner import PENDING_DETAIL, Planner, diff_bodies, plan

TARGET = "http://127.0.0.1:9999"
OS = "Ubuntu 18.04 server 64bit"


def spec(name: str, **fields: Any) -> ImageSpec:
    base: dict[str, Any] = {"os_version": OS, "visibility": "private", "protected": False,
                            "container_format": "bare", "disk_format": "zvhd2", "min_ram": 1024,
                            "min_disk": 40, "tags": ("base", "ubuntu"),
                            "properties": {"hw_firmware_type": "bios"},
                            "file": "catalog/a.yaml", "line": 2}
    return ImageSpec(name=name, **{**base, **fields})


def record(name: str, body: dict[str, Any], image_id: str | None = None) -> Record:
    return Record.of(name=name, image_id=image_id or f"id-{name}", spec_digest=body_digest(body),
                     request=body, response={"id": image_id or f"id-{name}"},
                     recorded_at="2024-05-01T08:00:00Z")


def recorded(s: ImageSpec, **changes: Any) -> Record:
    """A record of what was sent for ``s`` before the catalog changed by ``changes``."""
    return record(s.name, s.model_copy(update=changes).body())


def catalog(*specs: ImageSpec, warnings: dict[str, tuple[str, ...]] | None = None) -> Catalog:
    return Catalog(directory="catalog", profile="ims", images=specs, warnings=warnings or {})


def only_change(cat: Catalog, records: dict[str, Record], pending: tuple[str, ...] = ()) -> Any:
    result = plan(cat, records, target=TARGET, drift="report",
                  pending={n: f"nonce-{n}" for n in pending})
    assert len(result.changes) == 1
    return result.changes[0]


# --- one image, one verdict -----------------------------------------------------------------

A = spec("a")
VERDICTS: dict[str, tuple[dict[str, Record], tuple[str, ...], str, str]] = {
    # name: (records, pending, action, reason)
    "not_recorded_is_create": ({}, (), "create", "not_recorded"),
    "digest_match_is_unchanged": ({"a": record("a", A.body())}, (), "unchanged", "in_sync"),
    "digest_mismatch_is_drift": ({"a": recorded(A, min_disk=20)}, (), "drift",
                                 "catalog_changed"),
    "pending_create_is_blocked": ({}, ("a",), "blocked", "pending_create"),
    "tags_reordered_is_unchanged": (
        {"a": record("a", A.model_copy(update={"tags": ("ubuntu", "base")}).body())}, (),
        "unchanged", "in_sync"),
    "marker_in_request_is_unchanged": (
        {"a": record("a", {**A.body(), MARKER_PROPERTY: "nonce-1"})}, (), "unchanged",
        "in_sync"),
}


@pytest.mark.parametrize(("records", "pending", "action", "reason"), VERDICTS.values(),
                         ids=VERDICTS.keys())
def test_verdict_for_one_image(records: dict[str, Record], pending: tuple[str, ...],
                               action: str, reason: str) -> None:
    change = only_change(catalog(A), records, pending)
    assert (change.name, change.action, change.reason) == ("a", action, reason)


def test_create_carries_spec_file_and_line() -> None:
    change = only_change(catalog(A), {})
    assert change.spec == A
    assert (change.file, change.line, change.image_id) == ("catalog/a.yaml", 2, None)


def test_unchanged_and_drift_carry_the_recorded_image_id() -> None:
    result = plan(catalog(A, spec("b")), {"a": record("a", A.body(), "id-1"),
                                          "b": record("b", {"name": "b"}, "id-2")},
                  target=TARGET, drift="report")
    assert [(c.action, c.image_id) for c in result.changes] == [("unchanged", "id-1"),
                                                                ("drift", "id-2")]


def test_blocked_pending_create_explains_itself() -> None:
    change = only_change(catalog(A), {}, ("a",))
    assert change.detail == PENDING_DETAIL
    assert change.spec == A


def test_pending_name_that_is_already_recorded_follows_the_record() -> None:
    change = only_change(catalog(A), {"a": record("a", A.body())}, ("a",))
    assert change.action == "unchanged"


def test_orphan_is_recorded_but_not_in_catalog() -> None:
    result = plan(catalog(), {"gone": record("gone", {"name": "gone"}, "id-gone")},
                  target=TARGET, drift="report")
    (change,) = result.changes
    assert (change.action, change.reason, change.image_id) == ("orphan", "not_in_catalog",
                                                               "id-gone")
    assert "left in the cloud untouched" in change.detail
    assert change.spec is None
    assert change.file is None


# --- drift diffs ------------------------------------------------------------------------------

DRIFTS: dict[str, tuple[ImageSpec, dict[str, Any], tuple[FieldDiff, ...]]] = {
    # name: (catalog spec now, what differed when it was sent, expected diff)
    "min_disk_changed": (A, {"min_disk": 20}, (FieldDiff(field="min_disk", before=20,
                                                         after=40),)),
    "tag_added": (A, {"tags": ("base",)}, (FieldDiff(field="tags", before=["base"],
                                                     after=["base", "ubuntu"]),)),
    "property_removed": (
        A, {"properties": {"hw_firmware_type": "bios", "docker_version": "24.0"}},
        (FieldDiff(field="docker_version", before="24.0", after=None),)),
    "property_added": (A, {"properties": {}}, (FieldDiff(field="hw_firmware_type",
                                                         before=None, after="bios"),)),
    "os_version_changed": (
        A, {"os_version": "Ubuntu 16.04 server 64bit"},
        (FieldDiff(field="os_version", before="Ubuntu 16.04 server 64bit", after=OS),)),
    "protected_unset_before": (A, {"protected": None}, (FieldDiff(field="protected",
                                                                  before=None, after=False),)),
    "two_fields_in_name_order": (
        A, {"min_ram": 512, "disk_format": "qcow2"},
        (FieldDiff(field="disk_format", before="qcow2", after="zvhd2"),
         FieldDiff(field="min_ram", before=512, after=1024))),
}


@pytest.mark.parametrize(("now", "before", "expected"), DRIFTS.values(), ids=DRIFTS.keys())
def test_drift_shows_field_level_diff(now: ImageSpec, before: dict[str, Any],
                                      expected: tuple[FieldDiff, ...]) -> None:
    change = only_change(catalog(now), {now.name: recorded(now, **before)})
    assert change.action == "drift"
    assert change.diff == expected


def test_reordered_tags_are_not_in_a_drift_diff() -> None:
    sent = A.model_copy(update={"tags": ("ubuntu", "base"), "min_disk": 20}).body()
    change = only_change(catalog(A), {"a": record("a", sent)})
    assert [d.field for d in change.diff] == ["min_disk"]


def test_marker_property_is_never_in_a_diff() -> None:
    sent = {**A.model_copy(update={"min_disk": 20}).body(), MARKER_PROPERTY: "nonce-1"}
    change = only_change(catalog(A), {"a": record("a", sent)})
    assert MARKER_PROPERTY not in {d.field for d in change.diff}
    assert [d.field for d in change.diff] == ["min_disk"]


def test_diff_bodies_ignores_marker_on_either_side() -> None:
    assert diff_bodies({"name": "a", MARKER_PROPERTY: "x"},
                       {"name": "a", MARKER_PROPERTY: "y"}) == ()


# --- ordering, warnings, determinism -----------------------------------------------------------

def test_changes_are_in_name_order_across_actions() -> None:
    cat = catalog(spec("delta"), spec("alpha"), spec("charlie"))
    records = {"bravo": record("bravo", {"name": "bravo"}),
               "charlie": record("charlie", spec("charlie").body())}
    result = plan(cat, records, target=TARGET, drift="report")
    assert [(c.name, c.action) for c in result.changes] == [
        ("alpha", "create"), ("bravo", "orphan"), ("charlie", "unchanged"), ("delta", "create")]


def test_same_inputs_give_equal_plans() -> None:
    cat = catalog(spec("b"), spec("a"), warnings={"a": ("os_version x",)})
    records = {"b": recorded(spec("b"), min_disk=1), "z": record("z", {"name": "z"})}
    first = plan(cat, records, target=TARGET, drift="report", pending={"a": "n1"})
    second = plan(cat, dict(reversed(records.items())), target=TARGET, drift="report",
                  pending={"a": "n1"})
    assert first == second


def test_warnings_attach_to_their_own_image() -> None:
    cat = catalog(spec("a"), spec("b"), spec("c"),
                  warnings={"b": ("name is odd",), "c": ("tags has 21 tags",)})
    records = {"c": record("c", spec("c").body()), "orphan": record("orphan", {"name": "o"})}
    result = plan(cat, records, target=TARGET, drift="report")
    assert {c.name: c.warnings for c in result.changes} == {
        "a": (), "b": ("name is odd",), "c": ("tags has 21 tags",), "orphan": ()}


def test_plan_summary_and_identity() -> None:
    cat = catalog(spec("new"), spec("same"), spec("moved"), spec("stuck"))
    records = {"same": record("same", spec("same").body()),
               "moved": recorded(spec("moved"), min_disk=1),
               "old": record("old", {"name": "old"})}
    result = plan(cat, records, target=TARGET, drift="report", pending={"stuck": "n1"})
    assert result.summary() == {"create": 1, "adopt": 0, "update": 0, "unchanged": 1, "drift": 1,
                                "orphan": 1,
                                "blocked": 1}
    assert (result.target, result.profile, result.catalog_digest) == (
        TARGET, "ims", cat.digest)
    assert [c.name for c in result.creates] == ["new"]


def test_empty_catalog_and_state_plan_nothing() -> None:
    result = plan(catalog(), {}, target="", drift="report")
    assert result.changes == ()
    assert result.summary() == dict.fromkeys(("create", "adopt", "update", "unchanged", "drift",
                                              "orphan", "blocked"), 0)


def test_changes_are_in_name_order_without_orphans_too() -> None:
    result = plan(catalog(spec("b"), spec("a")), {}, target=TARGET, drift="report")
    assert [c.name for c in result.changes] == ["a", "b"]


# --- a plan made as the catalog loads ---------------------------------------------------------

def steps_table() -> tuple[Catalog, dict[str, Record], dict[str, str]]:
    specs = [spec("create"), spec("same"), spec("moved"), spec("stuck"), spec("warned")]
    records = {"same": record("same", spec("same").body()),
               "moved": recorded(spec("moved"), min_disk=1),
               "old": record("old", {"name": "old"}), "zold": record("zold", {"name": "z"})}
    cat = catalog(*sorted(specs, key=lambda s: s.name), warnings={"warned": ("name is odd",)})
    return cat, records, {"stuck": "n1"}


@pytest.mark.parametrize("batches", [[], [["moved"]], [["same", "create"], ["warned"]],
                                     [["create", "moved", "same", "stuck", "warned"]]])
def test_a_plan_made_in_steps_is_the_plan(batches: list[list[str]]) -> None:
    cat, records, pending = steps_table()
    whole = plan(cat, dict(records), target=TARGET, pending=pending)
    by_name = {s.name: s for s in cat.images}
    planner = Planner(dict(records), target=TARGET, profile=cat.profile, pending=pending)
    for batch in batches:
        planner.add([by_name[n] for n in batch], cat.warnings)
    assert planner.plan(cat) == whole
    assert [c.reason for c in whole.changes] == [
        "not_recorded", "replace_required", "not_in_catalog", "in_sync", "pending_create",
        "not_recorded", "not_in_catalog"]
    assert whole.changes[5].warnings == ("name is odd",)


def test_added_images_must_be_the_catalogs() -> None:
    cat, records, _ = steps_table()
    planner = Planner(records, target=TARGET, profile=cat.profile)
    planner.add([spec("elsewhere")], {})
    with pytest.raises(ValueError, match="not in the catalog"):
        planner.plan(cat)
    planner = Planner(records, target=TARGET, profile=cat.profile)
    planner.add([spec("same", min_disk=1)], {})  # the same name, another image
    with pytest.raises(ValueError, match="added as another image"):
        planner.plan(cat)
