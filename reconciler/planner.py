"""The planner: a pure function from (catalog, records, pending creates) to a ``Plan``.

No I/O, no clock, no randomness: the same inputs give the same plan, in name order, which is
what makes plans reviewable and saved plans comparable.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from reconciler.models import (
    MARKER_PROPERTY,
    Catalog,
    Change,
    FieldDiff,
    ImageSpec,
    Plan,
    Record,
)

PENDING_DETAIL = ("an earlier apply stopped while creating this image; the next apply looks it "
                  "up by its marker and records it, or creates it if it is not there")


def plan(catalog: Catalog, records: Mapping[str, Record], *, target: str,
         pending: Collection[str] = ()) -> Plan:
    """One change per image in the catalog or the records. ``pending``: names with an
    unresolved journal entry."""
    specs = {s.name: s for s in catalog.images}
    changes = [
        _change(name, specs.get(name), records.get(name), name in pending,
                catalog.warnings.get(name, ()))
        for name in sorted(specs.keys() | records.keys())
    ]
    return Plan.model_construct(target=target, profile=catalog.profile,
                                catalog_digest=catalog.digest(), changes=tuple(changes))


def _change(name: str, spec: ImageSpec | None, record: Record | None, pending: bool,
            warnings: tuple[str, ...]) -> Change:
    where: dict[str, Any] = {"file": spec.file, "line": spec.line} if spec else {}
    if record is None:
        assert spec is not None
        if pending:
            return _make(name, "blocked", "pending_create", PENDING_DETAIL, spec=spec,
                         warnings=warnings, **where)
        return _make(name, "create", "not_recorded", spec=spec, warnings=warnings, **where)
    if spec is None:
        return _make(name, "orphan", "not_in_catalog",
                     "recorded but no longer in the catalog; it is left in the cloud untouched",
                     image_id=record.image_id)
    if spec.digest() == record.spec_digest:
        return _make(name, "unchanged", "in_sync", spec=spec, warnings=warnings,
                     image_id=record.image_id, **where)
    return _make(name, "drift", "catalog_changed",
                 "the catalog differs from what was sent when the image was created; "
                 "apply does not update images", spec=spec, warnings=warnings,
                 image_id=record.image_id, diff=diff_bodies(record.request, spec.body()), **where)


def _make(name: str, action: str, reason: str, detail: str = "", **fields: Any) -> Change:
    values: dict[str, Any] = {"detail": detail, "diff": (), "warnings": (), "file": None,
                              "line": None, "image_id": None, "spec": None}
    values.update(fields)
    return Change.model_construct(name=name, action=action, reason=reason, **values)


def diff_bodies(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[FieldDiff, ...]:
    """Field-level differences between two request bodies, in field order; tags as sets."""
    out = []
    for key in sorted((before.keys() | after.keys()) - {MARKER_PROPERTY}):
        old, new = before.get(key), after.get(key)
        if key == "tags" and old is not None and new is not None and set(old) == set(new):
            continue
        if old != new:
            field = "os_version" if key == "__os_version" else key
            out.append(FieldDiff.model_construct(field=field, before=old, after=new))
    return tuple(out)
