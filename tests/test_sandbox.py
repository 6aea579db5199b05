"""The sandbox, over real loopback HTTP: what a client of IMS/Glance may rely on it to do.

Validation tables pin status and message per rule for both profiles (docs/api-contract.md §3
and §4); the rest covers response shape (§5), error dialects (§9), listing and paging (§10), auth,
fault injection and persistence.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result

from reconciler.errors import ConfigError
from reconciler.osversions import DEFAULT_OS_VERSION, KNOWN_OS_VERSIONS, derive_os_fields
from reconciler.sandbox import Sandbox, SandboxConfig
from reconciler.sandbox.capacity import Capacity, Load
from reconciler.sandbox.config import DEFAULT_PROJECT_ID
from reconciler.sandbox.patching import V21

JSON = {"Accept": "application/json"}


def client(sb: Sandbox, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=sb.url, headers={**JSON, **headers}, timeout=5)


def at_once(clients: list[httpx.Client], send: Callable[[httpx.Client], object]) -> None:
    """``send`` from every client at the same time, a thread each; returns once every one
    is answered, with the clients closed."""
    threads = [threading.Thread(target=send, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()


@pytest.fixture
def ims() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig()) as sb:
        yield sb


@pytest.fixture
def glance() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(profile="glance")) as sb:
        yield sb


@pytest.fixture(scope="module")
def shared() -> Iterator[dict[str, httpx.Client]]:
    """One sandbox per profile for the read-mostly validation tables."""
    with (
        Sandbox(SandboxConfig()) as a,
        Sandbox(SandboxConfig(profile="glance")) as b,
        client(a) as ca,
        client(b) as cb,
    ):
        yield {"ims": ca, "glance": cb}


def error_text(response: httpx.Response) -> str:
    """Code and message of an IMS or Glance JSON error body."""
    body = response.json()
    if "error" in body:
        return f"{body['error']['code']} {body['error']['message']}"
    return str(body["message"])


# -- create: response shape -------------------------------------------------------------------

DOC_EXAMPLE = {
    "__os_version": "Ubuntu 14.04 server 64bit",
    "container_format": "bare",
    "disk_format": "vhd",
    "min_disk": 1,
    "min_ram": 1024,
    "name": "test",
    "tags": ["test", "image"],
    "visibility": "private",
    "protected": False,
    "aaaa": "11111",
}


def test_ims_create_answers_the_documented_example(ims: Sandbox) -> None:
    with client(ims) as c:
        response = c.post("/v2/images", json=DOC_EXAMPLE)
    assert response.status_code == 201
    image = response.json()
    expected = {
        "name": "test", "status": "queued", "visibility": "private", "protected": False,
        "container_format": "bare", "disk_format": "vhd", "min_disk": 1, "min_ram": 1024,
        "tags": ["test", "image"], "owner": DEFAULT_PROJECT_ID, "aaaa": "11111",
        "__os_version": "Ubuntu 14.04 server 64bit", "__os_type": "Linux",
        "__platform": "Ubuntu", "__os_bit": "64", "__imagetype": "private",
        "__isregistered": "true", "__image_source_type": "uds", "__image_size": "0",
        "virtual_env_type": "FusionCompute", "schema": "/v2/schemas/image",
        "self": f"/v2/images/{image['id']}", "file": f"/v2/images/{image['id']}/file",
    }  # fmt: skip
    assert {k: image.get(k) for k in expected} == expected
    assert "checksum" not in image and "size" not in image


def test_ims_create_of_empty_body_fills_documented_defaults(ims: Sandbox) -> None:
    with client(ims) as c:
        image = c.post("/v2/images", json={}).json()
    assert (image["disk_format"], image["container_format"], image["visibility"]) == (
        "zvhd2", "bare", "private",
    )  # fmt: skip
    assert image["__os_version"] == DEFAULT_OS_VERSION
    assert (image["__os_type"], image["__platform"], image["__os_bit"]) == ("Linux", "Other", "64")
    assert (image["min_disk"], image["min_ram"], image["name"]) == (0, 0, None)


def test_ims_iso_image_is_an_isoimage(ims: Sandbox) -> None:
    with client(ims) as c:
        image = c.post("/v2/images", json={"disk_format": "iso"}).json()
    assert image["virtual_env_type"] == "IsoImage"


def test_server_fields_win_over_client_extras_and_tags_are_deduplicated(ims: Sandbox) -> None:
    body = {"__imagetype": "gold", "__os_bit": "32", "tags": ["b", "a", "b"], "team": "infra"}
    with client(ims) as c:
        image = c.post("/v2/images", json=body).json()
    assert (image["__imagetype"], image["__os_bit"]) == ("private", "64")
    assert image["tags"] == ["b", "a"]
    assert image["team"] == "infra"


def test_location_header_is_the_absolute_url_of_the_created_image(ims: Sandbox) -> None:
    with client(ims) as c:
        response = c.post("/v2/images", json={"name": "loc"})
        location = response.headers["Location"]
        assert location == f"{ims.url}/v2/images/{response.json()['id']}"
        assert httpx.get(location).json()["name"] == "loc"


def test_glance_create_has_every_base_field_with_upstream_defaults(glance: Sandbox) -> None:
    with client(glance) as c:
        response = c.post("/v2/images", json={"name": "g", "custom": "x"})
    image = response.json()
    assert response.status_code == 201
    nulls = ("disk_format", "container_format", "size", "virtual_size", "checksum",
             "os_hash_algo", "os_hash_value")  # fmt: skip
    assert all(k in image and image[k] is None for k in nulls)
    assert (image["visibility"], image["os_hidden"], image["status"]) == ("shared", False, "queued")
    assert image["custom"] == "x"
    assert not any(k.startswith("__") for k in image)
    assert response.headers["OpenStack-image-import-methods"]


def test_timestamps_come_from_the_injected_clock_in_glance_format() -> None:
    moment = datetime(2016, 6, 2, 7, 49, 48, 123456, tzinfo=UTC)
    with Sandbox(SandboxConfig(clock=lambda: moment)) as sb, client(sb) as c:
        image = c.post("/v2/images", json={}).json()
    assert image["created_at"] == image["updated_at"] == "2016-06-02T07:49:48Z"


@pytest.mark.parametrize(
    ("profile", "header", "pattern"),
    [("ims", "X-Request-Id", r"^[0-9a-f]{32}$"),
     ("glance", "X-Openstack-Request-Id", r"^req-[0-9a-f-]{36}$")],
)  # fmt: skip
def test_every_response_carries_the_profile_request_id(
    profile: str, header: str, pattern: str
) -> None:
    with Sandbox(SandboxConfig(profile=profile)) as sb, client(sb) as c:
        responses = [c.post("/v2/images", json={}), c.post("/v2/images", content=b"{"),
                     c.get("/v2/images/nope"), c.get("/nowhere"), c.get("/")]  # fmt: skip
    assert all(re.match(pattern, r.headers.get(header, "")) for r in responses)


# -- create: validation tables ----------------------------------------------------------------

MANY_TAGS = [f"t{i}" for i in range(129)]
MANY_PROPS = {f"p{i}": "v" for i in range(129)}
TWENTY_ONE_TAGS = [f"t{i}" for i in range(21)]

# (id, body, status, expected substring of "code message"/message); both profiles.
GLANCE_RULES: list[tuple[str, Any, int, str]] = [
    ("no-body", None, 400, "Body expected in request."),
    ("malformed-json", b"{nope", 400, "Malformed JSON in request body."),
    ("scalar-body", b'"name"', 400, "Unexpected body type. Expected list/dict."),
    ("array-body", b"[]", 500, "The server has either erred"),
    ("read-only-self", {"self": "x"}, 403, "Attribute 'self' is read-only."),
    ("read-only-first-in-order", {"stores": "a", "file": "b"}, 403, "Attribute 'file' is"),
    ("name-too-long", {"name": "x" * 256}, 400, "is too long"),
    ("visibility-enum", {"visibility": "foo"}, 400,
     "'foo' is not one of ['community', 'public', 'private', 'shared']"),
    ("protected-string", {"protected": "true"}, 400, "'true' is not of type 'boolean'"),
    ("min-ram-string", {"min_ram": "1"}, 400, "'1' is not of type 'integer'"),
    ("min-disk-bool", {"min_disk": True}, 400, "True is not of type 'integer'"),
    ("tags-not-array", {"tags": "abc"}, 400, "'abc' is not of type 'array'"),
    ("tag-too-long", {"tags": ["x" * 256]}, 400, "is too long"),
    ("id-pattern", {"id": "nope"}, 400, "'nope' does not match"),
    ("extra-not-string", {"custom": 5}, 400, "5 is not of type 'string'"),
    ("extra-null", {"custom": None}, 400, "None is not of type 'string'"),
    ("container-enum", {"container_format": "box"}, 400, "'box' is not one of [None, 'ami'"),
    ("status-enum-before-read-only", {"status": "bogus"}, 400, "'bogus' is not one of"),
    ("key-too-long", {"k" * 256: "v"}, 400, "Custom property should not be greater than 255"),
    ("reserved-location", {"location": "x"}, 403, "Attribute 'location' is reserved."),
    ("reserved-namespace", {"os_glance_x": "1"}, 403, "Attribute 'os_glance_x' is reserved."),
    ("owner-mismatch", {"owner": "other"}, 403,
     "You are not permitted to create images owned by 'other'."),
    ("publicize", {"visibility": "public"}, 403, "publicize_image"),
    ("reserved-before-policy", {"location": "x", "visibility": "public"}, 403, "reserved"),
    ("tag-quota", {"tags": MANY_TAGS}, 413,
     "number of allowed image tags. Attempted: 129, Maximum: 128"),
    ("policy-before-tag-quota", {"visibility": "public", "tags": MANY_TAGS}, 403, "publicize"),
    ("read-only-status", {"status": "active"}, 403, "Attribute 'status' is read-only."),
    ("read-only-created-at", {"created_at": "2020"}, 403, "'created_at' is read-only."),
    ("reserved-locations", {"locations": []}, 403, "Attribute 'locations' is reserved."),
    ("negative-min-ram", {"min_ram": -1}, 400,
     "Invalid value '-1' for parameter 'min_ram': Cannot be a negative value"),
    ("property-quota", MANY_PROPS, 413,
     "number of allowed image properties. Attempted: 129, Maximum: 128"),
    ("four-byte-name", {"name": "smile\U0001f600"}, 400,
     "Name can't contain 4 byte unicode characters."),
    ("four-byte-value", {"my_prop": "\U0001f600"}, 400, "My_Prop can't contain 4 byte"),
    ("four-byte-key", {"k\U0001f600": "v"}, 400, "Property names can't contain 4 byte"),
    ("int-range", {"min_ram": 2147483648}, 400,
     "'min_ram' value out of range, must not exceed 2147483647."),
]  # fmt: skip

IMS_RULES: list[tuple[str, Any, int, str]] = [
    ("visibility-shared", {"visibility": "shared"}, 403, "only 'private' is allowed"),
    ("visibility-community", {"visibility": "community"}, 403, "only 'private' is allowed"),
    ("name-over-128", {"name": "x" * 129}, 400, "IMG.0002"),
    ("name-leading-space", {"name": " lead"}, 400, "IMG.0003"),
    ("name-bad-char", {"name": "a/b"}, 400, "IMG.0003"),
    ("name-empty", {"name": ""}, 400, "IMG.0003"),
    ("disk-format-unsupported", {"disk_format": "vmdk"}, 400,
     "IMG.0072 The specified image format is not supported."),
    ("disk-format-unknown-is-schema", {"disk_format": "bogus"}, 400, "is not one of"),
    ("min-disk-zero", {"min_disk": 0}, 400, "IMG.0055 The memory or disk size is invalid."),
    ("min-disk-over", {"min_disk": 1025}, 400, "IMG.0055"),
    ("min-ram-over", {"min_ram": 2_000_000}, 400, "IMG.0055"),
    ("too-many-tags", {"tags": TWENTY_ONE_TAGS}, 400, "IMG.0116"),
    ("empty-tag", {"tags": [""]}, 400, "IMG.0115 The image tag is invalid."),
    ("unknown-os-version", {"__os_version": "Ubuntu 99.04 server 64bit"}, 400,
     "IMG.0056 Invalid OS version."),
    ("glance-rule-first", {"name": "x" * 256, "disk_format": "vmdk"}, 400, "is too long"),
]  # fmt: skip

GLANCE_ONLY_RULES: list[tuple[str, Any, int, str]] = [
    ("zvhd2-not-upstream", {"disk_format": "zvhd2"}, 400, "'zvhd2' is not one of [None"),
    ("os-hidden-bool", {"os_hidden": "yes"}, 400, "'yes' is not of type 'boolean'"),
]

ACCEPTED: list[tuple[str, str, dict[str, Any]]] = [
    ("ims", "zvhd2", {"disk_format": "zvhd2", "min_disk": 40}),
    ("ims", "integral-float", {"min_ram": 1.0}),
    ("ims", "twenty-tags", {"tags": TWENTY_ONE_TAGS[:20]}),
    ("ims", "name-128", {"name": "a" * 128}),
    ("glance", "long-name", {"name": "x" * 200}),
    ("glance", "community", {"visibility": "community"}),
    ("glance", "any-os-version", {"__os_version": "Ubuntu 99.04 server 64bit"}),
    # current IMS OS versions (issue: they used to be refused with IMG.0056)
    ("ims", "ubuntu-22.04", {"__os_version": "Ubuntu 22.04 server 64bit"}),
    ("ims", "ubuntu-20.04", {"__os_version": "Ubuntu 20.04 server 64bit"}),
    ("ims", "openeuler-22.03", {"__os_version": "openEuler 22.03 64bit"}),
    ("ims", "euleros-2.10", {"__os_version": "EulerOS 2.10 64bit"}),
    ("glance", "empty-tag-and-zero-disk", {"tags": [""], "min_disk": 0}),
    ("glance", "vmdk", {"disk_format": "vmdk"}),
    ("glance", "owner-is-project", {"owner": DEFAULT_PROJECT_ID}),
    ("glance", "os-hash-fields-ignored", {"os_hash_algo": None, "os_hash_value": "ab"}),
    ("ims", "os-hash-fields-ignored", {"os_hash_algo": None}),
]


def _post(c: httpx.Client, body: Any) -> httpx.Response:
    if body is None:
        return c.post("/v2/images")
    if isinstance(body, bytes):
        return c.post("/v2/images", content=body)
    return c.post("/v2/images", json=body)


@pytest.mark.parametrize("profile", ["ims", "glance"])
@pytest.mark.parametrize(("body", "status", "text"), [r[1:] for r in GLANCE_RULES],
                         ids=[r[0] for r in GLANCE_RULES])  # fmt: skip
def test_glance_pipeline_rejects_with_status_and_message(
    shared: dict[str, httpx.Client], profile: str, body: Any, status: int, text: str
) -> None:
    response = _post(shared[profile], body)
    assert (response.status_code, text in error_text(response)) == (status, True), response.text


@pytest.mark.parametrize(("body", "status", "text"), [r[1:] for r in IMS_RULES],
                         ids=[r[0] for r in IMS_RULES])  # fmt: skip
def test_ims_rules_reject_with_status_and_code(
    shared: dict[str, httpx.Client], body: Any, status: int, text: str
) -> None:
    response = _post(shared["ims"], body)
    assert (response.status_code, text in error_text(response)) == (status, True), response.text


@pytest.mark.parametrize(("body", "status", "text"), [r[1:] for r in GLANCE_ONLY_RULES],
                         ids=[r[0] for r in GLANCE_ONLY_RULES])  # fmt: skip
def test_glance_profile_rejects_with_upstream_rules(
    shared: dict[str, httpx.Client], body: Any, status: int, text: str
) -> None:
    response = _post(shared["glance"], body)
    assert (response.status_code, text in error_text(response)) == (status, True), response.text


@pytest.mark.parametrize(("profile", "body"), [(r[0], r[2]) for r in ACCEPTED],
                         ids=[f"{r[0]}-{r[1]}" for r in ACCEPTED])  # fmt: skip
def test_valid_bodies_are_created(
    shared: dict[str, httpx.Client], profile: str, body: dict[str, Any]
) -> None:
    response = _post(shared[profile], body)
    assert response.status_code == 201, response.text


def test_injected_errors_never_commit_and_rejections_never_store(ims: Sandbox) -> None:
    with client(ims) as c:
        c.post("/v2/images", json={"visibility": "public"})
        c.post("/v2/images", json={"__os_version": "nope"})
    assert ims.images() == []


def test_client_chosen_id_is_used_and_a_repeat_gets_409(ims: Sandbox) -> None:
    image_id = "0b0e3b4c-5c61-48ff-b4f3-0ad4e5e3ba86"
    with client(ims) as c:
        first = c.post("/v2/images", json={"id": image_id})
        second = c.post("/v2/images", json={"id": image_id})
    assert first.json()["id"] == image_id
    assert second.status_code == 409
    assert error_text(second).startswith(f"Image ID {image_id} already exists!")


def test_id_of_a_deleted_image_stays_taken(ims: Sandbox) -> None:
    image_id = "1b0e3b4c-5c61-48ff-b4f3-0ad4e5e3ba86"
    with client(ims) as c:
        c.post("/v2/images", json={"id": image_id})
        assert c.delete(f"/v2/images/{image_id}").status_code == 204
        assert c.post("/v2/images", json={"id": image_id}).status_code == 409


def test_fallback_policy_stores_unknown_os_version_as_other_linux() -> None:
    with Sandbox(SandboxConfig(os_version_policy="fallback")) as sb, client(sb) as c:
        response = c.post("/v2/images", json={"__os_version": "Ubuntu 99.04 server 64bit"})
    assert response.status_code == 201
    assert response.json()["__os_version"] == DEFAULT_OS_VERSION


# -- error dialects ---------------------------------------------------------------------------

RESERVED = {"location": "x"}
RESERVED_MESSAGE = "Access was denied to this resource.<br /><br />\nAttribute 'location' is reserved.\n\n"  # noqa: E501


def test_glance_error_as_json_is_webob_shaped(ims: Sandbox) -> None:
    with client(ims) as c:
        response = c.post("/v2/images", json=RESERVED)
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {
        "message": RESERVED_MESSAGE, "code": "403 Forbidden", "title": "Forbidden",
    }  # fmt: skip


def test_schema_error_as_json_puts_the_message_in_the_explanation(ims: Sandbox) -> None:
    with client(ims) as c:
        body = c.post("/v2/images", json={"name": "x" * 256}).json()
    assert body["message"] == (
        f"Provided object does not match schema 'image': '{'x' * 256}' is too long"
        "<br /><br />\n\n\n"
    )
    assert (body["code"], body["title"]) == ("400 Bad Request", "Bad Request")


@pytest.mark.parametrize("accept", ["*/*", "application/json, text/html",
                                    "application/json;q=0.5, text/html"])  # fmt: skip
def test_glance_error_is_html_when_accept_allows_html_first(ims: Sandbox, accept: str) -> None:
    with client(ims, Accept=accept) as c:
        response = c.post("/v2/images", json=RESERVED)
    assert response.headers["Content-Type"] == "text/html; charset=UTF-8"
    assert "<h1>403 Forbidden</h1>" in response.text
    assert "Attribute &#x27;location&#x27; is reserved." in response.text


@pytest.mark.parametrize("accept", [None, "", "text/plain"])
def test_glance_error_is_plain_text_without_a_usable_accept(
    ims: Sandbox, accept: str | None
) -> None:
    c = httpx.Client(base_url=ims.url)
    if accept is None:
        del c.headers["Accept"]
    else:
        c.headers["Accept"] = accept
    with c:
        response = c.post("/v2/images", json=RESERVED)
    assert response.headers["Content-Type"] == "text/plain; charset=UTF-8"
    assert response.text == (
        "403 Forbidden\n\nAccess was denied to this resource.\n\n"
        " Attribute 'location' is reserved.  "
    )


def test_ims_errors_are_json_whatever_the_accept(ims: Sandbox) -> None:
    with client(ims, Accept="*/*") as c:
        response = c.post("/v2/images", json={"__os_version": "nope"})
    assert response.json() == {"error": {"code": "IMG.0056", "message": "Invalid OS version."}}


# -- list -------------------------------------------------------------------------------------


def _names(response: httpx.Response) -> list[str]:
    return [i["name"] for i in response.json()["images"]]


@pytest.fixture
def catalog(ims: Sandbox) -> Sandbox:
    """Five images of ours and two foreign ones (a public gold image, another's private one)."""
    with client(ims) as c:
        for name, tags, extra in [
            ("a", ["x", "y"], {"batch": "1"}),
            ("b", ["x"], {}),
            ("c", ["y"], {"batch": "1"}),
            ("d", [], {}),
            ("e", ["x", "y"], {"disk_format": "raw"}),
        ]:
            assert c.post("/v2/images", json={"name": name, "tags": tags, **extra}).is_success
    ims.add_image({"name": "gold", "visibility": "public", "owner": "huawei",
                   "__imagetype": "gold", "status": "active"})  # fmt: skip
    ims.add_image({"name": "theirs", "owner": "someone-else"})
    return ims


def test_list_is_newest_first_and_scoped_to_own_and_public(catalog: Sandbox) -> None:
    with client(catalog) as c:
        assert _names(c.get("/v2/images")) == ["gold", "e", "d", "c", "b", "a"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("name=c", ["c"]),
        ("tag=x", ["e", "b", "a"]),
        ("tag=x&tag=y", ["e", "a"]),
        ("batch=1", ["c", "a"]),
        ("__imagetype=private", ["e", "d", "c", "b", "a"]),
        ("__imagetype=gold", ["gold"]),
        ("disk_format=raw", ["e"]),
        ("status=active", ["gold"]),
        (f"owner={DEFAULT_PROJECT_ID}&name=in:a,d", ["d", "a"]),
        ("visibility=public", ["gold"]),
        ("visibility=private", ["e", "d", "c", "b", "a"]),
        ("sort_key=name&sort_dir=asc", ["a", "b", "c", "d", "e", "gold"]),
        ("protected=false&limit=2", ["gold", "e"]),
    ],
)
def test_list_filters(catalog: Sandbox, query: str, expected: list[str]) -> None:
    with client(catalog) as c:
        assert _names(c.get(f"/v2/images?{query}")) == expected


def test_list_filters_on_any_extra_property(ims: Sandbox) -> None:
    with client(ims) as c:
        c.post("/v2/images", json={"name": "one", "reconcile_marker": "abc"})
        c.post("/v2/images", json={"name": "two", "reconcile_marker": "def"})
        assert _names(c.get("/v2/images", params={"reconcile_marker": "abc"})) == ["one"]


@pytest.mark.parametrize(
    ("query", "message"),
    [("limit=ten", "limit param must be an integer"),
     ("limit=-1", "limit param must be positive"),
     ("marker=00000000-0000-0000-0000-000000000000", "No image found with ID"),
     ("visibility=everyone", "Invalid visibility value: everyone"),
     ("sort_key=owner", "Invalid sort key: owner"),
     ("sort=name:asc", "does not support the 'sort' parameter")],
)  # fmt: skip
def test_list_rejects_bad_parameters_with_400(ims: Sandbox, query: str, message: str) -> None:
    with client(ims) as c:
        response = c.get(f"/v2/images?{query}")
    assert response.status_code == 400
    assert message in error_text(response)


def _page_through(c: httpx.Client, url: str) -> list[dict[str, Any]]:
    pages = []
    while True:
        body = c.get(url).json()
        pages.append(body)
        if "next" not in body:
            return pages
        url = body["next"]


def test_paging_follows_next_until_a_short_page(ims: Sandbox) -> None:
    with client(ims) as c:
        created = [c.post("/v2/images", json={"name": f"n{i}"}).json()["id"] for i in range(7)]
        pages = _page_through(c, "/v2/images?limit=3")
    assert [len(p["images"]) for p in pages] == [3, 3, 1]
    assert [i["id"] for p in pages for i in p["images"]] == created[::-1]
    assert pages[0]["first"] == "/v2/images?limit=3"
    assert pages[0]["next"] == f"/v2/images?limit=3&marker={created[4]}"


def test_paging_an_exact_multiple_ends_with_an_empty_page(ims: Sandbox) -> None:
    with client(ims) as c:
        for i in range(6):
            c.post("/v2/images", json={"name": f"n{i}"})
        pages = _page_through(c, "/v2/images?limit=3")
    assert [len(p["images"]) for p in pages] == [3, 3, 0]


def test_next_link_collapses_repeated_params_like_glance(ims: Sandbox) -> None:
    with client(ims) as c:
        for _ in range(2):
            c.post("/v2/images", json={"tags": ["p", "q"]})
        body = c.get("/v2/images?tag=p&tag=q&limit=1").json()
    assert body["next"].startswith("/v2/images?tag=q&limit=1&marker=")


def test_limit_is_capped_at_1000(ims: Sandbox) -> None:
    for i in range(1001):
        ims.add_image({"name": f"n{i}"})
    with client(ims) as c:
        body = c.get("/v2/images?limit=5000").json()
    assert len(body["images"]) == 1000
    assert "next" in body


# -- show and delete --------------------------------------------------------------------------


def test_show_returns_the_image_and_404_for_unknown_or_foreign_private(catalog: Sandbox) -> None:
    theirs = next(i for i in catalog.images() if i["name"] == "theirs")
    mine = next(i for i in catalog.images() if i["name"] == "a")
    with client(catalog) as c:
        assert c.get(f"/v2/images/{mine['id']}").json() == mine
        assert c.get(f"/v2/images/{theirs['id']}").status_code == 404
        missing = c.get("/v2/images/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert "No image found with ID" in error_text(missing)


def test_delete_removes_the_image_from_show_and_list(ims: Sandbox) -> None:
    with client(ims) as c:
        image_id = c.post("/v2/images", json={"name": "gone"}).json()["id"]
        assert c.delete(f"/v2/images/{image_id}").status_code == 204
        assert c.get(f"/v2/images/{image_id}").status_code == 404
        assert c.delete(f"/v2/images/{image_id}").status_code == 404
        assert _names(c.get("/v2/images")) == []


def test_delete_of_a_protected_image_is_403(ims: Sandbox) -> None:
    with client(ims) as c:
        image_id = c.post("/v2/images", json={"protected": True}).json()["id"]
        response = c.delete(f"/v2/images/{image_id}")
    assert response.status_code == 403
    assert "is protected and cannot be deleted" in error_text(response)
    assert len(ims.images()) == 1


def test_delete_of_a_foreign_public_image_is_403(catalog: Sandbox) -> None:
    gold = next(i for i in catalog.images() if i["name"] == "gold")
    with client(catalog) as c:
        assert c.delete(f"/v2/images/{gold['id']}").status_code == 403


def test_unknown_paths_are_404_and_root_lists_versions(ims: Sandbox) -> None:
    with client(ims) as c:
        assert c.get("/v2/schemas/member").status_code == 404
        assert c.put("/v2/images").status_code == 404
        root = c.get("/")
    assert root.status_code == 200
    assert root.json()["versions"][0]["status"] == "CURRENT"


# -- auth -------------------------------------------------------------------------------------


@pytest.fixture
def guarded() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(token="s3cret", password="pw")) as sb:
        yield sb


@pytest.mark.parametrize("token", [None, "wrong"])
def test_configured_token_is_required_on_v2(guarded: Sandbox, token: str | None) -> None:
    headers = {"X-Auth-Token": token} if token else {}
    with client(guarded, **headers) as c:
        response = c.post("/v2/images", json={})
    assert response.status_code == 401
    assert response.json() == {"error": {
        "code": 401, "title": "Unauthorized",
        "message": "The request you have made requires authentication.",
    }}  # fmt: skip
    assert response.headers["WWW-Authenticate"] == f'Keystone uri="{guarded.url}"'
    assert guarded.images() == []


def test_configured_token_is_accepted_and_root_needs_none(guarded: Sandbox) -> None:
    with client(guarded, **{"X-Auth-Token": "s3cret"}) as c:
        assert c.post("/v2/images", json={}).status_code == 201
    assert httpx.get(f"{guarded.url}/").status_code == 200


def _password_auth(password: str) -> dict[str, Any]:
    user = {"name": "u", "password": password, "domain": {"name": "d"}}
    return {"auth": {"identity": {"methods": ["password"], "password": {"user": user}},
                     "scope": {"project": {"name": "cn-north-4"}}}}  # fmt: skip


def test_keystone_password_auth_issues_the_token_and_an_image_endpoint(guarded: Sandbox) -> None:
    response = httpx.post(f"{guarded.url}/v3/auth/tokens", json=_password_auth("pw"))
    assert response.status_code == 201
    assert response.headers["X-Subject-Token"] == "s3cret"
    token = response.json()["token"]
    assert token["project"] == {"id": DEFAULT_PROJECT_ID, "name": "cn-north-4",
                                "domain": {"id": "default", "name": "Default"}}  # fmt: skip
    image = next(s for s in token["catalog"] if s["type"] == "image")
    assert {e["url"] for e in image["endpoints"]} == {guarded.url}


def test_keystone_rejects_a_wrong_password(guarded: Sandbox) -> None:
    response = httpx.post(f"{guarded.url}/v3/auth/tokens", json=_password_auth("nope"))
    assert response.status_code == 401
    assert "X-Subject-Token" not in response.headers


# -- faults -----------------------------------------------------------------------------------


def _fault_statuses(seed: int) -> list[int]:
    config = SandboxConfig(seed=seed, fail_rate=0.3, throttle_rate=0.2, retry_after_s=0.01)
    with Sandbox(config) as sb, client(sb) as c:
        return [c.get("/v2/images").status_code for _ in range(40)]


def test_faults_repeat_for_the_same_seed() -> None:
    first = _fault_statuses(7)
    assert first == _fault_statuses(7)
    assert {200, 429} <= set(first) and set(first) & {500, 503}


def test_faults_differ_between_seeds() -> None:
    assert _fault_statuses(1) != _fault_statuses(2)


CREATE = {"name": "web", "disk_format": "zvhd2", "min_disk": 40,
          "__os_version": "Ubuntu 18.04 server 64bit"}


def test_a_fault_script_is_consumed_by_creates_in_order() -> None:
    config = SandboxConfig(faults="502, commit:504, drop, lost, garbage, 429, ok")
    with Sandbox(config) as sb, client(sb) as c:
        assert c.get("/v2/images").status_code == 200  # reads do not consume it
        answers = []
        for _ in range(8):
            try:
                response = c.post("/v2/images", json=CREATE)
            except httpx.TransportError:
                answers.append("no answer")
            else:
                answers.append(f"{response.status_code} {response.headers['content-type']}")
        committed = len(sb.images())
    assert answers == ["502 text/html", "504 text/html", "no answer", "no answer",
                       "201 text/html", "429 application/json", "201 application/json",
                       "201 application/json"]
    assert committed == 5  # commit:504, drop, garbage, ok and the unscripted last one


def test_per_name_scripts_cover_the_creates_and_look_ups_of_one_name() -> None:
    with Sandbox(SandboxConfig()) as sb, client(sb) as c:
        sb.script("web", post=["503"], get="500,ok")
        sb.script("", get=["429"])
        assert c.post("/v2/images", json={**CREATE, "name": "other"}).status_code == 201
        assert c.post("/v2/images", json=CREATE).status_code == 503
        assert c.get("/v2/images", params={"name": "other"}).status_code == 200
        assert c.get("/v2/images", params={"name": "web"}).status_code == 500
        assert c.get("/v2/images").status_code == 429
        assert sb.scripted_left == 1
        assert c.get("/v2/images", params={"name": "web"}).status_code == 200
        assert sb.scripted_left == 0


def test_a_timeout_step_holds_the_request_then_commits() -> None:
    with Sandbox(SandboxConfig(faults="timeout", hang_s=0.3)) as sb, client(sb) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v2/images", json=CREATE, timeout=0.05)
        wait_until = time.monotonic() + 5
        while not sb.images() and time.monotonic() < wait_until:
            time.sleep(0.02)
        assert [i["name"] for i in sb.images()] == ["web"]


@pytest.mark.parametrize("script", ["502,sometimes", "600", "commit:", "999", "drop;ok"])
def test_a_bad_fault_script_is_a_config_error(script: str) -> None:
    with pytest.raises(ConfigError, match="unknown fault"):
        SandboxConfig(faults=script)


def test_injected_5xx_commits_nothing() -> None:
    with Sandbox(SandboxConfig(fail_rate=1.0)) as sb, client(sb) as c:
        statuses = {c.post("/v2/images", json={"name": "x"}).status_code for _ in range(10)}
    assert statuses <= {500, 503} and statuses
    assert sb.images() == []


def test_throttled_requests_get_429_with_retry_after(ims: Sandbox) -> None:
    ims.config.throttle_rate = 1.0
    ims.config.retry_after_s = 0.05
    with client(ims) as c:
        response = c.post("/v2/images", json={})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "0.05"
    assert response.json()["error_code"] == "APIG.0308"
    assert ims.images() == []


def test_dropped_response_commits_the_image_but_the_client_gets_no_answer(ims: Sandbox) -> None:
    ims.config.drop_response_rate = 1.0
    with client(ims) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.post("/v2/images", json={"name": "ghost", "reconcile_marker": "n1"})
        ims.config.drop_response_rate = 0.0
        found = c.get("/v2/images", params={"reconcile_marker": "n1"}).json()["images"]
    assert [i["name"] for i in found] == ["ghost"]
    assert ims.post_count == 1


def test_latency_overlaps_across_parallel_requests() -> None:
    # 8 requests sent at once, each held 1 s: a server that serves them side by side has all
    # 8 in flight together. Counted by the server, not timed: a loaded machine may be slow
    # to start the threads, not by a second. One after another, it would never see 2.
    with Sandbox(SandboxConfig(latency_ms=0)) as sb:
        clients = [client(sb) for _ in range(8)]
        for c in clients:
            c.get("/v2/images")  # connected before the requests that count
        assert sb.capacity_counts == (1, 0)
        sb.config.latency_ms = 1000
        at_once(clients, lambda c: c.get("/v2/images"))
        assert sb.capacity_counts == (8, 0)


def test_request_count_counts_per_method_and_route(ims: Sandbox) -> None:
    with client(ims) as c:
        c.post("/v2/images", json={})
        c.post("/v2/images", content=b"{")
        c.get("/v2/images")
    assert ims.request_count[("POST", "images")] == 2
    assert ims.request_count[("GET", "images")] == 1


# -- lifecycle and persistence ----------------------------------------------------------------


def test_data_file_keeps_images_and_deleted_ids_across_restart(tmp_path: Path) -> None:
    data = str(tmp_path / "images.json")
    with Sandbox(SandboxConfig(data_file=data)) as sb, client(sb) as c:
        kept = c.post("/v2/images", json={"name": "kept"}).json()
        gone = c.post("/v2/images", json={"name": "gone"}).json()["id"]
        c.delete(f"/v2/images/{gone}")
    with Sandbox(SandboxConfig(data_file=data)) as sb, client(sb) as c:
        assert c.get(f"/v2/images/{kept['id']}").json() == kept
        assert _names(c.get("/v2/images")) == ["kept"]
        assert c.post("/v2/images", json={"id": gone}).status_code == 409


def test_unreadable_data_file_is_a_config_error(tmp_path: Path) -> None:
    data = tmp_path / "images.json"
    data.write_text("{not json")
    with pytest.raises(ConfigError, match=r"images\.json"):
        Sandbox(SandboxConfig(data_file=str(data)))


@pytest.mark.parametrize("kwargs", [{"profile": "aws"}, {"fail_rate": 1.5},
                                    {"fail_rate": 0.6, "throttle_rate": 0.6},
                                    {"capacity": 0}])  # fmt: skip
def test_invalid_config_is_a_config_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SandboxConfig(**kwargs)


def test_stop_closes_kept_alive_connections(ims: Sandbox) -> None:
    c = client(ims)
    assert c.get("/").status_code == 200
    ims.stop()
    with pytest.raises(httpx.TransportError):
        c.get("/")
    c.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_announces_its_url_and_exits_cleanly_on_signal(signum: int) -> None:
    code = (
        "from reconciler.sandbox import SandboxConfig, serve\n"
        "serve(SandboxConfig(), lambda url: print('listening on', url, flush=True))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        assert httpx.get(line.split()[-1] + "/").status_code == 200
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()


# -- OS versions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "fields"),
    [("Windows Server 2016 Datacenter 64bit", ("Windows", "Windows", "64")),
     ("CentOS 7.0 32bit", ("Linux", "CentOS", "32")),
     ("openSUSE 42.3 64bit", ("Linux", "OpenSUSE", "64")),
     ("SUSE Linux Enterprise Server 12 SP5 64bit", ("Linux", "SUSE", "64")),
     ("Redhat Linux Enterprise 6.4 32bit", ("Linux", "RedHat", "32")),
     ("Other(32 bit)", ("Other", "Other", "32")),
     ("CoreOS 1298.6.0", ("Linux", "CoreOS", "64"))],
)  # fmt: skip
def test_os_fields_derive_from_the_version(version: str, fields: tuple[str, str, str]) -> None:
    assert version in KNOWN_OS_VERSIONS
    derived = derive_os_fields(version)
    assert (derived["__os_type"], derived["__platform"], derived["__os_bit"]) == fields


def test_abbreviated_os_versions_are_expanded_exactly() -> None:
    assert {"Ubuntu 14.04.4 server 32bit", "Ubuntu 16.04.3 Server 64bit",
            "Oracle Linux Server release 6.10 64bit", "Debian GNU/Linux 8.10.0 64bit",
            "Other Linux(64 bit)"} <= KNOWN_OS_VERSIONS  # fmt: skip
    assert "Ubuntu 16.04.3 server 64bit" not in KNOWN_OS_VERSIONS  # capitalisation matters
    assert json.dumps(sorted(KNOWN_OS_VERSIONS)).count("64 bit") == 1  # only Other Linux


def test_sandbox_command_refuses_a_bad_fault_script(run_cli: Callable[..., Result]) -> None:
    result = run_cli(["sandbox", "--port", "0", "--faults", "502,sometimes"])
    assert result.exit_code == 1
    assert "unknown fault 'sometimes'" in result.output
    assert "Traceback" not in result.output


# -- capacity mode ------------------------------------------------------------------------------


def test_capacity_admits_up_to_its_size_with_a_load_factor_and_refuses_the_rest() -> None:
    cap = Capacity(2)
    with cap.admit("GET") as first, cap.admit("GET") as second, cap.admit("GET") as third:
        assert (first, second, third) == (1.0, 1.5, None)  # 1 + (n - 1) / capacity
    with cap.admit("GET") as again:  # every place was given back
        assert again == 1.0
    assert (cap.peak, cap.refused) == (2, 1)
    with Capacity(None).admit("GET") as unlimited:
        assert unlimited == 1.0


def test_capacity_counts_every_method_against_one_size_and_each_method_apart() -> None:
    cap = Capacity(2)
    with cap.admit("POST") as post, cap.admit("PATCH") as patch_, cap.admit("PATCH") as full:
        # A PATCH takes a worker as a POST does: the third request is refused, whatever it is.
        assert (post, patch_, full) == (1.0, 1.5, None)
    with cap.admit("PATCH"), cap.admit("PATCH"):
        pass
    assert (cap.peak, cap.refused) == (2, 1)
    posts, patches = cap.load("POST"), cap.load("PATCH")
    assert (posts.peak, posts.refused, posts.opening) == (1, 0, 1)
    # Two PATCHes at once (after one refused), the first of them in flight alone until then.
    assert (patches.peak, patches.refused, patches.opening) == (2, 1, 1)
    assert cap.load("DELETE") == Load()


def test_capacity_mode_answers_503_to_patches_beyond_its_size() -> None:
    # Four PATCHes at once (each held 1.5 s) against room for two: two are refused at once.
    with Sandbox(SandboxConfig(capacity=2, profile="glance")) as sb:
        clients = [client(sb) for _ in range(4)]
        image = clients[0].post("/v2/images", json={"name": "web"}).json()
        sb.config.latency_ms = 1500
        statuses: list[int] = []

        def send(c: httpx.Client) -> None:
            statuses.append(c.patch(
                f"/v2/images/{image['id']}", content=b'[{"op": "add", "path": "/team", '
                b'"value": "core"}]', headers={"Content-Type": V21}).status_code)

        at_once(clients, send)
        patches = sb.capacity_load("PATCH")
    assert (patches.peak, patches.refused) == (2, 2)
    assert sorted(statuses) == [200, 200, 503, 503]


def test_capacity_mode_answers_503_over_http_beyond_its_size() -> None:
    # Six requests at once (each held 1.5 s) against room for two: the others get 503 at once.
    with Sandbox(SandboxConfig(capacity=2)) as sb:
        clients = [client(sb) for _ in range(6)]
        for c in clients:
            c.get("/")  # connected before the requests that count
        sb.config.latency_ms = 1500
        statuses: list[int] = []
        at_once(clients, lambda c: statuses.append(c.get("/v2/images").status_code))
        peak, refused = sb.capacity_counts
    assert peak <= 2
    assert refused >= 1
    assert sorted(statuses) == [200] * (6 - refused) + [503] * refused
