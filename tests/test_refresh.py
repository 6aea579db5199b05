"""``plan --refresh`` and ``apply`` reading the cloud: images deleted or changed out of band,
lost records adopted by their marker, same-name images blocked, ``state import`` and
``state forget``. Everything runs end to end: the CLI through CliRunner, real loopback HTTP
against the in-process sandbox, and a real SQLite state file read back with plain ``sqlite3``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from apply_helpers import (
    UNKNOWN_OS_VERSION,
    CliWorld,
    SandboxFactory,
    by_name,
    drop_record,
    generate_catalog,
    recorded,
    replace_image,
    total_requests,
    write_images,
)
from click.testing import Result

from reconciler.models import MARKER_PROPERTY
from reconciler.refresh import observe

OTHER_PROJECT = "ffffffffffffffffffffffffffffffff"


# --- the world: a sandbox, a catalog, a state file, the CLI -----------------------------------

class World(CliWorld):
    token = "tok-refresh-0001"

    def apply(self, *extra: Any) -> Result:
        return self.cli("apply", "--yes", *extra)

    def plan_json(self, *extra: Any) -> dict[str, Any]:
        result = self.cli("plan", "--refresh", "--format", "json", *extra)
        assert result.exit_code in (0, 2), result.output
        doc = json.loads(result.stdout)
        assert isinstance(doc, dict)
        return doc

    def records(self) -> dict[str, dict[str, Any]]:
        """name -> record row, read with plain sqlite3; fails if a name is recorded twice."""
        return recorded(self.state)

    def server(self) -> dict[str, list[Mapping[str, Any]]]:
        """name -> the images the sandbox stores under it."""
        return by_name(self.sb.images())

    def drop_record(self, name: str) -> None:
        drop_record(self.state, name)


def changes(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["changes"]}


def actions(doc: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["action"] for c in doc["changes"]}


NAMES = ["img-000", "img-001", "img-002", "img-003"]


@pytest.fixture
def world(tmp_path: Path, run_cli: Callable[..., Result], sandbox: SandboxFactory) -> World:
    return World(sandbox(), tmp_path / "state.db", write_images(tmp_path / "catalog", NAMES),
                 run_cli)


@pytest.fixture
def applied(world: World) -> World:
    """The catalog applied once: one image per name on the server, each recorded."""
    result = world.apply()
    assert result.exit_code == 0, result.output
    assert sorted(world.records()) == NAMES
    assert world.sb.post_count == len(NAMES)
    return world


# --- 1. images deleted out of band ------------------------------------------------------------

def test_refreshed_plan_recreates_an_image_deleted_out_of_band(applied: World) -> None:
    assert applied.sb.delete_image(applied.records()["img-001"]["image_id"])

    result = applied.cli("plan", "--refresh", "--detailed-exitcode", "--format", "json")

    assert result.exit_code == 2, result.output
    doc = json.loads(result.stdout)
    creates = [c for c in doc["changes"] if c["action"] == "create"]
    assert [(c["name"], c["reason"]) for c in creates] == [("img-001", "missing_remotely")]
    assert {n: a for n, a in actions(doc).items() if n != "img-001"} == dict.fromkeys(
        ["img-000", "img-002", "img-003"], "unchanged")


def test_text_report_says_the_recorded_image_was_deleted_out_of_band(applied: World) -> None:
    gone = applied.records()["img-002"]["image_id"]
    applied.sb.delete_image(gone)

    result = applied.cli("plan", "--refresh")

    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.stdout.splitlines() if "deleted out of band" in ln)
    assert gone in line
    assert "Plan: 1 to create, 3 unchanged" in result.stdout


def test_offline_plan_takes_the_record_of_a_deleted_image_at_its_word(applied: World) -> None:
    applied.sb.delete_image(applied.records()["img-001"]["image_id"])
    requests_before = total_requests(applied.sb)

    result = applied.cli("plan", "--format", "json", "--detailed-exitcode")

    assert result.exit_code == 0, result.output
    assert set(actions(json.loads(result.stdout)).values()) == {"unchanged"}
    assert total_requests(applied.sb) == requests_before  # offline: no request


def test_apply_recreates_a_deleted_image_and_records_its_new_id(applied: World) -> None:
    old_id = applied.records()["img-003"]["image_id"]
    applied.sb.delete_image(old_id)

    result = applied.apply("--format", "json")

    assert result.exit_code == 0, result.output
    outcomes = json.loads(result.stdout)["outcomes"]
    assert [(o["name"], o["result"]) for o in outcomes] == [("img-003", "created")]
    assert applied.sb.post_count == len(NAMES) + 1
    server = applied.server()
    assert {n: len(v) for n, v in server.items()} == dict.fromkeys(NAMES, 1)
    new_id = applied.records()["img-003"]["image_id"]
    assert new_id != old_id
    assert new_id == server["img-003"][0]["id"]


def test_recorded_image_killed_out_of_band_is_created_again(applied: World) -> None:
    killed = applied.records()["img-001"]["image_id"]
    replace_image(applied.sb, killed, status="killed")

    change = changes(applied.plan_json())["img-001"]
    result = applied.apply()

    assert (change["action"], change["reason"]) == ("create", "missing_remotely")
    assert "was killed" in change["detail"]
    assert result.exit_code == 0, result.output
    new_id = applied.records()["img-001"]["image_id"]
    assert new_id != killed
    live = [i["id"] for i in applied.server()["img-001"] if i["status"] != "killed"]
    assert live == [new_id]


# --- 2. images changed out of band ------------------------------------------------------------

def test_image_changed_out_of_band_is_drift_changed_remotely_with_a_field_diff(
        applied: World) -> None:
    image_id = applied.records()["img-000"]["image_id"]
    replace_image(applied.sb, image_id, min_disk=80)

    change = changes(applied.plan_json("--drift", "report"))["img-000"]

    assert (change["action"], change["reason"]) == ("drift", "changed_remotely")
    assert change["image_id"] == image_id
    assert change["diff"] == [{"field": "min_disk", "before": 40, "after": 80}]


def test_changed_property_shows_in_the_remote_diff(applied: World) -> None:
    replace_image(applied.sb, applied.records()["img-001"]["image_id"], build_id="patched")

    change = changes(applied.plan_json("--drift", "report"))["img-001"]

    assert (change["action"], change["reason"]) == ("drift", "changed_remotely")
    assert change["diff"] == [{"field": "build_id", "before": "00000001", "after": "patched"}]


def test_marker_property_never_appears_in_a_diff(applied: World) -> None:
    records = applied.records()
    # One image with only its marker changed, one with the marker and min_disk changed.
    replace_image(applied.sb, records["img-000"]["image_id"], **{MARKER_PROPERTY: "other"})
    replace_image(applied.sb, records["img-001"]["image_id"],
                  **{MARKER_PROPERTY: "other", "min_disk": 90})

    found = changes(applied.plan_json())

    assert (found["img-000"]["action"], found["img-000"]["diff"]) == ("unchanged", [])
    assert [d["field"] for d in found["img-001"]["diff"]] == ["min_disk"]
    assert all(d["field"] != MARKER_PROPERTY for c in found.values() for d in c["diff"])


def test_apply_does_not_touch_an_image_changed_out_of_band_under_drift_report(
        applied: World) -> None:
    image_id = applied.records()["img-002"]["image_id"]
    replace_image(applied.sb, image_id, min_disk=100)

    result = applied.apply("--format", "json", "--drift", "report")

    assert result.exit_code == 0, result.output
    assert applied.sb.post_count == len(NAMES)
    assert applied.records()["img-002"]["image_id"] == image_id
    assert json.loads(result.stdout)["summary"]["drift"] == 1


def test_value_the_server_normalised_at_create_is_not_drift(
        tmp_path: Path, run_cli: Callable[..., Result], sandbox: SandboxFactory) -> None:
    sb = sandbox(os_version_policy="fallback")
    catalog = write_images(tmp_path / "catalog", ["odd-000"],
                           overrides={"odd-000": {"os_version": UNKNOWN_OS_VERSION}})
    world = World(sb, tmp_path / "state.db", catalog, run_cli)
    assert world.apply().exit_code == 0
    assert sb.images()[0]["__os_version"] == "Other Linux(64 bit)"  # nobody changed it since

    result = world.cli("plan", "--refresh", "--detailed-exitcode", "--format", "json")

    change = changes(json.loads(result.stdout))["odd-000"]
    assert (change["action"], change["reason"]) == ("unchanged", "in_sync"), change
    assert result.exit_code == 0


# --- 3. lost records --------------------------------------------------------------------------

def test_refreshed_plan_adopts_an_image_whose_record_was_lost(applied: World) -> None:
    image_id = applied.records()["img-001"]["image_id"]
    applied.drop_record("img-001")

    change = changes(applied.plan_json())["img-001"]

    assert (change["action"], change["reason"]) == ("adopt", "adopted")
    assert change["image_id"] == image_id


def test_apply_records_a_lost_image_without_creating_another(applied: World) -> None:
    image_id = applied.records()["img-002"]["image_id"]
    applied.drop_record("img-002")

    result = applied.apply("--format", "json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["summary"]["adopted"] == 1
    assert doc["summary"]["created"] == 0
    assert applied.sb.post_count == len(NAMES)  # no POST
    assert {n: len(v) for n, v in applied.server().items()} == dict.fromkeys(NAMES, 1)
    record = applied.records()["img-002"]
    assert (record["image_id"], record["origin"]) == (image_id, "adopted")


def test_adopted_image_is_unchanged_in_the_next_refreshed_plan(applied: World) -> None:
    applied.drop_record("img-000")
    assert applied.apply().exit_code == 0

    result = applied.cli("plan", "--refresh", "--detailed-exitcode")

    assert result.exit_code == 0, result.output
    assert "Plan: 0 to create, 4 unchanged, 0 drifted, 0 orphaned, 0 blocked." in result.stdout


# --- 4. same-name duplicates ------------------------------------------------------------------

def test_second_image_with_a_recorded_name_blocks_it_as_duplicates(applied: World) -> None:
    ours = applied.sb.images()[0]
    name = str(ours["name"])
    other = applied.sb.add_image({"name": name, "created_at": "2030-01-01T00:00:00Z"})

    change = changes(applied.plan_json())[name]

    assert (change["action"], change["reason"]) == ("blocked", "duplicates")
    for image in (ours, other):
        assert f"{image['id']} (created {image['created_at']})" in change["detail"]
    assert f"reconcile state import {name}" in change["detail"]


def test_apply_with_duplicates_exits_1_and_creates_nothing(applied: World) -> None:
    name = "img-002"
    applied.sb.add_image({"name": name})
    applied.sb.delete_image(applied.records()["img-003"]["image_id"])  # still recreated

    result = applied.apply("--format", "json")

    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["summary"]["blocked"] == 1
    assert [(o["name"], o["result"]) for o in doc["outcomes"]] == [("img-003", "created")]
    assert applied.sb.post_count == len(NAMES) + 1
    assert len(applied.server()[name]) == 2


def test_two_unrecorded_same_name_images_block_a_create(world: World) -> None:
    first = world.sb.add_image({"name": "img-000", MARKER_PROPERTY: "n-1"})
    second = world.sb.add_image({"name": "img-000", MARKER_PROPERTY: "n-2"})

    change = changes(world.plan_json())["img-000"]
    result = world.apply()

    assert (change["action"], change["reason"]) == ("blocked", "duplicates")
    assert first["id"] in change["detail"] and second["id"] in change["detail"]
    assert result.exit_code == 1
    assert "img-000" not in world.records()
    assert len(world.server()["img-000"]) == 2


# --- 5. names taken by images reconcile did not create ----------------------------------------

def dry_run_requests(world: World) -> dict[str, dict[str, Any]]:
    """name -> the exact body apply would POST (from ``apply --dry-run --format json``)."""
    result = world.cli("apply", "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    return {c["name"]: c["request"] for c in json.loads(result.stdout)["changes"]
            if c["action"] == "create"}


@pytest.fixture
def taken(world: World) -> tuple[World, dict[str, Any]]:
    """img-001 exists in the cloud as the catalog describes it, but without our marker."""
    body = dry_run_requests(world)["img-001"]
    image = world.sb.add_image(body)
    assert MARKER_PROPERTY not in image
    return world, image


def test_unmarked_same_name_image_is_blocked_name_taken(taken: tuple[World, Any]) -> None:
    world, image = taken

    change = changes(world.plan_json())["img-001"]

    assert (change["action"], change["reason"]) == ("blocked", "name_taken")
    assert change["image_id"] == image["id"]
    assert f"reconcile state import img-001 {image['id']}" in change["detail"]


def test_apply_never_adopts_or_recreates_an_unmarked_image(taken: tuple[World, Any]) -> None:
    world, image = taken

    result = world.apply("--format", "json")

    assert result.exit_code == 1, result.output
    outcomes = {o["name"]: o["result"] for o in json.loads(result.stdout)["outcomes"]}
    assert "img-001" not in outcomes
    assert "img-001" not in world.records()
    assert [i["id"] for i in world.server()["img-001"]] == [image["id"]]
    assert world.sb.post_count == len(NAMES) - 1  # the others only


def test_state_import_records_the_image_as_imported(taken: tuple[World, Any]) -> None:
    world, image = taken

    result = world.cli("state", "import", "img-001", image["id"])

    assert result.exit_code == 0, result.output
    record = world.records()["img-001"]
    assert (record["image_id"], record["origin"]) == (image["id"], "imported")


def test_imported_image_is_unchanged_in_the_next_plan(taken: tuple[World, Any]) -> None:
    world, image = taken
    assert world.cli("state", "import", "img-001", image["id"]).exit_code == 0

    found = changes(world.plan_json())["img-001"]

    assert (found["action"], found["reason"], found["image_id"]) == (
        "unchanged", "in_sync", image["id"])


def test_state_import_refuses_an_image_that_differs_listing_the_fields(world: World) -> None:
    body = {**dry_run_requests(world)["img-002"], "min_disk": 77, "build_id": "elsewhere"}
    image = world.sb.add_image(body)

    result = world.cli("state", "import", "img-002", image["id"])

    assert result.exit_code == 1
    assert "--force" in result.stderr
    listed = {ln.strip().split(":")[0] for ln in result.stderr.splitlines()
              if ln.strip().startswith("- ")}
    assert listed == {"- build_id", "- min_disk"}
    assert "Traceback" not in result.output
    assert not world.state.exists() or "img-002" not in world.records()


def test_forced_import_of_a_differing_image_then_shows_drift(world: World) -> None:
    body = {**dry_run_requests(world)["img-002"], "min_disk": 77}
    image = world.sb.add_image(body)

    result = world.cli("state", "import", "img-002", image["id"], "--force")

    assert result.exit_code == 0, result.output
    assert world.records()["img-002"]["image_id"] == image["id"]
    change = changes(world.plan_json("--drift", "report"))["img-002"]
    assert (change["action"], change["reason"]) == ("drift", "catalog_changed")
    assert change["diff"] == [{"field": "min_disk", "before": 77, "after": 40}]


# --- 6. forget --------------------------------------------------------------------------------

def test_state_forget_drops_the_record_and_leaves_the_image(applied: World) -> None:
    image_id = applied.records()["img-003"]["image_id"]
    requests_before = total_requests(applied.sb)

    result = applied.cli("state", "forget", "img-003")

    assert result.exit_code == 0, result.output
    assert image_id in result.stdout
    assert "img-003" not in applied.records()
    assert [i["id"] for i in applied.server()["img-003"]] == [image_id]
    assert total_requests(applied.sb) == requests_before  # no DELETE, no request


def test_forgotten_image_is_proposed_for_adoption(applied: World) -> None:
    image_id = applied.records()["img-003"]["image_id"]
    assert applied.cli("state", "forget", "img-003").exit_code == 0

    change = changes(applied.plan_json())["img-003"]

    assert (change["action"], change["reason"], change["image_id"]) == (
        "adopt", "adopted", image_id)


# --- 7. the issue's acceptance scenario -------------------------------------------------------

def test_fifty_images_three_deleted_two_records_lost_converge_in_one_apply(
        tmp_path: Path, run_cli: Callable[..., Result], sandbox: SandboxFactory) -> None:
    catalog = tmp_path / "gen"
    generate_catalog(catalog, images=50, files=5, seed=7)
    sb = sandbox()
    world = World(sb, tmp_path / "state.db", catalog, run_cli)
    first = world.apply()
    assert first.exit_code == 0, first.output
    records = world.records()
    assert len(records) == 50
    server = {n: v[0] for n, v in world.server().items()}
    unprotected = sorted(n for n, image in server.items() if not image.get("protected"))
    deleted, lost = unprotected[:3], unprotected[3:5]
    for name in deleted:
        assert sb.delete_image(records[name]["image_id"])
    for name in lost:
        world.drop_record(name)
    posts = sb.post_count

    result = world.apply("--format", "json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    outcomes = {o["name"]: o["result"] for o in doc["outcomes"]}
    assert outcomes == {**dict.fromkeys(deleted, "created"), **dict.fromkeys(lost, "adopted")}
    assert sb.post_count == posts + 3
    live = world.server()
    assert len(live) == 50
    assert {n: len(v) for n, v in live.items() if len(v) != 1} == {}
    after = world.records()
    assert sorted(after) == sorted(live)
    assert {n: r["image_id"] for n, r in after.items()} == {n: v[0]["id"]
                                                           for n, v in live.items()}
    assert {n: after[n]["image_id"] for n in lost} == {n: records[n]["image_id"] for n in lost}


# --- 8. other projects' public images ---------------------------------------------------------

PUBLIC_IMAGES = {
    "gold": {"visibility": "public", "owner": OTHER_PROJECT, "__imagetype": "gold"},
    "public-other-owner": {"visibility": "public", "owner": OTHER_PROJECT},
    "community-other-owner": {"visibility": "community", "owner": OTHER_PROJECT},
}


@pytest.mark.parametrize("kind", sorted(PUBLIC_IMAGES))
def test_public_image_of_another_project_is_no_duplicate(applied: World, kind: str) -> None:
    applied.sb.add_image({"name": "img-000", **PUBLIC_IMAGES[kind]})

    doc = applied.plan_json()

    assert doc["summary"]["blocked"] == 0
    assert actions(doc) == dict.fromkeys(NAMES, "unchanged")


@pytest.mark.parametrize("kind", sorted(PUBLIC_IMAGES))
def test_public_image_of_another_project_does_not_take_a_name(world: World, kind: str) -> None:
    world.sb.add_image({"name": "img-000", **PUBLIC_IMAGES[kind]})

    result = world.apply("--format", "json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["summary"]["blocked"] == 0
    assert sorted(world.records()) == NAMES
    own = [i for i in world.server()["img-000"] if i.get("owner") != OTHER_PROJECT]
    assert [i["id"] for i in own] == [world.records()["img-000"]["image_id"]]
    assert all(len(world.server()[n]) == 1 for n in NAMES[1:])


def test_own_community_image_is_adopted_after_the_state_file_is_lost(
        tmp_path: Path, run_cli: Callable[..., Result], sandbox: SandboxFactory) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "images.yaml").write_text(
        "images:\n  - name: shared-base\n    visibility: community\n"
        "    disk_format: qcow2\n    container_format: bare\n", encoding="utf-8")
    world = World(sandbox(profile="glance"), tmp_path / "state.db", catalog, run_cli)
    assert world.apply("--profile", "glance").exit_code == 0
    image_id = world.records()["shared-base"]["image_id"]
    world.state.unlink()  # the whole state file is lost, not one row

    result = world.apply("--profile", "glance", "--format", "json")

    assert result.exit_code == 0, result.output
    assert [i["id"] for i in world.server()["shared-base"]] == [image_id]
    assert world.records()["shared-base"]["image_id"] == image_id
    assert json.loads(result.stdout)["summary"]["adopted"] == 1


@pytest.mark.parametrize("visibility", ["public", "community"])
def test_marked_public_image_of_another_project_is_no_duplicate(
        applied: World, visibility: str) -> None:
    """Another team's reconcile may publish an image of the same name: it carries a marker too,
    but it is not this project's image."""
    applied.sb.add_image({"name": "img-001", "visibility": visibility, "owner": OTHER_PROJECT,
                          MARKER_PROPERTY: "their-nonce"})

    doc = applied.plan_json()

    assert doc["summary"]["blocked"] == 0
    assert actions(doc) == dict.fromkeys(NAMES, "unchanged")


@pytest.mark.parametrize("visibility", ["public", "community"])
def test_marked_public_image_of_another_project_is_never_adopted(
        world: World, visibility: str) -> None:
    theirs = world.sb.add_image({"name": "img-001", "visibility": visibility,
                                 "owner": OTHER_PROJECT, MARKER_PROPERTY: "their-nonce"})

    result = world.apply("--format", "json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["adopted"] == 0
    assert world.records()["img-001"]["image_id"] != theirs["id"]


# --- memory: what a listing keeps -------------------------------------------------------------

class _Listing:
    """Three pages' worth of images as JSON would give them: equal values, distinct objects."""

    def __init__(self, count: int) -> None:
        self.pages = json.loads(json.dumps([{
            "id": f"id-{i}", "name": f"img-{i}", "status": "active", "visibility": "private",
            "disk_format": "zvhd2", "owner": "p" * 32, "__os_version": "CentOS 7.6 64bit",
            "build_id": f"{i:08d}", "tags": ["a", "b"], "min_disk": 40}
            for i in range(count)]))

    def list_images(self, filters: Mapping[str, str] | None = None, *,
                    page_size: int = 1000) -> Iterator[dict[str, Any]]:
        yield from self.pages

    def get_image(self, image_id: str) -> dict[str, Any] | None:
        return None


def test_a_listing_keeps_each_repeated_value_once() -> None:
    listing = _Listing(3)
    assert listing.pages[0]["owner"] is not listing.pages[1]["owner"]  # as parsed
    expected = json.loads(json.dumps(listing.pages))
    images = observe(listing, "ims", []).images
    assert [dict(i) for i in images] == expected  # every value as listed
    first, second, third = images
    for key in ("status", "visibility", "disk_format", "owner", "__os_version"):
        assert first[key] is second[key] is third[key], key
    assert first["build_id"] != second["build_id"]
