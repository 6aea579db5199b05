"""The image documents the sandbox stores and returns, per profile (docs/api-contract.md §5).

``ims`` reproduces Huawei's documented create response: server-computed ``__*`` fields,
``virtual_env_type``, and no null ``checksum``/``size``/``virtual_size``. ``glance`` follows
upstream ``ResponseSerializer._format_image``: every base field present, unset ones null.
Extra properties are top-level string fields; server fields win over a client's extras.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from reconciler.osversions import DEFAULT_OS_VERSION, derive_os_fields
from reconciler.sandbox.validation import BASE_KEYS, CreateRequest, Profile

_IMS_CONSTANTS = {
    "__imagetype": "private",
    "__isregistered": "true",
    "__image_source_type": "uds",
    "__image_size": "0",
}


def isotime(moment: datetime) -> str:
    """Glance's ``isotime``: UTC, seconds, ``Z`` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_image(
    req: CreateRequest, *, profile: Profile, image_id: str, owner: str, now: str
) -> dict[str, Any]:
    """The stored (and returned) document for a validated create."""
    base = req.base
    common: dict[str, Any] = {
        "id": image_id,
        "name": base.get("name"),
        "status": "queued",
        "protected": base.get("protected", False),
        "min_ram": base.get("min_ram", 0),
        "min_disk": base.get("min_disk", 0),
        "tags": list(req.tags),
        "owner": owner,
        "created_at": now,
        "updated_at": now,
        "self": f"/v2/images/{image_id}",
        "file": f"/v2/images/{image_id}/file",
        "schema": "/v2/schemas/image",
    }
    if profile == "glance":
        server: dict[str, Any] = {
            **common,
            "visibility": base.get("visibility", "shared"),
            "container_format": base.get("container_format"),
            "disk_format": base.get("disk_format"),
            "size": None,
            "virtual_size": None,
            "checksum": None,
            "os_hidden": base.get("os_hidden", False),
            "os_hash_algo": None,
            "os_hash_value": None,
        }
    else:
        os_version = req.extras.get("__os_version", DEFAULT_OS_VERSION)
        disk_format = base.get("disk_format") or "zvhd2"
        server = {
            **common,
            "visibility": base.get("visibility", "private"),
            "container_format": base.get("container_format") or "bare",
            "disk_format": disk_format,
            "__os_version": os_version,
            **derive_os_fields(os_version),
            **_IMS_CONSTANTS,
            "virtual_env_type": "IsoImage" if disk_format == "iso" else "FusionCompute",
        }
    return {**{k: v for k, v in req.extras.items() if k not in server}, **server}


def build_foreign_image(
    body: dict[str, Any], *, profile: Profile, owner: str, image_id: str, now: str
) -> dict[str, Any]:
    """An image as another tool might have left it: defaults filled in, *body* wins.

    Nothing is validated, so tests can plant public "gold" images, other owners, ``active``
    statuses or odd timestamps.
    """
    base = {k: v for k, v in body.items() if k in BASE_KEYS}
    extras = {k: v for k, v in body.items() if k not in BASE_KEYS}
    tags = list(dict.fromkeys(body.get("tags", [])))
    req = CreateRequest(base=base, image_id=image_id, tags=tags, extras=extras)
    image = build_image(req, profile=profile, image_id=image_id, owner=owner, now=now)
    image.update(body)
    image["tags"] = tags
    if profile == "ims" and image.get("visibility") == "public" and "__imagetype" not in body:
        image["__imagetype"] = "gold"  # Huawei's public images (docs/api-contract.md §10.1)
    return image
