"""The planner: a pure function from (catalog, records, pending creates, observed cloud) to
a ``Plan``.

No I/O, no clock, no randomness: the same inputs give the same plan, in name order, which is
what makes plans reviewable and saved plans comparable. Without ``observed`` (an offline
plan) the records are taken at their word; with it, the cloud's view wins: deleted images are
created again, lost records are adopted by their marker, and same-name images block.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reconciler import patch
from reconciler.errors import ConfigError
from reconciler.models import (
    MARKER_PROPERTY,
    Catalog,
    Change,
    DriftPolicy,
    FieldDiff,
    ImageSpec,
    Observed,
    Plan,
    Record,
    Target,
    build,
)

PENDING_DETAIL = ("an earlier apply stopped while creating this image; the next apply looks it "
                  "up by its marker and records it, or creates it if it is not there")


def plan(catalog: Catalog, records: Mapping[str, Record], *, target: str,
         pending: Mapping[str, str] | None = None, observed: Observed | None = None,
         drift: DriftPolicy = "update") -> Plan:
    """One change per image in the catalog or the records.

    ``pending``: name -> nonce of each unresolved journal entry. ``observed``: the cloud.
    ``drift``: the policy of images that set none (``drift:`` in the catalog wins).
    """
    return Planner(records, target=target, profile=catalog.profile, pending=pending,
                   observed=observed, drift=drift).plan(catalog)


class Planner:
    """``plan`` in steps, for a catalog that is still loading: ``add`` makes the changes of
    some of its images (a file's, while the next files are parsed), ``plan`` the rest and
    the ``Plan`` once the catalog is whole. Each change is made by the same function from
    the same values either way, so the plan is ``plan``'s. ``records`` are looked up once
    each (``get``): the record of an added image is not there any more for ``plan``, so
    every added image must be in the catalog ``plan`` is given.
    """

    def __init__(self, records: Mapping[str, Record], *, target: str, profile: str,
                 pending: Mapping[str, str] | None = None, observed: Observed | None = None,
                 drift: DriftPolicy = "update") -> None:
        self._records, self._pending = records, pending or {}
        self._target, self._profile, self._drift = target, profile, drift
        self._cloud = _Cloud(observed) if observed is not None else None
        self._added: dict[str, tuple[ImageSpec, Change]] = {}

    def add(self, specs: Iterable[ImageSpec], warnings: Mapping[str, tuple[str, ...]]) -> None:
        for spec in specs:
            self._added[spec.name] = (spec, self._change(spec.name, spec, warnings))

    def plan(self, catalog: Catalog) -> Plan:
        added, records = self._added, self._records
        changes, ordered, last = [], True, ""
        for spec in catalog.images:  # in name order once loaded
            name = spec.name
            ordered, last = ordered and last < name, name
            made = added.pop(name, None)
            if made is not None and made[0] is not spec:
                raise ValueError(f"{name!r} was added as another image")
            changes.append(made[1] if made else self._change(name, spec, catalog.warnings))
        if added:
            raise ValueError(f"{len(added)} added image(s) are not in the catalog, e.g. "
                             f"{next(iter(added))!r}")
        names = {s.name for s in catalog.images} if records else set()
        rest = records.keys() - names  # recorded, not in the catalog
        changes.extend(self._change(name, None, catalog.warnings) for name in rest)
        if rest or not ordered:
            changes.sort(key=lambda c: c.name)
        return Plan.model_construct(target=self._target, profile=catalog.profile,
                                    catalog_digest=catalog.digest, changes=tuple(changes))

    def _change(self, name: str, spec: ImageSpec | None,
                warnings: Mapping[str, tuple[str, ...]]) -> Change:
        return _change(name, spec, self._records.get(name), self._pending.get(name),
                       self._cloud, warnings.get(name, ()), self._drift, self._profile)


class _Cloud:
    """Observed images indexed by id and by name."""

    def __init__(self, observed: Observed) -> None:
        self.gone = observed.gone
        self.by_id = {i["id"]: i for i in observed.images}
        self.by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for image in observed.images:
            self.by_name[str(image.get("name"))].append(image)


def _change(name: str, spec: ImageSpec | None, record: Record | None, nonce: str | None,
            cloud: _Cloud | None, warnings: tuple[str, ...], drift: DriftPolicy,
            profile: str) -> Change:
    where: dict[str, Any] = {"file": spec.file, "line": spec.line, "spec": spec,
                             "warnings": warnings} if spec else {}
    updating = spec is not None and (spec.drift or drift) == "update"
    if cloud is None:
        change = _offline(name, spec, record, nonce is not None, where)
        if updating and change.action == "drift" and record is not None and spec is not None:
            return _update(change, spec, record, record.response, profile)
        return change
    live = cloud.by_name.get(name, [])
    remote = cloud.by_id.get(record.image_id) if record else None
    if record and remote is None:
        gone = _gone_detail(record, cloud)
        if spec is None:
            return _make(name, "orphan", "not_in_catalog", "recorded, no longer in the catalog, "
                         f"and {gone}", image_id=record.image_id)
        return _unrecorded(name, spec, live, nonce, where, "missing_remotely", gone)
    if record and remote is not None:
        if spec is None:
            return _make(name, "orphan", "not_in_catalog", "recorded but no longer in the "
                         "catalog; it is left in the cloud untouched", image_id=record.image_id)
        others = [i for i in live if i["id"] != record.image_id]
        if others:
            return _make(name, "blocked", "duplicates", _duplicates_detail(name, live),
                         image_id=record.image_id, **where)
        remote_diff = diff_remote(record, remote)
        if remote_diff:
            change = _make(name, "drift", "changed_remotely", "the image was changed outside "
                           "reconcile (recorded → now in the cloud)", image_id=record.image_id,
                           diff=remote_diff, remote=remote, **where)
        else:
            change = _compare(name, spec, record, where)
            if change.action == "drift":
                change = change.model_copy(update={"remote": remote})
        if updating and change.action == "drift":
            return _update(change, spec, record, remote, profile)
        return change
    assert spec is not None
    return _unrecorded(name, spec, live, nonce, where, "not_recorded", "")


def _offline(name: str, spec: ImageSpec | None, record: Record | None, pending: bool,
             where: dict[str, Any]) -> Change:
    if record is None:
        if pending:
            return _make(name, "blocked", "pending_create", PENDING_DETAIL, **where)
        return _make(name, "create", "not_recorded", **where)
    if spec is None:
        return _make(name, "orphan", "not_in_catalog",
                     "recorded but no longer in the catalog; it is left in the cloud untouched",
                     image_id=record.image_id)
    return _compare(name, spec, record, where)


def _compare(name: str, spec: ImageSpec, record: Record, where: dict[str, Any]) -> Change:
    if spec.digest == record.spec_digest:
        return _make(name, "unchanged", "in_sync", image_id=record.image_id, **where)
    return _make(name, "drift", "catalog_changed",
                 "the catalog differs from what was sent; its policy is `drift: report`, so "
                 "apply leaves the image as it is (`drift: update` changes it in place)",
                 image_id=record.image_id, diff=diff_bodies(record.request, spec.body()),
                 **where)


def _update(change: Change, spec: ImageSpec, record: Record, cloud: Mapping[str, Any],
            profile: str) -> Change:
    """A drifted image under ``drift: update``: its PATCH back to the catalog, or blocked
    (``replace_required``) when the API cannot make a change in place (docs/architecture.md
    §5, §6.10)."""
    update = patch.compute(spec, record.request, record.response, cloud, profile=profile)
    fields = {"image_id": record.image_id, "file": spec.file, "line": spec.line,
              "spec": spec, "warnings": change.warnings, "remote": change.remote,
              "diff": update.diff}
    if update.blocked:
        return _make(change.name, "blocked", "replace_required",
                     patch.replace_required_detail(update), **fields)
    if not update.ops:
        detail = ("the cloud already holds the catalog's values; apply records them "
                  "(nothing is sent)")
    elif change.reason == "changed_remotely":
        detail = ("the image was changed outside reconcile; apply changes it back to the "
                  f"catalog with one PATCH {update.path(record.image_id)}")
    else:
        detail = f"apply changes the image in place with one PATCH {update.path(record.image_id)}"
    return _make(change.name, "update", change.reason, detail, patch=update.ops,
                 patch_api=update.api, **fields)


def _unrecorded(name: str, spec: ImageSpec, live: list[dict[str, Any]], nonce: str | None,
                where: dict[str, Any], reason: str, detail: str) -> Change:
    """A catalog image the state does not (or no longer) track: what does the cloud hold?"""
    if not live:
        if nonce is not None:
            return _make(name, "blocked", "pending_create", "an earlier create of this image "
                         "got no answer and may still land; it is not sent again until its "
                         "settle time has passed (apply --settle-time)", **where)
        return _make(name, "create", reason, detail, **where)
    if len(live) > 1:
        return _make(name, "blocked", "duplicates", _duplicates_detail(name, live), **where)
    image = live[0]
    marker = image.get(MARKER_PROPERTY)
    if marker and (nonce is None or marker == nonce):
        how = ("found the image an interrupted apply created" if nonce else
               "found an image reconcile created whose record was lost")
        return _make(name, "adopt", "adopted", f"{how} ({image['id']}, created "
                     f"{image.get('created_at')}); apply records it instead of creating another",
                     image_id=image["id"], remote=image, **where)
    return _make(name, "blocked", "name_taken",
                 f"an image named {name!r} that reconcile did not create exists "
                 f"({image['id']}, created {image.get('created_at')}); take it over with "
                 f"`reconcile state import {name} {image['id']}`, or rename the catalog entry",
                 image_id=image["id"], **where)


def _gone_detail(record: Record, cloud: _Cloud) -> str:
    how = cloud.gone.get(record.image_id, "not listed")
    what = {"404": "was deleted out of band", "deleted": "was deleted out of band",
            "pending_delete": "is being deleted", "killed": "was killed (upload failed)"}
    return (f"{record.image_id} (recorded {record.recorded_at}) "
            f"{what.get(how, 'is no longer in the cloud')}")


def _duplicates_detail(name: str, live: list[dict[str, Any]]) -> str:
    listed = ", ".join(f"{i['id']} (created {i.get('created_at')})"
                       for i in sorted(live, key=lambda i: (str(i.get("created_at")), i["id"])))
    return (f"{len(live)} live images are named {name!r}: {listed}. Delete all but one, then "
            f"`reconcile state import {name} ID` the one to keep")


def _make(name: str, action: str, reason: str, detail: str = "", **fields: Any) -> Change:
    values: dict[str, Any] = {"name": name, "action": action, "reason": reason,
                              "detail": detail, "diff": (), "warnings": (), "file": None,
                              "line": None, "image_id": None, "spec": None, "remote": None,
                              "patch": (), "patch_api": None, "target": None}
    values.update(fields)
    return build(Change, _CHANGE_FIELDS, values)


_CHANGE_FIELDS: set[str] = set(Change.model_fields)  # one set shared by every change


def _same(key: str, old: Any, new: Any) -> bool:
    if key == "tags" and isinstance(old, list) and isinstance(new, list):
        return set(old) == set(new)  # the server treats tags as a set
    return bool(old == new)


def diff_bodies(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[FieldDiff, ...]:
    """Field-level differences between two request bodies, in field order; tags as sets."""
    out = []
    for key in sorted((before.keys() | after.keys()) - {MARKER_PROPERTY}):
        old, new = before.get(key), after.get(key)
        if not _same(key, old, new):
            field = "os_version" if key == "__os_version" else key
            out.append(FieldDiff.model_construct(field=field, before=old, after=new))
    return tuple(out)


def diff_remote(record: Record, remote: Mapping[str, Any]) -> tuple[FieldDiff, ...]:
    """Fields that were sent and now differ in the cloud from what the cloud answered then.

    Compared with the recorded answer, not the request: the server may normalise a value at
    create (an unknown os_version becomes "Other Linux(64 bit)"), which is not drift.
    Fields the server adds on its own are ignored.
    """
    keys = record.request.keys() - {MARKER_PROPERTY}
    then = {k: record.response.get(k, record.request[k]) for k in keys}
    return diff_bodies(then, {k: remote.get(k) for k in keys})


def adoption_request(spec: ImageSpec, image: dict[str, Any]) -> dict[str, Any]:
    """What we would have sent to get ``image``: the catalog's fields, valued as in the cloud.

    Recording this (not the catalog's body) keeps the record honest: if the image differs
    from the catalog, the next plan shows it as drift.
    """
    request = {key: image.get(key) for key in spec.body()}
    if MARKER_PROPERTY in image:
        request[MARKER_PROPERTY] = image[MARKER_PROPERTY]
    return request


def select(result: Plan, patterns: Sequence[str], *, must_match: bool = True) -> Plan:
    """The plan limited to the names matching any of ``patterns`` (shell globs, as
    ``--only`` takes them); a pattern that matches no name is an error, never a silent no-op
    (``must_match=False``: the caller checks that over several targets' plans)."""
    if not patterns:
        return result
    unmatched = [p for p in patterns
                 if not any(fnmatch.fnmatchcase(c.name, p) for c in result.changes)]
    if unmatched and must_match:
        raise ConfigError(f"--only {unmatched[0]}: no image of the catalog or the state file "
                          "has a name it matches (a glob: * ? [...])")
    kept = tuple(c for c in result.changes
                 if any(fnmatch.fnmatchcase(c.name, p) for p in patterns))
    return result.model_copy(update={"changes": kept})


def select_targets(targets: Sequence[Target], patterns: Sequence[str]) -> tuple[Target, ...]:
    """The catalog's targets whose names match any of ``patterns`` (``--target``, shell
    globs; none: every target). A pattern that matches no target is an error, and so is
    ``--target`` for a catalog that declares none."""
    if not patterns:
        return tuple(targets)
    names = [t.name for t in targets]
    if not names:
        raise ConfigError(f"--target {patterns[0]}: the catalog declares no targets (add "
                          "`targets:` to a catalog file; without it the run's endpoint is "
                          "the one target)")
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(f"--target {pattern}: no target of the catalog has a name it "
                              f"matches (a glob: * ? [...]); the targets are "
                              f"{', '.join(names)}")
    return tuple(t for t in targets if any(fnmatch.fnmatchcase(t.name, p) for p in patterns))
