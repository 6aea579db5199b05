"""What the smaller commands print: validate's verdict (text, one JSON document, or GitHub
Actions annotations), `state list`, `state show` and `history` (text or JSON).

Each function returns the lines in the order they are printed, each for stdout or stderr;
``cli`` prints them. Recorded and catalog text is escaped for the terminal here (JSON needs
no escaping: ``json.dumps`` escapes every control and non-ASCII character).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.errors import Problem
from reconciler.escape import terminal
from reconciler.models import Record
from reconciler.profiles import PROFILES, Profile


@dataclass(frozen=True)
class Line:
    """One line to print; ``err``: on stderr."""

    text: str
    err: bool = False


def plural(n: int, word: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {word}{'s' if n != 1 else ''}"


# --- validate --------------------------------------------------------------------------------

def valid_catalog(fmt: str, catalog: str, profile: str, rules: Profile, *, images: int,
                  files: int, warnings: Sequence[Problem], notes: Sequence[str],
                  targets: Mapping[str, int]) -> list[Line]:
    """A valid catalog: as text, its warnings on stderr, then one line on what was checked
    (and the image count of each target asked about); else as ``problems`` puts it."""
    if fmt != "text":
        noted = [Problem(catalog, None, "", note, "warning") for note in notes]
        return problems(fmt, catalog, profile, errors=[], warnings=[*noted, *warnings],
                        images=images, files=files, targets=targets)
    lines = [Line(f"warning: {note}", err=True) for note in notes]  # reconcile's own text
    lines += [Line(f"warning: {terminal(problem)}", err=True) for problem in warnings]
    lines.append(Line(f"catalog {catalog} is valid: {plural(images, 'image')} in "
                      f"{plural(files, 'file')} (profile {profile}{_rules_line(rules)}),"
                      f" {plural(len(warnings), 'warning')}"))
    if targets:
        lines.append(Line(terminal("targets: " + ", ".join(
            f"{name} ({plural(count, 'image')})" for name, count in targets.items()))))
    return lines


def _rules_line(profile: Profile) -> str:
    """Which rules a valid catalog was checked with, where they are not the built-in ones."""
    base = PROFILES[profile.name]
    return "".join((f"; {profile.source}" if profile.source != base.source else "",
                    f"; OS versions from {profile.os_source}"
                    if profile.os_source != base.os_source else ""))


def problems(fmt: str, catalog: str, profile: str, *, errors: Sequence[Problem],
             warnings: Sequence[Problem], images: int = 0, files: int = 0,
             targets: Mapping[str, int] | None = None) -> list[Line]:
    """validate's problems as JSON (``fmt="json"``, one document) or as GitHub Actions
    annotations (``fmt="github"``, one line each)."""
    if fmt == "json":
        def doc(p: Problem) -> dict[str, Any]:
            return {"file": p.file, "line": p.line, "column": p.column, "field": p.path,
                    "image": p.image, "message": p.message}
        return [Line(json.dumps({"valid": not errors, "catalog": catalog, "profile": profile,
                                 "images": images, "files": files,
                                 "errors": [doc(p) for p in errors],
                                 "warnings": [doc(p) for p in warnings],
                                 **({"targets": dict(targets)} if targets else {})},
                                indent=2))]
    lines = []
    for kind, found in (("error", errors), ("warning", warnings)):
        for p in found:
            props = [f"file={_gh_property(p.file)}"]
            if p.line:
                props.append(f"line={p.line}")
            if p.column:
                props.append(f"col={p.column}")
            props.append(f"title={_gh_property('reconcile ' + (p.field or 'catalog'))}")
            lines.append(Line(f"::{kind} {','.join(props)}::{_gh_data(p.message)}"))
    return lines


def _gh_data(text: str) -> str:
    """GitHub's workflow-command escaping of a message."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


# --- state list, state show, history ---------------------------------------------------------

def records(rows: Sequence[tuple[str, Record]], *, as_json: bool) -> list[Line]:
    """`state list`: one JSON object per line, or a table (name, id, status, created_at,
    target) and the count on stderr."""
    if as_json:
        return [Line(json.dumps({"target": key, "name": rec.name, "image_id": rec.image_id,
                                 "status": rec.status, "created_at": rec.created_at,
                                 "origin": rec.origin})) for key, rec in rows]
    if not rows:
        return [Line("no images recorded")]
    shown = [(terminal(rec.name), terminal(rec.image_id), terminal(rec.status or "-"),
              terminal(rec.created_at or "-"), terminal(key)) for key, rec in rows]
    width = max(len(row[0]) for row in shown)
    return [*(Line(f"{name:<{width}}  {image_id}  {status:<8}  {created_at}  {key}")
              for name, image_id, status, created_at, key in shown),
            Line(f"{plural(len(rows), 'image')} recorded", err=True)]


def record_documents(docs: Sequence[dict[str, Any]], *, as_json: bool) -> list[Line]:
    """`state show`: one JSON document (a list when several targets hold the name), or each
    record's fields, then its request and response as indented JSON."""
    if as_json:
        return [Line(json.dumps(docs if len(docs) > 1 else docs[0], indent=2,
                                sort_keys=True))]
    lines = []
    for doc in docs:
        resp = doc["response"]
        fields = [(key, doc[key]) for key in ("name", "target", "image_id", "status",
                                              "created_at", "updated_at")]
        fields += [(key, resp.get(key)) for key in ("self", "file", "schema", "owner")]
        fields.append(("origin", doc["origin"]))
        lines += [Line(f"{key + ':':<13} {terminal(value)}") for key, value in fields]
        lines.append(Line(f"{'recorded_at:':<13} {terminal(doc['recorded_at'])} "
                          f"(run {terminal(doc['run_id'])})"))
        lines.append(Line(f"{'spec_digest:':<13} {terminal(doc['spec_digest'])}"))
        for key, body in (("request", doc["request"]), ("response", resp)):
            text = json.dumps(body, sort_keys=True, indent=2)
            lines.append(Line(f"{key}:\n" + "\n".join(f"  {line}"
                                                      for line in text.splitlines())))
    return lines


def runs(found: Sequence[dict[str, Any]], *, as_json: bool) -> list[Line]:
    """`history`: one JSON object per run and line, or a line per run (when, id, outcome,
    counts, target) with the reason under a run that did not succeed."""
    if as_json:
        return [Line(json.dumps(run, sort_keys=True)) for run in found]
    if not found:
        return [Line("no runs recorded")]
    lines = []
    for run in found:
        outcome, note = run["outcome"], run.get("error")
        if run.get("process_gone"):
            outcome = "interrupted"
            note = (f"process {run['pid']} is gone: killed before it finished (the next "
                    "apply records it as interrupted)")
        lines.append(Line(terminal(f"{run['started_at']}  {run['id']}  {outcome:<11}  "
                                   f"created {run['created']}, adopted {run['adopted']}, "
                                   + (f"updated {run['updated']}, " if run.get("updated")
                                      else "")
                                   + f"failed {run['failed']}  {run['target']}")))
        if note and outcome != "success":
            lines.append(Line("    " + terminal(note)))
    return lines
