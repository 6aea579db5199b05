"""What the server says it accepts, and the profile that follows from it.

Under ``glance`` the deployment's own image schema (``GET /v2/schemas/image``) is the authority
on visibilities, container and disk formats and the extra properties it declares: operators
configure these (``[image_format] disk_formats``), so upstream defaults would refuse what the
server takes. Under ``ims`` the region's OS list (``GET /v1/cloudimages/os_version``,
docs/api-contract.md §6.1) replaces the built-in one. Both are read when the endpoint is
known, kept in the state per target with the time they were read, and used from there by
offline runs. ``profile_for`` builds the profile a run validates with, and every refusal it
leads to names where its list came from. Pure: the client fetches, the state stores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, NonNegativeInt, TypeAdapter, ValidationError

from reconciler.answers import problems
from reconciler.profiles import FIELDS, PROFILES, SERVER_KEYS, Profile

Kind = Literal["image_schema", "os_versions"]
SCHEMA_PATH = "/v2/schemas/image"
OS_VERSIONS_PATH = "/v1/cloudimages/os_version"
#: Which profile reads what.
KIND_OF: dict[str, Kind] = {"glance": "image_schema", "ims": "os_versions"}


@dataclass(frozen=True)
class ServerInfo:
    """One answer of the server about itself: what, from where, when, and the JSON body."""

    kind: Kind
    url: str
    read_at: str  # ISO 8601 UTC
    body: Any
    cached: bool = False  # from the state, not read in this run

    def origin(self) -> str:
        when = self.read_at[:10]
        return f"{self.url}, read {when}" + (" (cached)" if self.cached else "")


class InvalidServerInfo(ValueError):
    """The body is not the documented shape; ``problems`` says where."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)

    def summary(self, shown: int = 3) -> str:
        """The first problems, each cut short (a lying server may send thousands of long
        ones), and how many more there are."""
        cut = [p if len(p) <= 200 else p[:199] + "…" for p in self.problems[:shown]]
        more = len(self.problems) - shown
        return "; ".join(cut) + (f"; +{more} more" if more > 0 else "")


# --- the answers' shapes -------------------------------------------------------------------

class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class _OsVersion(_Loose):
    os_version: str
    platform: str | None = None
    os_bit: int | None = None
    os_type: str | None = None


class _Platform(_Loose):
    platform: str | None = None
    version_list: list[_OsVersion]


class _Enum(_Loose):
    enum: list[str | None] | None = None
    maxLength: NonNegativeInt | None = None  # JSON schema's spelling


class _Properties(_Loose):
    """The rules of the fields read here; the others' are in ``model_extra``."""

    visibility: _Enum = _Enum()
    container_format: _Enum = _Enum()
    disk_format: _Enum = _Enum()
    name: _Enum = _Enum()


class _ImageSchema(_Loose):
    properties: dict[str, dict[str, Any]]


_T = TypeVar("_T")
_OS_LIST = TypeAdapter(list[_Platform])
_SCHEMA = TypeAdapter(_ImageSchema)
_PROPERTIES = TypeAdapter(_Properties)


def _validated(adapter: TypeAdapter[_T], body: Any, where: str = "") -> _T:
    try:
        return adapter.validate_python(body)
    except ValidationError as exc:
        raise InvalidServerInfo([where + p for p in problems(exc)]) from None


def os_versions(body: Any) -> frozenset[str]:
    """The ``__os_version`` strings of an os_version answer."""
    platforms = _validated(_OS_LIST, body)
    found = frozenset(v.os_version for p in platforms for v in p.version_list)
    if not found:
        raise InvalidServerInfo(["the list of OS versions is empty"])
    return found


@dataclass(frozen=True)
class SchemaRules:
    """What an image schema allows; None where it states no enumeration (anything goes)."""

    visibilities: frozenset[str] | None
    container_formats: frozenset[str] | None
    disk_formats: frozenset[str] | None
    name_max: int | None
    property_rules: dict[str, Any]


def schema_rules(body: Any) -> SchemaRules:
    """Read the rules of a ``/v2/schemas/image`` answer."""
    # the whole first (each property's rule an object), then the fields read here
    props = _validated(_PROPERTIES, _validated(_SCHEMA, body).properties, "properties.")

    def enum(rule: _Enum) -> frozenset[str] | None:
        return None if rule.enum is None else frozenset(v for v in rule.enum if v is not None)

    # Extra properties the schema types (e.g. kernel_id's UUID pattern): checked like the
    # server checks them. Catalog fields and keys the server owns have rules of their own.
    own = {*FIELDS, *SERVER_KEYS, "tags", "locations", "direct_url", "self", "file", "schema"}
    rules = {key: rule for key, rule in (props.model_extra or {}).items() if key not in own}
    found = [p for key, rule in rules.items() if (p := _rule_problem(key, rule))]
    if found:
        raise InvalidServerInfo(found)
    return SchemaRules(enum(props.visibility), enum(props.container_format),
                       enum(props.disk_format), props.name.maxLength, rules)


def _rule_problem(key: str, rule: dict[str, Any]) -> str | None:
    """Why a property's rule cannot be checked as the server would check it, if it cannot:
    not a JSON schema, or pointing elsewhere (``$ref``), which reconcile does not follow."""
    if not _REFS.isdisjoint(_keys(rule)):
        return f"properties.{key}: refers elsewhere ($ref), which reconcile does not follow"
    import jsonschema  # here: only a server's answer needs it, not every command's start-up

    try:
        jsonschema.validators.validator_for(rule).check_schema(rule)
    except jsonschema.exceptions.SchemaError as exc:
        return f"properties.{key}: is not a valid JSON schema: {exc.message}"
    except RecursionError:
        return f"properties.{key}: is nested too deeply to check"
    return None


_REFS = frozenset({"$ref", "$dynamicRef", "$recursiveRef"})


def _keys(doc: Any) -> set[str]:
    """Every mapping key anywhere in a JSON document (without recursion: it may be deep)."""
    found: set[str] = set()
    todo = [doc]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            found.update(node)
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found


def validate_body(kind: Kind, body: Any) -> None:
    """Raise ``InvalidServerInfo`` unless ``body`` is a usable answer of that kind."""
    if kind == "os_versions":
        os_versions(body)
    else:
        schema_rules(body)


# --- the profile of a run --------------------------------------------------------------------

def profile_for(name: str, info: ServerInfo | None = None, *,
                allow_disk_formats: Iterable[str] = (),
                allow_container_formats: Iterable[str] = ()) -> Profile:
    """The built-in profile ``name``, narrowed or widened to what the server said.

    Without a server schema the ``allow_*`` settings widen the built-in lists. With one, the
    schema alone decides: a format it does not list is refused even if a setting allows it,
    because the server would refuse it (never looser than the server).
    """
    base = PROFILES[name]
    disks, containers = frozenset(allow_disk_formats), frozenset(allow_container_formats)
    if info is not None and info.kind == "image_schema" and name == "glance":
        rules = schema_rules(info.body)
        return dataclasses.replace(
            base,
            visibilities=_or_any(rules.visibilities, base.visibilities),
            container_formats=_or_any(rules.container_formats, base.container_formats),
            disk_formats=_or_any(rules.disk_formats, base.disk_formats),
            name_max=base.name_max if rules.name_max is None else min(base.name_max,
                                                                      rules.name_max),
            property_rules=rules.property_rules,
            configured=disks | containers,
            source=f"the server's schema ({info.origin()})",
        )
    profile = dataclasses.replace(
        base, disk_formats=base.disk_formats | disks,
        container_formats=base.container_formats | containers)
    if disks or containers:
        profile = dataclasses.replace(
            profile, source=f"{base.source}, plus the allow_* settings")
    if info is not None and info.kind == "os_versions" and name == "ims":
        profile = dataclasses.replace(
            profile, os_versions=os_versions(info.body),
            os_source=f"the region's OS list ({info.origin()})")
    return profile


def _or_any(stated: frozenset[str] | None, default: frozenset[str]) -> frozenset[str]:
    # A schema without an enumeration accepts any string; the built-in list then stays the
    # safer guess (a refusal of ours can be lifted with an allow_* setting).
    return default if stated is None else stated
