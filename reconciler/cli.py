"""The ``reconcile`` command line: parse options, call one library function, render, exit.

With ``console`` (the terminal) and ``options`` (the shared click options) the only code
that imports click, prints, prompts or exits. Every ``ReconcileError`` is translated here into one
message on stderr and exit code 1; usage errors also exit 1, because exit code 2 means "plan
succeeded and has changes" (``--detailed-exitcode``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from reconciler import __version__, formatting, logs, planfile, settings
from reconciler.catalog import declared_targets
from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.console import (
    Progress,
    TargetsProgress,
    check_outputs,
    color,
    confirm,
    confirm_targets,
    fail,
    fail_targets,
    notice,
    show_report,
    sigterm_as_interrupt,
    write_report,
)
from reconciler.defaults import DEFAULT_SETTLE_S
from reconciler.errors import CatalogError, ReconcileError
from reconciler.escape import terminal
from reconciler.models import DriftPolicy, Outcome, Plan, Target, target_key
from reconciler.operations import (
    copy_state,
    dry_run_report,
    forget_image,
    import_image,
    list_records,
    make_plan,
    offline_keys,
    one_target,
    plan_targets,
    run_history,
    save_plan,
    show_plan,
    show_records,
    single_target_only,
    validate_catalog,
)
from reconciler.options import (
    Seconds,
    allow_options,
    auth_options,
    catalog_option,
    close_suggestions,
    default_map,
    endpoint_option,
    json_format_option,
    lock_timeout_option,
    plan_file_name,
    plan_options,
    plan_output_options,
    profile_option,
    state_option,
    strict_option,
    target_option,
)
from reconciler.planner import select_targets
from reconciler.profiles import PROFILES
from reconciler.report import FORMATS, chunks
from reconciler.schemacache import Allowances
from reconciler.state import redact

if TYPE_CHECKING:
    from reconciler.auth import ApiSession, Connector


@dataclass
class Runtime:
    """What flags cannot carry, injected by tests through ``obj=``."""

    clock: Clock = SYSTEM_CLOCK
    env: dict[str, str] | None = None  # None: the process environment


# --- the group -----------------------------------------------------------------------------

INTERRUPTED = "interrupted; nothing recorded is lost and the next apply resumes"


class ReconcileGroup(click.Group):
    """Translates every error into one message and exit code 1, once, at the edge.

    click would exit 2 on usage errors; 2 is reserved for "plan has changes".
    """

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> NoReturn:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort as exc:
            # click turns Ctrl-C (and our SIGTERM) into Abort; a "no" at a prompt is Abort too.
            if isinstance(exc.__cause__, KeyboardInterrupt):
                fail(INTERRUPTED)
            fail("aborted")
        except click.exceptions.NoSuchOption as exc:
            close_suggestions(self, exc).show()
            sys.exit(1)
        except click.ClickException as exc:
            exc.show()
            sys.exit(1)
        except ReconcileError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail(INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=ReconcileGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="reconcile")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help=f"Settings file (default: ./{settings.CONFIG_FILE} if present).")
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
    logs.configure("text")  # apply may switch to JSON lines
    path = config_path or Path(settings.CONFIG_FILE)
    if config_path or path.exists():
        ctx.default_map = default_map(cli, settings.load(path))


@cli.command()
@catalog_option
@state_option
@profile_option
@strict_option
@endpoint_option
@auth_options
@allow_options
@click.option("--target", "target", metavar="NAME", multiple=True,
              help="Also check that these targets (globs) are declared, and count the images "
                   "of each.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text",
              show_default=True,
              help="text: FILE:LINE: FIELD: message lines; json: one document for scripts; "
                   "github: ::error/::warning annotations for GitHub Actions.")
@click.pass_obj
def validate(rt: Runtime, /, catalog: Path, state: str, profile: str, strict: bool,
             endpoint: str | None, allow_disk_format: tuple[str, ...],
             allow_container_format: tuple[str, ...], target: tuple[str, ...], fmt: str,
             **auth: Any) -> None:
    """Check the catalog; with --endpoint, against what that server says it accepts.

    Reports every problem at once as FILE:LINE: FIELD: message, and exits 1 if there is any.
    Under --profile glance the allowed visibilities, formats and typed properties are the
    server's own image schema (GET /v2/schemas/image); under ims the region's OS list. With
    --endpoint on the command line the server is asked (with the usual credentials) and its
    answer is kept in the state file; otherwise the last answer kept there is used, else
    reconcile's built-in rules. Every refusal says which of these it follows.

    \b
    Examples:
      reconcile validate --catalog catalog/
      reconcile validate --profile glance --strict
      OS_AUTH_TOKEN=... reconcile validate --profile glance --endpoint https://glance:9292
      reconcile validate --format github     # annotations on the PR's changed lines
      reconcile validate --format json | jq '.warnings | length'
    """
    ctx = click.get_current_context()
    online = ctx.get_parameter_source("endpoint") is click.core.ParameterSource.COMMANDLINE
    try:
        with contextlib.ExitStack() as stack:
            session = stack.enter_context(_connect(rt, auth).session(endpoint)) \
                if online else None
            result = validate_catalog(
                catalog, profile=profile, strict=strict, state_path=state,
                endpoint=session.endpoint if session else endpoint,
                api=session.client if session else None, clock=rt.clock,
                allow=Allowances(allow_disk_format, allow_container_format))
    except CatalogError as exc:
        if fmt == "text":
            raise
        _echo(formatting.problems(fmt, str(catalog), profile, errors=exc.problems,
                                  warnings=[]))
        raise click.exceptions.Exit(1) from None
    placed = {t.name: len(result.catalog.for_target(t.name).images)
              for t in select_targets(result.catalog.targets, target)}
    _echo(formatting.valid_catalog(fmt, str(catalog), profile, result.rules.profile,
                                   images=len(result.catalog.images),
                                   files=len(result.catalog.files), warnings=result.warnings,
                                   notes=result.notes, targets=placed))


def _echo(lines: Sequence[formatting.Line]) -> None:
    for line in lines:
        click.echo(line.text, err=line.err)


def _connect(rt: Runtime, auth: dict[str, Any], retries: int = 5,
             limiter: threading.Semaphore | None = None) -> Connector:
    """How this command connects, from its auth options (``auth``)."""
    from reconciler.auth import ConnectOptions, Connector  # HTTP: imported when it is used

    return Connector(rt.env if rt.env is not None else dict(os.environ),
                     ConnectOptions(**auth), retries=retries, clock=rt.clock,
                     warn=lambda m: notice(f"warning: {m}", level=logging.WARNING),
                     limiter=limiter)


@cli.command("plan")
@plan_options
@click.option("--refresh", is_flag=True,
              help="Also read the cloud (needs --endpoint and a token): find images deleted "
                   "or changed out of band, lost records to adopt, and same-name duplicates.")
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False),
              callback=plan_file_name,
              help="Save the plan (JSON) to this file; `reconcile apply FILE` applies exactly "
                   "it. Not the report: that is -o/--output.")
@plan_output_options
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 2 when apply would change something (create, adopt or update), "
                   "0 when it would do nothing (drift reported only, orphans and blocked "
                   "images do not count).")
@click.pass_obj
def plan_cmd(rt: Runtime, /, catalog: Path, state: str, profile: str, strict: bool,
             drift: DriftPolicy, endpoint: str | None, refresh: bool, out: Path | None, fmt: str,
             output: Path | None, templates: Path | None, show_unchanged: bool, no_color: bool,
             only: tuple[str, ...], target: tuple[str, ...], target_parallelism: int,
             detailed_exitcode: bool, allow_disk_format: tuple[str, ...],
             allow_container_format: tuple[str, ...], **auth: Any) -> None:
    """Show what apply would do: compare the catalog with the state file.

    Works offline and without credentials unless --refresh is given; never creates or
    changes the state file's records. A catalog with `targets:` is planned for each target
    side by side (a target without `endpoint:` is connected to, to find its endpoint).

    \b
    Examples:
      reconcile plan
      reconcile plan --format markdown --detailed-exitcode > comment.md
      reconcile plan --refresh --out plan.json     # then: reconcile apply plan.json
      reconcile plan --target cn-north-4 --format markdown   # one target's PR comment
    """
    check_outputs(output, out)
    chosen = select_targets(declared_targets(catalog), target)
    if chosen:
        single_target_only(endpoint=endpoint, plan_file=out)
        plans = plan_targets(catalog, state, chosen, connect=_connect(rt, auth).target,
                             refresh=refresh, profile=profile, strict=strict,
                             allow=Allowances(allow_disk_format, allow_container_format),
                             target_parallelism=target_parallelism, clock=rt.clock, only=only,
                             drift=drift)
        show_report(plans.report, fmt, output, templates, show_unchanged)
        fail_targets(plans.failed)
        if detailed_exitcode and plans.changes:
            raise click.exceptions.Exit(2)
        return
    with contextlib.ExitStack() as stack:
        session = stack.enter_context(_connect(rt, auth).session(endpoint)) if refresh else None
        result = make_plan(catalog, state, profile=profile, strict=strict,
                           endpoint=session.endpoint if session else endpoint,
                           api=session.client if session else None,
                           project_id=session.project_id if session else None, clock=rt.clock,
                           allow=Allowances(allow_disk_format, allow_container_format),
                           only=only, drift=drift)
    report = result.report
    if out is not None:
        saved = save_plan(result, out, clock=rt.clock, only=only)
        report = report.model_copy(update={"plan_id": saved.plan_id})
        click.echo(f"plan saved to {out} ({len(saved.changes)} change(s)); apply it with "
                   f"`reconcile apply {out}`", err=True)
    show_report(report, fmt, output, templates, show_unchanged)
    if detailed_exitcode and result.plan.has_work():
        raise click.exceptions.Exit(2)


# --- apply ---------------------------------------------------------------------------------


@cli.command()
@click.argument("plan_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@plan_options
@click.option("--refresh/--no-refresh", default=True, show_default=True,
              help="Read the cloud first: recreate images deleted out of band, adopt lost "
                   "records, block same-name duplicates.")
@plan_output_options
@click.option("--refresh-only", is_flag=True,
              help="Only record what the cloud shows: adopt images that carry reconcile's "
                   "marker and take in changes made outside reconcile; create nothing.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan and the exact request bodies; send nothing and write no "
                   "state. Reads the cloud like apply does, unless --no-refresh.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed without "
                                                  "a terminal, e.g. in cron).")
@click.option("--parallelism", type=click.IntRange(1, 64), default=10, show_default=True,
              help="At most this many requests in flight at once. Within it the limit "
                   "adapts to the server: it grows while answers come as fast, and shrinks "
                   "on 429, 5xx, timeouts and rising latency.")
@click.option("--concurrency", type=click.Choice(["adaptive", "fixed"]), default="adaptive",
              show_default=True, help="fixed: always --parallelism in flight, whatever the "
                                      "server answers.")
@click.option("--retries", type=click.IntRange(0, 20), default=5, show_default=True,
              help="Retries per image for 429, 5xx and connection errors.")
@click.option("--settle-time", type=Seconds(0.0), default=DEFAULT_SETTLE_S,
              show_default=True, envvar="RECONCILE_SETTLE_TIME", show_envvar=True,
              help="Seconds after sending an unanswered create during which it may still "
                   "land: until then it is looked for, never sent again. Never shorter than "
                   "--request-timeout (a smaller value is raised to it).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Logs on stderr: text (warnings only) or JSON lines "
                                      "(every event, for cron).")
@lock_timeout_option
@click.pass_obj
def apply(rt: Runtime, /, plan_file: Path | None, catalog: Path, state: str, profile: str,
          strict: bool, drift: DriftPolicy, endpoint: str | None, refresh: bool, fmt: str,
          output: Path | None,
          templates: Path | None, show_unchanged: bool, no_color: bool,
          only: tuple[str, ...], target: tuple[str, ...], target_parallelism: int,
          refresh_only: bool, dry_run: bool, yes: bool,
          parallelism: int, concurrency: str, retries: int, settle_time: float,
          log_format: str, lock_timeout: float, allow_disk_format: tuple[str, ...],
          allow_container_format: tuple[str, ...], **auth: Any) -> None:
    """Create the images the catalog has and the state lacks, and record each one.

    Never creates an image twice: each create is journaled with a marker before it is sent,
    and a lost answer is looked up before anything is sent again. Safe to kill at any
    moment; the next apply resolves what was in flight. With PLAN_FILE (from `plan --out`)
    it applies exactly that plan, once, or refuses if anything changed since.
    Exits 1 if any image failed or is blocked.

    \b
    Examples:
      reconcile apply --dry-run
      OS_AUTH_TOKEN=... reconcile apply --endpoint https://ims.example.com --yes
      reconcile apply --yes --log-format json --format html --output report.html
      reconcile apply plan.json --yes
      reconcile apply --yes --parallelism 32             # a ceiling: the limit adapts below it
      reconcile apply --yes --parallelism 4 --concurrency fixed
      reconcile apply --target 'cn-*' --yes        # some of the catalog's targets
    """
    from reconciler.apply import (  # imported here: the other commands start without it
        ApplyRequest,
        TargetsApply,
        apply_catalog,
        apply_targets,
        check_invocation,
        local_state_warning,
        preview,
    )
    from reconciler.client import RetryPolicy

    logs.configure(log_format)
    check_outputs(output)
    allow = Allowances(allow_disk_format, allow_container_format)
    saved = planfile.read(plan_file) if plan_file else None
    ctx = click.get_current_context()
    given = {p.name for p in ctx.command.params if p.name and ctx.get_parameter_source(p.name)
             is click.core.ParameterSource.COMMANDLINE}
    check_invocation(saved, given=given, dry_run=dry_run, yes=yes,
                     interactive=sys.stdin.isatty(), plan_file=plan_file, refresh=refresh,
                     refresh_only=refresh_only, targets=bool(target))
    warning = local_state_warning(rt.env if rt.env is not None else os.environ, state,
                                  dry_run=dry_run)
    if warning:
        notice(f"warning: {warning}", level=logging.WARNING)
    chosen = select_targets(declared_targets(catalog), target) if saved is None else ()
    connect = _connect(rt, auth, retries)

    def request(session: ApiSession, on_outcome: Callable[[Outcome], None],
                on_plan: Callable[[Plan], None], target: Target | None = None) -> ApplyRequest:
        """The apply this command asks for, at one session's endpoint (a target's)."""
        return ApplyRequest(
            catalog_dir=catalog, state_path=state,
            profile=(target.profile if target else None) or profile,
            endpoint=session.endpoint, api=session.client, strict=strict, refresh=refresh,
            saved=saved, parallelism=parallelism, adaptive=concurrency == "adaptive",
            retry=RetryPolicy(attempts=retries + 1), settle_s=settle_time,
            request_timeout_s=auth["request_timeout"], clock=rt.clock, on_outcome=on_outcome,
            on_plan=on_plan, refreshes=lambda: session.refreshes,
            project_id=session.project_id, allow=allow, lock_timeout_s=lock_timeout,
            only=only, refresh_only=refresh_only, drift=drift)

    if chosen:
        single_target_only(endpoint=endpoint, plan_file=None)
        # One bound on requests in flight over every target together (docs/architecture.md
        # §13).
        connect = _connect(rt, auth, retries,
                           threading.BoundedSemaphore(parallelism * target_parallelism))
        if dry_run:
            plans = plan_targets(catalog, state, chosen, connect=connect.target,
                                 refresh=refresh, profile=profile, strict=strict, allow=allow,
                                 target_parallelism=target_parallelism, clock=rt.clock,
                                 only=only, dry_run=True, drift=drift)
            show_report(plans.report, fmt, output, templates, show_unchanged)
            fail_targets(plans.failed)
            return
        bars = TargetsProgress(sys.stderr.isatty(), rt.clock.monotonic)
        job = TargetsApply(
            catalog, chosen, state, connect.target,
            lambda t, session: request(session, bars.outcome(t.name), bars.planned(t.name), t),
            strict=strict, target_parallelism=target_parallelism, lock_timeout_s=lock_timeout,
            clock=rt.clock, only=only,
            confirm=None if yes else lambda r: confirm_targets(r, templates))
        try:
            with sigterm_as_interrupt():
                done = apply_targets(job)
        finally:
            bars.close()
        if done.cancelled:
            click.echo("Apply cancelled.", err=True)
            return
        show_report(done.report, fmt, output, templates, show_unchanged)
        if done.interrupted:
            fail("interrupted: run `reconcile apply` again to finish")
        fail_targets(done.failed)
        return
    if dry_run:
        with contextlib.ExitStack() as stack:
            session = stack.enter_context(connect.session(endpoint)) if refresh else None
            report = dry_run_report(catalog, state, profile=profile, strict=strict,
                                    endpoint=session.endpoint if session else endpoint,
                                    api=session.client if session else None,
                                    project_id=session.project_id if session else None,
                                    clock=rt.clock, allow=allow, only=only, drift=drift)
        show_report(report, fmt, output, templates, show_unchanged)
        return
    with connect.session(endpoint) as session:
        if saved is not None:
            planfile.check_target(saved, session.endpoint)
        progress = Progress(sys.stderr.isatty(), rt.clock.monotonic)
        one = request(session, progress, progress.start)
        if not yes:
            shown = preview(one)
            if not confirm(shown.plan, shown.report, session.endpoint, templates):
                click.echo("Apply cancelled.", err=True)
                return
            one.preview = shown  # what the locked apply checks and works from
        try:
            with sigterm_as_interrupt():
                result = apply_catalog(one)
        finally:
            progress.close()
    show_report(result.report, fmt, output, templates, show_unchanged)
    if result.interrupted:
        fail("interrupted: run `reconcile apply` again to finish")
    if result.aborted:
        raise ReconcileError(f"run aborted: {result.aborted}")
    if result.failed or result.blocked:
        raise click.exceptions.Exit(1)


@cli.command("show")
@click.argument("plan_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="Report format.")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the report to this file instead of stdout.")
@click.option("--templates", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Directory of report templates overriding the built-in ones.")
def show(plan_file: Path, fmt: str, output: Path | None, templates: Path | None) -> None:
    """Show a saved plan (from `plan --out`) as a report, without reading anything else.

    \b
    Examples:
      reconcile show plan.json
      reconcile show plan.json --format markdown > comment.md
      reconcile show plan.json --format json | jq '.changes[].request'
    """
    write_report(chunks(show_plan(plan_file), fmt, color=color(output),
                        templates=templates), output)


# --- sandbox ---------------------------------------------------------------------------------

@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port; 0 picks a free one.")
@click.option("--profile", type=click.Choice(list(PROFILES)), default="ims",
              show_default=True, help="Validation rules and response shape.")
@click.option("--token", help="Require this X-Auth-Token (default: accept any).")
@click.option("--password", help="Keystone mode: POST /v3/auth/tokens checks this password "
                                 "and issues expiring tokens, the only ones /v2 accepts.")
@click.option("--user", help="Keystone mode: also check the user name.")
@click.option("--token-ttl", type=click.FloatRange(min=0.1), default=86400.0,
              show_default=True, help="Keystone mode: seconds an issued token lives.")
@click.option("--region", default="sandbox", show_default=True,
              help="Region of the image endpoint in the token's service catalog.")
@click.option("--latency-ms", type=click.IntRange(min=0), default=0, show_default=True,
              help="Delay added to every API request.")
@click.option("--capacity", type=click.IntRange(min=1),
              help="Capacity mode: more API requests than this in flight are answered 503, "
                   "and latency grows with the load (twice --latency-ms at full load).")
@click.option("--fail-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of requests answered 500/503 (nothing committed).")
@click.option("--throttle-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of requests answered 429 with Retry-After.")
@click.option("--drop-response-rate", type=click.FloatRange(0, 1), default=0.0,
              show_default=True,
              help="Fraction of creates committed, then the connection dropped unanswered.")
@click.option("--faults", default="", metavar="SCRIPT",
              help="Faults for the creates, in the order they arrive, before any rate "
                   "applies: a comma-separated list of ok, NNN (answer that status, commit "
                   "nothing), commit:NNN (commit, then answer NNN), drop (commit, answer "
                   "nothing), lost (answer nothing, commit nothing), timeout (hold the "
                   "request --hang-time seconds, then commit and answer nothing), garbage "
                   "(commit, answer a body that is not JSON).")
@click.option("--hang-time", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds a `timeout` fault holds its request.")
@click.option("--seed", type=int, help="Seed for the fault injection (deterministic runs).")
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False),
              help="JSON file keeping the images across restarts.")
@click.option("--verbose", "-v", is_flag=True, help="Log every request to stderr.")
def sandbox(host: str, port: int, profile: str, token: str | None, password: str | None,
            user: str | None, token_ttl: float, region: str, latency_ms: int,
            capacity: int | None, fail_rate: float, throttle_rate: float, drop_response_rate: float,
            faults: str, hang_time: float, seed: int | None, data: Path | None,
            verbose: bool) -> None:
    """Serve a local IMS-compatible Image API for demos and tests.

    Prints `listening on http://HOST:PORT` once ready; stops on Ctrl-C or SIGTERM.

    \b
    Examples:
      reconcile sandbox --port 8080
      reconcile sandbox --drop-response-rate 0.3 --fail-rate 0.1 --throttle-rate 0.1 --seed 7
      reconcile sandbox --faults 502,drop,timeout,ok       # the first four creates, in order
      reconcile sandbox --password s3cret --token-ttl 5 --region cn-north-4   # Keystone
      reconcile sandbox --latency-ms 50 --capacity 8    # a server that takes 8 at once
    """
    from reconciler.sandbox import SandboxConfig, serve

    config = SandboxConfig(host=host, port=port, profile=profile, token=token,
                           password=password, user=user, token_ttl_s=token_ttl, region=region,
                           latency_ms=latency_ms, capacity=capacity, fail_rate=fail_rate,
                           throttle_rate=throttle_rate, drop_response_rate=drop_response_rate,
                           faults=faults, hang_s=hang_time, seed=seed,
                           data_file=str(data) if data else None, verbose=verbose)
    serve(config, lambda url: click.echo(f"listening on {url}"))


# --- state and history ---------------------------------------------------------------------

@cli.group()
def state() -> None:
    """Read what the state file records; import or forget images.

    \b
    Examples:
      reconcile state list
      reconcile state show ubuntu-18.04-base --json
    """


def _keys(catalog: Path, target: tuple[str, ...],
          one: bool = False) -> dict[str, str] | None:
    """The state keys of the targets picked by --target (None without it)."""
    if not target:
        return None
    return offline_keys(declared_targets(catalog), target, one=one)


@state.command("list")
@state_option
@target_option
@catalog_option
@profile_option
@json_format_option("json: one JSON object per line, for scripts.")
def state_list(state: str, target: tuple[str, ...], catalog: Path, profile: str, fmt: str,
               as_json: bool) -> None:
    """List recorded images: name, id, status, created_at, endpoint.

    \b
    Examples:
      reconcile state list
      reconcile state list --format json | jq -r .image_id
      reconcile state list --target cn-north-4     # one target of the catalog
    """
    keys = _keys(catalog, target)
    rows = list_records(state, None if keys is None else set(keys.values()))
    _echo(formatting.records(rows, as_json=as_json or fmt == "json"))


@state.command("show")
@click.argument("name")
@state_option
@json_format_option("json: the record as one JSON document.")
def state_show(name: str, state: str, fmt: str, as_json: bool) -> None:
    """Show everything recorded about one image: ids, timestamps, request and response.

    \b
    Examples:
      reconcile state show ubuntu-18.04-base
      reconcile state show ubuntu-18.04-base --format json | jq .response.created_at
    """
    docs = show_records(state, name)
    _echo(formatting.record_documents(docs, as_json=as_json or fmt == "json"))


@state.command("import")
@click.argument("name")
@click.argument("image_id")
@catalog_option
@state_option
@profile_option
@endpoint_option
@auth_options
@click.option("--force", is_flag=True,
              help="Import even if the image differs from the catalog entry (it then shows "
                   "as drift), or replace an existing record.")
@lock_timeout_option
@target_option
@click.pass_obj
def state_import(rt: Runtime, /, name: str, image_id: str, catalog: Path, state: str,
                 profile: str, endpoint: str | None, force: bool, lock_timeout: float,
                 target: tuple[str, ...], **auth: Any) -> None:
    """Start managing an existing image: record IMAGE_ID under the catalog name NAME.

    The image is fetched and compared with the catalog entry first; differing fields are
    listed and the import is refused unless --force.

    \b
    Examples:
      reconcile state import ubuntu-18.04-base 4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba86
      reconcile state import ubuntu-18.04-base 4ca46bf1-... --target cn-north-4
    """
    one = one_target(declared_targets(catalog), target) if target else None
    if one:
        single_target_only(endpoint=endpoint, plan_file=None)
    connect = _connect(rt, auth)
    with connect.target(one) if one else connect.session(endpoint) as session:
        record = import_image(
            catalog, state, name, image_id, profile=(one.profile if one else None) or profile,
            endpoint=session.endpoint, api=session.client, force=force,
            lock_timeout_s=lock_timeout,
            target=(one.name, target_key(session.endpoint, one.project)) if one else None)
    click.echo(terminal(f"imported {name}{f' into {one.name}' if one else ''}: "
                        f"{record.image_id} ({record.status}, created {record.created_at})"))


@state.command("copy")
@click.argument("source", metavar="FROM")
@click.argument("destination", metavar="TO")
@click.option("--force", is_flag=True, help="Replace everything a non-empty TO holds.")
@lock_timeout_option
def state_copy(source: str, destination: str, force: bool, lock_timeout: float) -> None:
    """Copy a whole state store: SQLite file to PostgreSQL and back.

    Both stores are locked while copying; every table is copied in one transaction, then
    read back and compared (row counts and digests). TO must be empty unless --force.

    \b
    Examples:
      reconcile state copy reconcile-state.db postgresql://reconcile@db.example.com/reconcile
      reconcile state copy "$RECONCILE_STATE" backup.db --force
    """
    result = copy_state(source, destination, force=force, lock_timeout_s=lock_timeout)
    counts = ", ".join(f"{n} {table}" for table, n in result.rows.items() if table != "meta")
    click.echo(f"copied {redact(source)} to {redact(destination)}: {counts} "
               "(row counts and digests verified)")


@state.command("forget")
@click.argument("name")
@state_option
@endpoint_option
@target_option
@catalog_option
@profile_option
@lock_timeout_option
def state_forget(name: str, state: str, endpoint: str | None, target: tuple[str, ...],
                 catalog: Path, profile: str, lock_timeout: float) -> None:
    """Stop managing NAME: drop its record. The image stays in the cloud, untouched.

    \b
    Examples:
      reconcile state forget ubuntu-16.04-legacy
      reconcile state forget ubuntu-16.04-legacy --target cn-north-4
    """
    keys = _keys(catalog, target, one=True)
    image_id = forget_image(state, name, endpoint=endpoint, lock_timeout_s=lock_timeout,
                            target=next(iter(keys.values())) if keys else None)
    click.echo(terminal(f"forgot {name} ({image_id})") + "; the image itself was not touched")


@cli.command()
@state_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many runs to show, newest first.")
@target_option
@catalog_option
@profile_option
@json_format_option("json: one JSON object per run and line, for scripts.")
def history(state: str, limit: int, target: tuple[str, ...], catalog: Path, profile: str,
            fmt: str, as_json: bool) -> None:
    """List apply runs, newest first: when, outcome and counts (one run per target).

    \b
    Examples:
      reconcile history --limit 5
      reconcile history --target 'cn-*'
    """
    keys = _keys(catalog, target)
    runs = run_history(state, limit, None if keys is None else set(keys.values()))
    _echo(formatting.runs(runs, as_json=as_json or fmt == "json"))


# --- entry point ---------------------------------------------------------------------------

def main() -> None:
    """Console entry point."""
    cli(prog_name="reconcile")
