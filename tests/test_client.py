"""ImageClient and error_from_response on httpx.MockTransport, plus two loopback-socket cases."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from apply_helpers import trickling_server
from hostile import Answer, HostileServer, Seen, image

from reconciler.client import (
    ImageClient,
    RetryPolicy,
    StaticToken,
    error_from_response,
    normalize_endpoint,
)
from reconciler.clock import ManualClock
from reconciler.errors import (
    ApiError,
    AuthError,
    ClientError,
    ConfigError,
    GatewayError,
    MalformedResponse,
    NotFoundError,
    ServerError,
    ThrottledError,
    TransportError,
)

TOKEN = "gAAAAABm-secret-token-0123456789abcdef"
FRESH_TOKEN = "gAAAAABm-fresh-token-fedcba9876543210"
ENDPOINT = "https://ims.cn-north-4.myhuaweicloud.com"

Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, tokens: Any = None) -> ImageClient:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return ImageClient(ENDPOINT, token_provider=tokens or StaticToken(TOKEN), http=http)


def error_for(
    status: int,
    body: str | bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    secrets: tuple[str, ...] = (TOKEN,),
) -> ApiError:
    request = httpx.Request("POST", ENDPOINT + "/v2/images")
    content = body.encode() if isinstance(body, str) else body
    response = httpx.Response(status, content=content, headers=headers, request=request)
    return error_from_response(response, secrets=secrets)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


class RefreshingTokens:
    """A provider that can refresh once, like a Keystone password provider."""

    def __init__(self, refreshes: int = 1) -> None:
        self.current = TOKEN
        self.refreshes = refreshes
        self.invalidated: list[str] = []

    def token(self) -> str:
        return self.current

    def invalidate(self, failed_token: str) -> bool:
        self.invalidated.append(failed_token)
        if not self.refreshes:
            return False
        self.refreshes -= 1
        self.current = FRESH_TOKEN
        return True


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "given",
    [ENDPOINT, ENDPOINT + "/", ENDPOINT + "/v2", ENDPOINT + "/v2/", f"  {ENDPOINT}/v2  "],
)
def test_endpoint_is_normalised_to_the_root(given: str) -> None:
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return json_response(200, {"id": "x"})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = ImageClient(given, token_provider=StaticToken(TOKEN), http=http)
    client.get_image("x")
    assert client.endpoint == ENDPOINT
    assert str(seen[0]) == ENDPOINT + "/v2/images/x"


@pytest.mark.parametrize("given", ["", "ims.cn-north-4.myhuaweicloud.com", "ftp://host/v2"])
def test_endpoint_without_http_scheme_is_a_config_error(given: str) -> None:
    with pytest.raises(ConfigError):
        ImageClient(given, token_provider=StaticToken(TOKEN))


def test_unreadable_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA bundle"):
        ImageClient(ENDPOINT, token_provider=StaticToken(TOKEN), verify=str(tmp_path / "no.pem"))


def test_static_token_hides_its_value_and_rejects_empty() -> None:
    assert TOKEN not in repr(StaticToken(TOKEN))
    with pytest.raises(ConfigError):
        StaticToken("")


def test_close_leaves_an_injected_http_client_open() -> None:
    http = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(204)))
    with ImageClient(ENDPOINT, token_provider=StaticToken(TOKEN), http=http):
        pass
    assert not http.is_closed


def test_close_closes_its_own_pool() -> None:
    client = ImageClient(ENDPOINT, token_provider=StaticToken(TOKEN))
    client.close()
    assert client._http.is_closed


# --------------------------------------------------------------------------- requests


def test_post_carries_token_json_headers_and_user_agent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(201, {"id": "4ca46bf1", "name": "web"})

    with make_client(handler) as client:
        image = client.create_image({"name": "web", "tags": ["a"]})

    request = seen[0]
    assert image == {"id": "4ca46bf1", "name": "web"}
    assert (request.method, request.url.path) == ("POST", "/v2/images")
    assert request.headers["X-Auth-Token"] == TOKEN
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("reconcile/")
    assert json.loads(request.content) == {"name": "web", "tags": ["a"]}


def test_get_sends_no_content_type_and_quotes_the_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(200, {"id": "a/b"})

    assert make_client(handler).get_image("a/b") == {"id": "a/b"}
    assert seen[0].url.raw_path == b"/v2/images/a%2Fb"
    assert "Content-Type" not in seen[0].headers


def test_get_image_returns_none_on_404() -> None:
    client = make_client(lambda r: json_response(404, {"message": "nope", "code": "404"}))
    assert client.get_image("gone") is None


def test_get_image_raises_on_other_errors() -> None:
    client = make_client(lambda r: json_response(403, {"message": "no", "code": "403"}))
    with pytest.raises(ClientError):
        client.get_image("x")


def test_delete_image_accepts_204() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(204)

    make_client(handler).delete_image("abc")
    assert seen == ["DELETE /v2/images/abc"]


def test_delete_missing_image_is_a_client_error_with_status_404() -> None:
    with pytest.raises(ClientError) as info:
        make_client(lambda r: httpx.Response(404)).delete_image("abc")
    assert info.value.status == 404


def test_empty_image_id_is_refused_before_sending() -> None:
    with pytest.raises(ValueError):
        make_client(lambda r: pytest.fail("sent")).get_image("")


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        (httpx.Response(201, text="<html>Created</html>"), "is not JSON"),
        (json_response(201, ["not", "an", "object"]), "is not a JSON object"),
        (json_response(201, {"name": "web"}), "id: Field required"),
        (json_response(201, {"id": ""}), "id: String should have at least 1 character"),
    ],
)
def test_create_with_unusable_2xx_body_is_a_malformed_response(
    response: httpx.Response, problem: str
) -> None:
    with pytest.raises(ApiError) as info:
        make_client(lambda r: response).create_image({"name": "web"})
    assert type(info.value) is MalformedResponse
    assert problem in str(info.value)
    assert "may have been created" in str(info.value)
    assert info.value.status == 201


def test_create_error_answer_maps_through_error_from_response() -> None:
    body = {"error": {"code": "IMG.0056", "message": "Invalid OS version."}}
    with pytest.raises(ClientError) as info:
        make_client(lambda r: json_response(400, body)).create_image({"name": "web"})
    assert info.value.code == "IMG.0056"


def test_client_is_usable_from_many_threads() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(200, {"id": request.url.path.rsplit("/", 1)[-1]})

    client = make_client(handler)
    ids = [f"id-{n}" for n in range(200)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        images = list(pool.map(client.get_image, ids))
    assert [image["id"] for image in images if image] == ids


# --------------------------------------------------------------------------- 401 re-auth


def test_401_invalidates_and_retries_once_with_a_fresh_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers["X-Auth-Token"] == TOKEN:
            return json_response(401, {"error_code": "APIGW.0301", "error_msg": "expired"})
        return json_response(201, {"id": "new"})

    tokens = RefreshingTokens()
    assert make_client(handler, tokens).create_image({"name": "web"}) == {"id": "new"}
    assert tokens.invalidated == [TOKEN]
    assert [r.headers["X-Auth-Token"] for r in seen] == [TOKEN, FRESH_TOKEN]
    assert seen[1].content == seen[0].content


def test_second_401_is_an_auth_error_without_a_third_request() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["X-Auth-Token"])
        return json_response(401, {"error_code": "APIGW.0301", "error_msg": "expired"})

    tokens = RefreshingTokens(refreshes=5)
    with pytest.raises(AuthError) as info:
        make_client(handler, tokens).get_image("x")
    assert seen == [TOKEN, FRESH_TOKEN]
    assert info.value.code == "APIGW.0301"


def test_static_token_fails_on_the_first_401() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401)

    with pytest.raises(AuthError):
        make_client(handler).get_image("x")
    assert len(seen) == 1


@pytest.mark.parametrize("status", [403, 429, 500, 503])
def test_other_errors_are_not_retried(status: int) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status)

    tokens = RefreshingTokens()
    with pytest.raises(ApiError):
        make_client(handler, tokens).create_image({"name": "web"})
    assert len(seen) == 1
    assert tokens.invalidated == []


# --------------------------------------------------------------------------- read retries


def retrying_client(answers: list[int | None], clock: ManualClock) -> tuple[ImageClient, list[str]]:
    """A client whose server answers ``answers`` in turn (None: the connection drops), then
    200; returns it and the methods it received."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        status = answers.pop(0) if answers else 200
        if status is None:
            raise httpx.ReadError("connection reset", request=request)
        if status == 200:
            return json_response(200, {"id": "i1", "name": "web", "status": "active"})
        return httpx.Response(status, headers={"Retry-After": "2"})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = ImageClient(ENDPOINT, token_provider=StaticToken(TOKEN), http=http,
                         read_retry=RetryPolicy(attempts=4), clock=clock)
    return client, seen


@pytest.mark.parametrize("answers", [[429], [502], [503], [504], [None], [503, 429, None]])
def test_reads_are_retried_after_busy_answers_on_the_injected_clock(
        answers: list[int | None]) -> None:
    clock = ManualClock(datetime(2024, 5, 17, tzinfo=UTC))
    client, seen = retrying_client(list(answers), clock)
    assert client.get_image("i1") == {"id": "i1", "name": "web", "status": "active"}
    assert seen == ["GET"] * (len(answers) + 1)
    assert len(clock.sleeps) == len(answers)
    # Retry-After is followed where there is an answer; a dropped connection backs off.
    assert all(d == 2.0 for d, a in zip(clock.sleeps, answers, strict=True) if a is not None)


@pytest.mark.parametrize(("status", "kind"), [(400, ClientError), (403, ClientError)])
def test_reads_are_not_retried_after_client_errors(status: int, kind: type[ApiError]) -> None:
    clock = ManualClock(datetime(2024, 5, 17, tzinfo=UTC))
    client, seen = retrying_client([status], clock)
    with pytest.raises(kind):
        client.get_image("i1")
    assert seen == ["GET"] and clock.sleeps == []


def test_reads_give_up_after_the_last_attempt() -> None:
    clock = ManualClock(datetime(2024, 5, 17, tzinfo=UTC))
    client, seen = retrying_client([503, 503, 503, 503, 503], clock)
    with pytest.raises(ServerError):
        client.get_image("i1")
    assert len(seen) == 4 and len(clock.sleeps) == 3


def test_writes_are_never_retried_by_the_client() -> None:
    clock = ManualClock(datetime(2024, 5, 17, tzinfo=UTC))
    client, seen = retrying_client([503], clock)
    with pytest.raises(ServerError):
        client.create_image({"name": "web"})
    assert seen == ["POST"] and clock.sleeps == []


# --------------------------------------------------------------------------- list and find


def page(images: list[dict[str, Any]], next_link: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"images": images, "first": "/v2/images", "schema": "/v2/schemas/images"}
    if next_link:
        body["next"] = next_link
    return json_response(200, body)


def test_paging_keeps_repeated_params_and_sets_marker_to_last_id() -> None:
    seen: list[httpx.QueryParams] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params)
        if "marker" not in request.url.params:
            # Glance's own next link has lost the second tag (docs/api-contract.md §10.2).
            return page([{"id": "i1"}, {"id": "i2"}], "/v2/images?tag=a&limit=2&marker=i2")
        return page([{"id": "i3"}])

    images = list(make_client(handler).list_images({"tag": ["a", "b"], "owner": "p"}, page_size=2))

    assert [i["id"] for i in images] == ["i1", "i2", "i3"]
    assert len(seen) == 2
    assert seen[1].get_list("tag") == ["a", "b"]
    assert seen[1]["owner"] == "p"
    assert seen[1]["limit"] == "2"
    assert seen[1]["marker"] == "i2"


def test_paging_stops_on_the_empty_page_after_an_exact_multiple() -> None:
    pages = [
        page([{"id": "i1"}, {"id": "i2"}], "/v2/images?marker=i2"),
        page([{"id": "i3"}, {"id": "i4"}], "/v2/images?marker=i4"),
        page([]),
    ]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return pages[len(seen) - 1]

    images = list(make_client(handler).list_images(page_size=2))
    assert [i["id"] for i in images] == ["i1", "i2", "i3", "i4"]
    assert len(seen) == 3


def test_short_page_without_next_ends_the_listing() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return page([{"id": "i1"}])

    assert len(list(make_client(handler).list_images(page_size=5))) == 1
    assert len(seen) == 1


def test_short_page_with_next_continues_when_the_server_caps_limit() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "marker" not in request.url.params:
            return page([{"id": "i1"}, {"id": "i2"}], "/v2/images?marker=i2&limit=2")
        return page([{"id": "i3"}])

    images = list(make_client(handler).list_images(page_size=3))
    assert [i["id"] for i in images] == ["i1", "i2", "i3"]


def test_paging_that_does_not_advance_is_an_error_not_a_loop() -> None:
    client = make_client(lambda r: page([{"id": "i1"}], "/v2/images?marker=i1"))
    with pytest.raises(MalformedResponse, match="page 2 lists image i1 again"):
        list(client.list_images(page_size=1))


def test_list_body_without_images_is_an_api_error() -> None:
    with pytest.raises(MalformedResponse, match="images: Field required"):
        list(make_client(lambda r: json_response(200, {"foo": []})).list_images())


@pytest.mark.parametrize(
    ("filters", "page_size"),
    [({"limit": "5"}, 10), ({"marker": "x"}, 10), (None, 0), (None, 1001)],
)
def test_list_rejects_managed_params_and_bad_page_size(
    filters: dict[str, str] | None, page_size: int
) -> None:
    client = make_client(lambda r: pytest.fail("sent"))
    with pytest.raises(ValueError):
        client.list_images(filters, page_size=page_size)


def test_find_images_keeps_only_exact_live_matches() -> None:
    seen: list[httpx.QueryParams] = []
    listed = [
        {"id": "1", "name": "web", "status": "active", "__imagetype": "private"},
        {"id": "2", "name": "Web", "status": "active", "__imagetype": "private"},
        {"id": "3", "name": "web ", "status": "active", "__imagetype": "private"},
        {"id": "4", "name": "web", "status": "deleted", "__imagetype": "private"},
        {"id": "5", "name": "web", "status": "pending_delete", "__imagetype": "private"},
        {"id": "6", "name": "web", "status": "killed", "__imagetype": "private"},
        {"id": "7", "name": "web", "status": "queued", "__imagetype": "Private"},
        {"id": "8", "name": "web", "status": "queued", "__imagetype": "private"},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params)
        return page(listed)

    found = make_client(handler).find_images("web", __imagetype="private")
    assert [i["id"] for i in found] == ["1", "8"]
    assert seen[0]["name"] == "web"
    assert seen[0]["__imagetype"] == "private"


def test_find_images_does_not_send_a_name_glance_would_read_as_an_operator() -> None:
    seen: list[httpx.QueryParams] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params)
        return page([{"id": "1", "name": "in:web"}, {"id": "2", "name": "web"}])

    found = make_client(handler).find_images("in:web")
    assert [i["id"] for i in found] == ["1"]
    assert "name" not in seen[0]


# --------------------------------------------------------------------------- error bodies

WEBOB_HTML = (
    "<html>\n <head>\n  <title>400 Bad Request</title>\n </head>\n <body>\n"
    "  <h1>400 Bad Request</h1>\n  Provided object does not match schema &#x27;image&#x27;: "
    "&#x27;x&#x27; is too long<br /><br />\n\n\n\n </body>\n</html>"
)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, AuthError), (403, ClientError), (404, NotFoundError), (409, ClientError),
        (413, ClientError), (429, ThrottledError), (500, ServerError), (501, ServerError),
        (502, GatewayError), (503, ServerError), (504, GatewayError), (599, ServerError),
        (302, ApiError), (100, ApiError),
    ],
)
def test_each_status_maps_to_one_error_class(status: int, kind: type[ApiError]) -> None:
    assert type(error_for(status, "", {})) is kind


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_busy_answers_carry_their_retry_after(status: int) -> None:
    assert error_for(status, "", {"Retry-After": "7"}).retry_after == 7.0


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "code", "message"),
    [
        pytest.param(
            400,
            {"Content-Type": "application/json"},
            "{\"message\": \"Provided object does not match schema 'image': 'x' is too long"
            '<br /><br />\\n\\n\\n", "code": "400 Bad Request", "title": "Bad Request"}',
            ClientError,
            "400",
            "Provided object does not match schema 'image': 'x' is too long",
            id="glance-json",
        ),
        pytest.param(
            403,
            {"Content-Type": "application/json"},
            '{"message": "Access was denied to this resource.<br /><br />\\nAttribute '
            '\'location\' is reserved.\\n\\n", "code": "403 Forbidden", "title": "Forbidden"}',
            ClientError,
            "403",
            "Access was denied to this resource. Attribute 'location' is reserved.",
            id="glance-json-detail",
        ),
        pytest.param(
            400,
            {"Content-Type": "text/html; charset=UTF-8"},
            WEBOB_HTML,
            ClientError,
            "400",
            "Provided object does not match schema 'image': 'x' is too long",
            id="glance-html",
        ),
        pytest.param(
            400,
            {"Content-Type": "text/plain; charset=UTF-8"},
            "400 Bad Request\n\nThe image name is too long.\n\n   ",
            ClientError,
            "400",
            "The image name is too long.",
            id="glance-plain-text",
        ),
        pytest.param(
            502,
            {"Content-Type": "text/html"},
            "<html><head><title>502 Bad Gateway</title></head><body><center>"
            "<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>",
            GatewayError,
            "502",
            "nginx",
            id="proxy-html",
        ),
        pytest.param(
            400,
            {"Content-Type": "application/json"},
            '{"error": {"message": "Invalid OS version.", "code": "IMG.0056"}}',
            ClientError,
            "IMG.0056",
            "Invalid OS version.",
            id="ims",
        ),
        pytest.param(
            401,
            {"Content-Type": "application/json", "WWW-Authenticate": 'Keystone uri="x"'},
            '{"error": {"code": 401, "title": "Unauthorized", '
            '"message": "The request you have made requires authentication."}}',
            AuthError,
            "401",
            "The request you have made requires authentication.",
            id="keystonemiddleware",
        ),
        pytest.param(
            401,
            {"Content-Type": "application/json"},
            '{"error_msg": "Incorrect IAM authentication information: x-auth-token not found",'
            ' "error_code": "APIGW.0301", "request_id": "5c6e0b1f"}',
            AuthError,
            "APIGW.0301",
            "Incorrect IAM authentication information: x-auth-token not found",
            id="api-gateway",
        ),
        pytest.param(
            500,
            {"Content-Type": "application/json"},
            '{"errorCode": "IMS.0001", "errorMsg": "System error."}',
            ServerError,
            "IMS.0001",
            "System error.",
            id="errorCode-errorMsg",
        ),
        pytest.param(
            413,
            {"Content-Type": "application/json"},
            '{"unexpected": true}',
            ClientError,
            "413",
            '{"unexpected": true}',
            id="unknown-json",
        ),
        pytest.param(503, {}, "", ServerError, "503", "Service Unavailable", id="empty"),
        pytest.param(429, {}, "", ThrottledError, "429", "Too Many Requests", id="throttled"),
        pytest.param(302, {}, "", ApiError, "302", "Found", id="redirect"),
    ],
)
def test_error_body_shapes(
    status: int,
    headers: dict[str, str],
    body: str,
    kind: type[ApiError],
    code: str,
    message: str,
) -> None:
    error = error_for(status, body, headers)
    assert type(error) is kind
    assert (error.status, error.code, error.message) == (status, code, message)


def test_api_gateway_request_id_comes_from_the_body() -> None:
    body = '{"error_msg": "denied", "error_code": "APIGW.0301", "request_id": "5c6e0b1f"}'
    assert error_for(401, body).request_id == "5c6e0b1f"


def test_oversized_html_is_truncated_and_has_no_tags() -> None:
    body = (
        "<html><head><title>500 Internal Server Error</title><style>p {}</style></head><body>"
        "<h1>500 Internal Server Error</h1>"
        + "<p>The server hit an <b>unexpected</b> condition.</p>" * 20_000
        + "</body></html>"
    )
    assert len(body) > 1_000_000
    error = error_for(500, body, {"Content-Type": "text/html"})
    assert isinstance(error, ServerError)
    assert len(error.message) <= 500
    assert error.message.endswith("…")
    assert error.message.startswith("The server hit an unexpected condition.")
    assert "<" not in str(error) and ">" not in str(error)
    assert "Internal Server Error" not in error.message


def test_error_str_names_method_and_url_without_query() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(400, {"message": "Invalid visibility value: x", "code": "400"})

    with pytest.raises(ClientError) as info:
        list(make_client(handler).list_images({"visibility": "x"}))
    assert info.value.method == "GET"
    assert info.value.url == ENDPOINT + "/v2/images"
    assert str(info.value).startswith(f"GET {ENDPOINT}/v2/images HTTP 400: Invalid visibility")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"Retry-After": " 7 "}, 7.0),
        (
            {
                "Date": "Wed, 21 Oct 2026 07:28:00 GMT",
                "Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT",
            },
            30.0,
        ),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds_and_http_date(headers: dict[str, str], expected: float | None) -> None:
    error = error_for(503, "", headers)
    assert isinstance(error, ServerError)
    assert error.retry_after == expected


def test_retry_after_http_date_without_server_date_uses_the_local_clock() -> None:
    headers = {"Retry-After": formatdate(time.time() + 60, usegmt=True)}
    retry_after = error_for(429, "", headers).retry_after
    assert retry_after is not None and 55 <= retry_after <= 60


@pytest.mark.parametrize(
    "header", ["X-Request-Id", "x-request-id", "X-Openstack-Request-Id", "x-openstack-request-id"]
)
def test_request_id_from_either_header(header: str) -> None:
    error = error_for(500, "", {header: "req-5c6e0b1f"})
    assert error.request_id == "req-5c6e0b1f"
    assert "(request id req-5c6e0b1f)" in str(error)


def test_request_id_header_wins_over_body() -> None:
    body = '{"error_msg": "denied", "error_code": "APIGW.0301", "request_id": "from-body"}'
    assert error_for(401, body, {"X-Request-Id": "from-header"}).request_id == "from-header"


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (400, {}, json.dumps({"message": f"bad token {TOKEN}<br />", "code": "400 Bad Request"})),
        (401, {}, json.dumps({"error_code": TOKEN, "error_msg": f"token {TOKEN} expired"})),
        (400, {}, json.dumps({"error": {"code": "IMG.0001", "message": f"x-auth-token={TOKEN}"}})),
        (500, {"Content-Type": "text/html"}, f"<html><body><h1>Oops</h1>{TOKEN}</body></html>"),
        (502, {"Content-Type": "text/plain"}, f"upstream said: X-Auth-Token: {TOKEN}"),
        (500, {"X-Request-Id": TOKEN}, ""),
        (500, {}, json.dumps({"message": TOKEN * 40, "code": "500"})),
    ],
)
def test_token_never_appears_in_an_error(status: int, headers: dict[str, str], body: str) -> None:
    error = error_for(status, body, headers)
    assert TOKEN not in str(error)
    assert TOKEN not in repr(error)
    assert TOKEN[:20] not in str(error)  # not even a truncated piece of it


def test_tokens_sent_by_the_client_are_redacted_after_a_refresh() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        used = request.headers["X-Auth-Token"]
        return json_response(401, {"error_code": "APIGW.0301", "error_msg": f"{TOKEN} / {used}"})

    with pytest.raises(AuthError) as info:
        make_client(handler, RefreshingTokens()).create_image({"name": "web"})
    for secret in (TOKEN, FRESH_TOKEN):
        assert secret not in str(info.value)
        assert secret not in repr(info.value)


# --------------------------------------------------------------------------- transport errors


@pytest.mark.parametrize(
    ("exc_type", "sent"),
    [
        (httpx.ConnectError, False),
        (httpx.ConnectTimeout, False),
        (httpx.PoolTimeout, False),
        (httpx.ReadTimeout, True),
        (httpx.RemoteProtocolError, True),
        (httpx.ReadError, True),
        (httpx.WriteError, True),
        (httpx.WriteTimeout, True),
    ],
)
def test_transport_failures_say_whether_the_request_may_have_been_sent(
    exc_type: type[httpx.TransportError], sent: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(f"failed while sending X-Auth-Token: {TOKEN}", request=request)

    with pytest.raises(TransportError) as info:
        make_client(handler).create_image({"name": "web"})
    error = info.value
    assert error.sent is sent
    assert (error.method, error.url) == ("POST", ENDPOINT + "/v2/images")
    assert exc_type.__name__ in str(error)
    assert TOKEN not in str(error) and TOKEN not in repr(error)
    assert error.__cause__ is None and error.__suppress_context__


# --------------------------------------------------------------------------- real sockets


class _HangUpHandler(BaseHTTPRequestHandler):
    """Reads the whole request, then closes the connection without answering."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hang_up_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HangUpHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_server_hanging_up_after_the_request_is_sent_true(hang_up_server: str) -> None:
    client = ImageClient(
        hang_up_server, token_provider=StaticToken(TOKEN), connect_timeout=2, read_timeout=2
    )
    with client, pytest.raises(TransportError) as info:
        client.create_image({"name": "web"})
    assert info.value.sent is True
    assert "RemoteProtocolError" in str(info.value)


def test_closed_port_is_sent_false() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe socket is closed.
    client = ImageClient(
        f"http://127.0.0.1:{port}", token_provider=StaticToken(TOKEN), connect_timeout=2
    )
    with client, pytest.raises(TransportError) as info:
        client.create_image({"name": "web"})
    assert info.value.sent is False
    assert "ConnectError" in str(info.value)


@pytest.mark.parametrize("head", [True, False], ids=["trickled-head", "trickled-body"])
@pytest.mark.timeout(30)
def test_a_trickling_server_cannot_hold_a_request_past_its_deadline(head: bool) -> None:
    with trickling_server(0.05, head=head) as url:
        client = ImageClient(url, token_provider=StaticToken(TOKEN), read_timeout=5,
                             request_timeout=0.5)
        started = time.monotonic()
        with client, pytest.raises(TransportError) as info:
            client.create_image({"name": "web"})
        took = time.monotonic() - started
    assert info.value.sent is True  # it may have been received: the applier looks it up
    assert "deadline of 0.5 s" in str(info.value)
    assert took < 5  # each byte came within the read timeout; only the deadline ended it


@pytest.mark.timeout(30)
def test_abort_fails_a_request_in_flight_and_every_later_one() -> None:
    with trickling_server(0.05) as url:
        client = ImageClient(url, token_provider=StaticToken(TOKEN), read_timeout=20,
                             request_timeout=20)
        timer = threading.Timer(0.3, client.abort)
        timer.start()
        started = time.monotonic()
        with client:
            with pytest.raises(TransportError) as info:
                client.create_image({"name": "web"})
            assert time.monotonic() - started < 10
            assert info.value.sent is True
            with pytest.raises(TransportError) as later:
                client.create_image({"name": "web"})
        timer.join()
    assert later.value.sent is False and "the run was stopped" in str(later.value)


@pytest.mark.parametrize("url", ["https://alice:pw-SECRET-1@ims.example.com",
                                 "https://alice@ims.example.com/v2", "alice:pw-SECRET-1@ims"])
def test_an_endpoint_with_userinfo_is_refused_without_printing_it(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalize_endpoint(url)
    assert "carries a user name or password" in str(info.value)
    assert "alice" not in str(info.value) and "pw-SECRET" not in str(info.value)


def test_an_at_sign_after_the_host_is_no_userinfo() -> None:
    assert normalize_endpoint("https://ims.example.com/a@b") == "https://ims.example.com/a@b"


def test_a_cookie_the_server_sets_is_kept_and_sent_back() -> None:
    """The client looks for cookies only in answers that set one (looking in every answer
    costs as much as reading its JSON); what a gateway sets is kept and returned as ever."""
    def answer(seen: Seen) -> Answer:
        if seen.method == "POST":
            return Answer.json(201, image(f"id-{len(seen.body)}", name="web"),
                               **({"Set-Cookie": "lb=node-2; Path=/"}
                                  if "cookie" not in seen.headers else {}))
        return Answer.json(200, {"images": []})

    with HostileServer(answer) as server, \
            ImageClient(server.url, token_provider=StaticToken("tok")) as client:
        list(client.list_images({"name": "web"}))  # no cookie yet, none set
        client.create_image({"name": "web"})  # sets one
        list(client.list_images({"name": "web"}))
    cookies = [s.headers.get("cookie") for s in server.seen]
    assert cookies == [None, None, "lb=node-2"]
