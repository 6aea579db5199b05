"""What the Image API and Keystone promise to answer, as pydantic models checked at the edge.

The client validates every success body against these models before anything else reads it,
so a listed image without an ``id``, a ``status`` that is a list or an ``id`` of 10 MB is one
``MalformedResponse`` naming the fields, never a ``KeyError`` three layers down or a wedged
state file. The models describe only the fields reconcile reads (everything else an image
carries, custom properties included, passes through unchecked), and the callers keep working
with the answer's own JSON object once it has passed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic import ValidationError as ValidationError

from reconciler.models import parse_iso

#: Glance's image ids are UUIDs and its column is 36 wide; 255 is every other string column's
#: width. Anything longer is not an id, and would end up in the state file and every report.
MAX_ID_LENGTH = 255


def _iso_time(value: str) -> str:
    try:
        parse_iso(value)
    except ValueError:
        raise ValueError("not an ISO 8601 time") from None
    return value


ImageId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]
Timestamp = Annotated[str, AfterValidator(_iso_time)]


class _Answer(BaseModel):
    # strict: an integer is not a string, a dict is not an id. Extra fields are the API's
    # business (image properties) and are neither checked nor copied.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True,
                              populate_by_name=True)


class ImageAnswer(_Answer):
    """One image (``GET /v2/images/{id}``, a ``POST`` answer, or an entry of a listing)."""

    id: ImageId
    name: str | None = None
    status: str | None = None
    visibility: str | None = None
    owner: str | None = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    tags: list[str] | None = None
    marker: str | None = Field(default=None, alias="reconcile_marker")  # MARKER_PROPERTY


class ImagePage(_Answer):
    """One page of ``GET /v2/images``; ``next`` is the link to the following page."""

    images: list[ImageAnswer]
    next: str | None = None


class _Project(_Answer):
    id: str


class KeystoneToken(_Answer):
    """The ``token`` object of a Keystone v3 ``POST /v3/auth/tokens`` answer."""

    expires_at: Timestamp
    issued_at: Timestamp | None = None
    catalog: list[dict[str, Any]] | None = None
    project: _Project | None = None

    def lifetime_s(self, server_now: datetime | None) -> float | None:
        """How long the token lives, by the server's own clock: from ``issued_at`` (or the
        answer's ``Date``) to ``expires_at``. None when the server gives no "now" at all."""
        issued = parse_iso(self.issued_at) if self.issued_at else server_now
        if issued is None:
            return None
        return max(0.0, (parse_iso(self.expires_at) - issued).total_seconds())


class KeystoneAnswer(_Answer):
    token: KeystoneToken


def problems(error: ValidationError) -> list[str]:
    """Each failed field as ``where: what`` (``images.3.id: Field required``), without the
    offending value: it may be megabytes long, or carry what it should not."""
    out = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in item["loc"])
        out.append(f"{where or 'body'}: {item['msg']}")
    return out
