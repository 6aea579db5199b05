"""Server-side validation of a ``POST /v2/images`` body, in the order the real servers check.

Glance's pipeline (docs/api-contract.md §3) runs first for both profiles, so a request with several
faults gets the error a real Glance would give first. The ``ims`` profile then applies the
Huawei rules of §4, each answered with an ``IMG.xxxx`` body. The JSON-schema step is a small
hand-written subset of jsonschema (type, enum, maxLength, pattern, items) that reproduces
its messages for Glance's image schema, so the sandbox needs no third-party package.

Order of the ``ims`` rules (undocumented, chosen here): name length (IMG.0002), name format
(IMG.0003), disk format (IMG.0072), min_disk then min_ram range (IMG.0055), tag count
(IMG.0116), empty tag (IMG.0115), ``__os_version`` (IMG.0056). The duplicate-``id`` check
(409) is done by the store, atomically with the insert.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from reconciler.osversions import DEFAULT_OS_VERSION, KNOWN_OS_VERSIONS
from reconciler.sandbox.replies import SERVER_ERROR_EXPLANATION, GlanceError, ImsError

Profile = Literal["ims", "glance"]
OsVersionPolicy = Literal["reject", "fallback"]

GLANCE_DISK_FORMATS = (
    "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop",
)  # fmt: skip
GLANCE_CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
# Huawei's Glance must accept its own formats, so its schema enum is upstream + zvhd/zvhd2;
# the IMS rule then narrows it to what the create API documents.
IMS_SCHEMA_DISK_FORMATS = (*GLANCE_DISK_FORMATS, "zvhd", "zvhd2")
IMS_DISK_FORMATS = ("vhd", "zvhd", "zvhd2", "raw", "qcow2", "iso")

TAG_QUOTA = 128
PROPERTY_QUOTA = 128
DB_INT_MAX = 2147483647
IMS_NAME_MAX = 128
IMS_TAG_MAX = 20
IMS_MIN_DISK = (1, 1024)
IMS_MIN_RAM = (0, 1024 * 1024)  # MB; the documented "depends on flavor" needs some bound

_UUID_PATTERN = (
    "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
)
_IMS_NAME = re.compile(r"(?! )[A-Za-z0-9._ -]+(?<! )")
_FOUR_BYTE = re.compile("[\U00010000-\U0010ffff]")

# Deserializer steps (glance/api/v2/images.py RequestDeserializer), in check order.
_DISALLOWED = ("direct_url", "self", "file", "schema", "stores")
BASE_KEYS = (
    "checksum", "created_at", "container_format", "disk_format", "id", "min_disk", "min_ram",
    "name", "size", "virtual_size", "status", "tags", "updated_at", "visibility", "protected",
    "os_hidden", "owner",
)  # fmt: skip
_RESERVED_EXTRAS = ("location", "deleted", "deleted_at")
_RESERVED_NAMESPACE = "os_glance"
# Domain ImageFactory checks. Of its reserved extras only ``locations`` is still possible
# here: the others were rejected by the deserializer or are base keys.
_READONLY_BASE = ("created_at", "updated_at", "status", "checksum", "size", "virtual_size")

_STATUSES = (
    "queued", "saving", "active", "killed", "deleted", "uploading", "importing",
    "pending_delete", "deactivated",
)  # fmt: skip

_Schema = Mapping[str, Any]


def _image_schema(disk_formats: tuple[str, ...]) -> dict[str, _Schema]:
    """Glance HEAD ``get_base_properties()`` minus the keys rejected before validation."""
    nullable = ["null", "string"]
    return {
        "id": {"type": "string", "pattern": _UUID_PATTERN},
        "name": {"type": nullable, "maxLength": 255},
        "status": {"type": "string", "enum": list(_STATUSES)},
        "visibility": {"type": "string", "enum": ["community", "public", "private", "shared"]},
        "protected": {"type": "boolean"},
        "os_hidden": {"type": "boolean"},
        "checksum": {"type": nullable, "maxLength": 32},
        "os_hash_algo": {"type": nullable, "maxLength": 64},
        "os_hash_value": {"type": nullable, "maxLength": 128},
        "owner": {"type": nullable, "maxLength": 255},
        "size": {"type": ["null", "integer"]},
        "virtual_size": {"type": ["null", "integer"]},
        "container_format": {"type": nullable, "enum": [None, *GLANCE_CONTAINER_FORMATS]},
        "disk_format": {"type": nullable, "enum": [None, *disk_formats]},
        "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}},
        "min_ram": {"type": "integer"},
        "min_disk": {"type": "integer"},
        "locations": {"type": "array", "items": {"type": "object"}},
    }


_SCHEMAS: dict[Profile, dict[str, _Schema]] = {
    "glance": _image_schema(GLANCE_DISK_FORMATS),
    "ims": _image_schema(IMS_SCHEMA_DISK_FORMATS),
}


def image_schema(profile: Profile) -> dict[str, Any]:
    """The body of ``GET /v2/schemas/image``: the schema this profile validates with."""
    return {
        "name": "image",
        "properties": {
            **_SCHEMAS[profile],
            **{key: {"type": "string", "readOnly": True} for key in _DISALLOWED},
        },
        "additionalProperties": {"type": "string"},
        "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
                  {"rel": "describedby", "href": "{schema}"}],
    }


@dataclass(frozen=True)
class CreateRequest:
    """A validated create: what the store needs to build the image."""

    base: dict[str, Any]
    image_id: str | None
    tags: list[str]
    extras: dict[str, str]


def _is_type(value: object, name: str) -> bool:
    """jsonschema's type check (draft 4+: ``1.0`` is an integer, ``True`` is not)."""
    if name == "integer":
        if isinstance(value, float):
            return value.is_integer()
        return isinstance(value, int) and not isinstance(value, bool)
    kinds: dict[str, type | tuple[type, ...]] = {
        "string": str,
        "boolean": bool,
        "array": list,
        "object": dict,
        "null": type(None),
    }
    return isinstance(value, kinds[name])


def _schema_errors(value: object, schema: _Schema, depth: int) -> Iterator[tuple[int, str]]:
    """Yield ``(depth, message)`` with jsonschema's wording, keywords in schema order."""
    for keyword, rule in schema.items():
        if keyword == "type":
            names = [rule] if isinstance(rule, str) else list(rule)
            if not any(_is_type(value, n) for n in names):
                yield depth, f"{value!r} is not of type {', '.join(repr(n) for n in names)}"
        elif keyword == "enum" and value not in rule:
            yield depth, f"{value!r} is not one of {rule!r}"
        elif keyword == "maxLength" and isinstance(value, str) and len(value) > rule:
            yield depth, f"{value!r} is too long"
        elif keyword == "pattern" and isinstance(value, str) and not re.search(rule, value):
            yield depth, f"{value!r} does not match {rule!r}"
        elif keyword == "items" and isinstance(value, list):
            for item in value:
                yield from _schema_errors(item, rule, depth + 1)


def _validate_schema(body: dict[str, Any], profile: Profile) -> None:
    """Glance ``Schema.validate`` with jsonschema's ``best_match`` (shallowest error first)."""
    properties = _SCHEMAS[profile]
    errors: list[tuple[int, str]] = []
    for key, schema in properties.items():
        if key in body:
            errors.extend(_schema_errors(body[key], schema, 1))
    for key, value in body.items():
        if key not in properties and not isinstance(value, str):
            errors.append((1, f"{value!r} is not of type 'string'"))
    if errors:
        depth = min(d for d, _ in errors)
        message = next(m for d, m in errors if d == depth)
        raise GlanceError(400, f"Provided object does not match schema 'image': {message}")


def _parse_body(raw: bytes | None) -> Any:
    """Glance ``JSONRequestDeserializer``: presence, JSON syntax, list/dict."""
    if not raw:
        raise GlanceError(400, "Body expected in request.")
    try:
        body = json.loads(raw)
    except ValueError:
        raise GlanceError(400, "Malformed JSON in request body.") from None
    if not isinstance(body, dict | list):
        raise GlanceError(400, "Unexpected body type. Expected list/dict.")
    return body


def _as_int(value: object) -> int:
    """Schema-valid integers may arrive as ``1.0``; the DB stores them as ``1``."""
    assert isinstance(value, int | float)
    return int(value)


def _check_glance_domain(req: CreateRequest, project_id: str, profile: Profile) -> None:
    """Steps 7-13 of docs/api-contract.md §3: policy, quotas, domain and DB rules."""
    for key in req.extras:
        if len(key) > 255:
            raise GlanceError(400, "Custom property should not be greater than 255 characters.")
        if key in _RESERVED_EXTRAS or key.startswith(_RESERVED_NAMESPACE):
            raise GlanceError(403, f"Attribute '{key}' is reserved.", positional=True)
    if "owner" in req.base and req.base["owner"] != project_id:
        message = f"You are not permitted to create images owned by '{req.base['owner']}'."
        raise GlanceError(403, message, positional=True)
    visibility = req.base.get("visibility")
    if visibility == "public":
        raise GlanceError(403, "You are not authorized to complete publicize_image action.")
    if profile == "ims" and visibility not in (None, "private"):
        message = (
            f"You are not authorized to create an image with visibility '{visibility}': "
            "only 'private' is allowed."
        )
        raise GlanceError(403, message)
    if len(req.tags) > TAG_QUOTA:
        raise GlanceError(
            413,
            "The limit has been exceeded on the number of allowed image tags. "
            f"Attempted: {len(req.tags)}, Maximum: {TAG_QUOTA}",
        )
    for key in _READONLY_BASE:
        if key in req.base:
            raise GlanceError(403, f"Attribute '{key}' is read-only.")
    if "locations" in req.extras:
        raise GlanceError(403, "Attribute 'locations' is reserved.")
    for key in ("min_disk", "min_ram"):
        if key in req.base and req.base[key] < 0:
            raise GlanceError(
                400,
                f"Invalid value '{req.base[key]}' for parameter '{key}': "
                "Cannot be a negative value",
            )
    counted = [k for k in req.extras if not k.startswith(_RESERVED_NAMESPACE)]
    if len(counted) > PROPERTY_QUOTA:
        raise GlanceError(
            413,
            "The limit has been exceeded on the number of allowed image properties. "
            f"Attempted: {len(counted)}, Maximum: {PROPERTY_QUOTA}",
        )
    _check_four_byte(req)
    for key in ("min_disk", "min_ram"):
        if req.base.get(key, 0) > DB_INT_MAX:
            raise GlanceError(400, f"'{key}' value out of range, must not exceed {DB_INT_MAX}.")


def _check_four_byte(req: CreateRequest) -> None:
    """Glance ``no_4byte_params``: MySQL's utf8 cannot store 4-byte characters."""
    name = req.base.get("name")
    if isinstance(name, str) and _FOUR_BYTE.search(name):
        raise GlanceError(400, "Name can't contain 4 byte unicode characters.")
    for key, value in req.extras.items():
        if _FOUR_BYTE.search(key):
            raise GlanceError(400, "Property names can't contain 4 byte unicode.")
        if _FOUR_BYTE.search(value):
            raise GlanceError(400, f"{key.title()} can't contain 4 byte unicode characters.")
    if any(_FOUR_BYTE.search(tag) for tag in req.tags):
        raise GlanceError(400, "Tags can't contain 4 byte unicode characters.")


def _check_ims(req: CreateRequest, os_version_policy: OsVersionPolicy,
               known: frozenset[str]) -> None:
    """Huawei's documented create rules (docs/api-contract.md §4), after Glance's own."""
    name = req.base.get("name")
    if isinstance(name, str):
        if len(name) > IMS_NAME_MAX:
            raise ImsError("IMG.0002", "The image name contains more than 128 characters.")
        if not _IMS_NAME.fullmatch(name):
            raise ImsError("IMG.0003", "The image name format is invalid.")
    disk_format = req.base.get("disk_format")
    if disk_format is not None and disk_format not in IMS_DISK_FORMATS:
        raise ImsError("IMG.0072", "The specified image format is not supported.")
    for key, (low, high) in (("min_disk", IMS_MIN_DISK), ("min_ram", IMS_MIN_RAM)):
        if key in req.base and not low <= req.base[key] <= high:
            raise ImsError("IMG.0055", "The memory or disk size is invalid.")
    if len(set(req.tags)) > IMS_TAG_MAX:
        raise ImsError("IMG.0116", "The number of image tags exceeds the quota.")
    if any(not tag for tag in req.tags):
        raise ImsError("IMG.0115", "The image tag is invalid.")
    os_version = req.extras.get("__os_version", DEFAULT_OS_VERSION)
    if os_version not in known and os_version_policy == "reject":
        raise ImsError("IMG.0056", "Invalid OS version.")


def validate_create(
    raw: bytes | None,
    *,
    profile: Profile,
    project_id: str,
    os_version_policy: OsVersionPolicy = "reject",
    os_versions: frozenset[str] = KNOWN_OS_VERSIONS,
) -> CreateRequest:
    """Validate a create body; raise ``GlanceError``/``ImsError`` for the first failed rule."""
    body = _parse_body(raw)
    for key in _DISALLOWED:
        if key in body:
            raise GlanceError(403, f"Attribute '{key}' is read-only.")
    if isinstance(body, list):
        # The schema has no top-level type, so a list gets this far; Glance then fails
        # splitting it and its WSGI layer answers a bare 500.
        raise GlanceError(500, SERVER_ERROR_EXPLANATION)
    _validate_schema(body, profile)
    extras = dict(body)
    tags: list[str] = extras.pop("tags", [])
    base = {key: extras.pop(key) for key in BASE_KEYS if key in extras}
    for key in ("min_disk", "min_ram"):
        if key in base:
            base[key] = _as_int(base[key])
    image_id = base.pop("id", None)
    # In the schema but not base kwargs: Glance stores them as extras that the real (null)
    # attributes then shadow in every response, so they are as good as ignored.
    for key in ("os_hash_algo", "os_hash_value"):
        extras.pop(key, None)
    req = CreateRequest(base=base, image_id=image_id, tags=tags, extras=extras)
    _check_glance_domain(req, project_id, profile)
    if profile == "ims":
        _check_ims(req, os_version_policy, os_versions)
        if extras.get("__os_version", DEFAULT_OS_VERSION) not in os_versions:
            extras["__os_version"] = DEFAULT_OS_VERSION  # the "fallback" policy
    unique_tags = list(dict.fromkeys(tags))
    return CreateRequest(base=base, image_id=image_id, tags=unique_tags, extras=extras)
