"""The options several commands share, one decorator each, so every command spells, documents
and defaults them alike (the ``auth_options`` apply to each command that talks to the API);
the settings file as their defaults, and the suggestions for a mistyped one.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from reconciler.defaults import DEFAULT_REQUEST_TIMEOUT
from reconciler.errors import ConfigError
from reconciler.profiles import PROFILES
from reconciler.report import FORMATS
from reconciler.state import DEFAULT_PATH, parse_duration


class Seconds(click.FloatRange):
    """A finite number of seconds, at least ``minimum``: ``nan`` and ``inf`` would pass any
    range check and wedge a run later, so they are refused here."""

    name = "seconds"

    def __init__(self, minimum: float) -> None:
        super().__init__(min=minimum)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


SECONDS = Seconds(0.1)


def catalog_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--catalog", type=click.Path(path_type=Path), default="catalog",
                        envvar="RECONCILE_CATALOG", show_default=True, show_envvar=True,
                        help="Directory of catalog files (*.yaml, *.yml, *.json).")(f)


def state_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--state", default=DEFAULT_PATH, envvar="RECONCILE_STATE",
                        show_default=True, show_envvar=True, metavar="FILE|URL",
                        help="State store: an SQLite file, or a PostgreSQL URL "
                             "(postgresql://user@host:5432/db?sslmode=require) shared by a "
                             "team.")(f)


def _duration(ctx: click.Context, param: click.Parameter, value: Any) -> float:
    """A duration such as 90, 30s, 5m, 1h30m (seconds when no unit is given)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return parse_duration(str(value))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def lock_timeout_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--lock-timeout", metavar="DURATION", callback=_duration, default="0",
                        show_default=True, envvar="RECONCILE_LOCK_TIMEOUT", show_envvar=True,
                        help="How long to wait for another run's lock (e.g. 30s, 10m) "
                             "before giving up; 0 fails at once, naming the holder.")(f)


def profile_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--profile", type=click.Choice(list(PROFILES)), default="ims",
                        envvar="RECONCILE_PROFILE", show_default=True, show_envvar=True,
                        help="API rules to validate against: ims (Huawei Cloud IMS) or glance "
                             "(upstream OpenStack Glance).")(f)


def strict_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--strict", is_flag=True, default=False,
                        help="Treat IMS documentation warnings (128-char names, 20 tags, "
                             "unknown os_version) as errors.")(f)


def drift_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--drift", type=click.Choice(["update", "report"]), default="update",
                        envvar="RECONCILE_DRIFT", show_default=True, show_envvar=True,
                        help="What apply does with an image that differs from the catalog: "
                             "update it in place (one PATCH) or only report it. An image's "
                             "own `drift:` (or its file's defaults) wins.")(f)


def endpoint_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--endpoint", envvar="RECONCILE_ENDPOINT", show_envvar=True,
                        help="Image API root, e.g. https://ims.cn-north-4.myhuaweicloud.com. "
                             "Selects whose records to compare with.")(f)


def only_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--only", metavar="NAME", multiple=True,
                        help="Limit to the images with this name (a glob: 'ubuntu-*'); "
                             "repeat for more.")(f)


def target_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--target`` for commands that read the state: the catalog's targets whose rows to
    show (each needs its ``endpoint:`` there)."""
    return click.option("--target", "target", metavar="NAME", multiple=True,
                        help="Only the rows of the catalog's targets with this name (a glob); "
                             "repeat for more. Needs --catalog.")(f)


def target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--target`` (which of the catalog's targets) and ``--target-parallelism``."""
    f = click.option("--target-parallelism", type=click.IntRange(1, 64), default=4,
                     show_default=True,
                     help="How many targets are planned or applied at once.")(f)
    return click.option("--target", "target", metavar="NAME", multiple=True,
                        help="Limit to the catalog's targets with this name (a glob: "
                             "'cn-*'); repeat for more. Default: every target.")(f)


def json_format_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--format text|json` as on plan, apply and validate; `--json` stays as a short form."""
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option("--json", "as_json", is_flag=True, hidden=True,
                         help="Same as --format json.")(f)
        return click.option("--format", "fmt", type=click.Choice(["text", "json"]),
                            default="text", show_default=True, help=what)(f)
    return decorate


#: Names that are reports, not plan files: `plan --format markdown --out comment.md` meant -o.
REPORT_SUFFIXES = (".md", ".markdown", ".html", ".htm", ".txt", ".text")


def plan_file_name(ctx: click.Context, param: click.Parameter,
                   value: Path | None) -> Path | None:
    """``--out``'s check: it saves the plan file, so a report's name is a mistake."""
    if value is not None and value.suffix.lower() in REPORT_SUFFIXES:
        raise click.BadParameter(
            f"{value} looks like a report, but --out saves the plan file (JSON, for "
            f"`reconcile apply FILE`); write the report with -o/--output {value}, and the plan "
            "with --out plan.json", ctx=ctx, param=param)
    return value


def report_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--templates", type=click.Path(path_type=Path, file_okay=False,
                                                    exists=True),
                     help="Directory of report templates overriding the built-in ones "
                          "(report.txt.j2, report.md.j2, report.html.j2).")(f)
    f = click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
                     help="Write the report to this file instead of stdout.")(f)
    f = click.option("--no-color", is_flag=True,
                     help="No colours, even on a terminal (like NO_COLOR=1).")(f)
    f = click.option("--show-unchanged", is_flag=True,
                     help="List unchanged images in the text report too (they are always "
                          "counted; the other formats always list them).")(f)
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="text",
                        show_default=True, help="Report format.")(f)


def auth_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Where credentials come from; the order of precedence is in ``reconciler.auth``."""
    options = [
        click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
                     help="Read a static API token from this file."),
        click.option("--os-cloud", help="Use this cloud of clouds.yaml (default: $OS_CLOUD)."),
        click.option("--interface", "--os-interface", "interface",
                     type=click.Choice(["public", "internal", "admin"]),
                     help="Service catalog interface for the image endpoint (default: "
                          "$OS_INTERFACE or public)."),
        click.option("--cacert", "--os-cacert", "cacert",
                     type=click.Path(dir_okay=True, exists=True),
                     help="CA bundle for TLS verification (default: $OS_CACERT)."),
        click.option("--insecure", is_flag=True,
                     help="Do not verify TLS certificates (prints a warning every run)."),
        click.option("--connect-timeout", type=SECONDS, default=10.0,
                     show_default=True, help="Seconds to wait for a connection."),
        click.option("--read-timeout", type=SECONDS, default=60.0,
                     show_default=True, help="Seconds to wait for each part of an answer."),
        click.option("--request-timeout", type=SECONDS, default=DEFAULT_REQUEST_TIMEOUT,
                     show_default=True, envvar="RECONCILE_REQUEST_TIMEOUT", show_envvar=True,
                     help="Seconds a whole request may take, however the server trickles "
                          "its answer."),
    ]
    for option in reversed(options):  # click lists the last applied first
        f = option(f)
    return f


def allow_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Formats allowed beyond the built-in lists, for a deployment whose schema is unknown."""
    f = click.option("--allow-container-format", multiple=True, metavar="FORMAT",
                     help="Also allow this container_format (repeatable); see "
                          "--allow-disk-format.")(f)
    return click.option("--allow-disk-format", multiple=True, metavar="FORMAT",
                        help="Also allow this disk_format (repeatable), for a deployment whose "
                             "schema cannot be read. Once the server's schema is known, it "
                             "alone decides.")(f)


def plan_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """What plan and apply both read, in this order: the catalog, the state, the rules and
    drift policy, the endpoint and the credentials."""
    for option in (auth_options, endpoint_option, drift_option, strict_option, profile_option,
                   state_option, catalog_option):
        f = option(f)
    return f


def plan_output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """What plan and apply both take after that: formats allowed beyond the built-in ones,
    the report, --only and the targets."""
    for option in (target_options, only_option, report_options, allow_options):
        f = option(f)
    return f


# --- defaults and suggestions for every command ------------------------------------------

def default_map(group: click.Group, settings: dict[str, Any]) -> dict[str, Any]:
    """click default_map for every (sub)command that has an option named like a setting."""
    out: dict[str, Any] = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out[name] = default_map(cmd, settings)
        else:
            params = {p.name for p in cmd.params}
            out[name] = {k: v for k, v in settings.items() if k in params}
    return out


def close_suggestions(group: click.Group,
                      exc: click.exceptions.NoSuchOption) -> click.ClickException:
    """click suggests any option that is a little alike (`--config` → `--token-file`); keep
    only close ones, and say where an option of `reconcile` itself goes."""
    name = exc.option_name
    own = {o for p in group.params for o in getattr(p, "opts", ())}
    if name in own and exc.ctx is not None and exc.ctx.command is not group:
        command = exc.ctx.command.name
        return click.UsageError(f"{name} is an option of reconcile itself, not of {command}: "
                                f"put it first, e.g. `reconcile {name} ... {command}`", exc.ctx)
    close = difflib.get_close_matches(name, list(exc.possibilities or ()), n=3, cutoff=0.75)
    return click.exceptions.NoSuchOption(name, possibilities=close or None, ctx=exc.ctx)
