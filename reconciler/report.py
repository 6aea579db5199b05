"""Render a ``RunReport`` as text, markdown, html (Jinja2 templates) or json.

All four formats show the same view model. Size rules, so reports stay useful for 100,000
images: ``text`` and ``html`` list at most ``LIST_LIMIT`` entries per section and say how many
they left out; ``markdown`` (a pull-request comment) is guaranteed to fit ``MARKDOWN_LIMIT``
characters by cutting sections step by step and saying what was cut; ``json`` is complete.

``chunks`` yields a report piece by piece, so that a caller writing it out never holds all of
it: the json of a 100,000-image plan (tens of MB) is encoded one change at a time, the text
and html templates are generated as they go. Only markdown is built whole, as its size is
capped.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from jinja2.sandbox import ImmutableSandboxedEnvironment

from reconciler.errors import ConfigError
from reconciler.escape import json_for_terminal, md_code, md_text, terminal
from reconciler.models import ACTIONS, Change, ErrorInfo, Outcome, RunReport
from reconciler.patch import MEDIA_TYPE as PATCH_MEDIA_TYPE

FORMATS = ("text", "markdown", "html", "json")
MARKDOWN_LIMIT = 65_536
LIST_LIMIT = 1_000
# Entries per section tried in turn until the markdown fits; 0 leaves counts only.
_MARKDOWN_CAPS = (LIST_LIMIT, 300, 100, 30, 10, 0)
_TEMPLATE = {"text": "report.txt.j2", "markdown": "report.md.j2", "html": "report.html.j2"}
_COLORS = {"green": "32", "yellow": "33", "red": "31", "cyan": "36", "dim": "2", "bold": "1"}
SYMBOL = {"create": "+", "adopt": "<", "update": "~", "unchanged": "=", "drift": "~",
          "orphan": "?", "blocked": "!"}
HEADING = {"create": "To create", "adopt": "To adopt (found in the cloud)",
           "update": "To update in place",
           "unchanged": "Unchanged", "drift": "Drifted", "orphan": "Orphaned (left untouched)",
           "blocked": "Blocked"}
COLOR = {"create": "green", "adopt": "cyan", "update": "yellow", "unchanged": "dim",
         "drift": "yellow", "orphan": "cyan", "blocked": "red", "created": "green",
         "adopted": "cyan", "updated": "yellow",
         "failed": "red", "skipped": "red", "added": "green", "removed": "red",
         "changed": "yellow"}
#: Sections in the order markdown and html show them: what needs attention first.
SECTIONS = ("blocked", "drift", "create", "update", "adopt", "orphan", "unchanged")


def builtin_templates() -> Path:
    """The packaged templates; from a source checkout, the top-level templates/ folder."""
    packaged = Path(str(resources.files("reconciler.templates")))
    if (packaged / _TEMPLATE["text"]).exists():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


class Verbatim(str):
    """Text a filter has made safe already (``paint``'s colours, ``pretty_json``'s lines)."""

    __slots__ = ()


def _finalize(value: Any) -> Any:
    """Every ``{{ … }}`` of every format: control characters become visible escapes, so
    nothing from a catalog or a server can move the cursor, recolour or forge a line."""
    if isinstance(value, (Verbatim, markupsafe.Markup)):
        return value
    return terminal(value)


#: What one template operation may produce; more is an error, not a full disk.
MAX_TEMPLATE_VALUE = 10_000_000


class _ReportSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's sandbox: no attribute starting with ``_``, no call of unsafe functions, no
    change to the report's objects, ranges up to 100,000. A team's ``--templates`` (maybe
    named by a pull request's reconcile.toml) can format the report, never run code.
    ``*`` and ``**`` are bounded too: ``'x' * 10**12`` would otherwise take all memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any,
                   right: Any) -> Any:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      for v in (left, right))
        if operator == "**" and numbers and abs(right) > 64 and abs(left) > 1:
            raise jinja2.exceptions.SecurityError(f"{left} ** {right} is too large")
        if operator == "*" and not numbers:
            sized, count = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(count, int) and isinstance(sized, (str, list, tuple)) and \
                    len(sized) * count > MAX_TEMPLATE_VALUE:
                raise jinja2.exceptions.SecurityError("the product of a sequence and "
                                                   f"{count} is too large")
        return super().call_binop(context, operator, left, right)


def _environment(override: Path | None) -> jinja2.Environment:
    paths = [str(override)] if override else []
    paths.append(str(builtin_templates()))
    env = _ReportSandbox(
        loader=jinja2.FileSystemLoader(paths),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"),
                                            default_for_string=False),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["value"] = _show_value
    env.filters["pretty_json"] = _pretty_json
    env.filters["code"] = lambda v, table=False: Verbatim(md_code(v, table=table))
    env.filters["md"] = lambda v: Verbatim(md_text(v))
    return env


def render(report: RunReport, fmt: str, *, color: bool = False,
           templates: Path | None = None, show_unchanged: bool = False) -> str:
    """The report in one of FORMATS, as one string. ``text`` lists unchanged images only with
    ``show_unchanged`` (it always counts them); the other formats always list them."""
    return "".join(chunks(report, fmt, color=color, templates=templates,
                          show_unchanged=show_unchanged))


def chunks(report: RunReport, fmt: str, *, color: bool = False,
           templates: Path | None = None, show_unchanged: bool = False) -> Iterator[str]:
    """The report in one of FORMATS, piece by piece; ``"".join`` of them is ``render``'s."""
    if fmt == "json":
        yield from _json_chunks(report)
        return
    try:
        yield from _template_chunks(report, fmt, color=color, templates=templates,
                                    show_unchanged=show_unchanged)
    except jinja2.TemplateError as exc:
        # A team's --templates override is user input: say which file and line is wrong.
        where, line = _template_frame(exc, fmt)
        where = getattr(exc, "filename", None) or where
        line = getattr(exc, "lineno", None) or line
        raise ConfigError(f"report template {where}{f':{line}' if line else ''}: "
                          f"{exc.message or type(exc).__name__}") from None
    except (ArithmeticError, LookupError, TypeError, ValueError, MemoryError,
            RecursionError) as exc:
        # A template's own expression failed (`{{ 1 / 0 }}`, `{{ range(10**9) }}`).
        where, line = _template_frame(exc, fmt)
        raise ConfigError(f"report template {where}{f':{line}' if line else ''}: "
                          f"{type(exc).__name__}: {terminal(exc)}") from None


def _template_frame(exc: BaseException, fmt: str) -> tuple[str, int | None]:
    """The template file and line an exception came from (Jinja2 rewrites tracebacks so
    that template lines show up as frames of the template's file)."""
    where, line = _TEMPLATE[fmt], None
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.endswith(".j2"):
            where, line = name, tb.tb_lineno
        tb = tb.tb_next
    return where, line


def _template_chunks(report: RunReport, fmt: str, *, color: bool,
                     templates: Path | None, show_unchanged: bool) -> Iterator[str]:
    if report.targets:
        yield from _targets_chunks(report, fmt, color=color, templates=templates,
                                   show_unchanged=show_unchanged)
        return
    template = _environment(templates).get_template(_TEMPLATE[fmt])
    if fmt != "markdown":
        yield from template.generate(_view(report, LIST_LIMIT, color=color and fmt == "text",
                                           show_unchanged=show_unchanged or fmt != "text"))
        return
    total = len(report.changes) + len(report.outcomes)
    caps = [c for c in _MARKDOWN_CAPS if c * 150 < MARKDOWN_LIMIT or c >= total] or [0]
    text = ""
    for cap in caps:
        text = template.render(_view(report, cap, color=False, show_unchanged=True))
        if len(text) <= MARKDOWN_LIMIT:
            yield text
            return
    cut = "\n\n_(report cut to fit 65,536 characters; see the JSON report)_\n"
    yield text[: MARKDOWN_LIMIT - len(cut)] + cut


def target_sections(report: RunReport) -> list[RunReport]:
    """A report of several targets as one report per target, in the targets' order: its
    changes, outcomes and counts; a target that failed says why as a warning."""
    changes: dict[str, list[Change]] = {t.name: [] for t in report.targets}
    outcomes: dict[str, list[Outcome]] = {t.name: [] for t in report.targets}
    for change in report.changes:
        changes.setdefault(change.target or "", []).append(change)
    for outcome in report.outcomes:
        outcomes.setdefault(outcome.target or "", []).append(outcome)
    prefix = {t.name: f"{t.name}: " for t in report.targets}
    return [report.model_copy(update={
        "target": f"{t.name} · {t.endpoint}" if t.endpoint else t.name,
        "summary": {**dict.fromkeys(ACTIONS, 0), **t.summary},
        "changes": tuple(changes[t.name]), "outcomes": tuple(outcomes[t.name]),
        "warnings": tuple(w.removeprefix(prefix[t.name]) for w in report.warnings
                          if w.startswith(prefix[t.name]))
        + ((f"target failed: {t.error}",) if t.error else ()),
        "run_id": t.run_id, "duration_s": t.duration_s, "targets": (),
        "format_version": 2}) for t in report.targets]


#: The overview of a report of several targets lists at most this many targets.
TARGETS_LIMIT = 200


def _targets_chunks(report: RunReport, fmt: str, *, color: bool, templates: Path | None,
                    show_unchanged: bool) -> Iterator[str]:
    """A report of several targets: each target's own report (the usual template) and an
    overview with one line per target and the total (``report.targets.*.j2``): after the
    targets in a terminal, before them in markdown and html. Markdown shares its 65,536
    characters among the targets: each gets an equal part of what is left, and one that
    needs less leaves the rest to the others; each cut is announced in its own section."""
    env = _environment(templates)
    single = env.get_template(_TEMPLATE[fmt])
    overview = env.get_template(_TEMPLATE[fmt].replace("report.", "report.targets.", 1))
    sections = target_sections(report)
    top = _view(report, LIST_LIMIT, color=color and fmt == "text", show_unchanged=True)
    shown = report.targets[:TARGETS_LIMIT]
    top.update(targets=shown, targets_omitted=len(report.targets) - len(shown),
               failed=sum(1 for t in report.targets if t.error),
               target_width=min(32, max((len(t.name) for t in shown), default=0)),
               plan_lines={t.name: plan_line({**dict.fromkeys(ACTIONS, 0), **t.summary})
                           for t in shown},
               apply_lines={t.name: apply_line(t.summary) if top["applied"] else ""
                            for t in shown})
    if fmt == "text":
        for section in sections:
            yield from single.generate(_view(section, LIST_LIMIT, color=color,
                                             show_unchanged=show_unchanged))
            yield "\n"
        yield from overview.generate(top)
    elif fmt == "html":
        yield from single.generate({**top, "part": "head"})
        yield from overview.generate(top)
        for i, section in enumerate(sections, 1):
            yield f'<section id="target-{i}">\n'
            yield from single.generate({**_view(section, LIST_LIMIT, color=False,
                                                show_unchanged=True), "part": "body"})
            yield "</section>\n"
        yield from single.generate({**top, "part": "foot"})
    else:
        yield from _markdown_targets(overview.render(top), single, sections)


def _markdown_targets(head: str, template: jinja2.Template,
                      sections: list[RunReport]) -> Iterator[str]:
    cut = "\n\n_(report cut to fit 65,536 characters; see the JSON report)_\n"
    if len(head) > MARKDOWN_LIMIT - len(cut):
        yield head[: MARKDOWN_LIMIT - len(cut)] + cut
        return
    yield head
    left = MARKDOWN_LIMIT - len(head)
    rendered: dict[int, str] = {}
    # The smallest first, so what they leave goes to the bigger ones.
    order = sorted(range(len(sections)), key=lambda i: len(sections[i].changes)
                   + len(sections[i].outcomes))
    for n, i in enumerate(order):
        budget = left // (len(order) - n)
        text = _markdown_fitting(template, sections[i], budget)
        rendered[i] = text
        left -= len(text)
    for i in range(len(sections)):
        yield rendered[i]


def _markdown_fitting(template: jinja2.Template, report: RunReport, budget: int) -> str:
    """One target's section within ``budget`` characters: fewer entries per list until it
    fits, then only its first characters and a note."""
    total = len(report.changes) + len(report.outcomes)
    text = ""
    for cap in [c for c in _MARKDOWN_CAPS if c * 150 < budget or c >= total] or [0]:
        text = "\n" + template.render({**_view(report, cap, color=False, show_unchanged=True),
                                        "part": "body"})
        if len(text) <= budget:
            return text
    note = "\n\n_(this target's section was cut to fit; see the JSON report)_\n"
    return text[: max(0, budget - len(note))] + note if budget > len(note) else ""


def _view(report: RunReport, cap: int, *, color: bool,
          show_unchanged: bool) -> dict[str, Any]:
    groups: dict[str, list[Change]] = {a: [] for a in ACTIONS}
    for change in report.changes:
        groups[change.action].append(change)
    results: dict[str, list[Outcome]] = {"created": [], "adopted": [], "updated": [],
                                         "failed": [], "skipped": []}
    for outcome in report.outcomes:
        results[outcome.result].append(outcome)

    def paint(text: str, name: str) -> Verbatim:
        code = _COLORS.get(COLOR.get(name, name))
        safe = terminal(text)
        return Verbatim(f"\x1b[{code}m{safe}\x1b[0m" if color and code else safe)

    return {
        "r": report,
        # every count present (a report built elsewhere may predate ``update``)
        "s": {**dict.fromkeys((*ACTIONS, *results), 0), **report.summary},
        "groups": {a: g[:cap] for a, g in groups.items()},
        "omitted": {a: max(0, len(g) - cap) for a, g in groups.items()},
        "results": {k: v[:cap] for k, v in results.items()},
        "results_omitted": {k: max(0, len(v) - cap) for k, v in results.items()},
        "cut": any(len(g) > cap for g in groups.values()) or any(
            len(v) > cap for v in results.values()),
        "cap": cap,
        "width": min(48, max((len(c.name) for c in report.changes), default=0)),
        "actions": ACTIONS,
        "sections": SECTIONS,
        "symbol": SYMBOL,
        "heading": HEADING,
        "paint": paint,
        "plan_line": plan_line(report.summary),
        "apply_line": apply_line(report.summary) if report.outcomes or (
            report.mode == "apply" and not report.dry_run) else "",
        "applied": report.mode == "apply" and not report.dry_run,
        "show_unchanged": show_unchanged,
        "no_changes": not any(report.summary.get(a) for a in ACTIONS if a != "unchanged"),
        "source": source_line(report),
        "side": SIDES,
        "side_of": lambda change: side_of(change, refreshed=report.refreshed),
        "patch_path": patch_path,
        "diff_lines": diff_lines,
        "failure_groups": failure_groups(results["failed"][:cap]),
        "result_width": min(48, max((len(o.name) for o in report.outcomes), default=0)),
        "attributes": create_attributes,
        "fence": _fence,
        "part": "all",
    }


def _fence(lines: list[DiffLine]) -> str:
    """A code fence longer than any run of backticks in the lines, so none can close it."""
    longest = max((len(run) for d in lines for text in (d.field, d.before, d.after)
                   for run in re.findall("`+", text)), default=0)
    return "`" * max(3, longest + 1)


#: What a drift's diff compares, by reason: the left side is always what was recorded.
SIDES = {"catalog_changed": "recorded → catalog", "changed_remotely": "recorded → cloud"}


def side_of(change: Change, *, refreshed: bool) -> str:
    """What a change's diff compares. An update's (and a blocked one's) goes from the image
    as it is (the cloud, or offline the record) to the catalog: what the PATCH changes."""
    if change.action == "update" or change.reason == "replace_required":
        return ("cloud" if refreshed else "recorded") + " → catalog"
    return SIDES.get(change.reason, "before → after")


def patch_path(change: Change) -> str:
    """Where an update's PATCH goes (docs/api-contract.md §16)."""
    return f"/v2/{change.patch_api or 'images'}/{change.image_id}"


def source_line(report: RunReport) -> str:
    """What the report was made from: whether the cloud was read, which state, which catalog."""
    state = f"state {report.state}" if report.state else "the state"
    if report.refreshed:
        read = f"refreshed: {state} and the cloud"
    elif report.dry_run:
        read = f"offline: {state} only, the cloud was not read"
    elif report.mode == "plan":
        read = f"offline: {state} only, the cloud was not read (--refresh reads it)"
    else:
        read = f"{state}, the cloud not read (--no-refresh)"
    plan_id = f" · plan {report.plan_id}" if report.plan_id else ""
    return f"{read} · catalog digest {report.catalog_digest[:12]}{plan_id}"


@dataclass(frozen=True)
class DiffLine:
    """One line of a readable diff: ``kind`` is added, removed or changed."""

    kind: str
    field: str
    before: str = ""
    after: str = ""


def diff_lines(change: Change) -> list[DiffLine]:
    """The change's diff as a person reads it: tags (a set) as the tags added and removed,
    a field that appears or disappears as added or removed, others as changed."""
    out: list[DiffLine] = []
    for d in change.diff:
        if d.field == "tags" and isinstance(d.before, list | tuple | None) and \
                isinstance(d.after, list | tuple | None):
            before, after = list(d.before or ()), list(d.after or ())
            out += [DiffLine("removed", "tags", before=_show_value(t))
                    for t in before if t not in after]
            out += [DiffLine("added", "tags", after=_show_value(t))
                    for t in after if t not in before]
        elif d.before is None:
            out.append(DiffLine("added", d.field, after=_show_value(d.after)))
        elif d.after is None:
            out.append(DiffLine("removed", d.field, before=_show_value(d.before)))
        else:
            out.append(DiffLine("changed", d.field, _show_value(d.before),
                                _show_value(d.after)))
    return out


@dataclass(frozen=True)
class FailureGroup:
    """Failures with one error: a run-wide one (a bad token) is one line, not one per image."""

    error: ErrorInfo | None
    names: tuple[str, ...]
    attempts: int


def failure_groups(failed: list[Outcome]) -> list[FailureGroup]:
    groups: dict[tuple[str, int | None, str | None], list[Outcome]] = {}
    for o in failed:
        key = (o.error.message, o.error.status, o.error.code) if o.error else ("", None, None)
        groups.setdefault(key, []).append(o)
    return [FailureGroup(g[0].error, tuple(o.name for o in g), max(o.attempts for o in g))
            for g in groups.values()]


def create_attributes(change: Change) -> str:
    """A create's main attributes on one line, for the pull-request comment."""
    spec = change.spec
    if spec is None:
        return ""
    parts = [f"{k} {v}" for k, v in (("os", spec.os_version), ("disk_format", spec.disk_format),
                                     ("min_disk", spec.min_disk), ("min_ram", spec.min_ram),
                                     ("visibility", spec.visibility)) if v is not None]
    if spec.tags:
        parts.append("tags " + ", ".join(spec.tags))
    if spec.properties:
        parts.append("properties " + ", ".join(f"{k}={v}" for k, v in spec.properties.items()))
    return "; ".join(parts)


def summary_line(report: RunReport) -> str:
    """The report in one line: the plan's counts, and for an apply what it did."""
    applied = report.mode == "apply" and not report.dry_run
    return plan_line(report.summary) + (" " + apply_line(report.summary) if applied else "")


def plan_line(s: dict[str, int]) -> str:
    adopt = f"{s['adopt']} to adopt, " if s.get("adopt") else ""
    update = f"{s['update']} to update, " if s.get("update") else ""
    return (f"Plan: {s['create']} to create, {adopt}{update}{s['unchanged']} unchanged, "
            f"{s['drift']} drifted, {s['orphan']} orphaned, {s['blocked']} blocked.")


def apply_line(s: dict[str, int]) -> str:
    updated = f"{s['updated']} updated, " if s.get("updated") else ""
    return (f"Apply: {s.get('created', 0)} created, {s.get('adopted', 0)} adopted, {updated}"
            f"{s.get('failed', 0)} failed, {s.get('skipped', 0)} skipped.")


def _show_value(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, ensure_ascii=False)


def _pretty_json(value: Any) -> Verbatim:
    return Verbatim(json_for_terminal(json.dumps(value, indent=2, ensure_ascii=False)))


def change_json(change: Change) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": change.name,
        "action": change.action,
        "reason": change.reason,
        "detail": change.detail,
        "file": change.file,
        "line": change.line,
        "image_id": change.image_id,
        "diff": [{"field": d.field, "before": d.before, "after": d.after} for d in change.diff],
        "warnings": list(change.warnings),
    }
    if change.action == "create" and change.spec is not None:
        out["request"] = change.spec.body()
    if change.action == "update":
        out["patch"] = {"method": "PATCH", "path": patch_path(change),
                        "content_type": PATCH_MEDIA_TYPE, "body": list(change.patch)}
    if change.target is not None:  # format_version 2
        out = {"target": change.target, **out}
    return out


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "name": outcome.name,
        "result": outcome.result,
        "image_id": outcome.image_id,
        "status": outcome.status,
        "created_at": outcome.created_at,
        "updated_at": outcome.updated_at,
        "attempts": outcome.attempts,
        "duration_s": round(outcome.duration_s, 3),
        "error": outcome.error.model_dump() if outcome.error else None,
        **({"patch": list(outcome.patch)} if outcome.patch is not None else {}),
        **({"target": outcome.target} if outcome.target is not None else {}),
    }


def to_json(report: RunReport) -> dict[str, Any]:
    """The documented, versioned JSON report (format_version 1), as one value."""
    return _json_document(report, [change_json(c) for c in report.changes],
                          [outcome_json(o) for o in report.outcomes])


def _json_document(report: RunReport, changes: object, outcomes: object) -> dict[str, Any]:
    out: dict[str, Any] = {
        "format_version": report.format_version,
        "mode": report.mode,
        "dry_run": report.dry_run,
        "generated_at": report.generated_at,
        "tool_version": report.tool_version,
        "catalog": report.catalog,
        "target": report.target,
        "profile": report.profile,
        "catalog_digest": report.catalog_digest,
        "run_id": report.run_id,
        "duration_s": report.duration_s,
        "auth_refreshes": report.auth_refreshes,
        "refreshed": report.refreshed,
        "state": report.state,
        "plan_id": report.plan_id,
        "summary": report.summary,
        "changes": changes,
        "warnings": list(report.warnings),
    }
    if report.mode == "apply":
        out["outcomes"] = outcomes
    if report.format_version >= 2:  # several targets (README "JSON report")
        out["targets"] = [t.model_dump() for t in report.targets]
    return out


#: Characters gathered before a piece of the json report is handed on.
_JSON_PIECE = 1 << 16


def _json_chunks(report: RunReport) -> Iterator[str]:
    """``json.dumps(to_json(report), indent=2, ensure_ascii=False)`` and a newline, byte for
    byte, without building it: the document is encoded with a placeholder for each long
    list, whose items are then encoded one at a time at the list's depth."""
    marks = {key: f"reconcile-stream-{uuid.uuid4().hex}" for key in ("changes", "outcomes")}
    head = json.dumps(_json_document(report, marks["changes"], marks["outcomes"]), indent=2,
                      ensure_ascii=False) + "\n"
    items = {"changes": (change_json(c) for c in report.changes),
             "outcomes": (outcome_json(o) for o in report.outcomes)}
    for key, mark in marks.items():
        before, found, head = head.partition(f'"{mark}"')
        if not found:
            head = before
            continue
        yield before
        yield from _json_list(items[key])
    yield head


def _json_list(items: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A list at depth 1 of an ``indent=2`` document (its items at depth 2), in pieces."""
    piece: list[str] = []
    size, opened = 0, False
    for item in items:
        try:
            text = _indented(item, "    ")
        except TypeError:  # a value _indented does not know: the json module's own words
            text = json.dumps(item, indent=2, ensure_ascii=False).replace("\n", "\n    ")
        piece.append(f",\n    {text}" if opened else f"[\n    {text}")
        opened = True
        size += len(text)
        if size >= _JSON_PIECE:
            yield "".join(piece)
            piece.clear()
            size = 0
    piece.append("\n  ]" if opened else "[]")
    yield "".join(piece)


_string = json.encoder.encode_basestring  # ensure_ascii=False; the C version where there is one
_float = json.JSONEncoder().encode  # NaN and infinities as the json module writes them


def _indented(value: Any, indent: str) -> str:
    """``json.dumps(value, indent=2, ensure_ascii=False)`` at the depth of ``indent``, byte
    for byte, for the plain values a report holds (TypeError for anything else): the json
    module encodes an indented document in pure Python, about three times slower, which a
    100,000-change report pays on every change."""
    if isinstance(value, str):
        return _string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float:
        return _float(value)
    inner = indent + "  "
    if type(value) is dict:
        if not value:
            return "{}"
        if not all(type(k) is str for k in value):
            raise TypeError("a key that is not text")
        return ("{\n" + ",\n".join(f"{inner}{_string(k)}: {_indented(v, inner)}"
                                   for k, v in value.items()) + f"\n{indent}}}")
    if type(value) in (list, tuple):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(inner + _indented(v, inner) for v in value) + f"\n{indent}]"
    raise TypeError(f"{type(value).__name__} is not plain JSON")
