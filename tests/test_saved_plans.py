"""Saved plans: ``plan --out FILE`` writes a versioned plan, ``apply FILE`` carries out exactly
that plan, once, and refuses it when the catalog, the state file or the cloud moved since.
Everything runs end to end: the CLI through CliRunner, real loopback HTTP against the
in-process sandbox, and a real SQLite state file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apply_helpers import (
    CliWorld,
    SandboxFactory,
    by_name,
    drop_record,
    query,
    recorded,
    replace_image,
    sha256_file,
    write_images,
)
from click.testing import Result

from reconciler.models import MARKER_PROPERTY

TOKEN = "tok-SAVEDPLAN-5f1e9c2b7a"  # distinctive, so a leak into a file is found by grep


@dataclass
class World(CliWorld):
    plan_file: Path
    token = TOKEN

    def save(self, *extra: Any) -> dict[str, Any]:
        """``plan --out`` the plan file; returns the file's JSON."""
        result = self.cli("plan", "--out", self.plan_file, *extra)
        assert result.exit_code == 0, result.output
        doc = json.loads(self.plan_file.read_text(encoding="utf-8"))
        assert isinstance(doc, dict)
        return doc

    def apply_file(self, *extra: Any) -> Result:
        return self.cli("apply", self.plan_file, "--yes", *extra)

    def records(self) -> dict[str, str]:
        """name -> recorded image id, read with plain sqlite3 (fails on a name recorded twice)."""
        if not self.state.exists():
            return {}
        return {name: record["image_id"] for name, record in recorded(self.state).items()}

    def server(self) -> dict[str, list[str]]:
        """name -> ids of the images the sandbox stores under it."""
        return {name: [str(i["id"]) for i in images]
                for name, images in by_name(self.sb.images()).items()}

    def one_per_name(self) -> bool:
        return all(len(ids) == 1 for ids in self.server().values())


FIRST = ["img-000", "img-001"]
ALL = ["img-000", "img-001", "img-002", "img-003", "img-004"]


@pytest.fixture
def world(tmp_path: Path, run_cli: Callable[..., Result], sandbox: SandboxFactory) -> World:
    """A catalog of five images, nothing applied yet, no state file."""
    return World(sandbox(), tmp_path / "state.db", write_images(tmp_path / "catalog", ALL),
                 run_cli, tmp_path / "plan.json")


@pytest.fixture
def half_applied(world: World) -> World:
    """img-000 and img-001 applied and recorded; the catalog then grew to five images."""
    write_images(world.catalog, FIRST)
    result = world.cli("apply", "--yes")
    assert result.exit_code == 0, result.output
    write_images(world.catalog, ALL)
    assert sorted(world.records()) == FIRST
    return world


def assert_refused(world: World, result: Result, posts_before: int, *phrases: str) -> None:
    """Exit 1, one error message naming each phrase, no traceback, nothing POSTed."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert world.sb.post_count == posts_before


# --- 1. the file ------------------------------------------------------------------------------

def test_saved_plan_is_versioned_json_pinning_what_it_was_made_from(half_applied: World) -> None:
    world = half_applied
    result = world.cli("plan", "--out", world.plan_file, "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    doc = json.loads(world.plan_file.read_text(encoding="utf-8"))

    assert doc["kind"] == "reconcile-plan"
    assert doc["format_version"] == 1
    assert isinstance(doc["plan_id"], str) and len(doc["plan_id"]) >= 16
    assert doc["catalog_digest"] == report["catalog_digest"]
    [(revision,)] = query(world.state, "SELECT value FROM meta WHERE key = 'revision'")
    assert doc["state_revision"] == int(revision) > 0
    assert doc["target"] == world.sb.url
    assert doc["profile"] == "ims"
    creates = {c["name"]: c for c in doc["changes"] if c["action"] == "create"}
    assert sorted(creates) == ["img-002", "img-003", "img-004"]
    assert {c["action"] for c in doc["changes"]} == {"create"}
    body = creates["img-003"]["request"]
    assert (body["name"], body["min_disk"], body["min_ram"], body["build_id"]) == (
        "img-003", 40, 1024, "00000003")
    assert sorted(body["tags"]) == ["n3", "reconcile-test"]
    assert MARKER_PROPERTY not in body


def test_each_saved_plan_gets_its_own_plan_id(world: World) -> None:
    first = world.save()["plan_id"]
    second = world.save()["plan_id"]

    assert first != second


def test_saved_plan_holds_no_token(half_applied: World) -> None:
    half_applied.save("--refresh")

    raw = half_applied.plan_file.read_bytes()

    assert TOKEN.encode() not in raw
    assert b"SAVEDPLAN" not in raw  # not even a part of it


# --- 2. applying a saved plan -----------------------------------------------------------------

def test_applying_a_saved_plan_creates_exactly_the_planned_images(half_applied: World) -> None:
    world = half_applied
    planned = sorted(c["name"] for c in world.save()["changes"] if c["action"] == "create")
    posts = world.sb.post_count

    result = world.apply_file("--format", "json")

    assert result.exit_code == 0, result.output
    assert world.sb.post_count - posts == len(planned) == 3
    created = sorted(o["name"] for o in json.loads(result.stdout)["outcomes"]
                     if o["result"] == "created")
    assert created == planned
    assert sorted(world.server()) == ALL and world.one_per_name()
    assert world.records() == {n: ids[0] for n, ids in world.server().items()}


def test_saved_refreshed_plan_adopts_a_lost_record_without_a_post(half_applied: World) -> None:
    world = half_applied
    image_id = world.records()["img-000"]
    drop_record(world.state, "img-000")
    doc = world.save("--refresh")
    assert {c["name"]: c["action"] for c in doc["changes"]}["img-000"] == "adopt"
    posts = world.sb.post_count

    result = world.apply_file("--format", "json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["adopted"] == 1
    assert world.sb.post_count - posts == 3  # the three creates; no POST for the adoption
    assert world.records()["img-000"] == image_id
    assert world.one_per_name()


# --- 3. and 4. once only ----------------------------------------------------------------------

def test_saved_plan_applied_twice_is_refused_the_second_time(half_applied: World) -> None:
    world = half_applied
    world.save()
    assert world.apply_file().exit_code == 0
    posts = world.sb.post_count

    result = world.apply_file()

    assert_refused(world, result, posts, "applied already")
    assert sorted(world.server()) == ALL and world.one_per_name()


@pytest.mark.parametrize("refresh", [False, True], ids=["offline-plan", "refreshed-plan"])
def test_plan_from_no_state_file_is_not_applied_again_after_the_state_file_is_deleted(
        world: World, refresh: bool) -> None:
    assert not world.state.exists()
    world.save(*(["--refresh"] if refresh else []))
    assert world.apply_file().exit_code == 0
    assert sorted(world.server()) == ALL
    world.state.unlink()
    posts = world.sb.post_count

    result = world.apply_file()

    assert_refused(world, result, posts, "stale")
    assert sorted(world.server()) == ALL and world.one_per_name()


def test_plan_from_no_state_file_applied_twice_is_refused(world: World) -> None:
    world.save()
    assert world.apply_file().exit_code == 0
    posts = world.sb.post_count

    result = world.apply_file()

    assert_refused(world, result, posts, "applied already")
    assert world.one_per_name()


# --- 5. the catalog changed -------------------------------------------------------------------

CATALOG_EDITS: dict[str, Callable[[Path], object]] = {
    "image-added": lambda root: write_images(root, [*ALL, "img-005"]),
    "image-changed": lambda root: write_images(root, ALL,
                                               overrides={"img-003": {"min_disk": 60}}),
    "image-removed": lambda root: write_images(root, ALL[:-1]),
}


@pytest.mark.parametrize("edit", sorted(CATALOG_EDITS))
def test_saved_plan_is_refused_when_the_catalog_changed(half_applied: World, edit: str) -> None:
    world = half_applied
    world.save()
    CATALOG_EDITS[edit](world.catalog)
    before = sha256_file(world.state)
    posts = world.sb.post_count

    result = world.apply_file()

    assert_refused(world, result, posts, "the catalog", "changed since the plan was made")
    assert sha256_file(world.state) == before
    assert sorted(world.server()) == FIRST


# --- 6. the cloud changed ---------------------------------------------------------------------

def test_refreshed_plan_is_refused_when_a_planned_name_was_created_elsewhere(
        half_applied: World) -> None:
    world = half_applied
    world.save("--refresh")
    intruder = world.sb.add_image({"name": "img-003"})
    before = sha256_file(world.state)
    posts = world.sb.post_count

    result = world.apply_file()

    assert_refused(world, result, posts, "img-003", intruder["id"])
    assert sha256_file(world.state) == before
    assert world.server()["img-003"] == [intruder["id"]]


def test_offline_plan_is_refused_when_a_planned_name_was_created_elsewhere(
        half_applied: World) -> None:
    world = half_applied
    world.save()
    intruder = world.sb.add_image({"name": "img-004"})
    posts = world.sb.post_count

    result = world.apply_file()

    assert_refused(world, result, posts, "img-004", intruder["id"])
    assert world.server()["img-004"] == [intruder["id"]]


def test_refreshed_plan_is_refused_when_the_image_to_adopt_was_deleted(
        half_applied: World) -> None:
    world = half_applied
    image_id = world.records()["img-001"]
    drop_record(world.state, "img-001")
    world.save("--refresh")
    world.sb.delete_image(image_id)
    posts = world.sb.post_count

    result = world.apply_file()

    assert_refused(world, result, posts, "img-001", "the images in the cloud changed")
    assert "img-001" not in world.server()


def test_refreshed_plan_is_refused_when_the_image_to_adopt_was_changed(
        half_applied: World) -> None:
    world = half_applied
    image_id = world.records()["img-001"]
    drop_record(world.state, "img-001")
    world.save("--refresh")
    replace_image(world.sb, image_id, min_disk=99, updated_at="2099-01-01T00:00:00Z")
    before = sha256_file(world.state)
    posts = world.sb.post_count

    result = world.apply_file()

    assert_refused(world, result, posts, "img-001", "the images in the cloud changed",
                   "2099-01-01T00:00:00Z")
    assert sha256_file(world.state) == before
    assert "img-001" not in world.records()

def test_refreshed_plan_is_refused_when_a_recorded_image_was_deleted(
        half_applied: World) -> None:
    world = half_applied
    world.save("--refresh")
    gone = world.records()["img-000"]
    world.sb.delete_image(gone)
    posts = world.sb.post_count

    result = world.apply_file()

    assert_refused(world, result, posts, "img-000")
    assert "img-000" not in world.server()
    assert world.records()["img-000"] == gone


# --- 7. the state file moved ------------------------------------------------------------------

def test_saved_plan_is_refused_after_another_apply_moved_the_state(half_applied: World) -> None:
    world = half_applied
    world.save()
    assert world.cli("apply", "--yes").exit_code == 0  # applies the catalog, not the file
    posts = world.sb.post_count
    before = sha256_file(world.state)

    result = world.apply_file()

    assert_refused(world, result, posts, "the state file changed since the plan was made")
    assert sha256_file(world.state) == before
    assert world.one_per_name()


def test_saved_plan_is_refused_after_a_state_forget(half_applied: World) -> None:
    world = half_applied
    world.save()
    assert world.cli("state", "forget", "img-000").exit_code == 0
    posts = world.sb.post_count

    result = world.apply_file()

    assert_refused(world, result, posts, "the state file changed")


# --- 8. damaged and foreign plan files --------------------------------------------------------

def valid_plan(world: World) -> dict[str, Any]:
    doc = world.save()
    assert doc["changes"]
    return doc


DAMAGE: dict[str, tuple[Callable[[dict[str, Any]], bytes], str]] = {
    "empty-file": (lambda doc: b"", "not a saved plan (not JSON"),
    "not-json": (lambda doc: b"plan: yes\nthis is yaml, not json\n", "not JSON"),
    "truncated": (lambda doc: json.dumps(doc).encode()[:200], "not JSON"),
    "not-utf8": (lambda doc: b"\xff\xfe\x00garbage", "not a saved plan"),
    "json-list": (lambda doc: b"[1, 2, 3]", "is not a saved plan"),
    "json-report": (lambda doc: json.dumps({"format_version": 1, "mode": "plan"}).encode(),
                    "is not a saved plan"),
    "wrong-kind": (lambda doc: json.dumps({**doc, "kind": "terraform-plan"}).encode(),
                   "is not a saved plan"),
    "format-2": (lambda doc: json.dumps({**doc, "format_version": 2}).encode(),
                 "plan format 2"),
    "format-missing": (lambda doc: json.dumps({k: v for k, v in doc.items()
                                               if k != "format_version"}).encode(),
                       "plan format None"),
    "changes-missing": (lambda doc: json.dumps({k: v for k, v in doc.items()
                                                if k != "changes"}).encode(),
                        "is damaged: changes"),
    "plan-id-missing": (lambda doc: json.dumps({k: v for k, v in doc.items()
                                                if k != "plan_id"}).encode(),
                        "is damaged: plan_id"),
    "changes-not-a-list": (lambda doc: json.dumps({**doc, "changes": "all"}).encode(),
                           "is damaged: changes"),
    "revision-not-a-number": (lambda doc: json.dumps({**doc, "state_revision": "x"}).encode(),
                              "is damaged: state_revision"),
    "change-missing-name": (lambda doc: json.dumps(
        {**doc, "changes": [{"action": "create", "reason": "not_recorded"}]}).encode(),
        "is damaged: changes.0.name"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_or_foreign_plan_file_is_refused_with_a_clear_message(
        world: World, damage: str) -> None:
    make, message = DAMAGE[damage]
    world.plan_file.write_bytes(make(valid_plan(world)))

    result = world.apply_file()

    assert_refused(world, result, 0, message, str(world.plan_file))
    assert len(result.stderr.strip().splitlines()) == 1
    assert not world.state.exists()
    assert world.server() == {}


def test_deeply_nested_json_plan_file_is_refused_without_a_traceback(world: World) -> None:
    world.plan_file.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")

    try:
        result = world.apply_file()
    except RecursionError:
        pytest.fail("apply raised RecursionError instead of refusing the plan file")

    assert_refused(world, result, 0, str(world.plan_file))
    assert not world.state.exists()

def test_missing_plan_file_is_refused_with_a_clear_message(world: World) -> None:
    result = world.cli("apply", world.plan_file, "--yes")

    assert_refused(world, result, 0, "cannot read plan file", str(world.plan_file))
    assert not world.state.exists()


def test_plan_file_for_another_endpoint_is_refused(world: World) -> None:
    doc = valid_plan(world)
    world.plan_file.write_text(json.dumps({**doc, "target": "https://ims.example.com"}),
                               encoding="utf-8")

    result = world.apply_file()

    assert_refused(world, result, 0, "https://ims.example.com")
    assert not world.state.exists()
