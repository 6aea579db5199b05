"""Request handling of the sandbox, independent of the HTTP server that feeds it.

Routes: ``GET /`` (versions, for readiness checks), ``POST /v3/auth/tokens`` (Keystone
password or token auth), the Image API ``/v2/images`` and ``/v2/images/{id}`` (GET, DELETE,
PATCH), and under ``ims`` IMS's ``PATCH /v2/cloudimages/{id}``. Only the
``/v2`` routes get latency, faults and the token check, in that order: faults model the
gateway in front of the service, so an injected 5xx or 429 happens before anything is
committed. Every reply carries the profile's request-id header.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from reconciler.osversions import KNOWN_OS_VERSIONS, derive_os_fields
from reconciler.sandbox.capacity import Capacity, Load
from reconciler.sandbox.config import SandboxConfig
from reconciler.sandbox.faults import Fault, FaultInjector
from reconciler.sandbox.images import build_foreign_image, build_image, isotime
from reconciler.sandbox.patching import (
    ACCEPT_PATCH,
    MEDIA_TYPES,
    cloudimages_patch,
    glance_patch,
    media_type,
    parse_glance,
)
from reconciler.sandbox.replies import (
    GlanceError,
    ImsError,
    Reply,
    SandboxError,
    apig_throttled,
    fault_reply,
    json_reply,
    keystone_unauthorized,
    webob_default,
)
from reconciler.sandbox.store import ImageStore, Record, SortKeys
from reconciler.sandbox.validation import image_schema, validate_create

log = logging.getLogger(__name__)

LIMIT_DEFAULT = 25
LIMIT_MAX = 1000
_SORT_KEYS = (
    "name", "status", "container_format", "disk_format", "size", "id", "created_at", "updated_at",
)  # fmt: skip
_EXACT_FILTERS = ("name", "id", "status", "container_format", "disk_format", "owner")
_VISIBILITIES = ("public", "private", "shared", "community", "all")
_MEMBER_STATUSES = ("pending", "accepted", "rejected", "all")
_UNSUPPORTED = ("sort", "size_min", "size_max", "created_at", "updated_at", "changes-since")


@dataclass(frozen=True)
class Request:
    """What the app needs from an HTTP request; header names are lower case."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Mapping[str, str]
    body: bytes | None
    base_url: str  # "http://host:port" as the client addressed us


def route_kind(path: str) -> str:
    """Classify a path for routing and request counting."""
    parts = path.rstrip("/").split("/")[1:]
    if not parts:
        return "root"
    if parts == ["v3", "auth", "tokens"]:
        return "tokens"
    if parts == ["v2", "schemas", "image"]:
        return "schema"
    if parts == ["v1", "cloudimages", "os_version"]:
        return "os_versions"
    if parts[:2] == ["v2", "images"] and len(parts) <= 3:
        return "images" if len(parts) == 2 else "image"
    if parts[:2] == ["v2", "cloudimages"] and len(parts) == 3:
        return "cloudimage"
    return "other"


def _create_name(body: bytes | None) -> str | None:
    """The image name of a create's body, for per-name fault scripts (None if unreadable)."""
    try:
        doc = json.loads(body or b"")
    except ValueError:
        return None
    name = doc.get("name") if isinstance(doc, dict) else None
    return name if isinstance(name, str) else None


def _query_name(query: list[tuple[str, str]], kind: str) -> str | None:
    """The ``name=`` filter of a listing (how reconcile looks a create up); ``""`` for a
    listing without one; None for anything else."""
    if kind != "images":
        return None
    return next((v for k, v in query if k == "name"), "")


def _text(value: object) -> str | None:
    """An image field as a query string would spell it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bool_param(key: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise GlanceError(400, f"Invalid value '{value}' for {key}: must be 'true' or 'false'.")
    return value == "true"


@dataclass(frozen=True)
class _ListQuery:
    limit: int
    marker: str | None
    sort: SortKeys
    visibility: str | None
    tags: list[str]
    exact: dict[str, list[str]]
    flags: dict[str, bool]
    properties: dict[str, str]


class SandboxApp:
    """The Image API emulation behind the sandbox's HTTP server."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.store = ImageStore(config.data_file)
        self._faults = FaultInjector(config.seed, config.faults)
        self._capacity = Capacity(config.capacity)
        self._counts: Counter[tuple[str, str]] = Counter()
        self._counts_lock = threading.Lock()
        self._issued: dict[str, datetime] = {}  # Keystone-mode token -> expiry
        self._hold: threading.Event | None = None  # creates arriving now wait for it

    # -- entry point -------------------------------------------------------------------

    def handle(self, req: Request) -> Reply:
        kind = route_kind(req.path)
        with self._counts_lock:
            self._counts[(req.method, kind)] += 1
        accept = req.headers.get("accept", "")
        try:
            reply = self._dispatch(req, kind)
        except SandboxError as exc:
            reply = exc.reply(accept)
        except Exception:
            log.exception("sandbox failed on %s %s", req.method, req.path)
            reply = webob_default(500, accept)
        if self.config.profile == "glance":
            reply.headers.append(("X-Openstack-Request-Id", f"req-{uuid.uuid4()}"))
        else:
            reply.headers.append(("X-Request-Id", uuid.uuid4().hex))
        return reply

    def script(self, name: str, *, post: str | Iterable[str] = (),
               get: str | Iterable[str] = (), patch: str | Iterable[str] = ()) -> None:
        """Scripted faults for the creates, the look-ups (``GET /v2/images?name=``) and the
        updates (PATCH) of one image name, consumed in order before the global script and
        the rates."""
        self._faults.script(name, post=post, get=get, patch=patch)

    def scripted_left(self) -> int:
        return self._faults.scripted_left()

    def capacity_counts(self) -> tuple[int, int]:
        """The most ``/v2`` image requests served at once (in every mode), and how many were
        refused (503) for want of a place (capacity mode)."""
        return self._capacity.peak, self._capacity.refused

    def capacity_load(self, method: str) -> Load:
        """Capacity mode: what the ``/v2`` requests of one method met."""
        return self._capacity.load(method)

    def hold_creates(self, hold: threading.Event | None) -> None:
        """Creates arriving from now on wait for ``hold`` to be set, before committing
        (None: they go through again; those already waiting keep waiting for theirs)."""
        self._hold = hold

    def counts(self) -> Counter[tuple[str, str]]:
        """Requests seen so far per ``(method, route kind)``."""
        with self._counts_lock:
            return Counter(self._counts)

    def add_foreign_image(self, body: dict[str, Any]) -> dict[str, Any]:
        """Store an image as if another tool created it (no validation, no faults)."""
        image_id = str(body.get("id") or uuid.uuid4())
        image = build_foreign_image(
            body,
            profile=self.config.api_profile,
            owner=self.config.project_id,
            image_id=image_id,
            now=isotime(self.config.clock()),
        )
        return dict(self.store.insert(image).image)

    # -- routing -----------------------------------------------------------------------

    def _dispatch(self, req: Request, kind: str) -> Reply:
        if kind == "root" and req.method == "GET":
            return self._versions(req)
        if kind == "tokens" and req.method == "POST":
            return self._issue_token(req)
        if kind in ("schema", "os_versions") and req.method == "GET":
            # No latency or faults here: they are modelled on creates and listings, and a
            # seeded run must draw the same faults whether or not these were asked first.
            if not self._authorized(req.headers.get("x-auth-token")):
                return keystone_unauthorized(req.base_url)
            return self._server_info(kind)
        if kind not in ("images", "image", "cloudimage") or (
                kind == "cloudimage" and self.config.profile != "ims"):
            raise GlanceError(404, "The resource could not be found.")
        with self._capacity.admit(req.method) as load:
            if load is None:  # over capacity: refused at once, as an overloaded server does
                return webob_default(503, req.headers.get("accept", ""))
            return self._serve(req, kind, load)

    def _serve(self, req: Request, kind: str, load: float) -> Reply:
        cfg = self.config
        if cfg.latency_ms:
            time.sleep(cfg.latency_ms * load / 1000)
        create = (kind, req.method) == ("images", "POST")
        if create and (hold := self._hold) is not None:
            hold.wait()
        fault = self._faults.draw(
            fail_rate=cfg.fail_rate,
            throttle_rate=cfg.throttle_rate,
            drop_rate=cfg.drop_response_rate,
            method=req.method,
            name=_create_name(req.body) if create else self._patched_name(req, kind)
            if req.method == "PATCH" else _query_name(req.query, kind),
            create=create,
        )
        accept = req.headers.get("accept", "")
        if fault.hang:
            time.sleep(cfg.hang_s)  # the client gives up meanwhile; the create lands after
        if not fault.commit and fault.drop:
            return Reply(0, drop=True)
        if fault.answers_early:
            return self._fault_reply(fault, accept)
        if not self._authorized(req.headers.get("x-auth-token")):
            return keystone_unauthorized(req.base_url)
        image_id = req.path.rstrip("/").rsplit("/", 1)[-1]
        reply = self._route(req, kind, image_id, drop=fault.drop)
        if fault.drop and not reply.drop:
            return Reply(reply.status, drop=True)
        if fault.garbage and reply.status < 300:
            return Reply(reply.status, b"<html>OK</html>", "text/html")
        if fault.status is not None:  # committed, but the answer got lost behind a gateway
            return self._fault_reply(fault, accept)
        return reply

    def _fault_reply(self, fault: Fault, accept: str) -> Reply:
        cfg = self.config
        if fault.status == 429:
            reply = apig_throttled() if cfg.profile == "ims" else webob_default(429, accept)
            retry_after = f"{cfg.retry_after_s:.3f}".rstrip("0").rstrip(".")
            reply.headers.append(("Retry-After", retry_after or "0"))
            return reply
        return fault_reply(fault.status or 500, accept)

    def _route(self, req: Request, kind: str, image_id: str, *, drop: bool) -> Reply:
        match (kind, req.method):
            case ("images", "POST"):
                return self._create(req, drop=drop)
            case ("images", "GET"):
                return self._list(req)
            case ("image", "GET"):
                return self._show(image_id)
            case ("image", "DELETE"):
                return self._delete(image_id)
            case ("image", "PATCH") | ("cloudimage", "PATCH"):
                return self._patch(req, kind, image_id, drop=drop)
        raise GlanceError(404, "The resource could not be found.")

    # -- PATCH (docs/api-contract.md §16) -------------------------------------------------

    def _patched_name(self, req: Request, kind: str) -> str | None:
        """The name of the image a PATCH is for, for per-name fault scripts."""
        if kind not in ("image", "cloudimage"):
            return None
        record = self.store.get(req.path.rstrip("/").rsplit("/", 1)[-1])
        name = record.image.get("name") if record else None
        return name if isinstance(name, str) else None

    def _patch(self, req: Request, kind: str, image_id: str, *, drop: bool) -> Reply:
        cfg = self.config
        content_type = media_type(req.headers)
        now = isotime(cfg.clock())
        if kind == "image":
            try:
                changes = parse_glance(req.body, content_type, cfg.api_profile)
            except GlanceError as exc:
                if exc.status != 415:
                    raise
                reply = exc.reply(req.headers.get("accept", ""))
                reply.headers.append(("Accept-Patch", ACCEPT_PATCH))
                return reply
            draft = MEDIA_TYPES[content_type]

            def change(image: dict[str, Any]) -> dict[str, Any]:
                if not self._visible(image):
                    raise GlanceError(404, f"No image found with ID {image_id}")
                return glance_patch(image, changes, draft=draft, project_id=cfg.project_id,
                                    profile=cfg.api_profile, now=now)
        else:
            def change(image: dict[str, Any]) -> dict[str, Any]:
                return cloudimages_patch(image, req.body, content_type,
                                         project_id=cfg.project_id, now=now)
        record = self.store.update(image_id, change)
        if record is None:
            if kind == "cloudimage":
                raise ImsError("IMG.9008", f"The image {image_id} does not exist.", 404)
            raise GlanceError(404, f"No image found with ID {image_id}")
        if drop:
            return Reply(200, drop=True)
        return Reply(200, record.encoded.encode(), "application/json")

    # -- /v2/images --------------------------------------------------------------------

    def _create(self, req: Request, *, drop: bool) -> Reply:
        cfg = self.config
        create = validate_create(
            req.body,
            profile=cfg.api_profile,
            project_id=cfg.project_id,
            os_version_policy=cfg.unknown_os_version,
            os_versions=cfg.os_versions or KNOWN_OS_VERSIONS,
        )
        image_id = create.image_id or str(uuid.uuid4())
        image = build_image(
            create,
            profile=cfg.api_profile,
            image_id=image_id,
            owner=cfg.project_id,
            now=isotime(cfg.clock()),
        )
        record = self.store.insert(image)
        if drop:
            return Reply(201, drop=True)
        headers = [("Location", f"{req.base_url}/v2/images/{image_id}")]
        if cfg.profile == "glance":
            headers.append(
                ("OpenStack-image-import-methods", "glance-direct,web-download,copy-image")
            )
        return Reply(201, record.encoded.encode(), "application/json", headers)

    def _visible(self, image: Mapping[str, Any]) -> bool:
        """Glance's read access for a project member: own, public or community images."""
        return image.get("owner") == self.config.project_id or image.get("visibility") in (
            "public",
            "community",
        )

    def _show(self, image_id: str) -> Reply:
        record = self.store.get(image_id)
        if record is None or not self._visible(record.image):
            raise GlanceError(404, f"No image found with ID {image_id}")
        return Reply(200, record.encoded.encode(), "application/json")

    def _delete(self, image_id: str) -> Reply:
        record = self.store.get(image_id)
        if record is None or not self._visible(record.image):
            raise GlanceError(404, f"Failed to find image {image_id} to delete")
        if record.image.get("owner") != self.config.project_id:
            raise GlanceError(403, "You are not authorized to complete delete_image action.")
        if record.image.get("protected"):
            raise GlanceError(403, f"Image {image_id} is protected and cannot be deleted.")
        if not self.store.delete(image_id):
            raise GlanceError(404, f"Failed to find image {image_id} to delete")
        return Reply(204)

    def _parse_list_query(self, query: list[tuple[str, str]]) -> _ListQuery:
        """Glance's ``RequestDeserializer.index`` rules, for the parameters we support."""
        single = dict(query)  # last value wins, like webob's MultiDict.__getitem__
        for key in _UNSUPPORTED:
            if key in single:
                raise GlanceError(400, f"The sandbox does not support the '{key}' parameter.")
        try:
            limit = int(single.get("limit", LIMIT_DEFAULT))
        except ValueError:
            raise GlanceError(400, "limit param must be an integer") from None
        if limit < 0:
            raise GlanceError(400, "limit param must be positive")
        keys = [v for k, v in query if k == "sort_key"]
        dirs = [v for k, v in query if k == "sort_dir"]
        for key in keys:
            if key not in _SORT_KEYS:
                raise GlanceError(
                    400,
                    f"Invalid sort key: {key}. It should be one of the following: "
                    + ", ".join(_SORT_KEYS),
                )
        for direction in dirs:
            if direction not in ("asc", "desc"):
                raise GlanceError(400, f"Invalid sort direction: {direction}")
        if len(dirs) > 1 and len(dirs) != len(keys):
            raise GlanceError(400, "Number of sort dirs does not match the number of sort keys")
        keys = keys or ["created_at"]
        dirs = dirs * len(keys) if len(dirs) == 1 else dirs or ["desc"] * len(keys)
        visibility = single.get("visibility")
        if visibility is not None and visibility not in _VISIBILITIES:
            raise GlanceError(400, f"Invalid visibility value: {visibility}")
        if single.get("member_status", "accepted") not in _MEMBER_STATUSES:
            raise GlanceError(400, f"Invalid status: {single['member_status']}")
        flags: dict[str, bool] = {
            k: _bool_param(k, single[k]) for k in ("protected", "os_hidden") if k in single
        }
        flags.setdefault("os_hidden", False)
        reserved = {"limit", "marker", "sort_key", "sort_dir", "visibility", "member_status", "tag"}
        reserved.update(flags)
        exact = {
            k: v[3:].split(",") if v.startswith("in:") else [v]
            for k, v in single.items()
            if k in _EXACT_FILTERS
        }
        properties = {k: v for k, v in single.items() if k not in reserved and k not in exact}
        return _ListQuery(
            limit=min(limit, LIMIT_MAX),
            marker=single.get("marker"),
            sort=tuple(zip(keys, (d == "desc" for d in dirs), strict=True)),
            visibility=visibility,
            tags=[v for k, v in query if k == "tag"],
            exact=exact,
            flags=flags,
            properties=properties,
        )

    def _in_scope(self, image: Mapping[str, Any], visibility: str | None) -> bool:
        """Which images a member lists, per Glance's default scope and ``visibility``."""
        mine = image.get("owner") == self.config.project_id
        actual = image.get("visibility")
        if visibility is None:
            return mine or actual == "public"
        if visibility == "all":
            return mine or actual in ("public", "community")
        if visibility in ("public", "community"):
            return actual == visibility
        return mine and actual == visibility

    def _list(self, req: Request) -> Reply:
        q = self._parse_list_query(req.query)

        def matches(image: dict[str, Any]) -> bool:
            if not self._in_scope(image, q.visibility):
                return False
            if any(_text(image.get(k)) not in values for k, values in q.exact.items()):
                return False
            if any(bool(image.get(k, False)) != want for k, want in q.flags.items()):
                return False
            tags = image.get("tags") or ()
            if any(tag not in tags for tag in q.tags):
                return False
            return all(_text(image.get(k)) == v for k, v in q.properties.items())

        try:
            records = self.store.page(matches, marker=q.marker, limit=q.limit, sort=q.sort)
        except KeyError:
            raise GlanceError(400, f"No image found with ID {q.marker}") from None
        return self._list_reply(req.query, records, q.limit)

    @staticmethod
    def _list_reply(query: list[tuple[str, str]], records: list[Record], limit: int) -> Reply:
        """Glance's ``ResponseSerializer.index``, including its collapsing of repeated params."""
        params = dict(query)
        params.pop("marker", None)
        first = "/v2/images" + (f"?{urlencode(params)}" if params else "")
        tail = {"first": first, "schema": "/v2/schemas/images"}
        if records and len(records) == limit:
            params["marker"] = str(records[-1].image["id"])
            tail["next"] = f"/v2/images?{urlencode(params)}"
        images = ", ".join(r.encoded for r in records)
        body = f'{{"images": [{images}], {json.dumps(tail)[1:]}'
        return Reply(200, body.encode(), "application/json")

    # -- / and /v3 ---------------------------------------------------------------------

    def _server_info(self, kind: str) -> Reply:
        cfg = self.config
        if kind == "schema":
            return json_reply(200, image_schema(cfg.api_profile))
        if cfg.api_profile != "ims":  # Glance has no such API
            raise GlanceError(404, "The resource could not be found.")
        platforms: dict[str, list[dict[str, Any]]] = {}
        for version in sorted(cfg.os_versions or KNOWN_OS_VERSIONS):
            derived = derive_os_fields(version)
            platforms.setdefault(derived["__platform"], []).append({
                "platform": derived["__platform"], "os_version_key": version,
                "os_version": version, "os_bit": int(derived["__os_bit"]),
                "os_type": derived["__os_type"]})
        return json_reply(200, [{"platform": p, "version_list": v}
                                for p, v in sorted(platforms.items())])

    def _versions(self, req: Request) -> Reply:
        link = [{"rel": "self", "href": f"{req.base_url}/v2/"}]
        versions = [
            {"id": "v2.16", "status": "CURRENT", "links": link},
            {"id": "v2.0", "status": "SUPPORTED", "links": link},
        ]
        return json_reply(200, {"versions": versions})

    def _authorized(self, token: str | None) -> bool:
        cfg = self.config
        if cfg.token is not None and token == cfg.token:
            return True
        if cfg.password is not None:
            expiry = self._issued.get(token or "")
            return expiry is not None and cfg.clock() < expiry
        return cfg.token is None

    def _issue_token(self, req: Request) -> Reply:
        """Keystone v3 ``POST /auth/tokens``: the token goes in ``X-Subject-Token``."""
        cfg = self.config
        try:
            auth = json.loads(req.body or b"")["auth"]
            identity = auth["identity"]
            methods = list(identity["methods"])
            if "password" in methods:
                user = identity["password"]["user"]
                secret = user["password"]
            elif "token" in methods:
                user = {"name": "token-user"}
                secret = identity["token"]["id"]
            else:
                raise ValueError("no supported auth method")
            scope = auth.get("scope", {}).get("project", {})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            payload = {"error": {"code": 400, "title": "Bad Request", "message": str(exc)}}
            return json_reply(400, payload)
        expected = cfg.password if "password" in methods else cfg.token
        if "token" in methods and cfg.password is not None:
            expected = None if self._authorized(secret) else ""
        if (expected is not None and secret != expected) or (
                cfg.user is not None and "password" in methods
                and user.get("name", user.get("id")) != cfg.user):
            return keystone_unauthorized(req.base_url)
        now = cfg.clock()
        endpoints = [
            {"id": uuid.uuid4().hex, "interface": i, "region": cfg.region,
             "region_id": cfg.region, "url": req.base_url}
            for i in ("public", "internal", "admin")
        ]  # fmt: skip
        token: dict[str, Any] = {
            "methods": methods,
            "issued_at": isotime(now),
            "expires_at": isotime(now + timedelta(seconds=cfg.token_ttl_s)),
            "user": {
                "id": user.get("id", uuid.uuid5(uuid.NAMESPACE_OID, str(user.get("name"))).hex),
                "name": user.get("name"),
                "domain": user.get("domain", {"id": "default", "name": "Default"}),
            },
            "project": {
                "id": cfg.project_id,
                "name": scope.get("name", "sandbox"),
                "domain": {"id": "default", "name": "Default"},
            },
            "roles": [{"id": uuid.uuid5(uuid.NAMESPACE_OID, "member").hex, "name": "member"}],
        }
        if not any(k == "nocatalog" for k, _ in req.query):
            service = "glance" if cfg.profile == "glance" else "ims"
            token["catalog"] = [
                {"type": "image", "name": service, "id": uuid.uuid4().hex, "endpoints": endpoints}
            ]
        if cfg.password is not None and cfg.token is None:
            issued = f"sandbox-{uuid.uuid4().hex}"
            with self._counts_lock:
                self._issued[issued] = now + timedelta(seconds=cfg.token_ttl_s)
        else:
            issued = cfg.token or f"sandbox-{uuid.uuid4().hex}"
        return json_reply(201, {"token": token}, [("X-Subject-Token", issued)])
