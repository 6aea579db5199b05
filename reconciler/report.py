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
import uuid
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from reconciler.errors import ConfigError
from reconciler.models import ACTIONS, Change, Outcome, RunReport

FORMATS = ("text", "markdown", "html", "json")
MARKDOWN_LIMIT = 65_536
LIST_LIMIT = 1_000
# Entries per section tried in turn until the markdown fits; 0 leaves counts only.
_MARKDOWN_CAPS = (LIST_LIMIT, 300, 100, 30, 10, 0)
_TEMPLATE = {"text": "report.txt.j2", "markdown": "report.md.j2", "html": "report.html.j2"}
_COLORS = {"green": "32", "yellow": "33", "red": "31", "cyan": "36", "dim": "2", "bold": "1"}
SYMBOL = {"create": "+", "adopt": "<", "unchanged": "=", "drift": "~", "orphan": "?",
          "blocked": "!"}
HEADING = {"create": "To create", "adopt": "To adopt (found in the cloud)",
           "unchanged": "Unchanged", "drift": "Drifted", "orphan": "Orphaned (left untouched)",
           "blocked": "Blocked"}
COLOR = {"create": "green", "adopt": "cyan", "unchanged": "dim", "drift": "yellow",
         "orphan": "cyan", "blocked": "red", "created": "green", "adopted": "cyan",
         "failed": "red", "skipped": "red"}
#: Sections in the order markdown and html show them: what needs attention first.
SECTIONS = ("blocked", "drift", "create", "adopt", "orphan", "unchanged")


def builtin_templates() -> Path:
    """The packaged templates; from a source checkout, the top-level templates/ folder."""
    packaged = Path(str(resources.files("reconciler.templates")))
    if (packaged / _TEMPLATE["text"]).exists():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


def _environment(override: Path | None) -> jinja2.Environment:
    paths = [str(override)] if override else []
    paths.append(str(builtin_templates()))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(paths),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"),
                                            default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["value"] = _show_value
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)
    return env


def render(report: RunReport, fmt: str, *, color: bool = False,
           templates: Path | None = None) -> str:
    """The report in one of FORMATS, as one string."""
    return "".join(chunks(report, fmt, color=color, templates=templates))


def chunks(report: RunReport, fmt: str, *, color: bool = False,
           templates: Path | None = None) -> Iterator[str]:
    """The report in one of FORMATS, piece by piece; ``"".join`` of them is ``render``'s."""
    if fmt == "json":
        yield from _json_chunks(report)
        return
    try:
        yield from _template_chunks(report, fmt, color=color, templates=templates)
    except jinja2.TemplateError as exc:
        # A team's --templates override is user input: say which file and line is wrong.
        where = getattr(exc, "filename", None) or _TEMPLATE[fmt]
        line = getattr(exc, "lineno", None)
        raise ConfigError(f"report template {where}{f':{line}' if line else ''}: "
                          f"{exc.message or type(exc).__name__}") from None


def _template_chunks(report: RunReport, fmt: str, *, color: bool,
                     templates: Path | None) -> Iterator[str]:
    template = _environment(templates).get_template(_TEMPLATE[fmt])
    if fmt != "markdown":
        yield from template.generate(_view(report, LIST_LIMIT, color=color and fmt == "text"))
        return
    total = len(report.changes) + len(report.outcomes)
    caps = [c for c in _MARKDOWN_CAPS if c * 150 < MARKDOWN_LIMIT or c >= total] or [0]
    text = ""
    for cap in caps:
        text = template.render(_view(report, cap, color=False))
        if len(text) <= MARKDOWN_LIMIT:
            yield text
            return
    cut = "\n\n_(report cut to fit 65,536 characters; see the JSON report)_\n"
    yield text[: MARKDOWN_LIMIT - len(cut)] + cut


def _view(report: RunReport, cap: int, *, color: bool) -> dict[str, Any]:
    groups: dict[str, list[Change]] = {a: [] for a in ACTIONS}
    for change in report.changes:
        groups[change.action].append(change)
    results: dict[str, list[Outcome]] = {"created": [], "adopted": [], "failed": [],
                                         "skipped": []}
    for outcome in report.outcomes:
        results[outcome.result].append(outcome)

    def paint(text: str, name: str) -> str:
        code = _COLORS.get(COLOR.get(name, name))
        return f"\x1b[{code}m{text}\x1b[0m" if color and code else text

    return {
        "r": report,
        "s": report.summary,
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
    }


def plan_line(s: dict[str, int]) -> str:
    adopt = f"{s['adopt']} to adopt, " if s.get("adopt") else ""
    return (f"Plan: {s['create']} to create, {adopt}{s['unchanged']} unchanged, "
            f"{s['drift']} drifted, {s['orphan']} orphaned, {s['blocked']} blocked.")


def apply_line(s: dict[str, int]) -> str:
    return (f"Apply: {s.get('created', 0)} created, {s.get('adopted', 0)} adopted, "
            f"{s.get('failed', 0)} failed.")


def _show_value(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, ensure_ascii=False)


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
        "summary": report.summary,
        "changes": changes,
        "warnings": list(report.warnings),
    }
    if report.mode == "apply":
        out["outcomes"] = outcomes
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
