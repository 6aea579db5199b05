"""The update of one image as a JSON-patch document, from a three-way view (docs/architecture.md
§6.10): what the catalog wants, what reconcile last sent (and recorded), what the cloud shows.

Pure: no I/O. The rules (docs/api-contract.md §16):
- every field the catalog sets and the cloud lacks or holds otherwise is set with ``add`` (an
  upsert in Glance's v2.1 media type), tags with one ``replace /tags`` of the whole set;
- a property is removed only when reconcile set it (it is in the recorded request) and the
  catalog dropped it; properties others set are left alone, and base attributes (``min_ram``,
  ``protected``, ...) cannot be removed at all (Glance: 403), so dropping one from the catalog
  leaves the cloud's value;
- server-owned keys, ``os_glance*``, IMS-computed ``__*`` keys and the marker are never part of
  a patch (the catalog cannot hold them; a recorded request's marker is skipped);
- what the API cannot change in place blocks the image (``replace_required``) as a whole:
  nothing of it is sent, so a half-updated image never hides a change that was not made.

What the API can change, per profile and image status:

| profile | status            | API (PATCH)              | can change                          |
|---------|-------------------|--------------------------|-------------------------------------|
| glance  | queued, importing | /v2/images/{id}          | everything the catalog holds        |
| glance  | any other         | /v2/images/{id}          | all but disk_format, container_format|
| ims     | queued            | /v2/images/{id} (native) | name, properties                    |
| ims     | active            | /v2/cloudimages/{id}     | name, min_ram, properties           |
| ims     | any other         | none                     | nothing                             |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.models import MARKER_PROPERTY, FieldDiff, ImageSpec

#: The media type of every PATCH reconcile sends (docs/api-contract.md §16.1).
MEDIA_TYPE = "application/openstack-images-v2.1-json-patch"

#: Attributes of the image itself, not properties: never removed (Glance answers 403).
BASE_KEYS = frozenset({
    "name", "visibility", "protected", "container_format", "disk_format", "min_ram",
    "min_disk", "tags", "os_hidden", "owner",
})
#: Attributes an ``ims`` image holds as IMS's own, changed only as the IMS pages allow.
IMS_ATTRIBUTES = BASE_KEYS | {"__os_version"}
#: Glance: changeable only while the image has no data (glance/domain/__init__.py).
QUEUED_ONLY = frozenset({"disk_format", "container_format"})
_GLANCE_QUEUED = frozenset({"queued", "importing"})
#: IMS: what each PATCH page documents as changeable besides extension properties
#: (docs/api-contract.md §16.2).
_IMS_NATIVE = frozenset({"name"})
_IMS_CLOUDIMAGES = frozenset({"name", "min_ram"})


@dataclass(frozen=True)
class Blocked:
    """A change the API cannot make in place."""

    field: str
    why: str


@dataclass(frozen=True)
class Update:
    """One image's update: the document, the API it goes to, and what it cannot change.

    ``ops`` empty and ``blocked`` empty: the cloud already holds the catalog's values.
    """

    ops: tuple[dict[str, Any], ...]
    api: str  # "images" or "cloudimages"
    diff: tuple[FieldDiff, ...]
    blocked: tuple[Blocked, ...] = ()

    def path(self, image_id: str) -> str:
        return f"/v2/{self.api}/{image_id}"


def _field(key: str) -> str:
    return "os_version" if key == "__os_version" else key


def _pointer(key: str) -> str:
    """A JSON pointer of one segment (RFC 6901 escapes)."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def _tags(value: Any) -> list[str]:
    return [str(t) for t in value] if isinstance(value, list | tuple) else []


def _same(key: str, a: Any, b: Any) -> bool:
    return set(_tags(a)) == set(_tags(b)) if key == "tags" else bool(a == b)


def compute(spec: ImageSpec, sent: Mapping[str, Any], answered: Mapping[str, Any],
            cloud: Mapping[str, Any], *, profile: str) -> Update:
    """The update that makes ``cloud`` hold what ``spec`` says, given what was ``sent`` and
    what the server ``answered`` then (the record).

    ``cloud`` is the image as the cloud shows it now (offline: ``answered``). A field that
    neither the catalog (against ``sent``) nor the cloud (against ``answered``) changed is
    left alone, so a value the server normalised at create (an unknown os_version) is no
    change.
    """
    desired = spec.body()
    status = str(cloud.get("status") or "")
    api, changeable = _api(profile, status)
    ops: list[dict[str, Any]] = []
    diff: list[FieldDiff] = []
    blocked: list[Blocked] = []
    attributes = IMS_ATTRIBUTES if profile == "ims" else BASE_KEYS
    for key in sorted((desired.keys() | sent.keys()) - {MARKER_PROPERTY, "id"}):
        have = cloud.get(key)
        if key in desired and key in sent and _same(key, sent[key], desired[key]) and \
                _same(key, answered.get(key, sent[key]), have):
            continue  # neither side moved
        if key == "tags":
            want_tags = _tags(desired.get("tags"))
            if set(want_tags) == set(_tags(have)):
                continue
            op: dict[str, Any] = {"op": "replace", "path": "/tags", "value": want_tags}
            change = FieldDiff.model_construct(field="tags", before=_tags(have), after=want_tags)
        elif key in desired:
            if key in cloud and have == desired[key]:
                continue
            # cloudimages: replace what exists, add what does not (IMS's own provider does
            # so; IMG.0035 then falls back to add, docs/api-contract.md §16.2)
            verb = "replace" if api == "cloudimages" and key in cloud else "add"
            op = {"op": verb, "path": _pointer(key), "value": desired[key]}
            change = FieldDiff.model_construct(field=_field(key), before=have,
                                               after=desired[key])
        elif key in attributes or key not in cloud:
            continue  # a base attribute cannot be removed; a gone property needs nothing
        else:
            op = {"op": "remove", "path": _pointer(key)}
            change = FieldDiff.model_construct(field=_field(key), before=have, after=None)
        why = _cannot(key, profile, status, changeable, attributes)
        if why:
            blocked.append(Blocked(_field(key), why))
        ops.append(op)
        diff.append(change)
    if blocked:
        return Update((), api, tuple(diff), tuple(blocked))
    return Update(tuple(ops), api, tuple(diff))


def _api(profile: str, status: str) -> tuple[str, frozenset[str] | None]:
    """Which PATCH an image gets, and the attributes it may change (None: all)."""
    if profile != "ims":
        return "images", None
    if status == "active":
        return "cloudimages", _IMS_CLOUDIMAGES
    return "images", _IMS_NATIVE


def _cannot(key: str, profile: str, status: str, changeable: frozenset[str] | None,
            attributes: frozenset[str]) -> str:
    """Why ``key`` cannot change in place ("" if it can)."""
    if profile != "ims":
        if key in QUEUED_ONLY and status not in _GLANCE_QUEUED:
            return (f"Glance changes {key} only while an image is queued; this one is "
                    f"{status or 'of unknown status'}")
        return ""
    if status not in ("queued", "active"):
        return (f"IMS updates queued images (native API) and active images (PATCH "
                f"/v2/cloudimages) only; this one is {status or 'of unknown status'}")
    assert changeable is not None
    if key not in attributes or key in changeable:
        return ""
    page = ("the native OpenStack PATCH (queued images) changes only name and properties"
            if status == "queued" else
            "PATCH /v2/cloudimages (active images) changes only name, min_ram and properties")
    return f"IMS cannot change {_field(key)} in place: {page}"


def replace_required_detail(update: Update) -> str:
    """The plan's explanation for a blocked update: what cannot change and what to do."""
    fields = ", ".join(dict.fromkeys(b.field for b in update.blocked))
    reasons = "; ".join(dict.fromkeys(b.why for b in update.blocked))
    return (f"cannot change {fields} in place ({reasons}). Nothing is sent for this image. "
            "Restore the catalog's old value, or replace the image: create it under a new "
            "name (or delete it and `reconcile state forget` it), then apply")


def as_add(ops: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    """The same document with every ``replace`` of a single attribute turned into ``add``:
    IMS's answer IMG.0035 says a replaced attribute is missing (docs/api-contract.md §16.2)."""
    return tuple({**op, "op": "add"} if op["op"] == "replace" and op["path"] != "/tags" else op
                 for op in ops)


def expected(ops: tuple[dict[str, Any], ...], image: Mapping[str, Any]) -> bool:
    """Whether ``image`` shows every op of ``ops`` done (a PATCH is all or nothing): how an
    update whose answer was lost is told apart from one that never landed."""
    for op in ops:
        key = op["path"][1:].replace("~1", "/").replace("~0", "~")
        if op["op"] == "remove":
            if key in image:
                return False
        elif key == "tags":
            if set(_tags(image.get("tags"))) != set(_tags(op["value"])):
                return False
        elif image.get(key) != op["value"]:
            return False
    return True
