"""``ImageClient`` and Keystone auth against a lying, looping or flooding server over loopback.

Every success answer is checked at the client edge (``reconciler.answers``): a malformed one is
a single ``MalformedResponse`` naming the fields, bodies are capped while they are read,
listings that loop or never end stop, and a Keystone token's expiry is measured from its
lifetime, whatever the server's clock says.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from hostile import Answer, HostileServer, Seen, image

from reconciler.auth import KeystonePassword
from reconciler.client import MAX_BODY_BYTES, ImageClient, StaticToken
from reconciler.errors import ApiError, MalformedResponse, TransportError
from reconciler.sandbox import Sandbox, SandboxConfig

TOKEN = "tok-HOSTILE-ANSWERS-3b9e0f"
GOOD_ID = "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba86"


def client_for(server: HostileServer, **kwargs: Any) -> ImageClient:
    return ImageClient(server.url, token_provider=StaticToken(TOKEN), **kwargs)


def listing(*images: dict[str, Any], **extra: Any) -> Answer:
    return Answer.json(200, {"images": list(images), "schema": "/v2/schemas/images", **extra})


# --- item 6: bad fields are one typed error -------------------------------------------------

BAD_FIELDS = {
    "no id": ({k: v for k, v in image(GOOD_ID).items() if k != "id"}, "id: Field required"),
    "status a list": (image(GOOD_ID, status=["active"]), "status: Input should be a valid "
                                                         "string"),
    "id a dict": (image(GOOD_ID, id={"uuid": GOOD_ID}), "id: Input should be a valid string"),
    "integer updated_at": (image(GOOD_ID, updated_at=1767225600), "updated_at: Input should "
                                                                  "be a valid string"),
    "id over 255 characters": (image("x" * 256), "id: String should have at most 255"),
    "updated_at not a time": (image(GOOD_ID, updated_at="yesterday"), "not an ISO 8601 time"),
}


@pytest.mark.parametrize(("bad", "problem"), BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_listed_image_with_bad_fields_is_a_malformed_response(bad: dict[str, Any],
                                                                problem: str) -> None:
    with HostileServer(lambda seen: listing(image("a-good-one"), bad)) as server, \
            client_for(server) as client, pytest.raises(MalformedResponse) as info:
        list(client.list_images())
    assert problem in str(info.value)
    assert any(p.startswith("images.1.") for p in info.value.problems), info.value.problems
    assert info.value.status == 200


@pytest.mark.parametrize(("bad", "problem"), BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_create_answered_with_bad_fields_is_a_malformed_response(bad: dict[str, Any],
                                                                   problem: str) -> None:
    with HostileServer(lambda seen: Answer.json(201, bad)) as server, \
            client_for(server) as client, pytest.raises(MalformedResponse) as info:
        client.create_image({"name": "web"})
    assert problem in str(info.value)
    assert "may have been created" in str(info.value)


def test_the_malformed_response_never_quotes_the_offending_value() -> None:
    huge = "A" * 5000
    with HostileServer(lambda seen: Answer.json(201, image(huge))) as server, \
            client_for(server) as client, pytest.raises(MalformedResponse) as info:
        client.create_image({"name": "web"})
    assert huge[:300] not in str(info.value)
    assert len(str(info.value)) < 500


def test_get_answered_with_another_image_is_refused() -> None:
    with HostileServer(lambda seen: Answer.json(200, image("someone-else"))) as server, \
            client_for(server) as client, pytest.raises(MalformedResponse) as info:
        client.get_image(GOOD_ID)
    assert f"another image than {GOOD_ID}" in str(info.value)


def test_create_answered_for_another_name_is_refused() -> None:
    with HostileServer(lambda seen: Answer.json(201, image(GOOD_ID, name="other"))) as server, \
            client_for(server) as client, pytest.raises(MalformedResponse, match="name differs"):
        client.create_image({"name": "web"})


def test_two_names_answered_with_one_id_is_an_error_not_a_record() -> None:
    def same_id(seen: Seen) -> Answer:
        import json
        return Answer.json(201, image(GOOD_ID, name=json.loads(seen.body)["name"]))

    with HostileServer(same_id) as server, client_for(server) as client:
        assert client.create_image({"name": "web"})["id"] == GOOD_ID
        with pytest.raises(MalformedResponse) as info:
            client.create_image({"name": "db"})
    assert f"gives the id {GOOD_ID} that it gave 'web' before" in str(info.value)


# --- item 6: size caps, read while streaming --------------------------------------------------

class Flood:
    """A body of ``total`` bytes sent in 64 KiB chunks, counting what was actually sent."""

    def __init__(self, total: int, head: bytes = b'{"images": [') -> None:
        self.total, self.head, self.sent = total, head, 0
        self.done = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield self.head
            chunk = b'{"id": "' + b"x" * (64 * 1024) + b'"}, '
            while self.sent < self.total:
                yield chunk
                self.sent += len(chunk)
        finally:
            self.done.set()


def test_a_50_mb_listing_is_refused_while_it_is_read() -> None:
    flood = Flood(50 * 1024 * 1024)
    with HostileServer(lambda seen: Answer(200, flood,
                                           {"Content-Type": "application/json"})) as server:
        with client_for(server) as client, pytest.raises(MalformedResponse) as info:
            list(client.list_images())
        flood.done.wait(10)
    assert "over 8 MiB; reading stopped there" in str(info.value)
    # The client hung up at the cap: the server could not send (much) more than it.
    assert flood.sent < 2 * MAX_BODY_BYTES


def test_a_body_over_the_cap_with_a_content_length_is_refused() -> None:
    body = b'{"id": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    with HostileServer(lambda seen: Answer(201, body,
                                           {"Content-Type": "application/json"})) as server, \
            client_for(server) as client, pytest.raises(MalformedResponse, match="over 8 MiB"):
        client.create_image({"name": "web"})


def test_an_error_answer_over_the_cap_keeps_its_head_as_the_message() -> None:
    flood = Flood(20 * 1024 * 1024, head=b'{"error": {"code": "IMG.0001", "message": "boom"}}')
    with HostileServer(lambda seen: Answer(400, flood,
                                           {"Content-Type": "application/json"})) as server, \
            client_for(server) as client, pytest.raises(ApiError) as info:
        client.create_image({"name": "web"})
    assert not isinstance(info.value, MalformedResponse)
    assert info.value.status == 400
    assert len(str(info.value)) < 700


# --- item 7: paging ends ----------------------------------------------------------------------

def test_the_same_page_again_and_again_is_detected() -> None:
    with HostileServer(lambda seen: listing(image("a1"), image("a2"),
                                            next="/v2/images?marker=a2")) as server, \
            client_for(server) as client, pytest.raises(MalformedResponse) as info:
        list(client.list_images(page_size=2))
    assert "page 2 lists image a1 again: the server's paging loops" in str(info.value)
    assert len(server.requests("GET")) == 2


def test_alternating_pages_are_detected() -> None:
    pages = itertools.cycle([[image("a1"), image("a2")], [image("b1"), image("b2")]])
    with HostileServer(lambda seen: listing(*next(pages), next="/v2/images?marker=x")) as server, \
            client_for(server) as client, pytest.raises(MalformedResponse) as info:
        list(client.list_images(page_size=2))
    assert "page 3 lists image a1 again" in str(info.value)


def test_endless_fresh_pages_stop_at_the_page_cap() -> None:
    counter = itertools.count()

    def fresh(seen: Seen) -> Answer:
        n = next(counter)
        return listing(image(f"img-{n}"), next=f"/v2/images?marker=img-{n}")

    with HostileServer(fresh) as server, client_for(server, max_pages=25) as client, \
            pytest.raises(MalformedResponse) as info:
        list(client.list_images(page_size=1))
    assert "still links a next page after 25 pages" in str(info.value)
    assert len(server.requests("GET")) == 25


def test_a_listing_of_exactly_the_page_cap_is_read_whole() -> None:
    def pages(seen: Seen) -> Answer:
        marker = seen.param("marker")
        n = int(marker.removeprefix("img-")) + 1 if marker else 0
        # Nine full pages, then the empty page that ends a listing of full pages.
        return listing(image(f"img-{n}"), next="/v2/images") if n < 9 else listing()

    with HostileServer(pages) as server, client_for(server, max_pages=10) as client:
        listed = list(client.list_images(page_size=1))
    assert [i["id"] for i in listed] == [f"img-{n}" for n in range(9)]
    assert len(server.seen) == 10


# --- item 12: a request that never left the machine says so ---------------------------------

def test_a_body_that_cannot_be_encoded_is_not_sent_and_says_so() -> None:
    with HostileServer(lambda seen: Answer.json(201, image(GOOD_ID))) as server, \
            client_for(server) as client, pytest.raises(TransportError) as info:
        client.create_image({"name": "web-\ud800"})
    assert info.value.sent is False
    assert server.seen == []


# --- item 11: Keystone clock skew -------------------------------------------------------------

PASSWORD = "pw-SKEW-4e1a9c"


@pytest.mark.parametrize("skew", [timedelta(hours=-2), timedelta(hours=2)])
def test_a_skewed_keystone_clock_causes_no_token_storm(skew: timedelta) -> None:
    config = SandboxConfig(password=PASSWORD, user="alice", region="r1", token_ttl_s=3600,
                           clock=lambda: datetime.now(UTC) + skew)
    with Sandbox(config) as sb:
        provider = KeystonePassword(auth_url=f"{sb.url}/v3", password=PASSWORD,
                                    username="alice", user_domain_name="d",
                                    project_name="r1")
        with ImageClient(sb.url, token_provider=provider) as client:
            for _ in range(21):
                list(client.list_images())
        assert sb.request_count[("POST", "tokens")] == 1
        assert provider.refreshes == 0


def test_without_issued_at_the_lifetime_comes_from_the_date_header() -> None:
    server_now = datetime.now(UTC) - timedelta(hours=2)

    def keystone(seen: Seen) -> Answer:
        body = {"token": {"expires_at": (server_now + timedelta(hours=1)).isoformat(),
                          "catalog": []}}
        return Answer.json(201, body, **{"X-Subject-Token": f"tok-{len(server.seen)}-abcdef",
                                         "Date": format_datetime(server_now, usegmt=True)})

    with HostileServer(keystone) as server:
        provider = KeystonePassword(auth_url=f"{server.url}/v3", password=PASSWORD,
                                    username="alice", user_domain_name="d",
                                    project_name="r1")
        tokens = {provider.token() for _ in range(10)}
    assert len(tokens) == 1
    assert len(server.seen) == 1


def test_a_keystone_answer_without_expires_at_is_a_malformed_response() -> None:
    answer = Answer.json(201, {"token": {"issued_at": "2026-01-01T00:00:00Z"}},
                         **{"X-Subject-Token": "tok-abcdef"})
    with HostileServer(lambda seen: answer) as server:
        provider = KeystonePassword(auth_url=f"{server.url}/v3", password=PASSWORD,
                                    username="alice", user_domain_name="d",
                                    project_name="r1")
        with pytest.raises(MalformedResponse, match=r"token\.expires_at: Field required"):
            provider.token()
