"""Saved plans: ``plan --out FILE`` writes one, ``apply FILE`` applies exactly it, once.

A saved plan pins what it was made from: the catalog digest, the state file's revision, the
target and profile, and (when refreshed) a fingerprint of every live image with the name of
an image it creates or adopts. ``stale_reasons`` lists what moved since; apply refuses if
anything did. The file holds request bodies and image ids, never credentials.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler.errors import PlanFileError
from reconciler.models import Frozen, Observed, Plan
from reconciler.output import write_text

KIND = "reconcile-plan"
FORMAT_VERSION = 1


class PlannedImage(Frozen):
    name: str
    action: str
    reason: str
    request: dict[str, Any] | None = None
    image_id: str | None = None


class Fingerprint(Frozen):
    id: str
    updated_at: str | None = None
    status: str | None = None


class SavedPlan(Frozen):
    kind: str
    format_version: int
    plan_id: str
    created_at: str
    tool_version: str
    catalog: str
    catalog_digest: str
    state_revision: int
    target: str
    profile: str
    refreshed: bool
    summary: dict[str, int]
    changes: tuple[PlannedImage, ...]
    fingerprints: dict[str, tuple[Fingerprint, ...]] = {}
    only: tuple[str, ...] = ()  # the --only patterns the plan was limited to

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.changes]


def fingerprints(observed: Observed, names: list[str]) -> dict[str, tuple[Fingerprint, ...]]:
    """Per name: the live images the cloud holds under it (none for a clean create)."""
    by_name: dict[str, list[Fingerprint]] = defaultdict(list)
    for image in observed.images:
        by_name[str(image.get("name"))].append(Fingerprint(
            id=image["id"], updated_at=image.get("updated_at"), status=image.get("status")))
    return {n: tuple(sorted(by_name.get(n, []), key=lambda f: f.id)) for n in names}


def build(result: Plan, *, catalog: str, state_revision: int, created_at: str,
          tool_version: str, observed: Observed | None,
          only: tuple[str, ...] = ()) -> SavedPlan:
    changes = tuple(
        PlannedImage(name=c.name, action=c.action, reason=c.reason,
                     request=c.spec.body() if c.action == "create" and c.spec else None,
                     image_id=c.image_id)
        for c in result.changes if c.action in ("create", "adopt"))
    names = [c.name for c in changes]
    return SavedPlan(
        kind=KIND, format_version=FORMAT_VERSION, plan_id=uuid.uuid4().hex,
        created_at=created_at, tool_version=tool_version, catalog=catalog,
        catalog_digest=result.catalog_digest, state_revision=state_revision,
        target=result.target, profile=result.profile, refreshed=observed is not None,
        summary=result.summary(), changes=changes,
        fingerprints=fingerprints(observed, names) if observed is not None else {},
        only=only)


def write(saved: SavedPlan, path: Path) -> None:
    try:
        write_text(path, saved.model_dump_json(indent=2) + "\n")
    except OSError as exc:
        raise PlanFileError(f"cannot write the plan to {path}: {exc.strerror}") from None


def read(path: Path) -> SavedPlan:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanFileError(f"cannot read plan file {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanFileError(f"{path} is not a saved plan (not JSON: {exc})") from None
    except RecursionError:
        raise PlanFileError(f"{path} is not a saved plan (JSON nested too deeply)") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise PlanFileError(f"{path} is not a saved plan (make one with `reconcile plan --out "
                            f"{path}`)")
    if type(data.get("format_version")) is not int or data["format_version"] != FORMAT_VERSION:
        raise PlanFileError(f"{path} has plan format {data.get('format_version')!r}; this "
                            f"reconcile reads format {FORMAT_VERSION}; make the plan again")
    try:
        return SavedPlan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PlanFileError(f"{path} is damaged: {where}: {first['msg']}; make the plan "
                            "again") from None


def moved_since(*, catalog: str, catalog_then: str, catalog_now: str, revision_then: int,
                revision_now: int, event: str = "the plan was made") -> list[str]:
    """What changed in the catalog and the state file since ``event``."""
    reasons = []
    if catalog_now != catalog_then:
        reasons.append(f"the catalog {catalog} changed since {event}")
    if revision_now != revision_then:
        reasons.append(f"the state file changed since {event} (revision "
                       f"{revision_then} → {revision_now})")
    return reasons


def stale_reasons(saved: SavedPlan, *, catalog_digest: str, state_revision: int,
                  observed: Observed | None) -> list[str]:
    """Everything that changed since the plan was made; empty when it can be applied."""
    reasons = moved_since(catalog=saved.catalog, catalog_then=saved.catalog_digest,
                          catalog_now=catalog_digest, revision_then=saved.state_revision,
                          revision_now=state_revision)
    if observed is None:
        return reasons
    now = fingerprints(observed, saved.names)
    for change in saved.changes:
        then_images = saved.fingerprints.get(change.name) if saved.refreshed else None
        current = now.get(change.name, ())
        if then_images is not None and tuple(then_images) != current:
            reasons.append(f"{change.name}: the images in the cloud changed since the plan "
                           f"was made ({_show(then_images)} → {_show(current)})")
        elif then_images is None and change.action == "create" and current:
            reasons.append(f"{change.name}: an image with this name now exists in the cloud "
                           f"({_show(current)})")
    return reasons


def _show(prints: tuple[Fingerprint, ...]) -> str:
    if not prints:
        return "none"
    return ", ".join(f"{f.id} {f.status} updated {f.updated_at}" for f in prints)


def check_target(saved: SavedPlan, endpoint: str) -> None:
    """Refuse a plan made for another endpoint than the one the credentials and settings name.

    The plan file never chooses where requests (and tokens) go: it is an input anyone with
    write access to it could edit, so its ``target`` is only compared, before any request.
    """
    if saved.target != endpoint:
        raise PlanFileError(f"the plan was made for {saved.target}, but this apply would send "
                            f"to {endpoint} (from --endpoint, RECONCILE_ENDPOINT, reconcile.toml "
                            "or the credentials); nothing was sent. Make a new plan for this "
                            "endpoint")
