"""The terminal side of the command line: user messages, the report's destination, the
apply progress line, the confirmation prompt, SIGTERM.

With ``cli`` the only code that prints, prompts or handles signals. A user message is one
line on stderr, or a JSON line when logs are JSON (``--log-format json``), so a scheduler
reading JSON gets nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import click

from reconciler import logs, redaction
from reconciler.errors import ConfigError
from reconciler.escape import terminal
from reconciler.models import APPLIED_ACTIONS, Outcome, Plan, RunReport
from reconciler.operations import TargetPart
from reconciler.output import check_writable, write_text
from reconciler.report import chunks, render, summary_line


def fail(message: str) -> NoReturn:
    notice(f"error: {message}", level=logging.ERROR)
    sys.exit(1)


def notice(message: str, *, level: int = logging.INFO) -> None:
    """A message for the user on stderr: a JSON line when logs are JSON, else plain text."""
    message = redaction.redact(message)
    if logs.json_lines():
        logs.LOGGER.log(level, message.removeprefix("error: "),
                        extra={"event": "notice" if level < logging.ERROR else "error"})
    else:
        click.echo(terminal(message, newlines=True), err=True)


def write_report(pieces: Iterable[str], output: Path | None,
                 report: RunReport | None = None) -> None:
    """Write the report as it is produced (a big json report is never held whole); to
    ``output`` with a one-line summary on stderr (for cron: the mail still says what
    happened)."""
    if output is None:
        for piece in pieces:
            click.echo(piece, nl=False)
        return
    try:
        write_text(output, pieces)
    except OSError as exc:
        raise ConfigError(f"cannot write report to {output}: {exc.strerror}") from None
    notice(f"{summary_line(report)} Report written to {output}." if report is not None
           else f"report written to {output}")


def show_report(report: RunReport, fmt: str, output: Path | None, templates: Path | None,
                show_unchanged: bool = False) -> None:
    """A run's report in ``fmt`` (the report options' values), written as it is rendered."""
    write_report(chunks(report, fmt, color=color(output), templates=templates,
                        show_unchanged=show_unchanged), output, report)


def fail_targets(failed: Sequence[TargetPart]) -> None:
    """Each target that failed to connect or apply on stderr, then exit 1 if any target
    failed at all (the report says the same and names the images)."""
    for part in failed:
        if part.error:
            click.echo(terminal(f"error: target {part.target.name}: {part.error}"), err=True)
    if failed:
        raise click.exceptions.Exit(1)


def check_outputs(report: Path | None, plan: Path | None = None) -> None:
    """Refuse an output that cannot be written before anything is done, not after."""
    for what, path in (("report", report), ("the plan", plan)):
        if path is None:
            continue
        try:
            check_writable(path)
        except OSError as exc:
            raise ConfigError(f"cannot write {what} to {path}: {exc.strerror}") from None


def color(output: Path | None) -> bool:
    ctx = click.get_current_context(silent=True)
    no_color = bool(ctx and ctx.params.get("no_color"))
    return (output is None and not no_color and sys.stdout.isatty()
            and "NO_COLOR" not in os.environ)


def _work(plan: Plan) -> int:
    """The images apply reports an outcome for: creates, adoptions and updates."""
    return sum(1 for change in plan.changes if change.action in APPLIED_ACTIONS)


class Progress:
    """A one-line progress display on a terminal's stderr; silent elsewhere."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.total, self.done = enabled, 0, 0
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, plan: Plan) -> None:
        self.total = _work(plan)

    def __call__(self, outcome: Outcome) -> None:
        with self._lock:
            self.done += 1
            self.counts[outcome.result] = self.counts.get(outcome.result, 0) + 1
            if self.enabled and self.total:
                width = 30
                filled = width * min(self.done, self.total) // self.total
                parts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()))
                click.echo(f"\r[{'#' * filled}{'-' * (width - filled)}] "
                           f"{self.done}/{self.total} {parts}\x1b[K", err=True, nl=False)

    def close(self) -> None:
        if self.enabled and self.done:
            click.echo("", err=True)


class TargetsProgress:
    """Apply's progress over several targets on a terminal's stderr, one line: each
    target's images done of its total, then the counts of every target together."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def planned(self, target: str) -> Callable[[Plan], None]:
        def start(plan: Plan) -> None:
            with self._lock:
                self.totals[target] = _work(plan)
                self.done.setdefault(target, 0)
        return start

    def outcome(self, target: str) -> Callable[[Outcome], None]:
        def count(outcome: Outcome) -> None:
            with self._lock:
                self.done[target] = self.done.get(target, 0) + 1
                self.counts[outcome.result] = self.counts.get(outcome.result, 0) + 1
                if self.enabled:
                    each = " · ".join(f"{terminal(name)} {self.done.get(name, 0)}/{total}"
                                      for name, total in sorted(self.totals.items()))
                    parts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()))
                    click.echo(f"\r{each} ({parts})\x1b[K", err=True, nl=False)
        return count

    def close(self) -> None:
        if self.enabled and self.counts:
            click.echo("", err=True)


def confirm_targets(report: RunReport, templates: Path | None = None) -> bool:
    """The plan of every target, as `reconcile plan` prints it, then one question."""
    click.echo(render(report, "text", templates=templates, color=_stderr_colored()),
               err=True, nl=False)
    s = report.summary
    if not (s.get("create", 0) + s.get("adopt", 0) + s.get("blocked", 0)):
        return True
    names = ", ".join(t.name for t in report.targets if t.error is None)
    return click.confirm(f"\nApply this plan to {names}: create {s.get('create', 0)}, adopt "
                         f"{s.get('adopt', 0)} image(s)?", err=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A scheduler's SIGTERM stops apply like Ctrl-C: creates in flight finish and are recorded.
    (SIGKILL is safe too; the next apply then resolves them from the journal.)"""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stderr_colored() -> bool:
    """Colours for what is shown on stderr before a question (the plan to confirm)."""
    ctx = click.get_current_context(silent=True)
    return bool(sys.stderr.isatty() and "NO_COLOR" not in os.environ and not (
        ctx and ctx.params.get("no_color")))


def confirm(plan: Plan, report: RunReport | None, endpoint: str,
            templates: Path | None = None) -> bool:
    """Show the plan as `reconcile plan` prints it, then ask; False when the user says no."""
    if report is not None:
        click.echo(render(report, "text", templates=templates, color=_stderr_colored()),
                   err=True, nl=False)
    work = len(plan.creates) + len(plan.adoptions) + plan.count("blocked")
    if not work:
        return True
    return click.confirm(f"\nApply this plan to {endpoint}: create {len(plan.creates)}, adopt "
                         f"{len(plan.adoptions)} image(s)?", err=True)
