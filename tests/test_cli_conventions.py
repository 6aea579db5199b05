"""CLI conventions: `--out` (the plan file) cannot silently swallow a report, suggestions that
make sense, `--no-color`, OpenStack-style option names, `--format json` on every command that
prints JSON, and `state show` that suggests close names and pretty-prints its bodies."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from apply_helpers import SandboxFactory, write_images
from click.testing import Result
from test_apply_prompt import on_terminal

from reconciler.cli import cli

TOKEN = {"OS_AUTH_TOKEN": "t0k"}


@pytest.fixture
def recorded(tmp_path: Path, sandbox: SandboxFactory,
             run_cli: Callable[..., Result]) -> Path:
    """A state file (./reconcile-state.db) holding ubuntu-18.04-base and ubuntu-20.04-base."""
    write_images(tmp_path / "catalog", ["ubuntu-18.04-base", "ubuntu-20.04-base"])
    sb = sandbox(token="t0k")
    assert run_cli(["apply", "--yes", "--endpoint", sb.url], env=TOKEN).exit_code == 0
    return tmp_path / "reconcile-state.db"


# --- 4: --out is the plan file -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["comment.md", "report.html", "plan.txt", "X.MARKDOWN"])
def test_out_with_a_report_name_is_refused_pointing_at_output(
        name: str, tmp_path: Path, write_catalog: Callable[..., Path],
        run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", ["img-000"])
    result = run_cli(["plan", "--format", "markdown", "--out", name])
    assert result.exit_code == 1
    assert "--out saves the plan file (JSON" in result.stderr
    assert f"-o/--output {name}" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / name).exists()


def test_out_with_a_plan_name_still_saves_the_plan(
        tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", ["img-000"])
    result = run_cli(["plan", "--out", "plan.json", "-o", "comment.md", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "plan.json").read_text())["kind"] == "reconcile-plan"
    assert (tmp_path / "comment.md").read_text().startswith("### reconcile plan")


# --- 12: conventions ---------------------------------------------------------------------------

def test_a_group_option_after_the_command_says_where_it_goes(
        tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    result = run_cli(["plan", "--config", "x.toml"])
    assert result.exit_code == 1
    assert "--config is an option of reconcile itself, not of plan: put it first" in \
        result.stderr
    assert "--token-file" not in result.stderr


def test_suggestions_are_close_ones_only(run_cli: Callable[..., Result]) -> None:
    assert "Did you mean '--refresh'?" in run_cli(["plan", "--refrsh"]).stderr
    far = run_cli(["plan", "--bogus-thing"]).stderr
    assert "No such option '--bogus-thing'" in far and "Did you mean" not in far


def test_no_color_flag(tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", ["img-000"])
    env: dict[str, str] = {}  # run_cli has taken NO_COLOR out of the environment
    code, coloured = on_terminal(["plan"], "", tmp_path, env)
    assert code == 0 and "\x1b[32m" in coloured  # a terminal gets colours ...
    code, plain = on_terminal(["plan", "--no-color"], "", tmp_path, env)
    assert code == 0 and "\x1b[" not in plain and "+ create" in plain  # ... unless asked not to


def test_openstack_style_names_for_tls_and_interface(run_cli: Callable[..., Result]) -> None:
    for command in (["plan"], ["apply"], ["state", "import"]):
        text = run_cli([*command, "--help"]).stdout
        assert "--cacert, --os-cacert" in text and "--interface, --os-interface" in text
    result = run_cli(["plan", "--os-interface", "sideways"])
    assert result.exit_code == 1 and "'sideways' is not one of" in result.stderr


def test_format_json_is_one_spelling_everywhere(recorded: Path,
                                                run_cli: Callable[..., Result]) -> None:
    listed = run_cli(["state", "list", "--format", "json"])
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == [
        "ubuntu-18.04-base", "ubuntu-20.04-base"]
    assert listed.stdout == run_cli(["state", "list", "--json"]).stdout  # the old flag too
    shown = json.loads(run_cli(["state", "show", "ubuntu-18.04-base", "--format", "json"]).stdout)
    assert shown["name"] == "ubuntu-18.04-base"
    runs = run_cli(["history", "--format", "json"]).stdout.splitlines()
    assert json.loads(runs[0])["outcome"] == "success"
    for command in (["state", "list"], ["state", "show", "x"], ["history"], ["plan"],
                    ["validate"]):
        assert "--format" in run_cli([*command, "--help"]).stdout, command


def test_state_show_suggests_close_names(recorded: Path, run_cli: Callable[..., Result]) -> None:
    result = run_cli(["state", "show", "ubuntu-18.04"])
    assert result.exit_code == 1
    assert "did you mean ubuntu-18.04-base" in result.stderr


def test_state_show_pretty_prints_request_and_response(
        recorded: Path, run_cli: Callable[..., Result]) -> None:
    out = run_cli(["state", "show", "ubuntu-18.04-base"]).stdout
    request = out[out.index("request:\n"):out.index("response:\n")]
    assert '\n  {\n    "__os_version": "Ubuntu 18.04 server 64bit",\n' in request
    assert "\n  }\n" in request
    assert out.rstrip().endswith("}")


def test_cli_group_has_the_options_it_names() -> None:
    assert {o for p in cli.params for o in getattr(p, "opts", ())} >= {"--config"}


# --- start-up: an offline command imports no network library ------------------------------------

_PROBE = """
import sys
from reconciler.cli import cli
try:
    cli.main(sys.argv[1:], standalone_mode=False)
finally:
    heavy = ("httpx", "httpcore", "jsonschema", "reconciler.apply", "reconciler.client")
    print(" ".join(m for m in heavy if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("command", [["plan"], ["plan", "--format", "json"], ["validate"],
                                     ["state", "list"], ["--help"]])
def test_an_offline_command_starts_without_the_http_and_apply_code(
        command: list[str], recorded: Path) -> None:
    # Their imports are most of a small command's start; an offline plan or a validate in a
    # pull-request check needs none of them (docs/architecture.md §2, `defaults`).
    done = subprocess.run([sys.executable, "-c", _PROBE, *command], cwd=recorded.parent,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == ""
