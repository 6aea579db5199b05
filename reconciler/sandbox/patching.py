"""Server-side handling of image PATCH requests, in the order the real servers check
(docs/api-contract.md §16).

``glance_patch`` is Glance's ``PATCH /v2/images/{id}``: ``RequestDeserializer.update`` (media
type 415, body 400, op/path/value 400, read-only and reserved 403, schema 400), then
``ImagesController.update`` (404, owner 403, replace/add/remove 409/403, the domain's
queued-only formats 403, quotas 413), all or nothing. Under the ``ims`` profile the
deprecated native API then allows only name and custom properties.

``cloudimages_patch`` is IMS's ``PATCH /v2/cloudimages/{id}``: active images only, the
documented attribute list, IMG.0035 for a replace or remove of a missing attribute. Where
Huawei documents no error code, the code here is the sandbox's own (``IMG.90xx``), said so in
docs/api-contract.md §16.2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.sandbox.replies import GlanceError, ImsError
from reconciler.sandbox.validation import (
    _FOUR_BYTE,
    BASE_KEYS,
    DB_INT_MAX,
    IMS_MIN_RAM,
    PROPERTY_QUOTA,
    TAG_QUOTA,
    Profile,
    _validate_schema,
)

V20 = "application/openstack-images-v2.0-json-patch"
V21 = "application/openstack-images-v2.1-json-patch"
MEDIA_TYPES = {V20: 4, V21: 10}
ACCEPT_PATCH = ", ".join(sorted(MEDIA_TYPES))
_OPS = ("add", "remove", "replace")
# glance/api/v2/images.py RequestDeserializer
_READONLY = ("created_at", "updated_at", "status", "checksum", "size", "virtual_size",
             "direct_url", "self", "file", "schema", "id", "os_hash_algo", "os_hash_value")
_RESERVED = ("location", "deleted", "deleted_at")
_RESERVED_NS = "os_glance"
_QUEUED_ONLY = ("container_format", "disk_format")
_IMS_NATIVE = frozenset({"name"})  # "customized attributes, image name, and image description"

#: IMS PATCH /v2/cloudimages/{id}: the documented updatable attributes (ims_03_0604).
CLOUDIMAGES_PATHS = frozenset({
    "name", "__description", "__support_kvm", "__support_xen", "__support_largememory",
    "__support_diskintensive", "__support_highperformance", "__support_xen_gpu_type",
    "__support_kvm_gpu_type", "__support_xen_hana", "__is_config_init",
    "enterprise_project_id", "min_ram", "hw_vif_multiqueue_enabled", "hw_firmware_type",
})
CLOUDIMAGES_TYPES = (V21, V20, "application/json")


@dataclass(frozen=True)
class Change:
    op: str
    key: str
    value: Any = None


def media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _body(raw: bytes | None) -> Any:
    if not raw:
        raise GlanceError(400, "Body expected in request.")
    try:
        return json.loads(raw)
    except ValueError:
        raise GlanceError(400, "Malformed JSON in request body.") from None


def _decode_pointer(pointer: object) -> list[str]:
    """``_validate_json_pointer`` and ``_decode_json_pointer``."""
    if not isinstance(pointer, str):
        raise GlanceError(400, f"Pointer `{pointer}` does not start with \"/\".")
    if not pointer.startswith("/"):
        raise GlanceError(400, f"Pointer `{pointer}` does not start with \"/\".")
    if re.search(r"/\s*?/", pointer[1:]):
        raise GlanceError(400, f"Pointer `{pointer}` contains adjacent \"/\".")
    if len(pointer) > 1 and pointer.endswith("/"):
        raise GlanceError(400, f"Pointer `{pointer}` end with \"/\".")
    if pointer[1:].strip() == "/":
        raise GlanceError(400, f"Pointer `{pointer}` does not contains valid token.")
    if re.search("~[^01]", pointer) or pointer.endswith("~"):
        raise GlanceError(400, f"Pointer `{pointer}` contains \"~\" not part of a recognized "
                               "escape sequence.")
    return [part.replace("~1", "/").replace("~0", "~").strip()
            for part in pointer.lstrip("/").split("/")]


def _parse_change(raw: object, draft: int) -> Change:
    if not isinstance(raw, dict):
        raise GlanceError(400, "Operations must be JSON objects.")
    if draft == 10:
        op = raw.get("op")
        if op is None:
            raise GlanceError(400, "Unable to find `op` in JSON Schema change. It must be one "
                                   "of the following: add, remove, replace.")
        if op not in _OPS:
            raise GlanceError(400, f"Invalid operation: `{op}`. It must be one of the "
                                   "following: add, remove, replace.")
        if "path" not in raw:
            raise GlanceError(400, "Unable to find 'path' in JSON Schema change")
        pointer = raw["path"]
    else:
        present = [o for o in _OPS if o in raw]
        if len(present) > 1:
            raise GlanceError(400, 'Operation objects must contain only one member named '
                                   '"add", "remove", or "replace".')
        if not present:
            raise GlanceError(400, 'Operation objects must contain exactly one member named '
                                   '"add", "remove", or "replace".')
        op = present[0]
        pointer = raw[op]
    path = _decode_pointer(pointer)
    if len(path) != 1:  # only locations allow /locations/N, and the sandbox has none
        raise GlanceError(400, f"Invalid JSON pointer for this resource: '/{'/'.join(path)}'")
    key = path[0]
    if op != "remove" and "value" not in raw:
        raise GlanceError(400, f'Operation "{op}" requires a member named "value".')
    return Change(op, key, raw.get("value"))


def _validate_change(change: Change, profile: Profile) -> None:
    key = change.key
    if key in _READONLY:
        raise GlanceError(403, f"Attribute '{key}' is read-only.")
    if key in _RESERVED or key.startswith(_RESERVED_NS):
        raise GlanceError(403, f"Attribute '{key}' is reserved.", positional=True)
    if key in ("locations", "stores"):
        raise GlanceError(400, f"The sandbox does not support changing '{key}'.")
    if change.op != "remove":
        _validate_schema({key: change.value}, profile)


def parse_glance(raw: bytes | None, content_type: str, profile: Profile) -> list[Change]:
    """``RequestDeserializer.update``: the changes, or the error Glance answers first."""
    if content_type not in MEDIA_TYPES:
        raise GlanceError(415, "Image PATCH expects Content-Type one of: " + ACCEPT_PATCH,
                          positional=True)
    body = _body(raw)
    if not isinstance(body, list):
        raise GlanceError(400, "Request body must be a JSON array of operation objects.")
    changes = [_parse_change(item, MEDIA_TYPES[content_type]) for item in body]
    for change in changes:
        _validate_change(change, profile)
    return changes


def glance_patch(image: dict[str, Any], changes: list[Change], *, draft: int,
                 project_id: str, profile: Profile, now: str) -> dict[str, Any]:
    """``ImagesController.update`` on a copy of ``image``: the image as saved, or the error
    of the first change that fails (then nothing is saved)."""
    if image.get("owner") != project_id:
        raise GlanceError(403, "You are not authorized to complete modify_image action.")
    new = dict(image)
    new["tags"] = list(image.get("tags") or [])
    for change in changes:
        key, value = change.key, change.value
        base = key in BASE_KEYS
        if profile == "ims" and (key not in _IMS_NATIVE and (base or key == "__os_version")):
            # Huawei's native PATCH: "Only customized attributes, image name, and image
            # description can be modified" (code: the sandbox's own, docs/api-contract.md §16.2)
            raise ImsError("IMG.9001", f"Attribute {key} cannot be modified with this API; "
                                       "use PATCH /v2/cloudimages/{image_id}.")
        if change.op == "remove":
            if base:
                raise GlanceError(403, f"Property {key} may not be removed.", positional=True)
            if key not in new:
                raise GlanceError(409, f"Property {key} does not exist.", positional=True)
            del new[key]
            continue
        if key == "owner":
            raise GlanceError(403, "Owner can't be updated by non admin.", positional=True)
        if change.op == "replace" and not base and key not in new:
            raise GlanceError(409, f"Property {key} does not exist.", positional=True)
        if change.op == "add" and draft == 4 and (base or key in new):
            raise GlanceError(409, f"Property {key} already present.", positional=True)
        _set(new, key, value, image)
    _check_saved(new, image)
    new["updated_at"] = now
    return new


def _set(new: dict[str, Any], key: str, value: Any, image: Mapping[str, Any]) -> None:
    """The domain's setters (glance/domain/__init__.py) and the policy on visibility."""
    if key in _QUEUED_ONLY and image.get("status") not in ("queued", "importing"):
        raise GlanceError(403, f"Attribute {key} can be only replaced for a queued image.")
    if key == "visibility" and value == "public":
        raise GlanceError(403, "You are not authorized to complete publicize_image action.")
    if key == "tags":
        value = list(dict.fromkeys(value))
    if key in ("min_ram", "min_disk"):
        value = int(value)
        if value < 0:
            raise GlanceError(400, f"Invalid value '{value}' for parameter '{key}': Cannot "
                                   "be a negative value")
        if value > DB_INT_MAX:
            raise GlanceError(400, f"'{key}' value out of range, must not exceed "
                                   f"{DB_INT_MAX}.")
    if key == "name" and isinstance(value, str) and _FOUR_BYTE.search(value):
        raise GlanceError(400, "Name can't contain 4 byte unicode characters.")
    if key not in BASE_KEYS:
        if len(key) > 255:
            raise GlanceError(400, "Custom property should not be greater than 255 "
                                   "characters.")
        if _FOUR_BYTE.search(key) or _FOUR_BYTE.search(str(value)):
            raise GlanceError(400, "Property names can't contain 4 byte unicode.")
    new[key] = value


def _extras(image: Mapping[str, Any]) -> list[str]:
    return [k for k in image if k not in BASE_KEYS and k not in _READONLY
            and not k.startswith(("__", _RESERVED_NS)) and k not in ("virtual_env_type",)]


def _check_saved(new: Mapping[str, Any], old: Mapping[str, Any]) -> None:
    """The quota proxies: 413 past ``image_tag_quota`` or ``image_property_quota`` (128)."""
    tags = new.get("tags") or []
    if len(tags) > TAG_QUOTA:
        raise GlanceError(413, "The limit has been exceeded on the number of allowed image "
                               f"tags. Attempted: {len(tags)}, Maximum: {TAG_QUOTA}")
    count = len(_extras(new))
    if count > PROPERTY_QUOTA and count > len(_extras(old)):
        raise GlanceError(413, "The limit has been exceeded on the number of allowed image "
                               f"properties. Attempted: {count}, Maximum: {PROPERTY_QUOTA}")


# --- IMS PATCH /v2/cloudimages/{id} -----------------------------------------------------------

def cloudimages_patch(image: dict[str, Any], raw: bytes | None, content_type: str, *,
                      project_id: str, now: str) -> dict[str, Any]:
    """IMS's "Updating an Image" (ims_03_0604) on a copy of ``image``."""
    if content_type not in CLOUDIMAGES_TYPES:
        raise ImsError("IMG.9002", f"Unsupported Content-Type {content_type or '(none)'}; "
                                   "use application/openstack-images-v2.1-json-patch.", 415)
    try:
        body = json.loads(raw or b"")
    except ValueError:
        raise ImsError("IMG.9003", "The request body is not valid JSON.") from None
    if not isinstance(body, list) or not body:
        raise ImsError("IMG.9003", "The request body must be a non-empty JSON array.")
    if image.get("owner") != project_id:
        raise ImsError("IMG.9004", "You are not allowed to update this image.", 403)
    if image.get("status") != "active":
        raise ImsError("IMG.9005", f"Only active images can be updated; this image is "
                                   f"{image.get('status')}.")
    new = dict(image)
    for item in body:
        op = item.get("op") if isinstance(item, dict) else None
        path = item.get("path") if isinstance(item, dict) else None
        if op not in _OPS or not isinstance(path, str) or not path.startswith("/") or \
                "/" in path[1:] or len(path) < 2:
            raise ImsError("IMG.9003", f"Invalid operation {item!r}: op must be add, replace "
                                       "or remove and path one attribute with a leading /.")
        key = path[1:].replace("~1", "/").replace("~0", "~")
        assert isinstance(item, dict)
        if key not in CLOUDIMAGES_PATHS and (key in BASE_KEYS or key.startswith("__")
                                             or key in _READONLY):
            raise ImsError("IMG.9006", f"The attribute {key} cannot be updated.")
        if op in ("replace", "remove") and key not in new:
            # Huawei's provider retries such a replace as add (docs/api-contract.md §16.2)
            raise ImsError("IMG.0035", f"The image attribute {key} does not exist.")
        if op == "remove":
            if key in ("name", "min_ram"):
                raise ImsError("IMG.9006", f"The attribute {key} cannot be removed.")
            del new[key]
            continue
        if "value" not in item:
            raise ImsError("IMG.9003", f"Operation {op} on {key} needs a value.")
        new[key] = _cloudimages_value(key, item["value"])
    count = len(_extras(new))
    if count > PROPERTY_QUOTA and count > len(_extras(image)):
        raise ImsError("IMG.9007", "The number of image properties exceeds the quota "
                                   f"({PROPERTY_QUOTA}).")
    new["updated_at"] = now
    return new


def _cloudimages_value(key: str, value: Any) -> Any:
    if key == "min_ram":
        if isinstance(value, bool) or not isinstance(value, int) or \
                not IMS_MIN_RAM[0] <= value <= IMS_MIN_RAM[1]:
            raise ImsError("IMG.0055", "The memory or disk size is invalid.")
        return value
    if not isinstance(value, str):
        raise ImsError("IMG.9003", f"The value of {key} must be a string.")
    if key == "hw_firmware_type" and value not in ("bios", "uefi"):
        raise ImsError("IMG.9003", "hw_firmware_type must be bios or uefi.")
    if key == "name" and (not value or len(value) > 128):
        raise ImsError("IMG.0002", "The image name contains more than 128 characters.")
    return value
