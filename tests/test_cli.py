"""The command line as users meet it: help, exit codes, settings precedence, version."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import Result

from reconciler import __version__
from reconciler.catalog import load_catalog
from reconciler.cli import cli
from reconciler.models import ImageSpec, Record
from reconciler.profiles import IMS

Run = Callable[..., Result]


# --- help -----------------------------------------------------------------------------------

def walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


def resolve(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


COMMANDS = list(walk(cli))
def test_walk_finds_the_documented_commands() -> None:
    assert {("validate",), ("plan",), ("state",), ("state", "list"), ("state", "show"),
            ("history",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", [pytest.param(p, id=" ".join(p)) for p in COMMANDS])
def test_every_command_has_help(path: tuple[str, ...], run_cli: Run) -> None:
    result = run_cli([*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: reconcile {' '.join(path)} ")
    summary = (resolve(path).help or "").strip().splitlines()
    assert summary, f"reconcile {' '.join(path)} has no docstring"
    assert summary[0] in " ".join(result.stdout.split())  # help is re-wrapped


@pytest.mark.parametrize("path", [pytest.param(p, id=" ".join(p)) for p in COMMANDS])
def test_every_command_help_shows_an_example(path: tuple[str, ...], run_cli: Run) -> None:
    result = run_cli([*path, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.stdout


def test_short_help_option_works(run_cli: Run) -> None:
    result = run_cli(["plan", "-h"])
    assert result.exit_code == 0
    assert "--detailed-exitcode" in result.stdout


def test_top_level_help_lists_every_command_and_exit_codes(run_cli: Run) -> None:
    result = run_cli(["--help"])
    assert result.exit_code == 0
    for name in cli.commands:
        assert f"  {name} " in result.stdout
    assert "2 changes present" in result.stdout


def test_version_prints_the_package_version(run_cli: Run) -> None:
    result = run_cli(["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"reconcile, version {__version__}\n"


# --- usage errors exit 1, never 2 ------------------------------------------------------------

USAGE_ERRORS = {
    "unknown_option": ["plan", "--bogus"],
    "bad_format_choice": ["plan", "--format", "yaml"],
    "bad_profile_choice": ["validate", "--profile", "openstack"],
    "unknown_command": ["destroy"],
    "missing_argument": ["state", "show"],
    "out_of_range_value": ["history", "--limit", "0"],
    "option_missing_its_value": ["plan", "--catalog"],
}


@pytest.mark.parametrize("args", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_error_exits_1_not_2(args: list[str], run_cli: Run) -> None:
    result = run_cli(args)
    assert result.exit_code == 1, result.output
    assert "Error:" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_bad_choice_from_environment_exits_1(run_cli: Run) -> None:
    result = run_cli(["validate"], env={"RECONCILE_PROFILE": "openstack"})
    assert result.exit_code == 1
    assert "openstack" in result.stderr


def test_bare_command_shows_usage_and_does_not_exit_2(run_cli: Run) -> None:
    result = run_cli([])
    assert result.exit_code != 2
    assert "Usage: reconcile" in result.output


# --- plan exit codes and the state file --------------------------------------------------------

CATALOG = ("images:\n"
           "  - name: one\n    os_version: Ubuntu 18.04 server 64bit\n    min_disk: 40\n"
           "  - name: two\n    os_version: Ubuntu 18.04 server 64bit\n    min_disk: 40\n")


@pytest.fixture
def catalog_dir(write_catalog: Callable[..., Path]) -> Path:
    return write_catalog({"a.yaml": CATALOG})


def records_of(catalog_dir: Path, make_record: Callable[..., Record]) -> list[Record]:
    """Records exactly matching the catalog: spec_digest == spec.digest from load_catalog."""
    specs = load_catalog(catalog_dir, IMS).images
    records = [make_record(s, f"id-{s.name}") for s in specs]
    assert [r.spec_digest for r in records] == [s.digest for s in specs]
    return records


@pytest.fixture
def in_sync_state(tmp_path: Path, catalog_dir: Path, make_state: Callable[..., Path],
                  make_record: Callable[..., Record]) -> Path:
    return make_state(tmp_path / "state.db", records_of(catalog_dir, make_record))


def test_detailed_exitcode_is_2_when_creates_are_planned(
        tmp_path: Path, catalog_dir: Path, run_cli: Run) -> None:
    result = run_cli(["plan", "--catalog", catalog_dir, "--state", tmp_path / "none.db",
                      "--detailed-exitcode"])
    assert result.exit_code == 2, result.output
    assert "Plan: 2 to create" in result.stdout


def test_detailed_exitcode_is_0_when_everything_is_unchanged(
        catalog_dir: Path, in_sync_state: Path, run_cli: Run) -> None:
    result = run_cli(["plan", "--catalog", catalog_dir, "--state", in_sync_state,
                      "--detailed-exitcode"])
    assert result.exit_code == 0, result.output
    assert "Plan: 0 to create, 2 unchanged" in result.stdout


# What apply would leave alone exits 0: drift under `drift: report`, orphans, an update the
# API cannot make (blocked, replace_required: IMS changes no min_disk on a queued image).
LEFT_ALONE = {
    "drift_reported": ("min_disk: 40", "min_disk: 60\n    drift: report"),
    "orphan": ("  - name: two\n    os_version: Ubuntu 18.04 server 64bit\n    min_disk: 40\n",
               ""),
    "replace_required": ("min_disk: 40", "min_disk: 60"),
}


@pytest.mark.parametrize(("old", "new"), LEFT_ALONE.values(), ids=LEFT_ALONE.keys())
def test_detailed_exitcode_is_0_for_what_apply_would_leave_alone(
        old: str, new: str, catalog_dir: Path, in_sync_state: Path, run_cli: Run) -> None:
    path = catalog_dir / "a.yaml"
    path.write_text(path.read_text().replace(old, new, 1))
    result = run_cli(["plan", "--catalog", catalog_dir, "--state", in_sync_state,
                      "--detailed-exitcode"])
    assert result.exit_code == 0, result.output


def test_detailed_exitcode_is_2_for_an_update_in_place(
        catalog_dir: Path, in_sync_state: Path, run_cli: Run) -> None:
    path = catalog_dir / "a.yaml"
    path.write_text(path.read_text().replace("min_disk: 40", "min_disk: 40\n    properties: "
                                             "{build: '2'}", 1))
    result = run_cli(["plan", "--catalog", catalog_dir, "--state", in_sync_state,
                      "--detailed-exitcode"])
    assert result.exit_code == 2, result.output
    assert "1 to update" in result.stdout


def test_detailed_exitcode_is_0_for_blocked(
        tmp_path: Path, catalog_dir: Path, make_state: Callable[..., Path],
        make_record: Callable[..., Record], run_cli: Run) -> None:
    state = make_state(tmp_path / "state.db", records_of(catalog_dir, make_record)[:1],
                       pending=["two"])
    result = run_cli(["plan", "--catalog", catalog_dir, "--state", state,
                      "--detailed-exitcode"])
    assert result.exit_code == 0, result.output
    assert "1 blocked" in result.stdout


def test_plan_with_changes_exits_0_without_detailed_exitcode(
        tmp_path: Path, catalog_dir: Path, run_cli: Run) -> None:
    result = run_cli(["plan", "--catalog", catalog_dir, "--state", tmp_path / "none.db"])
    assert result.exit_code == 0


def test_errors_exit_1_even_with_detailed_exitcode(
        tmp_path: Path, write_catalog: Callable[..., Path], run_cli: Run) -> None:
    root = write_catalog({"a.yaml": "images:\n  - name: a\n    min_disk: 0\n"})
    result = run_cli(["plan", "--catalog", root, "--state", tmp_path / "none.db",
                      "--detailed-exitcode"])
    assert result.exit_code == 1


@pytest.mark.parametrize("fmt", ["text", "markdown", "html", "json"])
def test_plan_never_creates_the_state_file(fmt: str, tmp_path: Path, catalog_dir: Path,
                                           run_cli: Run) -> None:
    state = tmp_path / "state.db"
    result = run_cli(["plan", "--catalog", catalog_dir, "--state", state, "--format", fmt])
    assert result.exit_code == 0, result.output
    assert not state.exists()
    assert not list(tmp_path.glob("state.db*"))


def test_missing_state_file_means_nothing_is_recorded(
        tmp_path: Path, catalog_dir: Path, run_cli: Run) -> None:
    result = run_cli(["plan", "--catalog", catalog_dir, "--state", tmp_path / "none.db",
                      "--format", "json"])
    assert json.loads(result.stdout)["summary"]["create"] == 2


def test_plan_does_not_change_an_existing_state_file(
        catalog_dir: Path, in_sync_state: Path, run_cli: Run,
        file_sha256: Callable[[Path], str]) -> None:
    before = file_sha256(in_sync_state)
    assert run_cli(["plan", "--catalog", catalog_dir, "--state", in_sync_state]).exit_code == 0
    assert file_sha256(in_sync_state) == before


def test_plan_uses_the_injected_clock(tmp_path: Path, catalog_dir: Path, run_cli: Run) -> None:
    result = run_cli(["plan", "--catalog", catalog_dir, "--state", tmp_path / "none.db",
                      "--format", "json"])
    assert json.loads(result.stdout)["generated_at"] == "2024-05-17T12:30:00Z"


# --- settings: flag > environment > ./reconcile.toml ----------------------------------------------

@pytest.fixture
def three_catalogs(tmp_path: Path, write_catalog: Callable[..., Path]) -> Path:
    """c_toml (3 images), c_env (2) and c_flag (1) in the CLI's working directory."""
    for directory, count in (("c_toml", 3), ("c_env", 2), ("c_flag", 1)):
        body = "".join(f"  - name: img-{i}\n    min_disk: 4\n" for i in range(count))
        write_catalog({"a.yaml": f"images:\n{body}"}, directory=directory)
    (tmp_path / "reconcile.toml").write_text('catalog = "c_toml"\n')
    return tmp_path


CATALOG_PRECEDENCE = {
    "toml_alone": ({}, [], "3 images"),
    "env_over_toml": ({"RECONCILE_CATALOG": "c_env"}, [], "2 images"),
    "flag_over_env": ({"RECONCILE_CATALOG": "c_env"}, ["--catalog", "c_flag"], "1 image "),
    "flag_over_toml": ({}, ["--catalog", "c_flag"], "1 image "),
}


@pytest.mark.parametrize(("env", "flags", "expected"), CATALOG_PRECEDENCE.values(),
                         ids=CATALOG_PRECEDENCE.keys())
def test_catalog_setting_precedence(env: dict[str, str], flags: list[str], expected: str,
                                    three_catalogs: Path, run_cli: Run) -> None:
    result = run_cli(["validate", *flags], env=env)
    assert result.exit_code == 0, result.output
    assert f"is valid: {expected}" in result.stdout


@pytest.fixture
def shared_image(tmp_path: Path, write_catalog: Callable[..., Path]) -> Path:
    """A catalog valid only under the glance profile; reconcile.toml selects glance."""
    write_catalog({"a.yaml": "images:\n  - name: a\n    visibility: shared\n"})
    (tmp_path / "reconcile.toml").write_text('[reconcile]\ncatalog = "catalog"\n'
                                             'profile = "glance"\n')
    return tmp_path


PROFILE_PRECEDENCE = {
    "toml_alone": ({}, [], 0),
    "env_over_toml": ({"RECONCILE_PROFILE": "ims"}, [], 1),
    "flag_over_env": ({"RECONCILE_PROFILE": "ims"}, ["--profile", "glance"], 0),
    "flag_over_toml": ({}, ["--profile", "ims"], 1),
}


@pytest.mark.parametrize(("env", "flags", "code"), PROFILE_PRECEDENCE.values(),
                         ids=PROFILE_PRECEDENCE.keys())
def test_profile_setting_precedence(env: dict[str, str], flags: list[str], code: int,
                                    shared_image: Path, run_cli: Run) -> None:
    result = run_cli(["validate", *flags], env=env)
    assert result.exit_code == code, result.output


@pytest.fixture
def three_states(tmp_path: Path, catalog_dir: Path, make_state: Callable[..., Path],
                 make_record: Callable[..., Record]) -> Path:
    """s_toml.db, s_env.db and s_flag.db, each recording one differently named orphan."""
    for which in ("toml", "env", "flag"):
        make_state(tmp_path / f"s_{which}.db",
                   [make_record(ImageSpec(name=f"orphan-{which}", min_disk=4), "id")])
    (tmp_path / "reconcile.toml").write_text('catalog = "catalog"\nstate = "s_toml.db"\n')
    return tmp_path


STATE_PRECEDENCE = {
    "toml_alone": ({}, [], "orphan-toml"),
    "env_over_toml": ({"RECONCILE_STATE": "s_env.db"}, [], "orphan-env"),
    "flag_over_env": ({"RECONCILE_STATE": "s_env.db"}, ["--state", "s_flag.db"], "orphan-flag"),
}


@pytest.mark.parametrize(("env", "flags", "orphan"), STATE_PRECEDENCE.values(),
                         ids=STATE_PRECEDENCE.keys())
def test_state_setting_precedence(env: dict[str, str], flags: list[str], orphan: str,
                                  three_states: Path, run_cli: Run) -> None:
    result = run_cli(["plan", "--format", "json", *flags], env=env)
    assert result.exit_code == 0, result.output
    changes = json.loads(result.stdout)["changes"]
    assert [c["name"] for c in changes if c["action"] == "orphan"] == [orphan]


def test_config_option_reads_another_settings_file(three_catalogs: Path, run_cli: Run) -> None:
    (three_catalogs / "other.toml").write_text('catalog = "c_env"\n')
    result = run_cli(["--config", "other.toml", "validate"])
    assert result.exit_code == 0, result.output
    assert "is valid: 2 images" in result.stdout


def test_strict_setting_in_toml_applies(tmp_path: Path, write_catalog: Callable[..., Path],
                                        run_cli: Run) -> None:
    write_catalog({"a.yaml": "images:\n  - name: a\n    min_disk: 4\n"})
    (tmp_path / "reconcile.toml").write_text("strict = true\n")
    result = run_cli(["validate"])
    assert result.exit_code == 1
    assert "(--strict)" in result.stderr


def test_format_setting_in_toml_applies(tmp_path: Path, catalog_dir: Path,
                                        run_cli: Run) -> None:
    (tmp_path / "reconcile.toml").write_text('format = "json"\n')
    result = run_cli(["plan", "--state", "none.db"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["summary"]["create"] == 2


def test_unknown_setting_in_toml_exits_1_with_did_you_mean(tmp_path: Path, run_cli: Run) -> None:
    (tmp_path / "reconcile.toml").write_text('catlog = "catalog"\n')
    result = run_cli(["validate"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "reconcile.toml: unknown setting 'catlog'; did you mean catalog?" in result.stderr


def test_invalid_toml_exits_1_naming_the_file(tmp_path: Path, run_cli: Run) -> None:
    (tmp_path / "reconcile.toml").write_text('catalog = \n')
    result = run_cli(["validate"])
    assert result.exit_code == 1
    assert "reconcile.toml: not valid TOML" in result.stderr


def test_missing_config_file_given_explicitly_exits_1(run_cli: Run) -> None:
    result = run_cli(["--config", "nowhere.toml", "validate"])
    assert result.exit_code == 1
    assert "nowhere.toml: cannot read" in result.stderr


def test_wrongly_typed_setting_in_toml_exits_1_cleanly(tmp_path: Path, run_cli: Run) -> None:
    (tmp_path / "reconcile.toml").write_text("catalog = 5\n")
    result = run_cli(["validate"])
    assert result.exit_code == 1
    assert "reconcile.toml" in result.stderr


# --- which endpoint's records plan compares with --------------------------------------------------

@pytest.fixture
def two_targets(tmp_path: Path, catalog_dir: Path, make_state: Callable[..., Path],
                make_record: Callable[..., Record]) -> Path:
    """The catalog recorded in sync at one endpoint; nothing but an orphan at another."""
    state = make_state(tmp_path / "state.db", records_of(catalog_dir, make_record),
                       target="https://ims.one.example")
    return make_state(state, [make_record(ImageSpec(name="elsewhere", min_disk=4), "id-x")],
                      target="https://ims.two.example")


def test_plan_without_endpoint_refuses_a_state_with_several_targets(
        catalog_dir: Path, two_targets: Path, run_cli: Run) -> None:
    result = run_cli(["plan", "--catalog", catalog_dir, "--state", two_targets])
    assert result.exit_code == 1
    assert "https://ims.one.example, https://ims.two.example" in result.stderr
    assert "--endpoint" in result.stderr


@pytest.mark.parametrize("endpoint", ["https://ims.one.example", "https://ims.one.example/",
                                      "https://ims.one.example/v2"])
def test_endpoint_selects_that_targets_records(endpoint: str, catalog_dir: Path,
                                               two_targets: Path, run_cli: Run) -> None:
    result = run_cli(["plan", "--catalog", catalog_dir, "--state", two_targets, "--format",
                      "json", "--endpoint", endpoint, "--detailed-exitcode"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["target"] == "https://ims.one.example"
    assert report["summary"]["unchanged"] == 2


@pytest.mark.parametrize("endpoint", ["ftp://ims.example", "ims.example.com", "https://"])
def test_endpoint_that_is_not_an_http_url_exits_1(endpoint: str, catalog_dir: Path,
                                                  tmp_path: Path, run_cli: Run) -> None:
    result = run_cli(["plan", "--catalog", catalog_dir, "--state", tmp_path / "none.db",
                      "--endpoint", endpoint])
    assert result.exit_code == 1
    assert "must be an http:// or https:// URL" in result.stderr
