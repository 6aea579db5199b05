"""Updates in place (docs/architecture.md §6.10): the three-way patch as a table, the update
decisions row by row, and end to end through the CLI over loopback HTTP against the sandbox
(both profiles, both PATCH endpoints, scripted faults on PATCH), with a real SQLite state."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from apply_helpers import (
    Apply,
    CliWorld,
    SandboxFactory,
    answered,
    query,
    recorded,
    replace_image,
    wait_for,
)
from click.testing import Result

from reconciler import patch
from reconciler.apply.decisions import (
    UpdateFate,
    UpdateStep,
    on_update_error,
    resolve_pending_update,
)
from reconciler.apply.limit import ConcurrencyLimit, Slot
from reconciler.apply.runstate import RunState
from reconciler.apply.updates import Updater
from reconciler.client import ImageClient, StaticToken, normalize_endpoint
from reconciler.clock import ManualClock
from reconciler.errors import (
    ApiError,
    MalformedResponse,
    ServerError,
    TransportError,
)
from reconciler.models import MARKER_PROPERTY, Change, ImageSpec, Outcome, Record
from reconciler.sandbox import Sandbox
from reconciler.state import open_for_write

Run = Callable[..., Result]

# --- the three-way patch (patch.compute) ------------------------------------------------------

SENT: dict[str, Any] = {"name": "web", "min_ram": 512, "tags": ["a", "b"], "build": "1",
                        "team": "x", MARKER_PROPERTY: "n1"}
ANSWERED: dict[str, Any] = {**SENT, "id": "i1", "status": "queued", "min_disk": 0,
                            "visibility": "shared", "protected": False}
CATALOG: dict[str, Any] = {"name": "web", "min_ram": 512, "tags": ("a", "b"),
                           "properties": {"build": "1", "team": "x"}}


def spec(**changes: Any) -> ImageSpec:
    fields = {**CATALOG, **changes}
    return ImageSpec(**fields)


def cloud(**changes: Any) -> dict[str, Any]:
    out = {**ANSWERED, **changes}
    return {k: v for k, v in out.items() if v is not None}


PATCHES: dict[str, tuple[ImageSpec, dict[str, Any], str, list[dict[str, Any]]]] = {
    # name: (catalog now, cloud now, profile, expected document)
    "in_sync": (spec(), cloud(), "glance", []),
    "min_ram_set_with_add": (spec(min_ram=1024), cloud(), "glance",
                             [{"op": "add", "path": "/min_ram", "value": 1024}]),
    "tag_added_replaces_the_whole_set": (
        spec(tags=("a", "b", "c")), cloud(), "glance",
        [{"op": "replace", "path": "/tags", "value": ["a", "b", "c"]}]),
    "tags_reordered_is_nothing": (spec(tags=("b", "a")), cloud(), "glance", []),
    "all_tags_dropped": (spec(tags=()), cloud(), "glance",
                         [{"op": "replace", "path": "/tags", "value": []}]),
    "property_changed_and_one_dropped": (
        spec(properties={"build": "2"}), cloud(), "glance",
        [{"op": "add", "path": "/build", "value": "2"}, {"op": "remove", "path": "/team"}]),
    "dropped_property_already_gone": (spec(properties={"build": "1"}), cloud(team=None),
                                      "glance", []),
    "property_reconcile_never_set_is_kept": (spec(), cloud(foreign="y"), "glance", []),
    "base_attribute_dropped_is_left": (spec(min_ram=None), cloud(), "glance", []),
    "changed_remotely_goes_back": (spec(), cloud(min_ram=4096, build="9"), "glance",
                                   [{"op": "add", "path": "/build", "value": "1"},
                                    {"op": "add", "path": "/min_ram", "value": 512}]),
    "normalised_by_the_server_is_no_change": (
        spec(os_version="Odd"), {**cloud(), "__os_version": "Other Linux(64 bit)"}, "ims", []),
    "escaped_pointer": (spec(properties={"build": "1", "team": "x", "a/b~c": "v"}), cloud(),
                        "glance", [{"op": "add", "path": "/a~1b~0c", "value": "v"}]),
    "ims_queued_property_by_native_api": (
        spec(properties={"build": "2", "team": "x"}), cloud(), "ims",
        [{"op": "add", "path": "/build", "value": "2"}]),
    "ims_active_replace_existing_add_new": (
        spec(min_ram=1024, properties={"build": "1", "team": "x", "new": "v"}),
        cloud(status="active"), "ims",
        [{"op": "replace", "path": "/min_ram", "value": 1024},
         {"op": "add", "path": "/new", "value": "v"}]),
}


@pytest.mark.parametrize(("desired", "now", "profile", "ops"), PATCHES.values(),
                         ids=PATCHES.keys())
def test_three_way_patch(desired: ImageSpec, now: dict[str, Any], profile: str,
                         ops: list[dict[str, Any]]) -> None:
    sent = dict(SENT)
    answered = dict(ANSWERED)
    if desired.os_version:
        sent["__os_version"] = desired.os_version
        answered["__os_version"] = now.get("__os_version")
    update = patch.compute(desired, sent, answered, now, profile=profile)
    assert update.blocked == ()
    assert list(update.ops) == ops
    assert MARKER_PROPERTY not in json.dumps(update.ops)
    assert update.api == ("cloudimages" if now.get("status") == "active" and profile == "ims"
                          else "images")


BLOCKED: dict[str, tuple[ImageSpec, dict[str, Any], str, str, str]] = {
    # name: (catalog now, cloud now, profile, blocked field, words of the reason)
    "glance_disk_format_of_an_active_image": (
        spec(disk_format="qcow2"), cloud(status="active", disk_format="raw"), "glance",
        "disk_format", "only while an image is queued; this one is active"),
    "ims_queued_min_ram": (spec(min_ram=1024), cloud(), "ims", "min_ram",
                           "native OpenStack PATCH (queued images) changes only name and"),
    "ims_active_min_disk": (spec(min_disk=80), cloud(status="active"), "ims", "min_disk",
                            "PATCH /v2/cloudimages (active images) changes only name, min_ram"),
    "ims_active_tags": (spec(tags=("a",)), cloud(status="active"), "ims", "tags",
                        "cloudimages"),
    "ims_saving_image": (spec(properties={"build": "2", "team": "x"}), cloud(status="saving"),
                         "ims", "build", "this one is saving"),
}


@pytest.mark.parametrize(("desired", "now", "profile", "field", "why"), BLOCKED.values(),
                         ids=BLOCKED.keys())
def test_changes_the_api_cannot_make_block_the_whole_image(
        desired: ImageSpec, now: dict[str, Any], profile: str, field: str, why: str) -> None:
    update = patch.compute(desired, SENT, ANSWERED, now, profile=profile)
    assert update.ops == ()
    assert field in [b.field for b in update.blocked]
    detail = patch.replace_required_detail(update)
    assert why in detail and "Nothing is sent" in detail and "new name" in detail


def test_glance_changes_formats_of_a_queued_image() -> None:
    update = patch.compute(spec(disk_format="qcow2"), SENT, ANSWERED, cloud(disk_format="raw"),
                           profile="glance")
    assert update.ops == ({"op": "add", "path": "/disk_format", "value": "qcow2"},)


def test_as_add_and_expected() -> None:
    ops = ({"op": "replace", "path": "/min_ram", "value": 1}, {"op": "replace", "path": "/tags",
                                                               "value": ["a"]},
           {"op": "remove", "path": "/gone"})
    assert [o["op"] for o in patch.as_add(ops)] == ["add", "replace", "remove"]
    assert patch.expected(ops, {"min_ram": 1, "tags": ["a"]})
    assert not patch.expected(ops, {"min_ram": 1, "tags": ["a"], "gone": "x"})
    assert not patch.expected(ops, {"min_ram": 2, "tags": ["a"]})
    assert not patch.expected(ops, {"min_ram": 1, "tags": ["b"]})


# --- what a failed PATCH means (decisions.on_update_error) ------------------------------------

UPDATE_ERRORS: dict[str, tuple[ApiError, bool, bool, UpdateStep]] = {
    "401": (answered(401), False, False, UpdateStep.STOP_RUN),
    "409_first": (answered(409), False, False, UpdateStep.REPLAN),
    "409_again": (answered(409), True, False, UpdateStep.FAIL),
    "img0035_first": (answered(400, "IMG.0035"), False, False, UpdateStep.AS_ADD),
    "img0035_again": (answered(400, "IMG.0035"), False, True, UpdateStep.FAIL),
    "403": (answered(403), False, False, UpdateStep.FAIL),
    "404": (answered(404), False, False, UpdateStep.FAIL),
    "413": (answered(413), False, False, UpdateStep.FAIL),
    "429": (answered(429), False, False, UpdateStep.RESEND),
    "not_sent": (TransportError("refused", sent=False), False, False, UpdateStep.RESEND),
    "sent": (TransportError("reset", sent=True), False, False, UpdateStep.READ_BACK),
    "tls": (TransportError("tls", sent=False, permanent=True), False, False, UpdateStep.FAIL),
    "502": (answered(502), False, False, UpdateStep.READ_BACK),
    "503": (answered(503), False, False, UpdateStep.READ_BACK),
    "2xx_broken": (MalformedResponse("boom", status=200), False, False, UpdateStep.READ_BACK),
    "other": (answered(302), False, False, UpdateStep.KEEP_PENDING),
}


@pytest.mark.parametrize(("exc", "replanned", "as_add", "step"), UPDATE_ERRORS.values(),
                         ids=UPDATE_ERRORS.keys())
def test_on_update_error(exc: ApiError, replanned: bool, as_add: bool,
                         step: UpdateStep) -> None:
    assert on_update_error(exc, replanned=replanned, as_add=as_add) is step


def test_resolve_pending_update() -> None:
    assert resolve_pending_update(landed=True) is UpdateFate.RECORD
    assert resolve_pending_update(landed=False) is UpdateFate.RELEASE


# --- end to end against the sandbox -----------------------------------------------------------

GLANCE_DEFAULTS: dict[str, Any] = {"disk_format": "raw", "container_format": "bare",
                                   "min_disk": 10}


class World(CliWorld):
    token = "tok-update"

    def __init__(self, sb: Sandbox, tmp_path: Path, run_cli: Run, profile: str) -> None:
        self.sb, self.run_cli, self.profile = sb, run_cli, profile
        self.env: dict[str, str] = {}  # extra environment of every command
        self.state = tmp_path / "state.db"
        self.catalog = tmp_path / "catalog"
        self.catalog.mkdir()

    def write(self, images: list[dict[str, Any]], defaults: dict[str, Any] | None = None) -> None:
        doc = {"defaults": defaults if defaults is not None else (
            GLANCE_DEFAULTS if self.profile == "glance" else {"min_disk": 40}),
            "images": images}
        (self.catalog / "images.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def run(self, *args: Any) -> Result:
        base = {"OS_AUTH_TOKEN": self.token, "RECONCILE_ENDPOINT": self.sb.url,
                "RECONCILE_STATE": str(self.state), "RECONCILE_CATALOG": str(self.catalog)}
        return self.run_cli([*args, "--profile", self.profile], env={**base, **self.env})

    def apply(self, *extra: Any) -> Result:
        return self.run("apply", "--yes", "--format", "json", "--log-format", "json", *extra)

    def plan(self, *extra: Any) -> tuple[int, dict[str, Any]]:
        result = self.run("plan", "--refresh", "--format", "json", "--detailed-exitcode",
                          *extra)
        assert result.exit_code in (0, 2), result.output
        return result.exit_code, json.loads(result.stdout)

    def patches(self, api: str = "image") -> int:
        return self.sb.request_count[("PATCH", api)]

    def image(self, name: str) -> dict[str, Any]:
        (found,) = [i for i in self.sb.images() if i["name"] == name]
        return found


def images(count: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"name": f"img-{i:02d}", "min_ram": 512, "tags": ["base", f"n{i}"],
             "properties": {"build": f"{i}", "team": "core"}, **fields} for i in range(count)]


def changes(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["changes"]}


def outcomes(result: Result) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in json.loads(result.stdout)["outcomes"]}


@pytest.fixture
def glance(tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> World:
    world = World(sandbox(profile="glance"), tmp_path, run_cli, "glance")
    world.write(images(3))
    assert world.apply().exit_code == 0
    return world


@pytest.fixture
def ims(tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> World:
    world = World(sandbox(), tmp_path, run_cli, "ims")
    world.write(images(2, os_version="Ubuntu 18.04 server 64bit"))
    assert world.apply().exit_code == 0
    return world


def edited(count: int) -> list[dict[str, Any]]:
    """min_ram changed, a tag added, one property changed and another dropped."""
    return [{**image, "min_ram": 2048, "tags": [*image["tags"], "new"],
             "properties": {"build": f"{i}-2"}} for i, image in enumerate(images(count))]


def test_editing_the_catalog_sends_one_patch_per_image_and_leaves_the_cloud_equal(
        glance: World) -> None:
    glance.write(edited(3))
    code, doc = glance.plan()
    assert code == 2
    assert {c["action"] for c in doc["changes"]} == {"update"}
    first = changes(doc)["img-00"]
    assert first["patch"]["path"] == f"/v2/images/{first['image_id']}"
    assert first["patch"]["content_type"] == patch.MEDIA_TYPE

    result = glance.apply()

    assert result.exit_code == 0, result.output
    assert glance.patches() == 3
    assert {o["result"] for o in outcomes(result).values()} == {"updated"}
    for i in range(3):
        image = glance.image(f"img-{i:02d}")
        assert (image["min_ram"], sorted(image["tags"]), image["build"]) == (
            2048, ["base", f"n{i}", "new"], f"{i}-2")
        assert "team" not in image
    rows = recorded(glance.state)
    assert rows["img-00"]["response"]["updated_at"] == \
        glance.image("img-00")["updated_at"]
    assert query(glance.state, "SELECT created, updated FROM runs ORDER BY started_at, rowid") \
        == [(3, 0), (0, 3)]
    assert glance.plan() == (0, glance.plan()[1])
    assert {c["action"] for c in glance.plan()[1]["changes"]} == {"unchanged"}


def test_an_out_of_band_change_is_changed_back_to_the_catalog(glance: World) -> None:
    image_id = recorded(glance.state)["img-01"]["image_id"]
    replace_image(glance.sb, image_id, min_ram=64, tags=["base"], build="tampered")

    code, doc = glance.plan()
    change = changes(doc)["img-01"]
    assert (code, change["action"], change["reason"]) == (2, "update", "changed_remotely")
    assert "changes it back to the catalog" in change["detail"]

    assert glance.apply().exit_code == 0
    image = glance.image("img-01")
    assert (image["min_ram"], sorted(image["tags"]), image["build"]) == (512, ["base", "n1"],
                                                                         "1")
    assert glance.plan()[0] == 0


@pytest.mark.parametrize("where", ["flag", "defaults", "image", "toml", "env"])
def test_drift_report_keeps_todays_behaviour(glance: World, where: str) -> None:
    catalog = edited(3)
    defaults = dict(GLANCE_DEFAULTS)
    extra: list[str] = []
    env: dict[str, str] = {}
    if where == "flag":
        extra = ["--drift", "report"]
    elif where == "defaults":
        defaults["drift"] = "report"
    elif where == "image":
        catalog = [{**image, "drift": "report"} for image in catalog]
    elif where == "toml":
        (Path.cwd() / "reconcile.toml").write_text('drift = "report"\n')
    else:
        env = {"RECONCILE_DRIFT": "report"}
    glance.write(catalog, defaults)
    glance.env = env

    code, doc = glance.plan(*extra)
    result = glance.apply(*extra)

    assert code == 0  # drift that apply leaves alone is nothing apply would do
    assert {c["action"] for c in doc["changes"]} == {"drift"}
    assert "drift: report" in doc["changes"][0]["detail"]
    assert result.exit_code == 0, result.output
    assert glance.patches() == 0


def test_the_images_own_policy_wins_over_the_flag(glance: World) -> None:
    glance.write([{**edited(1)[0], "drift": "update"}, *edited(3)[1:]])
    code, doc = glance.plan("--drift", "report")
    assert code == 2
    assert [c["action"] for c in doc["changes"]] == ["update", "drift", "drift"]


def test_an_unknown_drift_policy_is_a_catalog_error(glance: World) -> None:
    glance.write([{**images(1)[0], "drift": "fix"}])
    result = glance.run("validate")
    assert result.exit_code == 1
    assert "images.yaml:" in result.output and "drift (images[0])" in result.output
    assert "use update" in result.output


def test_offline_plan_shows_the_update_and_exits_2(glance: World) -> None:
    glance.write([*edited(1), *images(3)[1:]])
    result = glance.run("plan", "--detailed-exitcode")
    assert result.exit_code == 2
    assert "~ update    img-00" in result.stdout
    assert "recorded → catalog" in result.stdout
    assert "~ min_ram: 512 → 2048" in result.stdout
    assert '+ tags: "new"' in result.stdout and '- team: "core"' in result.stdout


def test_dry_run_prints_the_exact_patch_documents_and_sends_nothing(glance: World) -> None:
    glance.write([*edited(1), *images(3)[1:]])
    result = glance.run("apply", "--dry-run")
    assert result.exit_code == 0, result.output
    image_id = recorded(glance.state)["img-00"]["image_id"]
    assert f"PATCH /v2/images/{image_id}  # img-00" in result.stdout
    assert "application/openstack-images-v2.1-json-patch" in result.stdout
    body = result.stdout.split("# img-00\n", 1)[1].split("\n\n")[0]
    assert json.loads(body) == [
        {"op": "add", "path": "/build", "value": "0-2"},
        {"op": "add", "path": "/min_ram", "value": 2048},
        {"op": "replace", "path": "/tags", "value": ["base", "n0", "new"]},
        {"op": "remove", "path": "/team"}]
    assert glance.patches() == 0


def test_markdown_and_html_show_before_and_after_and_tags_added_and_removed(
        glance: World) -> None:
    glance.write([{**images(1)[0], "min_ram": 1024, "tags": ["base", "extra"]},
                  *images(3)[1:]])
    md = glance.run("plan", "--format", "markdown").stdout
    assert "<summary>To update in place (1)</summary>" in md
    assert "- `min_ram`: `512` → `1024`" in md
    assert "- tag added: `\"extra\"`" in md and "- tag removed: `\"n0\"`" in md
    html = glance.run("plan", "--format", "html").stdout
    assert "To update in place" in html and "recorded → catalog" in html
    assert '<li class="changed"><code>min_ram</code>: <code>512</code> → <code>1024</code>' \
        in html


def test_a_quota_413_fails_that_image_with_the_servers_message(glance: World) -> None:
    image_id = recorded(glance.state)["img-00"]["image_id"]
    replace_image(glance.sb, image_id, **{f"other{i}": "x" for i in range(125)})
    glance.write([{**images(1)[0], "properties": {"build": "0", "team": "core",
                                                   "a": "1", "b": "2", "c": "3"}},
                  *images(3)[1:]])
    result = glance.apply()
    assert result.exit_code == 1
    failed = outcomes(result)["img-00"]
    assert failed["error"]["status"] == 413
    assert "number of allowed image properties" in failed["error"]["message"]
    assert query(glance.state, "SELECT state FROM journal WHERE kind = 'update'") == \
        [("released",)]


# --- the IMS profile: the native PATCH for queued images, cloudimages for active ones -------

def test_ims_queued_image_gets_properties_by_the_native_patch(ims: World) -> None:
    ims.write([{**image, "properties": {"build": "x"}}
               for image in images(2, os_version="Ubuntu 18.04 server 64bit")])
    result = ims.apply()
    assert result.exit_code == 0, result.output
    assert (ims.patches("image"), ims.patches("cloudimage")) == (2, 0)
    assert ims.image("img-00")["build"] == "x" and "team" not in ims.image("img-00")
    assert ims.plan()[0] == 0


def test_ims_queued_min_ram_is_blocked_replace_required(ims: World) -> None:
    ims.write(images(2, os_version="Ubuntu 18.04 server 64bit", min_ram=2048))
    code, doc = ims.plan()
    change = changes(doc)["img-00"]
    assert (change["action"], change["reason"]) == ("blocked", "replace_required")
    assert "cannot change min_ram in place" in change["detail"]
    assert code == 0
    result = ims.apply()
    assert result.exit_code == 1  # blocked needs a human
    assert ims.patches("image") + ims.patches("cloudimage") == 0


def test_ims_active_image_is_updated_with_cloudimages(ims: World) -> None:
    for name, row in recorded(ims.state).items():
        replace_image(ims.sb, row["image_id"], status="active",
                      updated_at=ims.image(name)["updated_at"])
    ims.write(images(2, os_version="Ubuntu 18.04 server 64bit", min_ram=2048))
    result = ims.apply()
    assert result.exit_code == 0, result.output
    assert (ims.patches("image"), ims.patches("cloudimage")) == (0, 2)
    assert ims.image("img-01")["min_ram"] == 2048
    assert ims.plan()[0] == 0


# --- faults on PATCH, each on purpose ---------------------------------------------------------

@pytest.mark.parametrize(("steps", "patches"), [
    ("503,ok", 2),         # not applied (read back shows it): recomputed and sent again
    ("commit:502", 1),     # applied, answer lost: read back, recorded, not sent again
    ("drop", 1),           # applied, no answer: the same
    ("garbage", 1),        # applied, unusable answer: the same
    ("lost", 2),           # not applied, no answer: recomputed and sent again
    ("429,ok", 2),         # refused at the gateway: sent again after Retry-After
])
def test_a_failed_patch_is_read_back_and_never_sent_blindly(glance: World, steps: str,
                                                            patches: int) -> None:
    glance.write([*edited(1), *images(3)[1:]])
    glance.sb.script("img-00", patch=steps)
    result = glance.apply()
    assert result.exit_code == 0, result.output
    assert glance.patches() == patches
    assert glance.sb.scripted_left == 0
    assert glance.image("img-00")["min_ram"] == 2048
    assert glance.plan()[0] == 0


def test_a_patch_that_keeps_failing_is_given_up_and_released(glance: World) -> None:
    glance.write([*edited(1), *images(3)[1:]])
    glance.sb.script("img-00", patch=["503"] * 3)
    result = glance.apply("--retries", "2")
    assert result.exit_code == 1
    assert glance.patches() == 3
    assert outcomes(result)["img-00"]["error"]["status"] == 503
    assert query(glance.state, "SELECT state FROM journal WHERE kind = 'update'") == \
        [("released",)]


def test_a_401_on_patch_stops_the_run(glance: World) -> None:
    glance.write(edited(3))
    for name in ("img-00", "img-01", "img-02"):
        glance.sb.script(name, patch="401")
    result = glance.apply("--parallelism", "1")
    assert result.exit_code == 1
    assert glance.patches() == 1
    results = sorted(o["result"] for o in outcomes(result).values())
    assert results == ["failed", "skipped", "skipped"]


# --- the updater on its own, for the races a CLI run cannot stage -----------------------------

class Direct:
    """An Updater on a real store and a real client, fed changes as a stale plan made them."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.store = open_for_write(world.state)
        self.client = ImageClient(world.sb.url, token_provider=StaticToken(World.token))
        self.run = RunState("run-direct", ManualClock(datetime(2024, 5, 1, tzinfo=UTC)))
        self.updater = Updater(self.store, self.client, normalize_endpoint(world.sb.url),
                               self.run, world.profile, parallelism=1)

    def record(self, name: str) -> Record:
        found = self.store.record(normalize_endpoint(self.world.sb.url), name)
        assert found is not None
        return found

    def change(self, name: str, ops: list[dict[str, Any]], api: str = "images",
               **catalog: Any) -> Change:
        old = self.record(name)
        desired = ImageSpec.from_body(old.request).model_copy(update=catalog)
        return Change(name=name, action="update", reason="catalog_changed", spec=desired,
                      image_id=old.image_id, patch=tuple(ops), patch_api=api)

    def update(self, *changes: Change) -> list[Outcome]:
        records = {c.name: self.record(c.name) for c in changes}
        return self.updater.update_all(list(changes), records)

    def close(self) -> None:
        self.client.close()
        self.store.close()


@pytest.fixture
def direct(glance: World) -> Any:
    d = Direct(glance)
    yield d
    d.close()


def test_a_409_from_a_concurrent_change_rereads_and_replans_once(direct: Direct) -> None:
    """The property was removed by someone else after the plan: Glance answers 409 to our
    remove; the image is read again, the update recomputed without it, and sent once more."""
    name = "img-00"
    image_id = direct.record(name).image_id
    direct.world.sb._app.store.update(image_id, lambda old: {
        k: v for k, v in old.items() if k != "team"})
    change = direct.change(name, [{"op": "remove", "path": "/team"},
                                  {"op": "add", "path": "/min_ram", "value": 4096}],
                           min_ram=4096, properties={"build": "0"})
    (outcome,) = direct.update(change)
    assert outcome.result == "updated", outcome
    assert direct.world.patches() == 2
    assert outcome.patch == ({"op": "add", "path": "/min_ram", "value": 4096},)
    assert direct.world.image(name)["min_ram"] == 4096


def test_a_second_409_fails_with_the_servers_message(direct: Direct) -> None:
    direct.world.sb.script("img-00", patch="409,409")
    change = direct.change("img-00", [{"op": "add", "path": "/min_ram", "value": 4096}],
                           min_ram=4096)
    (outcome,) = direct.update(change)
    assert outcome.result == "failed" and outcome.error is not None
    assert outcome.error.status == 409
    assert direct.world.patches() == 2


def test_a_403_is_a_per_image_failure_with_the_servers_message(direct: Direct) -> None:
    image_id = direct.record("img-00").image_id
    replace_image(direct.world.sb, image_id, status="active")
    bad = direct.change("img-00", [{"op": "add", "path": "/disk_format", "value": "qcow2"}],
                        disk_format="qcow2")
    good = direct.change("img-01", [{"op": "add", "path": "/min_ram", "value": 8}], min_ram=8)
    first, second = sorted(direct.update(bad, good), key=lambda o: o.name)
    assert first.error is not None and first.error.status == 403
    assert "can be only replaced for a queued image" in first.error.message
    assert second.result == "updated"


def test_a_change_that_became_impossible_meanwhile_fails_as_replace_required(
        direct: Direct) -> None:
    image_id = direct.record("img-00").image_id
    direct.world.sb.script("img-00", patch="409")
    replace_image(direct.world.sb, image_id, status="active")
    change = direct.change("img-00", [{"op": "add", "path": "/disk_format", "value": "qcow2"}],
                           disk_format="qcow2")
    (outcome,) = direct.update(change)
    assert outcome.error is not None and "cannot change disk_format in place" in \
        outcome.error.message


def test_ims_img0035_is_answered_by_add(tmp_path: Path, run_cli: Run,
                                        sandbox: SandboxFactory) -> None:
    world = World(sandbox(), tmp_path, run_cli, "ims")
    world.write(images(1, os_version="Ubuntu 18.04 server 64bit"))
    assert world.apply().exit_code == 0
    image_id = recorded(world.state)["img-00"]["image_id"]
    replace_image(world.sb, image_id, status="active")
    d = Direct(world)
    try:
        change = d.change("img-00", [{"op": "replace", "path": "/__description",
                                      "value": "hello"}],
                          api="cloudimages", properties={"build": "0", "team": "core",
                                                         "__description": "hello"})
        (outcome,) = d.update(change)
    finally:
        d.close()
    assert outcome.result == "updated", outcome
    assert outcome.patch == ({"op": "add", "path": "/__description", "value": "hello"},)
    assert world.patches("cloudimage") == 2
    assert world.image("img-00")["__description"] == "hello"


# --- an update whose answer never came: resolved by the next run, by reading ----------------

def _pending_update(world: World, name: str, ops: list[dict[str, Any]],
                    request: dict[str, Any]) -> None:
    target = normalize_endpoint(world.sb.url)
    store = open_for_write(world.state)
    try:
        old = store.record(target, name)
        assert old is not None
        store.journal_open(nonce="n-killed", target=target, name=name, run_id="run-killed",
                           kind="update", image_id=old.image_id,
                           request={"patch": ops, "api": "images", "request": request})
    finally:
        store.close()


def test_an_update_that_landed_before_the_kill_is_recorded_not_sent_again(
        glance: World) -> None:
    glance.write([*edited(1), *images(3)[1:]])
    image_id = recorded(glance.state)["img-00"]["image_id"]
    ops = json.loads(glance.run("apply", "--dry-run", "--format", "json").stdout)[
        "changes"][0]["patch"]["body"]
    desired = ImageSpec(name="img-00", min_ram=2048, tags=("base", "n0", "new"),
                        properties={"build": "0-2"}, disk_format="raw",
                        container_format="bare", min_disk=10)
    marker = recorded(glance.state)["img-00"]["request"][MARKER_PROPERTY]
    body = {**desired.body(), MARKER_PROPERTY: marker}
    _pending_update(glance, "img-00", ops, body)
    glance.sb._app.store.update(image_id, lambda old: {
        **{k: v for k, v in old.items() if k != "team"}, "min_ram": 2048, "build": "0-2",
        "tags": ["base", "n0", "new"], "updated_at": "2030-01-01T00:00:00Z"})

    result = glance.apply()

    assert result.exit_code == 0, result.output
    assert glance.patches() == 0
    assert query(glance.state, "SELECT state FROM journal WHERE nonce = 'n-killed'") == \
        [("done",)]
    assert recorded(glance.state)["img-00"]["response"]["updated_at"] == \
        "2030-01-01T00:00:00Z"
    assert glance.plan()[0] == 0


def test_an_update_that_never_landed_is_released_and_recomputed(glance: World) -> None:
    glance.write([*edited(1), *images(3)[1:]])
    _pending_update(glance, "img-00", [{"op": "add", "path": "/min_ram", "value": 2048}],
                    {"name": "img-00"})

    result = glance.apply()

    assert result.exit_code == 0, result.output
    assert glance.patches() == 1
    assert query(glance.state, "SELECT state FROM journal WHERE nonce = 'n-killed'") == \
        [("released",)]
    assert glance.image("img-00")["min_ram"] == 2048
    assert glance.plan()[0] == 0


# --- the updater's remaining branches, each on purpose ----------------------------------------

class Flaky:
    """The real client, with chosen failures in front of it (unit level: the sandbox cannot
    fail a GET of one image on purpose)."""

    def __init__(self, client: ImageClient, *, update: list[ApiError | None] | None = None,
                 get: list[ApiError | str | None] | None = None) -> None:
        self.client, self.update_errors, self.get_script = client, update or [], get or []

    def update_image(self, image_id: str, ops: Any, *, api: str = "images") -> dict[str, Any]:
        error = self.update_errors.pop(0) if self.update_errors else None
        if error is not None:
            raise error
        return self.client.update_image(image_id, ops, api=api)

    def get_image(self, image_id: str) -> dict[str, Any] | None:
        step = self.get_script.pop(0) if self.get_script else None
        if isinstance(step, ApiError):
            raise step
        if step == "gone":
            return None
        return self.client.get_image(image_id)

    def abort(self) -> None:
        self.client.abort()


def _states(world: World) -> list[tuple[Any, ...]]:
    return query(world.state, "SELECT state FROM journal WHERE kind = 'update'")


def test_an_update_with_nothing_to_send_is_recorded_without_a_patch(direct: Direct) -> None:
    (outcome,) = direct.update(direct.change("img-00", []))
    assert outcome.result == "updated" and outcome.patch == ()
    assert direct.world.patches() == 0


def test_an_unknown_answer_keeps_the_update_pending(direct: Direct) -> None:
    direct.updater.api = Flaky(direct.client, update=[ApiError("odd", status=302)])
    (outcome,) = direct.update(direct.change(
        "img-00", [{"op": "add", "path": "/min_ram", "value": 8}], min_ram=8))
    assert outcome.error is not None and outcome.error.message.startswith("outcome unknown")
    assert _states(direct.world) == [("pending",)]


def test_a_failed_read_back_keeps_the_update_pending(direct: Direct) -> None:
    direct.updater.api = Flaky(direct.client, update=[ServerError("busy", status=503)],
                               get=[ServerError("busy", status=503)])
    (outcome,) = direct.update(direct.change(
        "img-00", [{"op": "add", "path": "/min_ram", "value": 8}], min_ram=8))
    assert outcome.result == "failed"
    assert _states(direct.world) == [("pending",)]


def test_an_image_gone_on_read_back_releases_the_update(direct: Direct) -> None:
    direct.updater.api = Flaky(direct.client, update=[ServerError("busy", status=503)],
                               get=["gone"])
    (outcome,) = direct.update(direct.change(
        "img-00", [{"op": "add", "path": "/min_ram", "value": 8}], min_ram=8))
    assert outcome.result == "failed"
    assert _states(direct.world) == [("released",)]


def test_a_pending_update_that_cannot_be_read_stays_pending(glance: World) -> None:
    _pending_update(glance, "img-00", [{"op": "add", "path": "/min_ram", "value": 2048}],
                    {"name": "img-00"})
    d = Direct(glance)
    try:
        d.updater.api = Flaky(d.client, get=[ServerError("busy", status=503)])
        (outcome,) = d.updater.recover()
    finally:
        d.close()
    assert outcome.result == "failed" and outcome.error is not None
    assert "could not be resolved" in outcome.error.message
    assert _states(glance) == [("pending",)]


def test_ctrl_c_during_updates_finishes_what_runs_and_skips_the_rest(direct: Direct) -> None:
    pressed: list[str] = []

    def interrupt(outcome: Outcome) -> None:  # Ctrl-C once, as the first outcome comes
        if not pressed:
            pressed.append(outcome.name)
            raise KeyboardInterrupt

    direct.updater.on_outcome = interrupt
    changes = [direct.change(n, [{"op": "add", "path": "/min_ram", "value": 8}], min_ram=8)
               for n in ("img-00", "img-01", "img-02")]
    with pytest.raises(KeyboardInterrupt):
        direct.update(*changes)
    delivered = {o.name: o.result for o in direct.updater.delivered}
    # img-01's worker, one beyond the single slot, waited for it: if it had its PATCH out
    # before the interrupt, that update finishes and is recorded; img-02 never started.
    assert (delivered["img-00"], delivered["img-02"]) == ("updated", "skipped")
    assert delivered["img-01"] in ("updated", "skipped")
    assert direct.world.patches() == list(delivered.values()).count("updated")
    assert _states(direct.world).count(("pending",)) == 0
    assert direct.run.stopped


# --- the in-flight limit: the target's, shared with its creates (docs/architecture.md §6.6) ---

def _limited(direct: Direct, limit: ConcurrencyLimit) -> Updater:
    return Updater(direct.store, direct.updater.api, direct.updater.target, direct.run,
                   direct.world.profile, parallelism=4, shared_limit=limit)


@pytest.mark.parametrize(("error", "cuts", "answers"), [
    # refused: cut; read back (an answer), not applied, sent again (an answer)
    (answered(503), 1, 2),
    (answered(429), 1, 1),  # cut; sent again after the backoff
    (TransportError("reset", sent=True), 1, 2),  # no answer: cut; read back; sent again
    (TransportError("refused", sent=False), 0, 1),  # never left: says nothing of the load
    (answered(400), 0, 1),  # an answer, not about load (then it fails)
], ids=["503", "429", "timeout", "not-sent", "400"])
def test_each_patch_and_read_back_is_judged_by_the_targets_limit(
        direct: Direct, error: ApiError, cuts: int, answers: int) -> None:
    limit = ConcurrencyLimit(4, direct.run.clock.monotonic)
    updater = _limited(direct, limit)
    assert updater.limit is limit
    updater.api = Flaky(direct.client, update=[error])
    changes = [direct.change(n, [{"op": "add", "path": "/min_ram", "value": 8}], min_ram=8)
               for n in ("img-00", "img-01")]
    records = {c.name: direct.record(c.name) for c in changes}
    updater.update_all(changes[:1], records)
    assert (limit.state.cuts, limit.state.seen) == (cuts, answers)
    updater.update_all(changes[1:], records)  # one more, whatever the first did
    assert (limit.state.cuts, limit.state.seen) == (cuts, answers + 1)


def test_an_update_the_run_stopped_while_it_waited_for_a_slot_sends_and_journals_nothing(
        direct: Direct) -> None:
    run = direct.run

    class StopsWhileWaiting(ConcurrencyLimit):
        @contextmanager
        def request(self) -> Iterator[Slot]:
            run.stop("interrupted")  # Ctrl-C while this update waits for its slot
            with super().request() as slot:
                yield slot

    updater = _limited(direct, StopsWhileWaiting(4, run.clock.monotonic))
    change = direct.change("img-00", [{"op": "add", "path": "/min_ram", "value": 8}],
                           min_ram=8)
    (outcome,) = updater.update_all([change], {"img-00": direct.record("img-00")})
    assert outcome.result == "skipped"
    assert direct.world.patches() == 0
    assert _states(direct.world) == []


def test_a_real_kill_mid_update_is_resolved_by_the_next_run_reading_the_image(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    """SIGKILL while the PATCH is in flight (the sandbox holds it, then commits it): the next
    apply reads the image, records the update, and sends nothing again."""
    world = World(sandbox(profile="glance", hang_s=1.5), tmp_path, run_cli, "glance")
    world.write(images(2))
    assert world.apply().exit_code == 0
    world.write([*edited(1), *images(2)[1:]])
    world.sb.script("img-00", patch="timeout")
    run = Apply(tmp_path, world.sb, world.state, world.catalog, "--profile", "glance")
    wait_for(lambda: world.patches() == 1, 30, "the PATCH", alive=run.alive)
    assert run.kill() == -signal.SIGKILL
    wait_for(lambda: world.image("img-00")["min_ram"] == 2048, 10, "the late commit")
    assert _states(world) == [("pending",)]

    result = world.apply()

    assert result.exit_code == 0, result.output
    assert world.patches() == 1  # read, recorded, never sent again
    assert _states(world) == [("done",)]
    assert recorded(world.state)["img-00"]["response"]["min_ram"] == 2048
    assert world.plan()[0] == 0
