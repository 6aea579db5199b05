"""The ``reconcile`` command line: parse options, call one library function, render, exit.

This is the only module that imports click, prints, prompts or exits. Every ``ReconcileError``
is translated here into one message on stderr and exit code 1; usage errors also exit 1,
because exit code 2 means "plan succeeded and has changes" (``--detailed-exitcode``).
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from reconciler import __version__
from reconciler.catalog import did_you_mean, lint_problems, load_catalog
from reconciler.errors import ConfigError, ReconcileError
from reconciler.operations import (
    Clock,
    get_profile,
    make_plan,
    normalize_endpoint,
    open_existing,
    utc_now,
)
from reconciler.profiles import PROFILES
from reconciler.report import FORMATS, render
from reconciler.state import DEFAULT_PATH

CONFIG_FILE = "reconcile.toml"
# reconcile.toml keys and the option each one sets (in every command that has it).
CONFIG_KEYS = ("catalog", "state", "profile", "endpoint", "format", "templates", "strict",
               "parallelism", "log_format", "connect_timeout", "read_timeout")


@dataclass
class Runtime:
    """What flags cannot carry, injected by tests through ``obj=``."""

    clock: Clock = utc_now
    extra: dict[str, Any] = field(default_factory=dict)


def _load_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    section = data.get("reconcile", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [reconcile] must be a table")
    for key in section:
        if key not in CONFIG_KEYS:
            raise ConfigError(f"{path}: unknown setting {key!r}"
                              + did_you_mean(key, CONFIG_KEYS))
    return section


def _default_map(group: click.Group, settings: dict[str, Any]) -> dict[str, Any]:
    """click default_map for every (sub)command that has an option named like a setting."""
    out: dict[str, Any] = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out[name] = _default_map(cmd, settings)
        else:
            params = {p.name for p in cmd.params}
            out[name] = {k: v for k, v in settings.items() if k in params}
    return out


# --- shared options ------------------------------------------------------------------------

def catalog_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--catalog", type=click.Path(path_type=Path), default="catalog",
                        envvar="RECONCILE_CATALOG", show_default=True, show_envvar=True,
                        help="Directory of catalog files (*.yaml, *.yml, *.json).")(f)


def state_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--state", type=click.Path(path_type=Path, dir_okay=False),
                        default=DEFAULT_PATH, envvar="RECONCILE_STATE", show_default=True,
                        show_envvar=True, help="SQLite state file.")(f)


def profile_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--profile", type=click.Choice(list(PROFILES)), default="ims",
                        envvar="RECONCILE_PROFILE", show_default=True, show_envvar=True,
                        help="API rules to validate against: ims (Huawei Cloud IMS) or glance "
                             "(upstream OpenStack Glance).")(f)


def strict_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--strict", is_flag=True, default=False,
                        help="Treat IMS documentation warnings (128-char names, 20 tags, "
                             "unknown os_version) as errors.")(f)


def endpoint_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--endpoint", envvar="RECONCILE_ENDPOINT", show_envvar=True,
                        help="Image API root, e.g. https://ims.cn-north-4.myhuaweicloud.com. "
                             "Selects whose records to compare with.")(f)


def report_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--templates", type=click.Path(path_type=Path, file_okay=False,
                                                    exists=True),
                     help="Directory of report templates overriding the built-in ones "
                          "(report.txt.j2, report.md.j2, report.html.j2).")(f)
    f = click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
                     help="Write the report to this file instead of stdout.")(f)
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="text",
                        show_default=True, help="Report format.")(f)


# --- the group -----------------------------------------------------------------------------

class ReconcileGroup(click.Group):
    """Translates every error into one message and exit code 1, once, at the edge.

    click would exit 2 on usage errors; 2 is reserved for "plan has changes".
    """

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> NoReturn:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            _fail("aborted")
        except click.ClickException as exc:
            exc.show()
            sys.exit(1)
        except ReconcileError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted; nothing recorded is lost and the next apply resumes")
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group(cls=ReconcileGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="reconcile")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help=f"Settings file (default: ./{CONFIG_FILE} if present).")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """Keep a cloud's image catalog equal to a desired-state catalog kept in git.

    \b
    Typical use:
      reconcile validate                      # check the catalog
      reconcile plan --format markdown        # what apply would do (offline)
      reconcile apply --yes                   # create what is missing

    Settings come from flags, then RECONCILE_* variables, then ./reconcile.toml.
    Exit codes: 0 success, 1 error, 2 changes present (plan --detailed-exitcode).
    """
    if not isinstance(ctx.obj, Runtime):
        ctx.obj = Runtime()
    path = config_path or Path(CONFIG_FILE)
    if config_path or path.exists():
        ctx.default_map = _default_map(cli, _load_config(path))


def _write_report(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, output)
    except OSError as exc:
        raise ConfigError(f"cannot write report to {output}: {exc.strerror}") from None
    click.echo(f"report written to {output}", err=True)


def _color(output: Path | None) -> bool:
    return output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ


@cli.command()
@catalog_option
@profile_option
@strict_option
def validate(catalog: Path, profile: str, strict: bool) -> None:
    """Check the catalog without reading state or contacting the API.

    Reports every problem at once as FILE:LINE: FIELD: message, and exits 1 if there is any.

    \b
    Examples:
      reconcile validate --catalog catalog/
      reconcile validate --profile glance --strict
    """
    loaded = load_catalog(catalog, get_profile(profile), strict=strict)
    for line in lint_problems(loaded):
        click.echo(f"warning: {line}", err=True)
    n = len(loaded.images)
    click.echo(f"catalog {catalog} is valid: {n} image{'s' if n != 1 else ''} in "
               f"{len(loaded.files)} file{'s' if len(loaded.files) != 1 else ''} "
               f"(profile {profile})")


@cli.command("plan")
@catalog_option
@state_option
@profile_option
@strict_option
@endpoint_option
@report_options
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 2 when the plan has changes (create, drift, orphan or blocked), "
                   "0 when everything is unchanged.")
@click.pass_obj
def plan_cmd(rt: Runtime, catalog: Path, state: Path, profile: str, strict: bool,
             endpoint: str | None, fmt: str, output: Path | None, templates: Path | None,
             detailed_exitcode: bool) -> None:
    """Show what apply would do: compare the catalog with the state file.

    Works offline and without credentials; never creates or changes the state file.

    \b
    Examples:
      reconcile plan
      reconcile plan --format markdown --detailed-exitcode > comment.md
      reconcile plan --format html --output plan.html
    """
    result = make_plan(catalog, state, profile=profile, strict=strict, endpoint=endpoint,
                       clock=rt.clock)
    _write_report(render(result.report, fmt, color=_color(output), templates=templates), output)
    summary = result.plan.summary()
    if detailed_exitcode and summary["unchanged"] != len(result.plan.changes):
        raise click.exceptions.Exit(2)


# --- state and history ---------------------------------------------------------------------

@cli.group()
def state() -> None:
    """Read what the state file records (read-only commands).

    \b
    Examples:
      reconcile state list
      reconcile state show ubuntu-18.04-base --json
    """


@state.command("list")
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines for scripts.")
def state_list(state: Path, as_json: bool) -> None:
    """List recorded images: name, id, status, created_at, endpoint."""
    store = open_existing(state)
    try:
        rows = store.all_records()
    finally:
        store.close()
    if as_json:
        for target, rec in rows:
            click.echo(json.dumps({"target": target, "name": rec.name, "image_id": rec.image_id,
                                   "status": rec.status, "created_at": rec.created_at,
                                   "origin": rec.origin}))
        return
    if not rows:
        click.echo("no images recorded")
        return
    width = max(len(r.name) for _, r in rows)
    for target, rec in rows:
        click.echo(f"{rec.name:<{width}}  {rec.image_id}  {rec.status or '-':<8}  "
                   f"{rec.created_at or '-'}  {target}")
    click.echo(f"{len(rows)} image{'s' if len(rows) != 1 else ''} recorded", err=True)


@state.command("show")
@click.argument("name")
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def state_show(name: str, state: Path, as_json: bool) -> None:
    """Show everything recorded about one image: ids, timestamps, request and response."""
    store = open_existing(state)
    try:
        found = store.records_named(name)
    finally:
        store.close()
    if not found:
        raise ConfigError(f"no image named {name!r} is recorded in {state}; "
                          "`reconcile state list` shows what is")
    docs = [{"target": target, **rec.model_dump()} for target, rec in found]
    if as_json:
        click.echo(json.dumps(docs if len(docs) > 1 else docs[0], indent=2, sort_keys=True))
        return
    for doc in docs:
        resp = doc["response"]
        for key in ("name", "target", "image_id", "status", "created_at", "updated_at"):
            click.echo(f"{key + ':':<13} {doc[key]}")
        for key in ("self", "file", "schema", "owner"):
            click.echo(f"{key + ':':<13} {resp.get(key)}")
        click.echo(f"{'origin:':<13} {doc['origin']}")
        click.echo(f"{'recorded_at:':<13} {doc['recorded_at']} (run {doc['run_id']})")
        click.echo(f"{'spec_digest:':<13} {doc['spec_digest']}")
        click.echo("request:  " + json.dumps(doc["request"], sort_keys=True))
        click.echo("response: " + json.dumps(resp, sort_keys=True))


@cli.command()
@state_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many runs to show, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines for scripts.")
def history(state: Path, limit: int, as_json: bool) -> None:
    """List apply runs, newest first: when, outcome and counts.

    \b
    Example:
      reconcile history --limit 5
    """
    store = open_existing(state)
    try:
        runs = store.runs(limit)
    finally:
        store.close()
    if as_json:
        for run in runs:
            click.echo(json.dumps(run, sort_keys=True))
        return
    if not runs:
        click.echo("no runs recorded")
        return
    for run in runs:
        click.echo(f"{run['started_at']}  {run['id']}  {run['outcome']:<11}  "
                   f"created {run['created']}, adopted {run['adopted']}, failed {run['failed']}"
                   f"  {run['target']}")


# --- entry point ---------------------------------------------------------------------------

def main() -> None:
    """Console entry point."""
    cli(prog_name="reconcile")
