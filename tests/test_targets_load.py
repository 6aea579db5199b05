"""A plan or an apply over several targets loads the catalog once per distinct set of rules,
in the calling thread before the targets' threads start (docs/architecture.md §13), and
each target gets what a load of its own would have given: the same catalog, the same
located problems in the same order, the same warnings naming its own server's rules.

Every load is counted where it parses (``catalog._checked_files``), with a large catalog's
worker processes forced, so a load from a target's thread would fork from it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from apply_helpers import SandboxFactory, token_targets_apply

from reconciler import catalog, operations
from reconciler.apply import TargetsApply, apply_targets
from reconciler.clock import ManualClock
from reconciler.errors import AuthError, CatalogError, ConfigError
from reconciler.models import Target, target_key
from reconciler.operations import make_plan, plan_targets, run_profile
from reconciler.profiles import PROFILES
from reconciler.schemacache import NO_ALLOWANCES
from reconciler.state import open_for_write, open_readonly

CLOCK_START = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
OS_LIST = [{"platform": "Ubuntu", "version_list": [
    {"platform": "Ubuntu", "os_version": "Ubuntu 22.04 server 64bit"}]}]


class Loads:
    """Each load of the catalog: the thread it ran in and the targets' threads alive then."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str]]] = []
        self.workers: int | None = 2  # forked, as a large catalog's

    @property
    def count(self) -> int:
        return len(self.seen)

    def check_no_target_thread_ran(self) -> None:
        main = threading.main_thread().name
        assert self.seen and all(t == main and alive == [] for t, alive in self.seen), self.seen


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Loads:
    counted = Loads()
    real = catalog._checked_files

    def checked(files: Any, profile: Any, strict: bool, base: Path, workers: int | None,
                meanwhile: Callable[[], None]) -> Any:
        counted.seen.append((threading.current_thread().name, sorted(
            t.name for t in threading.enumerate() if t.name.startswith("target"))))
        return real(files, profile, strict, base, counted.workers, meanwhile)

    monkeypatch.setattr(catalog, "_checked_files", checked)
    return counted


def write(directory: Path, targets: dict[str, str], images: str) -> Path:
    directory.mkdir(exist_ok=True)
    declared = "".join(f"  {name}: {{{fields}}}\n" for name, fields in targets.items())
    (directory / "a.yaml").write_text(f"targets:\n{declared}{images}", encoding="utf-8")
    (directory / "b.yaml").write_text("images:\n  - {name: b-one, min_disk: 10}\n"
                                      "  - {name: b-two, min_disk: 10}\n", encoding="utf-8")
    return directory


def no_connect(target: Target) -> Any:
    raise AuthError(f"{target.name}: no credentials here")


def one_by_one(directory: Path, state: Path, targets: list[Target],
               profile: str = "ims") -> dict[str, str]:
    """What each target's plan gave before: a load of its own (``make_plan`` loading)."""
    out = {}
    for target in targets:
        key = target_key(target.endpoint or "", target.project)
        store = open_readonly(state)
        try:
            rules = run_profile(target.profile or profile, store, key, api=None,
                                state_path=state, allow=NO_ALLOWANCES,
                                clock=ManualClock(CLOCK_START))
        finally:
            if store is not None:
                store.close()
        try:
            result = make_plan(directory, state, profile=target.profile or profile,
                               rules=rules, keep=False, key=key, place=target.name,
                               must_match=False, clock=ManualClock(CLOCK_START))
        except CatalogError as exc:
            out[target.name] = str(exc)
        else:
            out[target.name] = result.report.model_dump_json()
    return out


def planned(directory: Path, state: Path, targets: list[Target],
            connect: Callable[[Target], Any] = no_connect) -> dict[str, str]:
    plans = plan_targets(directory, state, targets, connect=connect, refresh=False,
                         profile="ims", clock=ManualClock(CLOCK_START), dry_run=True)
    return {p.target.name: p.error or (p.report.model_dump_json() if p.report else "")
            for p in plans.parts}


def declared(directory: Path) -> list[Target]:
    return list(catalog.declared_targets(directory))


# --- plan --------------------------------------------------------------------------------------

def test_a_plan_of_several_targets_loads_the_catalog_once_before_their_threads(
        tmp_path: Path, loads: Loads) -> None:
    directory = write(tmp_path / "c", {
        "t0": "endpoint: 'http://t0.example'", "t1": "endpoint: 'http://t1.example'",
        "t2": "endpoint: 'http://t2.example'", "t3": "region: nowhere"},
        "images:\n  - {name: all, min_disk: 10}\n  - {name: two, min_disk: 10, "
        "targets: [t0, t2]}\n")
    targets = declared(directory)
    before = one_by_one(directory, tmp_path / "state.db", targets[:3])
    assert loads.count == 3  # the old way: one load per target
    loads.seen.clear()
    plans = planned(directory, tmp_path / "state.db", targets)
    assert loads.count == 1
    loads.check_no_target_thread_ran()
    # byte for byte what each target's own load gave; t3 (no endpoint, cannot connect) fails
    # alone, and the others are planned
    assert {n: plans[n] for n in before} == before
    assert plans["t3"] == "t3: no credentials here"


def test_targets_of_two_profiles_load_it_twice(tmp_path: Path, loads: Loads) -> None:
    directory = write(tmp_path / "c", {
        "a": "endpoint: 'http://a.example'", "b": "endpoint: 'http://b.example', "
        "profile: glance", "c": "endpoint: 'http://c.example'"},
        "images:\n  - {name: all, min_disk: 10}\n")
    targets = declared(directory)
    before = one_by_one(directory, tmp_path / "state.db", targets)
    loads.seen.clear()
    assert planned(directory, tmp_path / "state.db", targets) == before
    assert loads.count == 2
    loads.check_no_target_thread_ran()


def keep_rules(state: Path, rules: dict[str, tuple[str, Any]]) -> None:
    """Server rules kept for each target key, as an apply keeps them."""
    store = open_for_write(state)
    try:
        for key, (kind, body) in rules.items():
            path = "/v2/schemas/image" if kind == "image_schema" else "/v1/cloudimages/os_version"
            store.save_server_info(key, kind, url=key + path, body=body,
                                   read_at="2026-11-30T08:00:00Z")
    finally:
        store.close()


def test_rules_kept_per_server_share_a_load_and_each_warning_names_its_own_server(
        tmp_path: Path, loads: Loads) -> None:
    """Every target kept its region's OS list: the same list read from two servers is one
    load, each target's warning names its own region's list; another list is another load."""
    directory = write(tmp_path / "c", {
        "n": "endpoint: 'http://n.example'", "e": "endpoint: 'http://e.example'",
        "w": "endpoint: 'http://w.example'"},
        "images:\n  - {name: odd, min_disk: 10, os_version: Kylin V10 64bit}\n")
    other = [{"platform": "Kylin", "version_list": [
        {"platform": "Kylin", "os_version": "Kylin V10 64bit"}]}]
    keep_rules(tmp_path / "state.db", {"http://n.example": ("os_versions", OS_LIST),
                                       "http://e.example": ("os_versions", OS_LIST),
                                       "http://w.example": ("os_versions", other)})
    targets = declared(directory)
    before = one_by_one(directory, tmp_path / "state.db", targets)
    loads.seen.clear()
    plans = planned(directory, tmp_path / "state.db", targets)
    assert plans == before
    assert loads.count == 2
    warned = {name: [w for c in json.loads(plan)["changes"] if c["name"] == "odd"
                     for w in c["warnings"]] for name, plan in plans.items()}
    assert warned["w"] == []  # its own list knows the OS version
    for name in ("n", "e"):
        [warning] = warned[name]
        assert f"the region's OS list (http://{name}.example/v1/cloudimages/os_version" \
            in warning


def test_an_invalid_catalog_fails_each_target_with_its_own_located_problems_in_file_order(
        tmp_path: Path, loads: Loads) -> None:
    schema = {"name": "image", "properties": {
        "disk_format": {"type": ["null", "string"], "enum": [None, "raw"]}}}
    directory = write(tmp_path / "c", {
        "g1": "endpoint: 'http://g1.example', profile: glance",
        "g2": "endpoint: 'http://g2.example', profile: glance",
        "i": "endpoint: 'http://i.example'"},
        "images:\n  - {name: bad, disk_format: qcow2}\n  - {name: 1.10}\n")
    (directory / "b.yaml").write_text("images:\n  - {name: bad}\n  - {name: b, "
                                      "disk_format: vmdk, min_disk: 0}\n", encoding="utf-8")
    keep_rules(tmp_path / "state.db", {"http://g1.example": ("image_schema", schema),
                                       "http://g2.example": ("image_schema", schema)})
    targets = declared(directory)
    before = one_by_one(directory, tmp_path / "state.db", targets)
    assert all(text.startswith("catalog is invalid") for text in before.values())
    loads.seen.clear()
    assert planned(directory, tmp_path / "state.db", targets) == before
    assert loads.count == 2  # glance with the one schema, ims
    assert "http://g1.example/v2/schemas/image" in before["g1"]
    assert "http://g2.example/v2/schemas/image" in before["g2"]
    places = [(line.split(":")[0], int(line.split(":")[1]))
              for line in before["g1"].splitlines()[1:]]
    assert places == sorted(places) and {f[-6:] for f, _ in places} == {"a.yaml", "b.yaml"}


def test_load_catalogs_gives_each_profile_what_its_own_load_gives(
        tmp_path: Path) -> None:
    from reconciler.serverinfo import ServerInfo, profile_for

    directory = write(tmp_path / "c", {"x": "endpoint: 'http://x.example'"},
                      "images:\n  - {name: odd, os_version: Kylin V10 64bit}\n")

    def kept(url: str) -> Any:
        return profile_for("ims", ServerInfo("os_versions", url, "2026-11-30T08:00:00Z",
                                             OS_LIST, cached=True))

    profiles = [kept("http://1/v1"), PROFILES["ims"], kept("http://2/v1"),
                PROFILES["ims"]]
    shared = catalog.load_catalogs(directory, profiles)
    for profile, got in zip(profiles, shared, strict=True):
        own = catalog.load_catalog(directory, profile)
        assert not isinstance(got, CatalogError)
        assert (got.model_dump(), got.digest) == (own.model_dump(), own.digest)
    assert shared[1] is not shared[3]  # each with its labels put back
    plain = write(tmp_path / "p", {"x": "endpoint: 'http://x.example'"},
                  "images:\n  - {name: u, os_version: Ubuntu 22.04 server 64bit}\n")
    first, second = catalog.load_catalogs(plain, [kept("http://1/v1"), kept("http://2/v1")])
    assert first is second  # no message names where the rules came from: one object serves


# --- apply -------------------------------------------------------------------------------------

@pytest.fixture
def two_boxes(tmp_path: Path, sandbox: SandboxFactory) -> Iterator[tuple[Path, list[Any]]]:
    boxes = [sandbox(), sandbox()]
    directory = write(tmp_path / "c", {f"t{i}": f"endpoint: '{sb.url}'"
                                       for i, sb in enumerate(boxes)},
                      "images:\n  - {name: one, min_disk: 10}\n")
    yield directory, boxes


def job(directory: Path, state: Path, **kwargs: Any) -> TargetsApply:
    return token_targets_apply(directory, declared(directory), state, **kwargs)


def test_an_apply_of_several_targets_loads_the_catalog_once(
        tmp_path: Path, two_boxes: tuple[Path, list[Any]], loads: Loads) -> None:
    directory, boxes = two_boxes
    loads.workers = None  # the sandboxes serve from threads of this process: no fork here
    result = apply_targets(job(directory, tmp_path / "state.db"))
    assert [p.error for p in result.parts] == [None, None]
    assert all(len(sb.images()) == 3 for sb in boxes)
    assert result.report.summary["created"] == 6  # one, b-one, b-two in each
    assert loads.count == 1
    loads.check_no_target_thread_ran()


def test_only_is_checked_against_the_load_not_a_parse_of_its_own(
        tmp_path: Path, two_boxes: tuple[Path, list[Any]], loads: Loads,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # `--only` used to read every file once more before connecting (a whole parse of a big
    # catalog); the names of the catalog just loaded tell the same.
    directory, boxes = two_boxes
    loads.workers = None  # the sandboxes serve from threads of this process: no fork here

    def no_second_read(*args: Any) -> set[str]:
        raise AssertionError("the catalog's files were read again for --only")

    monkeypatch.setattr(operations, "image_names", no_second_read)
    result = apply_targets(job(directory, tmp_path / "state.db", only=("b-*",)))
    assert loads.count == 1 and [p.error for p in result.parts] == [None, None]
    made = [len(sb.images()) for sb in boxes]
    with pytest.raises(ConfigError, match="--only bb-\\*: no image of the catalog"):
        apply_targets(job(directory, tmp_path / "state.db", only=("bb-*",)))
    assert [len(sb.images()) for sb in boxes] == made  # nothing sent


def test_a_confirmed_apply_loads_it_again_and_refuses_a_catalog_changed_meanwhile(
        tmp_path: Path, two_boxes: tuple[Path, list[Any]], loads: Loads) -> None:
    """Once for the plan shown, once after the answer (as one target's apply): a catalog
    edited while the question was asked is refused by every target, never applied unseen."""
    directory, boxes = two_boxes
    loads.workers = None  # the sandboxes serve from threads of this process: no fork here

    def edit(report: Any) -> bool:
        (directory / "b.yaml").write_text("images:\n  - {name: b-one, min_disk: 20}\n",
                                          encoding="utf-8")
        return True

    result = apply_targets(job(directory, tmp_path / "state.db", confirm=edit))
    assert loads.count == 2
    loads.check_no_target_thread_ran()
    assert all("the plan you confirmed is stale" in (p.error or "") for p in result.parts)
    assert all(sb.images() == [] for sb in boxes)


def test_an_invalid_catalog_fails_every_target_of_an_apply_with_its_problems(
        tmp_path: Path, two_boxes: tuple[Path, list[Any]], loads: Loads) -> None:
    directory, boxes = two_boxes
    loads.workers = None  # the sandboxes serve from threads of this process: no fork here
    (directory / "b.yaml").write_text("images:\n  - {name: 1.10}\n", encoding="utf-8")
    result = apply_targets(job(directory, tmp_path / "state.db"))
    assert loads.count == 1
    errors = [p.error or "" for p in result.parts]
    assert errors[0] == errors[1] and errors[0].startswith("catalog is invalid (1 problem)")
    assert "b.yaml:2: images[0].name: must be text" in errors[0]
    # --only is still checked against the names the files hold, not refused for the load
    narrowed = apply_targets(job(directory, tmp_path / "state.db", only=("on*",)))
    assert [p.error for p in narrowed.parts] == errors
    assert [p.endpoint for p in result.parts] == [sb.url for sb in boxes]


def test_ctrl_c_while_the_catalog_loads_starts_no_target(
        tmp_path: Path, two_boxes: tuple[Path, list[Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.apply import targets as apply_targets_module

    directory, boxes = two_boxes

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(apply_targets_module, "load_catalogs", interrupted)
    result = apply_targets(job(directory, tmp_path / "state.db"))
    assert result.interrupted
    assert [p.error for p in result.parts] == ["not started: the run was interrupted"] * 2
    assert all(sb.images() == [] for sb in boxes)
    assert "run interrupted: run `reconcile apply` again to finish" in result.report.warnings
