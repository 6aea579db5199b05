"""Read what the cloud holds, for ``plan --refresh`` and ``apply``.

Lists the target project's images (every page) and confirms, one by one, each recorded image
the listing did not show, so a listing filter can never make a live image look deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from reconciler.models import GONE_STATUSES, MARKER_PROPERTY, Observed, Record


class ListingApi(Protocol):
    def list_images(self, filters: Mapping[str, str] | None = None, *,
                    page_size: int = 1000) -> Iterator[dict[str, Any]]: ...

    def get_image(self, image_id: str) -> dict[str, Any] | None: ...


# Huawei lists public ("gold") images too unless asked for private ones
# (docs/api-contract.md §10.1).
_FILTERS = {"ims": {"__imagetype": "private"}, "glance": {}}


def observe(api: ListingApi, profile: str, records: Iterable[Record],
            project_id: str | None = None) -> Observed:
    """``project_id``, when the credentials tell it, identifies our images for sure."""
    records = list(records)
    owners = ({r.response.get("owner") for r in records} | {project_id}) - {None}
    shared: dict[str, str] = {}
    images = [_compact(i, shared) for i in api.list_images(_FILTERS.get(profile, {}))
              if i.get("status") not in GONE_STATUSES and _ours(i, owners)]
    seen = {i["id"] for i in images}
    gone: dict[str, str] = {}
    for record in records:
        if record.image_id in seen:
            continue
        image = api.get_image(record.image_id)
        if image is None:
            gone[record.image_id] = "404"
        elif image.get("status") in GONE_STATUSES:
            gone[record.image_id] = str(image["status"])
        else:
            images.append(image)
            seen.add(image["id"])
    return Observed.model_construct(images=tuple(images), gone=gone)


#: Values unique to each image: sharing them saves nothing.
_UNIQUE = frozenset({"id", "name", "self", "file", "checksum", "os_hash_value", "location",
                     MARKER_PROPERTY})


def _compact(image: dict[str, Any], shared: dict[str, str]) -> dict[str, Any]:
    """One string object for each value that repeats across images (status, formats, owner,
    the OS fields, timestamps of a bulk import): a listing of 100,000 images holds them
    once, not 100,000 times. The image is the same dict, equal in every value."""
    for key, value in image.items():
        if type(value) is str and key not in _UNIQUE:
            image[key] = shared.setdefault(value, value)
    return image


def _ours(image: Mapping[str, Any], owners: set[Any]) -> bool:
    """Public and community images of other projects are not ours to compare with.

    The project is known from the records' owners; with no records (a lost state file) an
    image carrying our marker counts as ours, since it may be the only trace left.
    """
    if image.get("visibility") not in ("public", "community"):
        return True
    if owners:
        return image.get("owner") in owners
    return MARKER_PROPERTY in image
