"""AK/SK request signing (docs/api-contract.md §11.3) checked against Huawei's own SDK.

For each request the Image client sends, the ``Authorization`` header made by
``reconciler.auth.AkSkAuth`` must equal the one ``huaweicloudsdkcore.signer.signer.Signer``
computes for the same method, host, path, query, signed headers and body. The SDK side is built
from the test's own inputs the way the SDK's ``ApiClient`` builds its ``SdkRequest`` (path
parameters quoted with ``safe=''``, query parameters as decoded ``(key, value)`` tuples, one per
repeated value), not from what reconcile produced; a second check verifies each request as
the API gateway would, from the request as received.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from click.testing import CliRunner
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from reconciler.auth import AkSkAuth, NoToken, resolve
from reconciler.cli import Runtime, cli
from reconciler.client import ImageClient
from reconciler.sandbox import Sandbox, SandboxConfig
from reconciler.sandbox.app import Request

AK = "HPUAL2XKQZ3MJ0W7EXAMPLE"
SK = "sk-PLANTED-Wq8vJz1nK5tY3rB7xC0dF2gH4"
PROJECT = "b912fb4a4c464b568ecfca1071b21b10"
SECURITY_TOKEN = "gQpjbi1ub3J0aC00-EXAMPLE-security-token"
HOST = "ims.cn-north-4.myhuaweicloud.com"
FIXED = datetime(2024, 5, 17, 12, 30, 0, tzinfo=UTC)
SDK_DATE = "20240517T123000Z"
IMAGE = {"id": "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba86", "name": "x", "status": "queued"}


def answer(request: httpx.Request) -> httpx.Response:
    if request.method == "GET" and request.url.path == "/v2/images":
        return httpx.Response(200, json={"images": []})
    if request.method == "DELETE":
        return httpx.Response(204)
    if request.method == "POST":  # the image asked for, as a server answers it
        return httpx.Response(201, json={**IMAGE, "name": json.loads(request.content)["name"]})
    image_id = unquote(request.url.raw_path.decode().rsplit("/", 1)[1])
    return httpx.Response(200, json={**IMAGE, "id": image_id})


def sent_by_client(call: str, argument: Any, security_token: str | None = None) -> httpx.Request:
    """The one request ``ImageClient.<call>(argument)`` sends, signed with a fixed clock."""
    sent: list[httpx.Request] = []

    def capture(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answer(request)

    signer = AkSkAuth(AK, SK, PROJECT, security_token, clock=lambda: FIXED)
    http = httpx.Client(transport=httpx.MockTransport(capture))
    with ImageClient(f"https://{HOST}", token_provider=NoToken(), http=http,
                     auth=signer) as client:
        result = getattr(client, call)(argument)
        if call == "list_images":
            list(result)
    assert len(sent) == 1
    return sent[0]


def sdk_authorization(method: str, resource_path: str, query: Sequence[tuple[str, str]],
                      body: bytes | None, security_token: str | None = None) -> str:
    """What Huawei's SDK signer puts in ``Authorization`` for this request."""
    headers = {"Host": HOST, "X-Project-Id": PROJECT, "X-Sdk-Date": SDK_DATE}
    if body:
        headers["Content-Type"] = "application/json"
    if security_token:
        headers["X-Security-Token"] = security_token
    request = SdkRequest(method=method, schema="https", host=HOST, resource_path=resource_path,
                         query_params=list(query), header_params=headers, body=body)
    signed = Signer(BasicCredentials(AK, SK, PROJECT)).sign(request)
    return str(signed.header_params["Authorization"])


def image_path(image_id: str) -> str:
    """The SDK's resource path for ``/v2/images/{image_id}`` (``ApiClient._parse_path_params``)."""
    return "/v2/images/" + quote(image_id, safe="")


def list_query(filters: Mapping[str, str | list[str]]) -> list[tuple[str, str]]:
    """The SDK's query tuples (collection format ``multi``) for the client's listing."""
    query: list[tuple[str, str]] = []
    for key, value in filters.items():
        query.extend((key, v) for v in ([value] if isinstance(value, str) else value))
    return [*query, ("limit", "1000")]  # ImageClient pages with limit=1000


LISTINGS = {
    "unicode name": {"name": "Ubuntu 镜像 18.04 ü"},
    "repeated tags out of order": {"tag": ["zeta", "alpha", "Beta", "ü-tag", "alpha"]},
    "reserved characters": {"name": "a+b=c&d/e?f#g h~i*j'k(l)m!n,o;p:q@r$s",
                            "__os_version": "CentOS 7.6 64bit"},
    "empty value and percent": {"name": "", "owner": "50% off", "x": "%41"},
    "property filters": {"__imagetype": "private", "protected": "false",
                         "__os_version": "Windows Server 2016 Datacenter 64bit"},
}


@pytest.mark.parametrize("filters", LISTINGS.values(), ids=list(LISTINGS))
def test_listing_signature_equals_the_sdk_signature(filters: dict[str, Any]) -> None:
    ours = sent_by_client("list_images", filters)
    assert ours.headers["Authorization"] == sdk_authorization(
        "GET", "/v2/images", list_query(filters), None)


def test_create_with_a_json_body_signature_equals_the_sdk_signature() -> None:
    body = {"name": "镜像-ü base", "__os_version": "Ubuntu 18.04 server 64bit",
            "container_format": "bare", "disk_format": "zvhd2", "min_disk": 40,
            "min_ram": 1024, "tags": ["a b", "ü"], "protected": False,
            "reconcile_marker": "n-0001"}
    ours = sent_by_client("create_image", body)
    assert ours.content == json.dumps(body, ensure_ascii=False).encode()  # what was signed
    assert ours.headers["Authorization"] == sdk_authorization(
        "POST", "/v2/images", [], ours.content)


IMAGE_IDS = {
    "uuid": "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba86",
    "space plus tilde star": "img 1+2~x*y",
    "unicode": "镜像-ü",
    "slash and question mark": "a/b?c#d",
    "lone percent": "50%off",
}


@pytest.mark.parametrize("image_id", IMAGE_IDS.values(), ids=list(IMAGE_IDS))
@pytest.mark.parametrize("call", ["get_image", "delete_image"])
def test_path_with_special_characters_signature_equals_the_sdk_signature(call: str,
                                                                         image_id: str) -> None:
    ours = sent_by_client(call, image_id)
    method = "GET" if call == "get_image" else "DELETE"
    assert ours.headers["Authorization"] == sdk_authorization(
        method, image_path(image_id), [], None)


@pytest.mark.parametrize("image_id", ["a%41b", "sale-100%25"])
def test_path_with_a_percent_escape_signature_equals_the_sdk_signature(image_id: str) -> None:
    ours = sent_by_client("get_image", image_id)
    assert ours.headers["Authorization"] == sdk_authorization(
        "GET", image_path(image_id), [], None)


def test_security_token_is_sent_and_signed_like_the_sdk() -> None:
    filters = {"name": "temporary credentials"}
    ours = sent_by_client("list_images", filters, security_token=SECURITY_TOKEN)
    assert ours.headers["X-Security-Token"] == SECURITY_TOKEN
    assert ours.headers["Authorization"] == sdk_authorization(
        "GET", "/v2/images", list_query(filters), None, security_token=SECURITY_TOKEN)


def test_signed_request_has_the_sdk_headers_and_no_token() -> None:
    ours = sent_by_client("create_image", {"name": "x"})
    assert ours.headers["X-Sdk-Date"] == SDK_DATE
    assert ours.headers["X-Project-Id"] == PROJECT
    assert "X-Auth-Token" not in ours.headers
    assert ours.headers["Authorization"].startswith(
        f"SDK-HMAC-SHA256 Access={AK}, "
        "SignedHeaders=content-type;host;x-project-id;x-sdk-date, Signature=")


def test_a_different_secret_key_gives_a_different_signature() -> None:
    # The comparison above can fail: the SDK's answer depends on the secret key.
    ours = sent_by_client("list_images", {"name": "x"})
    other = Signer(BasicCredentials(AK, SK + "x", PROJECT)).sign(SdkRequest(
        method="GET", schema="https", host=HOST, resource_path="/v2/images",
        query_params=list_query({"name": "x"}),
        header_params={"Host": HOST, "X-Project-Id": PROJECT, "X-Sdk-Date": SDK_DATE}))
    assert ours.headers["Authorization"] != other.header_params["Authorization"]


# --- end to end: the CLI's requests as the API gateway receives them -----------------------

def gateway_check(request: Request) -> str | None:
    """Verify a received request like APIG would, with the SDK's signer; None if valid."""
    authorization = request.headers.get("authorization", "")
    prefix = f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders="
    if not authorization.startswith(prefix):
        return f"not signed: {authorization!r}"
    signed = authorization[len(prefix):].split(",", 1)[0].split(";")
    if not {"host", "x-project-id", "x-sdk-date"} <= set(signed):
        return f"signs too little: {signed}"
    date = datetime.strptime(request.headers["x-sdk-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if abs(datetime.now(UTC) - date) > timedelta(minutes=15):
        return "clock skew"
    sdk = SdkRequest(method=request.method, schema="http", host=request.headers["host"],
                     resource_path=request.path, query_params=list(request.query),
                     header_params={h: request.headers[h] for h in signed},
                     body=request.body or b"")
    expected = Signer(BasicCredentials(AK, SK, PROJECT)).sign(sdk).header_params["Authorization"]
    return None if expected == authorization else f"signature mismatch for {request.path}"


Checked = list[tuple[str, list[tuple[str, str]], str | None]]  # method, query, verdict


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Sandbox, Checked]]:
    """A sandbox checking every /v2 request as the gateway would. Every create's answer is
    lost, so the client also looks each image up by name (a signed query)."""
    checked: Checked = []
    # glance: names may be non-ASCII; every create is committed, then its answer dropped.
    with Sandbox(SandboxConfig(profile="glance", drop_response_rate=1.0)) as sb:
        app = sb._app
        handle = app.handle

        def check(request: Request) -> Any:
            if request.path.startswith("/v2"):
                checked.append((request.method, request.query, gateway_check(request)))
            return handle(request)

        monkeypatch.setattr(app, "handle", check)
        yield sb, checked


UNICODE_NAME = "镜像-ü base+x"


def test_cli_requests_signed_with_ak_sk_verify_like_the_gateway_would(
        gateway: tuple[Sandbox, Checked], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sb, checked = gateway
    for var in list(os.environ):
        if var.startswith(("RECONCILE_", "OS_", "HUAWEICLOUD_")):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "images.yaml").write_text(
        "images:\n"
        f"  - {{name: {UNICODE_NAME}, os_version: Ubuntu 18.04 server 64bit, min_disk: 40,\n"
        "     disk_format: qcow2, tags: [a b, ü]}\n"
        "  - {name: plain, os_version: CentOS 7.6 64bit, min_disk: 40, disk_format: qcow2}\n",
        encoding="utf-8")
    env = {"HOME": str(tmp_path), "HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK,
           "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT}
    result = CliRunner().invoke(cli, ["apply", "--yes", "--endpoint", sb.url, "--profile",
                                      "glance", "--catalog", "catalog", "--state", "state.db"],
                                obj=Runtime(env=env), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(i["name"] for i in sb.images()) == ["plain", UNICODE_NAME]
    methods = [method for method, _, _ in checked]
    assert methods.count("POST") == 2
    assert any(("name", UNICODE_NAME) in query for _, query, _ in checked)
    assert [verdict for _, _, verdict in checked] == [None] * len(checked)
    assert SK not in result.output
    assert SK.encode() not in (tmp_path / "state.db").read_bytes()


def test_ak_sk_credentials_repr_hides_the_secret_key() -> None:
    creds = resolve({"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK,
                     "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT,
                     "HUAWEICLOUD_SDK_SECURITY_TOKEN": SECURITY_TOKEN},
                    endpoint=f"https://{HOST}", token_file=None, os_cloud=None, interface=None,
                    cacert=None, insecure=False, http_factory=lambda verify: httpx.Client())
    text = repr(creds) + repr(creds.signer)
    assert AK in text
    assert SK not in text and SECURITY_TOKEN not in text
