"""Several targets in one catalog and one run (issue 14): the catalog's `targets:` and
per-image selection, `--target`, each target isolated (credentials, state rows, lock),
side by side, failing alone, moves, and the JSON report's format_version 2.

Three sandboxes in Keystone mode stand for three regions; a clouds.yaml holds one entry per
target, each pointing at its sandbox's Keystone.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from apply_helpers import SandboxFactory, token_targets_apply
from click.testing import CliRunner, Result

from reconciler.apply import ApplyRequest, TargetsApply, apply_targets
from reconciler.auth import ApiSession, ConnectOptions, Scope, open_session
from reconciler.catalog import declared_targets, load_catalog
from reconciler.cli import Runtime, cli
from reconciler.client import RetryPolicy
from reconciler.errors import CatalogError, ConfigError
from reconciler.models import Target, target_key
from reconciler.operations import TargetPart, check_distinct
from reconciler.planner import select_targets
from reconciler.profiles import PROFILES
from reconciler.sandbox import Sandbox
from reconciler.state import LockRequest, open_for_write, open_readonly

USER, DOMAIN, PASSWORD = "ci-bot", "acme-account", "pw-TARGETS-PLANTED-9d2e"
REGIONS = ("cn-north-4", "cn-east-3", "ap-southeast-1")
NAMES = ("north", "east", "sea")

CATALOG = """\
targets:
  north: {cloud: north}
  east: {cloud: east}
  sea: {cloud: sea, region: ap-southeast-1}
images:
  - name: base-all
  - name: only-north
    targets: [north]
  - name: east-and-sea
    targets: [east, sea]
"""


def clouds_yaml(directory: Path, sandboxes: Mapping[str, Sandbox]) -> Path:
    """One clouds.yaml entry per target, each against its own sandbox's Keystone."""
    clouds = {name: {"region_name": sb.config.region,
                     "auth": {"auth_url": f"{sb.url}/v3", "username": USER,
                              "password": PASSWORD, "user_domain_name": DOMAIN,
                              "project_name": sb.config.region}}
              for name, sb in sandboxes.items()}
    path = directory / "clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": clouds}), encoding="utf-8")
    return path


@pytest.fixture
def regions(sandbox: SandboxFactory) -> dict[str, Sandbox]:
    return {name: sandbox(password=PASSWORD, user=USER, region=region)
            for name, region in zip(NAMES, REGIONS, strict=True)}


@pytest.fixture
def work(tmp_path: Path, regions: dict[str, Sandbox]) -> Path:
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "images.yaml").write_text(CATALOG, encoding="utf-8")
    clouds_yaml(tmp_path, regions)
    return tmp_path


Invoke = Callable[..., Result]


@pytest.fixture
def invoke(work: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.chdir(work)

    def run(*args: Any, env: Mapping[str, str] | None = None) -> Result:
        environment = {"HOME": str(work), "OS_CLIENT_CONFIG_FILE": str(work / "clouds.yaml"),
                       **(env or {})}
        return CliRunner().invoke(cli, [str(a) for a in args], prog_name="reconcile",
                                  obj=Runtime(env=environment), catch_exceptions=False)
    return run


APPLY = ("apply", "--yes", "--state", "state.db", "--format", "json", "--retries", "0")


def names(sb: Sandbox) -> list[str]:
    return sorted(str(i["name"]) for i in sb.images())


def document(result: Result, code: int = 0) -> dict[str, Any]:
    assert result.exit_code == code, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


# --- the catalog ----------------------------------------------------------------------------

def load(tmp_path: Path, files: Mapping[str, str]) -> Any:
    root = tmp_path / "c"
    root.mkdir(exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return load_catalog(root, PROFILES["ims"])


def problems(tmp_path: Path, files: Mapping[str, str]) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        load(tmp_path, files)
    return [str(p) for p in caught.value.problems]


def test_targets_and_placement_are_read_from_any_file(tmp_path: Path) -> None:
    catalog = load(tmp_path, {
        "a-targets.yaml": "targets:\n  north: {endpoint: 'https://ims.example.com/v2/'}\n"
                          "  east: {region: cn-east-3, project: team-a, profile: glance}\n",
        "b.yaml": "defaults:\n  targets: [north]\nimages:\n  - name: x\n  - name: y\n"
                  "    targets: [east, north]\n",
        "c.yaml": "images:\n  - name: z\n"})
    assert [t.name for t in catalog.targets] == ["east", "north"]
    east = catalog.targets[0]
    assert (east.region, east.project, east.profile, east.line) == ("cn-east-3", "team-a",
                                                                    "glance", 3)
    assert catalog.placement == {"x": ("north",), "y": ("east", "north")}
    assert [s.name for s in catalog.for_target("north").images] == ["x", "y", "z"]
    assert [s.name for s in catalog.for_target("east").images] == ["y", "z"]
    # A target's catalog has its own digest (saved plans and runs pin it).
    assert catalog.for_target("east").digest != catalog.for_target("north").digest


@pytest.mark.parametrize("text", [
    "targets:\n  north: {endpoint: 'https://ims.example.com'}\n",
    "images: []\r\ntargets :\r\n  north: {endpoint: 'https://ims.example.com'}\r\n",
    '{"images": [], "targets"\n  : {"north": {"endpoint": "https://ims.example.com"}}}',
])
def test_declared_targets_are_found_wherever_the_file_declares_them(tmp_path: Path,
                                                                    text: str) -> None:
    (tmp_path / "a.json" if text.startswith("{") else tmp_path / "a.yaml").write_text(text)
    assert [t.name for t in declared_targets(tmp_path)] == ["north"]


def test_a_selection_alone_declares_no_target(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("defaults:\n  targets: [north]\nimages:\n  - name: x\n"
                                     "    targets: [north]\n")
    assert declared_targets(tmp_path) == ()


def test_catalog_target_errors_are_located(tmp_path: Path) -> None:
    found = problems(tmp_path, {
        "a.yaml": "targets:\n  north: {endpoint: 'https://ims.example.com'}\n"
                  "  nowhere: {project: p}\n  'bad name': {region: r}\n"
                  "  leaky: {endpoint: 'https://user:secret@ims.example.com'}\n"
                  "  typo: {regoin: r}\n"
                  "images:\n  - name: x\n    targets: [nrth]\n  - name: y\n    targets: []\n",
        "b.yaml": "targets:\n  north: {region: r}\nimages:\n  - name: z\n    targets: north\n"})
    assert any(p.startswith(f"{tmp_path}/c/a.yaml:3: targets.nowhere: has nothing that gives "
                            "an endpoint") for p in found), found
    assert any("a.yaml:4: targets.bad name: is not a usable target name" in p for p in found)
    assert any("a.yaml:5: targets.leaky.endpoint: must be an http:// or https:// URL without "
               "a user or password" in p for p in found)
    assert not any("secret" in p for p in found)
    assert any("a.yaml:6: targets.typo.regoin: unknown target setting; did you mean region?"
               in p for p in found)
    assert any("a.yaml:9: x.targets[0] (images[0]): unknown target 'nrth'; did you mean "
               "north?" in p for p in found)
    assert any("a.yaml:11: y.targets (images[1]): is empty" in p for p in found)
    assert any(p.startswith(f"{tmp_path}/c/b.yaml:2: targets.north: target 'north' is "
                            f"declared twice; first declared at {tmp_path}/c/a.yaml:2")
               for p in found), found
    assert any("b.yaml:5: z.targets (images[0]): must be a list of target names" in p
               for p in found)


def test_every_bad_item_of_a_target_list_or_a_tag_list_is_reported(tmp_path: Path) -> None:
    tags = ", ".join(["7", "''", *(f"t{i}" for i in range(127))])
    found = problems(tmp_path, {
        "a.yaml": "targets:\n  north: {endpoint: 'https://ims.example.com'}\n"
                  "images:\n  - name: x\n    targets: [north, 7, [a]]\n"
                  f"  - name: y\n    tags: [{tags}]\n  - name: z\n    tags: base\n"})
    assert [p.split("/c/", 1)[1] for p in found] == [
        'a.yaml:5: x.targets[1] (images[0]): must be a target name, but it is a number (7); '
        'quote it: "7"',
        "a.yaml:5: x.targets[2] (images[0]): must be a target name, but it is a list",
        'a.yaml:7: y.tags[0] (images[1]): must be text, but it is a number (7); quote it: "7"',
        "a.yaml:7: y.tags[1] (images[1]): must not be empty",
        "a.yaml:7: y.tags (images[1]): has 129 tags; the API allows at most 128",
        "a.yaml:9: z.tags (images[2]): must be a list of text, but it is text ('base')",
    ]


def test_a_selection_without_declared_targets_says_where_to_declare_them(
        tmp_path: Path) -> None:
    found = problems(tmp_path, {"a.yaml": "images:\n  - name: x\n    targets: [north]\n"})
    assert found == [f"{tmp_path}/c/a.yaml:3: x.targets[0] (images[0]): unknown target "
                     "'north'; no target is declared: add them under `targets:` in any "
                     "catalog file"]


def test_select_targets_takes_globs_and_refuses_what_matches_nothing(tmp_path: Path) -> None:
    catalog = load(tmp_path, {"a.yaml": "targets:\n  cn-north-4: {region: a}\n"
                                        "  cn-east-3: {region: b}\n  eu-west-101: {region: c}\n"
                                        "images: []\n"})
    declared = catalog.targets
    assert [t.name for t in select_targets(declared, ["cn-*"])] == ["cn-east-3", "cn-north-4"]
    assert [t.name for t in select_targets(declared, [])] == [t.name for t in declared]
    with pytest.raises(ConfigError, match="--target ap-\\*: no target of the catalog"):
        select_targets(catalog.targets, ["cn-*", "ap-*"])
    plain = load_catalog(_plain(tmp_path), PROFILES["ims"])
    with pytest.raises(ConfigError, match="the catalog declares no targets"):
        select_targets(plain.targets, ["x"])


def _plain(tmp_path: Path) -> Path:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "a.yaml").write_text("images:\n  - name: x\n", encoding="utf-8")
    return root


def test_the_state_key_is_the_endpoint_and_the_project() -> None:
    assert target_key("https://ims.example.com") == "https://ims.example.com"
    assert target_key("https://ims.example.com", "team-a") == \
        "https://ims.example.com#project=team-a"
    one, two = Target(name="a", region="r"), Target(name="b", region="r")
    parts = check_distinct([TargetPart(one), TargetPart(two)], {"a": "k", "b": "k"})
    assert parts[0].error is None
    assert parts[1].error is not None and "same endpoint and project as target 'a'" in \
        parts[1].error


def test_scope_names_a_project_by_id_or_by_name() -> None:
    assert Scope(project="0123456789abcdef0123456789ABCDEF").project_fields() == {
        "project_id": "0123456789abcdef0123456789ABCDEF"}
    assert Scope(project="cn-north-4_team").project_fields() == {
        "project_name": "cn-north-4_team"}
    assert Scope().project_fields() == {}


# --- one run, three regions ----------------------------------------------------------------

def test_apply_creates_each_image_in_the_targets_it_is_placed_in(
        invoke: Invoke, regions: dict[str, Sandbox]) -> None:
    doc = document(invoke(*APPLY))
    assert names(regions["north"]) == ["base-all", "only-north"]
    assert names(regions["east"]) == ["base-all", "east-and-sea"]
    assert names(regions["sea"]) == ["base-all", "east-and-sea"]
    assert doc["format_version"] == 2
    assert doc["summary"]["created"] == 6 and doc["summary"]["create"] == 6
    by_target = {t["name"]: t for t in doc["targets"]}
    assert list(by_target) == ["east", "north", "sea"]
    for name, sb in regions.items():
        assert by_target[name]["endpoint"] == sb.url
        assert by_target[name]["error"] is None
        assert by_target[name]["summary"]["created"] == 2
    assert sorted((c["target"], c["name"]) for c in doc["changes"]) == [
        ("east", "base-all"), ("east", "east-and-sea"), ("north", "base-all"),
        ("north", "only-north"), ("sea", "base-all"), ("sea", "east-and-sea")]
    assert all(o["target"] for o in doc["outcomes"])
    # Each target's rows are its own, under its endpoint.
    store = open_readonly("state.db")
    assert store is not None
    try:
        assert store.targets() == sorted(sb.url for sb in regions.values())
        assert sorted(store.records(regions["north"].url)) == ["base-all", "only-north"]
        assert len(store.runs()) == 3  # one run row per target
    finally:
        store.close()
    # And again: nothing to do anywhere.
    again = document(invoke(*APPLY))
    assert again["summary"]["unchanged"] == 6 and again["summary"]["created"] == 0


def test_target_narrows_plan_and_apply(invoke: Invoke, regions: dict[str, Sandbox]) -> None:
    doc = document(invoke(*APPLY, "--target", "e*", "--target", "sea"))
    assert [t["name"] for t in doc["targets"]] == ["east", "sea"]
    assert regions["north"].images() == []
    plan = document(invoke("plan", "--state", "state.db", "--format", "json", "--target",
                           "north"))
    assert [t["name"] for t in plan["targets"]] == ["north"]
    assert {(c["name"], c["action"]) for c in plan["changes"]} == {
        ("base-all", "create"), ("only-north", "create")}
    unknown = invoke("plan", "--state", "state.db", "--target", "west")
    assert unknown.exit_code == 1
    assert "--target west: no target of the catalog has a name it matches" in unknown.output


def test_an_offline_plan_needs_no_credentials_for_targets_with_an_endpoint(
        invoke: Invoke, work: Path, regions: dict[str, Sandbox]) -> None:
    (work / "catalog" / "images.yaml").write_text(
        CATALOG.replace("{cloud: north}", f"{{endpoint: '{regions['north'].url}'}}"),
        encoding="utf-8")
    result = invoke("plan", "--state", "state.db", "--format", "json", "--target", "north",
                    env={"OS_CLIENT_CONFIG_FILE": str(work / "none.yaml")})
    doc = document(result)
    assert doc["targets"][0]["endpoint"] == regions["north"].url
    assert doc["summary"]["create"] == 2


def test_a_dead_region_costs_only_its_own_images(invoke: Invoke,
                                                 regions: dict[str, Sandbox]) -> None:
    regions["east"].stop()
    result = invoke(*APPLY)
    doc = document(result, code=1)
    by_target = {t["name"]: t for t in doc["targets"]}
    assert by_target["east"]["error"] and "cannot reach Keystone" in by_target["east"]["error"]
    assert by_target["north"]["summary"]["created"] == 2
    assert by_target["sea"]["summary"]["created"] == 2
    assert names(regions["north"]) == ["base-all", "only-north"]
    assert "error: target east: cannot reach Keystone" in result.stderr
    assert PASSWORD not in result.output


def test_a_target_whose_credentials_are_refused_fails_alone(
        invoke: Invoke, work: Path, regions: dict[str, Sandbox]) -> None:
    clouds = yaml.safe_load((work / "clouds.yaml").read_text())
    clouds["clouds"]["sea"]["auth"]["password"] = "wrong-PLANTED"
    (work / "clouds.yaml").write_text(yaml.safe_dump(clouds), encoding="utf-8")
    result = invoke(*APPLY, "--format", "text")
    assert result.exit_code == 1, result.output
    assert "error: target sea: HTTP 401: Keystone at" in result.stderr
    assert "rejected the credentials" in result.stderr
    assert "wrong-PLANTED" not in result.output
    assert names(regions["east"]) == ["base-all", "east-and-sea"]
    assert regions["sea"].images() == []


def test_a_region_stopped_mid_way_fails_alone(tmp_path: Path,
                                             regions: dict[str, Sandbox]) -> None:
    """The library run: `sea` goes down right after answering its first create; its other
    image fails, the other targets finish, and the part of `sea` says what happened."""
    clouds = clouds_yaml(tmp_path, regions)
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    (catalog_dir / "images.yaml").write_text(CATALOG, encoding="utf-8")
    catalog = load_catalog(catalog_dir, PROFILES["ims"])
    env = {"OS_CLIENT_CONFIG_FILE": str(clouds), "HOME": str(tmp_path)}
    state = tmp_path / "state.db"

    def connect(target: Target) -> Any:
        return open_session(env, None, ConnectOptions(os_cloud=target.cloud), retries=0)

    def request(target: Target, session: ApiSession) -> ApplyRequest:
        if target.name == "sea":  # down before the next create can be sent
            create = session.client.create_image

            def create_then_stop(body: Any) -> dict[str, Any]:
                image = create(body)
                regions["sea"].stop()
                return image

            session.client.create_image = create_then_stop  # type: ignore[method-assign]
        return ApplyRequest(catalog_dir=catalog_dir, state_path=state, profile="ims",
                            endpoint=session.endpoint, api=session.client,
                            parallelism=1, retry=RetryPolicy(attempts=1),
                            project_id=session.project_id)

    result = apply_targets(TargetsApply(catalog_dir, catalog.targets, state, connect,
                                        request))
    parts = {p.target.name: p for p in result.parts}
    assert [p.target.name for p in result.failed] == ["sea"]
    assert parts["sea"].report is not None
    sea = {o.name: o.result for o in parts["sea"].report.outcomes}
    assert sorted(sea.values()) == ["created", "failed"]
    assert result.report.targets[2].summary["failed"] == 1
    assert names(regions["east"]) == ["base-all", "east-and-sea"]
    assert names(regions["north"]) == ["base-all", "only-north"]


def test_moving_an_image_orphans_it_where_it_was_and_creates_it_where_it_goes(
        invoke: Invoke, work: Path, regions: dict[str, Sandbox]) -> None:
    document(invoke(*APPLY))
    moved = CATALOG.replace("only-north\n    targets: [north]", "only-north\n    targets: [east]")
    (work / "catalog" / "images.yaml").write_text(moved, encoding="utf-8")
    plan = document(invoke("plan", "--state", "state.db", "--format", "json", "--refresh",
                           "--detailed-exitcode"), code=2)
    moves = {(c["target"], c["action"]) for c in plan["changes"] if c["name"] == "only-north"}
    assert moves == {("north", "orphan"), ("east", "create")}
    document(invoke(*APPLY))
    assert names(regions["east"]) == ["base-all", "east-and-sea", "only-north"]
    assert names(regions["north"]) == ["base-all", "only-north"]  # never deleted


def test_targets_refuse_what_holds_one_endpoint(invoke: Invoke) -> None:
    endpoint = invoke("plan", "--endpoint", "https://ims.example.com")
    assert endpoint.exit_code == 1 and "this catalog declares `targets:`" in endpoint.output
    out = invoke("plan", "--out", "plan.json")
    assert out.exit_code == 1 and "saved plans" in out.output


def test_targets_on_one_postgresql_store_lock_each_target_alone(
        invoke: Invoke, regions: dict[str, Sandbox], pg_url: str) -> None:
    """Another run holding `north`'s lock blocks `north` only."""
    holder = open_for_write(pg_url, LockRequest(regions["north"].url, "apply"))
    try:
        result = invoke("apply", "--yes", "--state", pg_url, "--format", "json")
    finally:
        holder.close()
    doc = document(result, code=1)
    by_target = {t["name"]: t for t in doc["targets"]}
    assert "locked" in (by_target["north"]["error"] or "")
    assert regions["north"].images() == []
    assert by_target["east"]["summary"]["created"] == 2
    assert by_target["sea"]["summary"]["created"] == 2


def test_the_json_report_v2_schema(invoke: Invoke) -> None:
    doc = document(invoke(*APPLY, "--target", "north"))
    assert set(doc) >= {"format_version", "mode", "summary", "changes", "outcomes", "targets",
                        "target", "catalog_digest"}
    assert set(doc["targets"][0]) == {"name", "endpoint", "summary", "error", "run_id",
                                      "duration_s"}
    assert {c["target"] for c in doc["changes"]} == {"north"}
    assert doc["summary"] == doc["targets"][0]["summary"]


def test_a_catalog_without_targets_keeps_the_version_1_report(
        run_cli: Callable[..., Result], write_catalog: Callable[..., Path]) -> None:
    write_catalog({"a.yaml": "images:\n  - name: x\n"})
    doc = json.loads(run_cli(["plan", "--format", "json"]).stdout)
    assert doc["format_version"] == 1 and "targets" not in doc


@pytest.fixture(autouse=True)
def _no_os_vars(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("OS_CLOUD", "OS_AUTH_URL", "OS_AUTH_TOKEN", "RECONCILE_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    yield


# --- reports by target ----------------------------------------------------------------------

def test_the_text_report_groups_by_target_with_a_line_each_and_a_total(
        invoke: Invoke, regions: dict[str, Sandbox]) -> None:
    regions["east"].stop()
    result = invoke(*APPLY, "--format", "text")
    assert result.exit_code == 1
    text = result.stdout
    for name in ("north", "sea"):
        assert f"→ {name} · {regions[name].url}" in text
    assert "→ east" in text and "warning: target failed: cannot reach Keystone" in text
    tail = text[text.index("Targets:"):]
    assert "north  Plan: 2 to create" in tail and "Apply: 2 created" in tail
    assert "east   failed: cannot reach Keystone" in tail
    assert "Total (3 targets, 1 failed): Plan: 4 to create" in tail
    assert "Apply: 4 created, 0 adopted, 0 failed, 0 skipped." in tail


def many_targets_catalog(directory: Path, targets: int, images: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    declared = "".join(f"  t{i:02d}: {{endpoint: 'https://ims.t{i:02d}.example.com'}}\n"
                       for i in range(targets))
    listed = "".join(f"  - name: image-{n:05d}-with-a-rather-long-name-to-fill-the-comment\n"
                     for n in range(images))
    (directory / "a.yaml").write_text(f"targets:\n{declared}images:\n{listed}",
                                      encoding="utf-8")


@pytest.mark.parametrize("targets", [1, 3, 30])
def test_markdown_fits_65536_characters_for_any_number_of_targets(
        run_cli: Callable[..., Result], tmp_path: Path, targets: int) -> None:
    many_targets_catalog(tmp_path / "catalog", targets, 1500)
    result = run_cli(["plan", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert len(text) <= 65_536
    assert f"{targets} target" in text.splitlines()[0]
    assert text.count("### reconcile plan") == targets  # a section for every target
    assert "shortened to fit" in text or "cut to fit" in text
    assert f"**Total: Plan: {1500 * targets} to create" in text


def test_markdown_renders_one_target_for_a_per_target_comment(
        run_cli: Callable[..., Result], tmp_path: Path) -> None:
    many_targets_catalog(tmp_path / "catalog", 3, 5)
    text = run_cli(["plan", "--format", "markdown", "--target", "t01"]).stdout
    assert text.count("### reconcile plan") == 1
    assert "t01 · https://ims.t01.example.com" in text and "t02" not in text


def test_html_is_one_page_with_an_overview_and_a_part_per_target(
        run_cli: Callable[..., Result], tmp_path: Path) -> None:
    many_targets_catalog(tmp_path / "catalog", 3, 2)
    html = run_cli(["plan", "--format", "html"]).stdout
    assert html.count("<html") == 1 and html.count("</html>") == 1
    assert html.count("<style>") == 1
    assert html.count('<section id="target-') == 3
    assert '<a href="#target-2"><code>t01</code></a>' in html
    assert "Total: Plan: 6 to create" in html


# --- the library run: confirmation, Ctrl-C, one bound on requests in flight -----------------

def token_run(tmp_path: Path, sandboxes: list[Sandbox], catalog_text: str | None = None,
              **job: Any) -> tuple[TargetsApply, Path]:
    """A TargetsApply over token-auth sandboxes t0, t1, ... (endpoints in the catalog)."""
    directory = tmp_path / "catalog"
    directory.mkdir(exist_ok=True)
    declared = "".join(f"  t{i}: {{endpoint: '{sb.url}'}}\n" for i, sb in enumerate(sandboxes))
    text = catalog_text or "images:\n  - name: one\n  - name: two\n  - name: three\n"
    (directory / "images.yaml").write_text(f"targets:\n{declared}{text}", encoding="utf-8")
    catalog = load_catalog(directory, PROFILES["ims"])
    state = tmp_path / "state.db"
    return token_targets_apply(directory, catalog.targets, state, **job), state


def test_the_plan_of_every_target_is_confirmed_before_anything_is_sent(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    boxes = [sandbox(), sandbox()]
    shown: list[Any] = []

    def refuse(report: Any) -> bool:
        shown.append(report)
        return False

    job, state = token_run(tmp_path, boxes, confirm=refuse)
    result = apply_targets(job)
    assert result.cancelled and all(sb.images() == [] for sb in boxes)
    assert shown[0].dry_run and shown[0].summary["create"] == 6
    assert [t.name for t in shown[0].targets] == ["t0", "t1"]
    assert not state.exists()  # refused before the store was opened
    job, _ = token_run(tmp_path, boxes, confirm=lambda r: True)
    result = apply_targets(job)
    assert not result.cancelled and not result.failed
    assert all(names(sb) == ["one", "three", "two"] for sb in boxes)


def test_two_targets_that_are_one_place_fail_after_the_first(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    box = sandbox()
    job, _ = token_run(tmp_path, [box, box])
    result = apply_targets(job)
    assert [p.target.name for p in result.failed] == ["t1"]
    assert "same endpoint and project as target 't0'" in (result.failed[0].error or "")
    assert names(box) == ["one", "three", "two"]  # created once


def test_ctrl_c_stops_every_target_and_starts_no_other(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    boxes = [sandbox(latency_ms=300), sandbox()]  # slow: the stop comes before the last
    job, state = token_run(tmp_path, boxes, target_parallelism=1,
                           on_outcome=ctrl_c_once())
    result = apply_targets(job)
    assert result.interrupted
    parts = {p.target.name: p for p in result.parts}
    assert parts["t1"].error == "not started: the run was interrupted"
    assert parts["t0"].report is not None
    # The create in flight when the signal came finishes and is recorded; the rest waits.
    results = [o.result for o in parts["t0"].report.outcomes]
    assert "skipped" in results and "created" in results
    assert names(boxes[0]) == sorted(o.name for o in parts["t0"].report.outcomes
                                     if o.result == "created")
    assert boxes[1].images() == []
    assert "run interrupted" in result.report.warnings[-1]
    store = open_readonly(state)
    assert store is not None
    try:
        assert [r["outcome"] for r in store.runs()] == ["interrupted"]
    finally:
        store.close()


def test_ctrl_c_cuts_a_create_that_does_not_finish_in_the_grace_time(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    """The second create hangs; Ctrl-C after the first: it is cut, and stays pending."""
    import threading

    box = sandbox(hang_s=6.0, faults="ok,timeout")
    job, state = token_run(tmp_path, [box])
    job.make_request = _with_parallelism(job.make_request, 2)

    def when_both_are_sent() -> None:  # Ctrl-C once the hanging create is at the server
        while box.request_count[("POST", "images")] < 2:
            time.sleep(0.02)
        ctrl_c_once()()

    threading.Thread(target=when_both_are_sent, daemon=True).start()
    result = apply_targets(job)
    assert result.interrupted
    store = open_readonly(state)
    assert store is not None
    try:
        # The next apply resolves it (docs/architecture.md §6.2).
        assert len(store.pending(box.url)) == 1
    finally:
        store.close()


def _with_parallelism(make: Any, parallelism: int) -> Any:
    def request(target: Target, session: ApiSession) -> ApplyRequest:
        built: ApplyRequest = make(target, session)
        built.parallelism = parallelism
        return built
    return request


def ctrl_c_once() -> Callable[..., None]:
    """Ctrl-C as the terminal sends it (SIGINT to the process, taken by the main thread),
    at the first outcome."""
    sent: list[bool] = []

    def send(*args: object) -> None:
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
    return send


class CountingSemaphore:
    """A semaphore that remembers the most holders it had at once."""

    def __init__(self, value: int) -> None:
        import threading
        self._inner = threading.BoundedSemaphore(value)
        self._lock = threading.Lock()
        self.held = self.most = 0

    def __enter__(self) -> None:
        self._inner.acquire()
        with self._lock:
            self.held += 1
            self.most = max(self.most, self.held)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.held -= 1
        self._inner.release()


def test_one_bound_holds_over_the_requests_of_every_target(sandbox: SandboxFactory) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from reconciler.client import ImageClient, StaticToken

    boxes = [sandbox(latency_ms=30), sandbox(latency_ms=30)]
    bound = CountingSemaphore(3)
    clients = [ImageClient(sb.url, token_provider=StaticToken("t"),
                           limiter=bound) for sb in boxes]  # type: ignore[arg-type]
    try:
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(lambda i: clients[i % 2].get_image(f"missing-{i}"), range(24)))
    finally:
        for client in clients:
            client.close()
    assert bound.most == 3


# --- --target on the other commands ---------------------------------------------------------

def with_endpoints(work: Path, regions: dict[str, Sandbox]) -> None:
    text = CATALOG
    for name, sb in regions.items():
        text = text.replace(f"{{cloud: {name}", f"{{cloud: {name}, endpoint: '{sb.url}'")
    (work / "catalog" / "images.yaml").write_text(text, encoding="utf-8")


def test_target_narrows_state_list_history_and_forget(
        invoke: Invoke, work: Path, regions: dict[str, Sandbox]) -> None:
    document(invoke(*APPLY))
    needs = invoke("state", "list", "--state", "state.db", "--target", "north")
    assert needs.exit_code == 1 and "target north has no `endpoint:`" in needs.output
    with_endpoints(work, regions)
    listed = invoke("state", "list", "--state", "state.db", "--target", "north",
                    "--format", "json")
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["name"] for r in rows) == ["base-all", "only-north"]
    assert {r["target"] for r in rows} == {regions["north"].url}
    runs = invoke("history", "--state", "state.db", "--target", "e*", "--format", "json")
    assert [json.loads(line)["target"] for line in runs.stdout.splitlines()] == [
        regions["east"].url]
    two = invoke("state", "forget", "base-all", "--state", "state.db", "--target", "*")
    assert two.exit_code == 1 and "--target must pick one target here; it picks 3" in two.output
    forgot = invoke("state", "forget", "base-all", "--state", "state.db", "--target", "sea")
    assert forgot.exit_code == 0, forgot.output
    left = invoke("state", "list", "--state", "state.db", "--format", "json")
    assert sum(json.loads(line)["name"] == "base-all" for line in left.stdout.splitlines()) == 2


def test_state_import_into_one_target(invoke: Invoke, regions: dict[str, Sandbox]) -> None:
    image = regions["east"].add_image({"name": "east-and-sea", "disk_format": "vhd",
                                       "container_format": "bare", "visibility": "private",
                                       "min_ram": 0})
    result = invoke("state", "import", "east-and-sea", image["id"], "--state", "state.db",
                    "--target", "east")
    assert result.exit_code == 0, result.output
    assert f"imported east-and-sea into east: {image['id']}" in result.stdout
    doc = document(invoke(*APPLY, "--target", "east"))
    assert {(c["name"], c["action"]) for c in doc["changes"]} == {
        ("base-all", "create"), ("east-and-sea", "unchanged")}
    wrong = invoke("state", "import", "only-north", image["id"], "--state", "state.db",
                   "--target", "east")
    assert wrong.exit_code == 1 and "'only-north' is not in the catalog" in wrong.output


def test_validate_counts_the_images_of_each_target(invoke: Invoke) -> None:
    result = invoke("validate")
    assert result.exit_code == 0, result.output
    assert "targets: east (2 images), north (2 images), sea (2 images)" in result.stdout
    doc = json.loads(invoke("validate", "--format", "json", "--target", "n*").stdout)
    assert doc["targets"] == {"north": 2}


def test_only_is_checked_over_every_target_before_anything_is_sent(
        invoke: Invoke, regions: dict[str, Sandbox]) -> None:
    doc = document(invoke(*APPLY, "--only", "only-*"))
    assert {(c["target"], c["name"]) for c in doc["changes"]} == {("north", "only-north")}
    assert not doc["targets"][0]["error"] and regions["east"].images() == []
    typo = invoke(*APPLY, "--only", "onyl-*")
    assert typo.exit_code == 1 and "--only onyl-*: no image" in typo.output
    plan = invoke("plan", "--state", "state.db", "--only", "nothing-*")
    assert plan.exit_code == 1 and "in any target" in plan.output


def test_the_runs_credentials_are_scoped_to_each_targets_region_and_project(
        invoke: Invoke, work: Path, regions: dict[str, Sandbox]) -> None:
    """No `cloud:`: the run's OS_* password credentials, re-scoped per target. The project
    is part of the state key; a region the service catalog lacks fails that target alone."""
    north = regions["north"]
    (work / "catalog" / "images.yaml").write_text(
        "targets:\n  team-a: {region: cn-north-4, project: team-a}\n"
        "  team-b: {region: cn-north-4, project: 0123456789abcdef0123456789abcdef}\n"
        "  elsewhere: {region: eu-west-101}\n"
        "images:\n  - name: shared\n    targets: [team-a, elsewhere]\n", encoding="utf-8")
    env = {"OS_AUTH_URL": f"{north.url}/v3", "OS_USERNAME": USER, "OS_PASSWORD": PASSWORD,
           "OS_USER_DOMAIN_NAME": DOMAIN, "OS_PROJECT_NAME": "cn-north-4"}
    doc = document(invoke(*APPLY, env=env), code=1)
    by_target = {t["name"]: t for t in doc["targets"]}
    assert "no public image endpoint for region eu-west-101" in by_target["elsewhere"]["error"]
    assert "the target's endpoint:" in by_target["elsewhere"]["error"]  # not only flags and env
    assert by_target["team-a"]["summary"]["created"] == 1
    assert by_target["team-b"]["error"] is None
    store = open_readonly("state.db")
    assert store is not None
    try:
        assert store.targets() == [f"{north.url}#project=team-a"]
    finally:
        store.close()


def test_a_confirmed_plan_goes_stale_per_target(tmp_path: Path,
                                                sandbox: SandboxFactory) -> None:
    """Another writer changes t0's rows while the question is asked: t0 refuses, t1 (whose
    rows did not change, though the store's revision moved) applies what was shown."""
    from reconciler.models import Record

    boxes = [sandbox(), sandbox()]

    def someone_else_writes(report: Any) -> bool:
        writer = open_for_write(tmp_path / "state.db", LockRequest(boxes[0].url, "import"))
        try:
            writer.save_record(boxes[0].url, Record.of(
                name="one", image_id="elsewhere", spec_digest="x", request={}, response={},
                recorded_at="2026-12-01T00:00:00Z"))
        finally:
            writer.close()
        return True

    job, _ = token_run(tmp_path, boxes, confirm=someone_else_writes)
    result = apply_targets(job)
    parts = {p.target.name: p for p in result.parts}
    assert "the plan you confirmed is stale" in (parts["t0"].error or "")
    assert boxes[0].images() == []
    assert parts["t1"].error is None and names(boxes[1]) == ["one", "three", "two"]
