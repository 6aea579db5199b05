"""Immutable values passed between reconcile's layers.

The catalog loader produces ``ImageSpec`` values, the state store produces ``Record`` values,
the planner turns both into a ``Plan`` of ``Change`` values, the applier adds ``Outcome``
values, and ``RunReport`` is the one view model every report format renders.
Hot paths build these with ``model_construct`` (or ``build``) after their own validation,
because a 100,000-image catalog must not pay for pydantic validating data twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator

from reconciler.errors import Problem


def iso(moment: datetime) -> str:
    """Timestamps as Glance writes them, and as reconcile stores and reports them."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> datetime:
    """An ISO 8601 time from the API or the state file; naive ones are UTC."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class JournalState(StrEnum):
    """Where a create's journal entry stands (the ``journal.state`` column)."""

    PENDING = "pending"    # written before the POST; the image may or may not exist
    DONE = "done"          # the image is recorded (``image_id``)
    RELEASED = "released"  # certainly not created; nothing to look for


class RunOutcome(StrEnum):
    """How an apply run ended (the ``runs.outcome`` column and the report's verdict)."""

    RUNNING = "running"          # not finished (yet): a killed run stays so until the next
    SUCCESS = "success"
    PARTIAL = "partial"          # some images failed or are blocked, others were done
    FAILED = "failed"            # nothing done, or the run itself failed
    ABORTED = "aborted"          # stopped by a condition that stops every create (a 401)
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM, or killed


#: The extra property that carries a create's nonce, so a create whose answer was lost can be
#: found again by name and marker instead of being sent twice.
MARKER_PROPERTY = "reconcile_marker"

Action = Literal["create", "adopt", "update", "unchanged", "drift", "orphan", "blocked"]
ACTIONS: tuple[Action, ...] = ("create", "adopt", "update", "unchanged", "drift", "orphan",
                               "blocked")
#: The actions apply carries out (``plan --detailed-exitcode`` exits 2 for these only).
APPLIED_ACTIONS: frozenset[str] = frozenset({"create", "adopt", "update"})
#: What apply does with an image that differs from the catalog (docs/architecture.md §5):
#: ``update`` patches it in place, ``report`` only shows the drift.
DriftPolicy = Literal["update", "report"]
DRIFT_POLICIES: tuple[DriftPolicy, ...] = ("update", "report")
#: Image statuses that mean "not there any more".
GONE_STATUSES = frozenset({"deleted", "pending_delete", "killed"})


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)
_set = object.__setattr__


def build(cls: type[M], fields_set: set[str], values: dict[str, Any]) -> M:
    """``cls.model_construct(_fields_set=fields_set, **values)`` where ``values`` holds every
    field of ``cls``: what pydantic's own ends with once it has looked up aliases and defaults
    field by field, at a fifth of its cost, for the paths that build one model per image
    (specs, records, changes). ``values`` becomes the model's ``__dict__``.
    tests/test_models.py checks that it makes what ``model_construct`` makes."""
    model = cls.__new__(cls)
    _set(model, "__dict__", values)
    _set(model, "__pydantic_fields_set__", fields_set)
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


class ImageSpec(Frozen):
    """One desired image, with the profile's defaults applied. ``None`` means "not sent"."""

    name: str
    os_version: str | None = None
    visibility: str | None = None
    protected: bool | None = None
    container_format: str | None = None
    disk_format: str | None = None
    min_ram: int | None = None
    min_disk: int | None = None
    tags: tuple[str, ...] = ()
    properties: dict[str, str] = {}
    file: str = ""
    line: int | None = None
    drift: DriftPolicy | None = None  # None: the run's policy (--drift, reconcile.toml)

    def body(self) -> dict[str, Any]:
        """The POST /v2/images request body, without the marker."""
        return request_body(self.__dict__)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ImageSpec:
        """The spec a request body was made from (``body()`` turned around; the marker and
        any non-text extra property are left out)."""
        fields: dict[str, Any] = {"name": str(body.get("name", ""))}
        properties: dict[str, str] = {}
        for key, value in body.items():
            if key == "__os_version":
                fields["os_version"] = value
            elif key == "tags":
                fields["tags"] = tuple(value)
            elif key in cls.model_fields and key not in ("name", "file", "line", "properties",
                                                         "drift"):
                fields[key] = value
            elif key not in ("name", MARKER_PROPERTY) and isinstance(value, str):
                properties[key] = value
        return cls.model_validate({**fields, "properties": properties})

    @cached_property
    def digest(self) -> str:
        """Computed once (by the catalog loader's workers, for a big catalog): plans and
        catalog digests of 100,000 images ask for it often."""
        return body_digest(self.body())


_SENT_IF_SET = ("visibility", "protected", "container_format", "disk_format", "min_ram",
                "min_disk")


def request_body(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The request body of an ``ImageSpec``'s fields (``None``: not sent), as a mapping: the
    catalog loader's workers digest specs they send as plain values."""
    body: dict[str, Any] = {"name": spec["name"]}
    if spec["os_version"] is not None:
        body["__os_version"] = spec["os_version"]
    for key in _SENT_IF_SET:
        value = spec[key]
        if value is not None:
            body[key] = value
    if spec["tags"]:
        body["tags"] = list(spec["tags"])
    body.update(spec["properties"])
    return body


def body_digest(body: dict[str, Any]) -> str:
    """A stable digest of a request body; the marker never counts."""
    clean = {k: v for k, v in body.items() if k != MARKER_PROPERTY}
    if "tags" in clean:
        clean["tags"] = sorted(clean["tags"])  # the server treats tags as a set
    text = json.dumps(clean, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class Target(Frozen):
    """A place the catalog is reconciled with, declared under ``targets:`` in the catalog:
    an endpoint (given, or found in the token's service catalog by region) and the
    credentials of a clouds.yaml entry or of the run. ``None``: not declared."""

    name: str
    cloud: str | None = None
    region: str | None = None
    project: str | None = None
    endpoint: str | None = None
    profile: str | None = None
    file: str = ""
    line: int | None = None


def target_key(endpoint: str, project: str | None = None) -> str:
    """The key of a target's state rows and lock: its (normalised) endpoint, and the
    project when the target names one, since one endpoint can serve several projects
    (docs/architecture.md §13). Without a project it is the endpoint alone, the key every
    state written before targets existed uses."""
    return f"{endpoint}#project={project}" if project else endpoint


class Catalog(Frozen):
    """A loaded, valid catalog: images sorted by name, plus lint warnings per image.

    ``targets``: the targets it declares (none: one implicit target, the run's endpoint);
    ``placement``: image name -> the targets it is limited to (absent: every target)."""

    directory: str
    profile: str
    images: tuple[ImageSpec, ...]
    warnings: dict[str, tuple[str, ...]] = {}
    files: tuple[str, ...] = ()
    lint: tuple[Problem, ...] = ()  # the same warnings, located (file, line of the field)
    targets: tuple[Target, ...] = ()
    placement: dict[str, tuple[str, ...]] = {}

    def for_target(self, name: str) -> Catalog:
        """The images meant for target ``name``: those placed there or not placed at all."""
        images = tuple(s for s in self.images
                       if name in self.placement.get(s.name, (name,)))
        # A new object, not model_copy: the digest (a cached property) is the images'.
        return Catalog.model_construct(
            directory=self.directory, profile=self.profile, images=images,
            warnings=self.warnings, files=self.files, lint=self.lint, targets=self.targets,
            placement=self.placement)

    @cached_property
    def digest(self) -> str:
        h = hashlib.sha256()
        for spec in self.images:
            h.update(f"{spec.name}\0{spec.digest}\n".encode())
        return h.hexdigest()


class Record(Frozen):
    """What the state store knows about one managed image.

    The request sent and the response received are kept as the JSON text the state file
    holds and decoded on first use: a plan of 100,000 images needs them for a few drifted
    images only. ``Record.of`` (or ``Record(request=..., response=...)``) takes dicts.
    """

    name: str
    image_id: str
    spec_digest: str
    request_json: str = "{}"
    response_json: str = "{}"
    status: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    recorded_at: str
    run_id: str | None = None
    origin: str = "created"

    @model_validator(mode="before")
    @classmethod
    def _encode_bodies(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in ("request", "response"):
                if key in data:
                    data[f"{key}_json"] = _canonical(data.pop(key))
        return data

    @classmethod
    def of(cls, *, request: dict[str, Any], response: dict[str, Any],
           **fields: Any) -> Record:
        """A record built by reconcile itself: no validation, bodies encoded once."""
        values = {"status": None, "created_at": None, "updated_at": None, "run_id": None,
                  "origin": "created", **fields}
        return cls.model_construct(_fields_set=_RECORD_FIELDS, request_json=_canonical(request),
                                   response_json=_canonical(response), **values)

    @classmethod
    def from_image(cls, name: str, request: dict[str, Any], image: dict[str, Any], *,
                   recorded_at: str, run_id: str | None, origin: str,
                   spec_digest: str | None = None) -> Record:
        """The record of ``image``, the API's answer (or listing) for ``request``;
        ``spec_digest``: ``body_digest(request)``, when the caller has it already."""
        return cls.of(name=name, image_id=image["id"],
                      spec_digest=spec_digest or body_digest(request),
                      request=request, response=image, status=image.get("status"),
                      created_at=image.get("created_at"), updated_at=image.get("updated_at"),
                      recorded_at=recorded_at, run_id=run_id, origin=origin)

    @cached_property
    def request(self) -> dict[str, Any]:
        return dict(json.loads(self.request_json))

    @cached_property
    def response(self) -> dict[str, Any]:
        return dict(json.loads(self.response_json))


def _canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, ensure_ascii=False)


# One shared fields-set for records built by reconcile: each model_construct would otherwise
# make its own (about 0.7 KB per object, 70 MB for 100,000 records).
_RECORD_FIELDS: set[str] = set(Record.model_fields)


class RecordRows(Mapping[str, Record]):
    """A target's records as an offline plan reads them: rows of (name, image id, digest,
    origin), each made a ``Record`` (without request and response) when it is looked up.
    100,000 unchanged images then cost their rows while the catalog loads, not models.
    ``pop`` hands a record over and lets go of its row."""

    def __init__(self, rows: dict[str, tuple[str, str, str, str]]) -> None:
        self._rows = rows

    def __getitem__(self, name: str) -> Record:
        return _light_record(self._rows[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def pop(self, name: str, default: Record | None = None) -> Record | None:
        row = self._rows.pop(name, None)
        return default if row is None else _light_record(row)

    def digest(self, name: str) -> str | None:
        """The spec digest of ``name``'s row, without making a record."""
        row = self._rows.get(name)
        return None if row is None else row[2]

    def identities(self) -> Iterator[tuple[str, str, str]]:
        """(name, image id, spec digest) of every row, by name, without making records."""
        return ((name, row[1], row[2]) for name, row in sorted(self._rows.items()))


def _light_record(row: tuple[str, str, str, str]) -> Record:
    name, image_id, digest, origin = row
    return build(Record, _RECORD_FIELDS, {
        "name": name, "image_id": image_id, "spec_digest": digest, "request_json": "{}",
        "response_json": "{}", "status": None, "created_at": None, "updated_at": None,
        "recorded_at": "", "run_id": None, "origin": origin})


class Observed(Frozen):
    """What a refresh saw in the cloud: the target project's live images.

    ``gone`` maps recorded image ids that are confirmed missing to how they went (``404``,
    ``deleted``, ``killed``); a recorded id absent from both was not looked at.
    """

    images: tuple[dict[str, Any], ...] = ()
    gone: dict[str, str] = {}


class PendingCreate(Frozen):
    """A journal entry whose create may or may not have reached the server."""

    nonce: str
    name: str
    run_id: str
    started_at: str


class PendingUpdate(Frozen):
    """A journal entry whose PATCH may or may not have reached the server. ``intent``: the
    document sent (``patch``, ``api``) and the request to record once it is done
    (``request``)."""

    nonce: str
    name: str
    run_id: str
    started_at: str
    image_id: str
    intent: dict[str, Any]


class FieldDiff(Frozen):
    field: str
    before: Any = None
    after: Any = None


class Change(Frozen):
    """The planner's verdict for one image (``target``: whose, when the catalog declares
    targets)."""

    name: str
    action: Action
    reason: str
    detail: str = ""
    diff: tuple[FieldDiff, ...] = ()
    warnings: tuple[str, ...] = ()
    file: str | None = None
    line: int | None = None
    image_id: str | None = None
    spec: ImageSpec | None = None
    remote: dict[str, Any] | None = None  # the image to adopt, or as the cloud has it now
    #: An update's JSON-patch document (docs/architecture.md §6.10) and the API it goes to:
    #: ``images`` (PATCH /v2/images/{id}) or ``cloudimages`` (IMS PATCH /v2/cloudimages/{id}).
    patch: tuple[dict[str, Any], ...] = ()
    patch_api: str | None = None
    target: str | None = None


class Plan(Frozen):
    target: str
    profile: str
    catalog_digest: str
    changes: tuple[Change, ...]

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action == action)

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        for c in self.changes:
            counts[c.action] += 1
        return counts

    @property
    def creates(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action == "create")

    @property
    def adoptions(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action == "adopt")

    @property
    def updates(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action == "update")

    def has_work(self) -> bool:
        """Whether apply would change anything (create, adopt or update)."""
        return any(c.action in APPLIED_ACTIONS for c in self.changes)


class ErrorInfo(Frozen):
    message: str
    status: int | None = None
    code: str | None = None
    request_id: str | None = None


OutcomeResult = Literal["created", "adopted", "updated", "failed", "skipped"]


class Outcome(Frozen):
    """What apply did for one create."""

    name: str
    result: OutcomeResult
    image_id: str | None = None
    status: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    attempts: int = 0
    duration_s: float = 0.0
    error: ErrorInfo | None = None
    request: dict[str, Any] | None = None
    patch: tuple[dict[str, Any], ...] | None = None  # the PATCH document an update sent
    target: str | None = None

    @classmethod
    def recorded(cls, record: Record, result: OutcomeResult, *, attempts: int = 0,
                 duration_s: float = 0.0, request: dict[str, Any] | None = None,
                 patch: tuple[dict[str, Any], ...] | None = None) -> Outcome:
        """An image that is now recorded (created, adopted or updated)."""
        return cls.model_construct(
            name=record.name, result=result, image_id=record.image_id, status=record.status,
            created_at=record.created_at, updated_at=record.updated_at, attempts=attempts,
            duration_s=duration_s, error=None, request=request, patch=patch)

    @classmethod
    def failure(cls, name: str, result: OutcomeResult, message: str, *, status: int | None = None,
                code: str | None = None, request_id: str | None = None, attempts: int = 0,
                duration_s: float = 0.0) -> Outcome:
        """An image not done: ``failed`` (tried) or ``skipped`` (not attempted)."""
        error = ErrorInfo.model_construct(message=message, status=status, code=code,
                                          request_id=request_id)
        return cls.model_construct(
            name=name, result=result, image_id=None, status=None, created_at=None,
            updated_at=None, attempts=attempts, duration_s=duration_s, error=error,
            request=None, patch=None)


class TargetReport(Frozen):
    """One target's part of a report: where it is, its counts, and why it failed (if it
    did: it was not planned, or its apply stopped)."""

    name: str
    endpoint: str = ""
    summary: dict[str, int] = {}
    error: str | None = None
    run_id: str | None = None
    duration_s: float | None = None


class RunReport(Frozen):
    """The view model every report format renders. With targets declared (``targets``
    set, ``format_version`` 2) ``changes`` and ``outcomes`` hold every target's, each
    naming its target, and ``summary`` is the total."""

    format_version: int = 1
    mode: Literal["plan", "apply"]
    dry_run: bool = False
    generated_at: str
    tool_version: str
    catalog: str
    target: str
    profile: str
    catalog_digest: str
    summary: dict[str, int]
    changes: tuple[Change, ...]
    outcomes: tuple[Outcome, ...] = ()
    warnings: tuple[str, ...] = ()
    duration_s: float | None = None
    run_id: str | None = None
    auth_refreshes: int = 0  # Keystone re-authentications during the run
    refreshed: bool = False  # the cloud was read too, not only the state file
    state: str = ""  # the state file compared with
    plan_id: str | None = None  # the saved plan written (plan --out) or applied
    targets: tuple[TargetReport, ...] = ()
