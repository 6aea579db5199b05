"""Updates in place against a real OpenStack Glance (docs/architecture.md §6.10).

* 10 images applied, then min_ram changed, a tag added, a property changed and another dropped
  in the catalog: one PATCH per image, Glance then holds exactly the catalog's values, the
  dropped property is gone, and a refreshed plan is unchanged;
* an image changed out of band is changed back;
* PATCH parity: a table of JSON-patch documents sent straight to Glance and to the sandbox's
  ``glance`` profile, each to a fresh image made from the same body: the same status, and for
  the accepted ones the same resulting fields.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from glance_helpers import JSON, TOKEN, delete_image, list_images
from glance_server import GlanceServer

from reconciler.apply import ApplyRequest, apply_catalog
from reconciler.cli import Runtime
from reconciler.client import ImageClient, StaticToken
from reconciler.models import MARKER_PROPERTY
from reconciler.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.glance

V21 = "application/openstack-images-v2.1-json-patch"
V20 = "application/openstack-images-v2.0-json-patch"
N = 10


def catalog(edited: bool) -> dict[str, Any]:
    images = []
    for i in range(N):
        props = {"build": f"{i}-2"} if edited else {"build": str(i), "team": "core"}
        images.append({
            "name": f"upd-{i:02d}", "visibility": "private", "container_format": "bare",
            "disk_format": "raw", "min_ram": 2048 if edited else 512, "min_disk": 10,
            "tags": ["it", f"n{i}", *(["new"] if edited else [])], "properties": props})
    return {"images": images}


@pytest.fixture
def cli(run_cli: Callable[..., Result]) -> Callable[..., Result]:
    def run(*args: Any, expect: int = 0) -> Result:
        result = run_cli([str(a) for a in args], env={"OS_AUTH_TOKEN": TOKEN}, obj=Runtime())
        assert result.exit_code == expect, result.output[-3000:]
        return result
    return run


def args(command: str, cat: Path, state: Path, url: str, *extra: str) -> list[Any]:
    return [command, "--catalog", cat, "--state", state, "--profile", "glance", "--endpoint",
            url, *extra]


def by_name(url: str) -> dict[str, dict[str, Any]]:
    images = list_images(url)
    counts = Counter(i["name"] for i in images)
    assert all(c == 1 for c in counts.values()), counts
    return {i["name"]: i for i in images}


def test_catalog_edits_are_one_patch_per_image_and_glance_then_holds_the_catalog(
        glance: GlanceServer, write_catalog: Callable[..., Path], tmp_path: Path,
        cli: Callable[..., Result]) -> None:
    state = tmp_path / "state.db"
    cat = write_catalog({"images.yaml": catalog(edited=False)})
    cli(*args("apply", cat, state, glance.url, "--yes"))
    before = by_name(glance.url)
    write_catalog({"images.yaml": catalog(edited=True)})
    plan = json.loads(cli(*args("plan", cat, state, glance.url, "--refresh", "--format", "json",
                                "--detailed-exitcode"), expect=2).stdout)
    assert plan["summary"]["update"] == N

    sent: Counter[str] = Counter()

    def count(request: httpx.Request) -> None:
        sent[request.method] += 1
        if request.method == "PATCH":
            assert request.headers["content-type"] == V21

    with httpx.Client(event_hooks={"request": [count]}, timeout=30) as http:
        client = ImageClient(glance.url, token_provider=StaticToken(TOKEN), http=http)
        result = apply_catalog(ApplyRequest(catalog_dir=cat, state_path=state,
                                            profile="glance", endpoint=glance.url,
                                            api=client))
    assert result.failed == 0
    assert result.report.summary["updated"] == N
    assert (sent["PATCH"], sent["POST"]) == (N, 0)

    after = by_name(glance.url)
    for i in range(N):
        image = after[f"upd-{i:02d}"]
        assert image["id"] == before[f"upd-{i:02d}"]["id"]
        assert image["min_ram"] == 2048
        assert sorted(image["tags"]) == sorted(["it", f"n{i}", "new"])
        assert image["build"] == f"{i}-2"
        assert "team" not in image
        assert image[MARKER_PROPERTY] == before[f"upd-{i:02d}"][MARKER_PROPERTY]
    again = json.loads(cli(*args("plan", cat, state, glance.url, "--refresh", "--format",
                                 "json", "--detailed-exitcode")).stdout)
    assert again["summary"]["unchanged"] == N


def test_an_image_changed_out_of_band_is_changed_back(
        glance: GlanceServer, write_catalog: Callable[..., Path], tmp_path: Path,
        cli: Callable[..., Result]) -> None:
    state = tmp_path / "state.db"
    cat = write_catalog({"images.yaml": catalog(edited=False)})
    cli(*args("apply", cat, state, glance.url, "--yes"))
    image = by_name(glance.url)["upd-03"]
    with httpx.Client(base_url=glance.url, headers={**JSON, "X-Auth-Token": TOKEN}) as http:
        response = http.patch(f"/v2/images/{image['id']}", headers={"Content-Type": V21},
                              content=json.dumps([
                                  {"op": "replace", "path": "/min_ram", "value": 64},
                                  {"op": "remove", "path": "/team"},
                                  {"op": "replace", "path": "/tags", "value": ["x"]}]))
        assert response.status_code == 200, response.text
    plan = json.loads(cli(*args("plan", cat, state, glance.url, "--refresh", "--format",
                                "json"), expect=0).stdout)
    change = next(c for c in plan["changes"] if c["name"] == "upd-03")
    assert (change["action"], change["reason"]) == ("update", "changed_remotely")

    cli(*args("apply", cat, state, glance.url, "--yes"))

    now = by_name(glance.url)["upd-03"]
    assert (now["min_ram"], now["team"], sorted(now["tags"])) == (512, "core", ["it", "n3"])
    cli(*args("plan", cat, state, glance.url, "--refresh", "--detailed-exitcode"))


# --------------------------------------------------------------------------- PATCH parity

BASE: dict[str, Any] = {"disk_format": "raw", "container_format": "bare", "p1": "v1",
                        "tags": ["t1"], "min_ram": 0}


@dataclass(frozen=True)
class Doc:
    id: str
    body: Any  # the document (or raw bytes)
    status: int  # what Glance answers
    content_type: str = V21


def _raw(doc: Doc) -> bytes:
    return doc.body if isinstance(doc.body, bytes) else json.dumps(doc.body).encode()


DOCS = [
    Doc("add-min-ram", [{"op": "add", "path": "/min_ram", "value": 1024}], 200),
    Doc("replace-min-ram", [{"op": "replace", "path": "/min_ram", "value": 4}], 200),
    Doc("replace-tags", [{"op": "replace", "path": "/tags", "value": ["a", "b", "a"]}], 200),
    Doc("add-tags-whole", [{"op": "add", "path": "/tags", "value": ["z"]}], 200),
    Doc("add-new-property", [{"op": "add", "path": "/p2", "value": "v2"}], 200),
    Doc("add-existing-property-upserts", [{"op": "add", "path": "/p1", "value": "x"}], 200),
    Doc("replace-existing-property", [{"op": "replace", "path": "/p1", "value": "y"}], 200),
    Doc("replace-missing-property", [{"op": "replace", "path": "/nope", "value": "y"}], 409),
    Doc("remove-property", [{"op": "remove", "path": "/p1"}], 200),
    Doc("remove-missing-property", [{"op": "remove", "path": "/nope"}], 409),
    Doc("remove-base-attribute", [{"op": "remove", "path": "/min_ram"}], 403),
    Doc("replace-read-only-status", [{"op": "replace", "path": "/status", "value": "active"}],
        403),
    Doc("add-read-only-id", [{"op": "add", "path": "/id", "value": str(uuid.uuid4())}], 403),
    Doc("add-reserved-namespace", [{"op": "add", "path": "/os_glance_x", "value": "1"}], 403),
    Doc("add-reserved-deleted", [{"op": "add", "path": "/deleted", "value": "1"}], 403),
    Doc("property-not-a-string", [{"op": "add", "path": "/p3", "value": 5}], 400),
    Doc("min-ram-not-an-integer", [{"op": "add", "path": "/min_ram", "value": "lots"}], 400),
    Doc("visibility-not-allowed", [{"op": "replace", "path": "/visibility", "value": "x"}],
        400),
    Doc("name-too-long", [{"op": "replace", "path": "/name", "value": "n" * 256}], 400),
    Doc("append-to-tags", [{"op": "add", "path": "/tags/-", "value": "t2"}], 400),
    Doc("pointer-without-slash", [{"op": "add", "path": "p2", "value": "v"}], 400),
    Doc("pointer-adjacent-slashes", [{"op": "add", "path": "/a//b", "value": "v"}], 400),
    Doc("pointer-bad-escape", [{"op": "add", "path": "/a~2", "value": "v"}], 400),
    Doc("pointer-escaped-slash", [{"op": "add", "path": "/a~1b", "value": "v"}], 200),
    Doc("unknown-op", [{"op": "move", "path": "/p1", "value": "v"}], 400),
    Doc("missing-op", [{"path": "/p1", "value": "v"}], 400),
    Doc("missing-path", [{"op": "add", "value": "v"}], 400),
    Doc("missing-value", [{"op": "add", "path": "/p2"}], 400),
    Doc("body-an-object", {"op": "add", "path": "/p2", "value": "v"}, 400),
    Doc("operation-not-an-object", ["add"], 400),
    Doc("malformed-json", b"[{", 400),
    Doc("empty-document", [], 200),
    Doc("wrong-media-type", [{"op": "add", "path": "/p2", "value": "v"}], 415,
        "application/json"),
    Doc("v20-add-new", [{"add": "/p2", "value": "v"}], 200, V20),
    Doc("v20-add-existing", [{"add": "/p1", "value": "v"}], 409, V20),
    Doc("v20-two-ops-in-one", [{"add": "/p2", "replace": "/p1", "value": "v"}], 400, V20),
    Doc("format-change-while-queued",
        [{"op": "replace", "path": "/disk_format", "value": "qcow2"}], 200),
    Doc("visibility-shared", [{"op": "replace", "path": "/visibility", "value": "shared"}],
        200),
    Doc("tag-quota", [{"op": "replace", "path": "/tags",
                       "value": [f"t{i}" for i in range(129)]}], 413),
    Doc("property-quota", [{"op": "add", "path": f"/q{i}", "value": "v"} for i in range(130)],
        413),
    Doc("last-op-fails-nothing-saved", [{"op": "add", "path": "/min_ram", "value": 7},
                                        {"op": "remove", "path": "/nope"}], 409),
    Doc("several-ops", [{"op": "add", "path": "/min_ram", "value": 8},
                        {"op": "remove", "path": "/p1"},
                        {"op": "replace", "path": "/tags", "value": ["u"]}], 200),
]

#: The fields compared after a PATCH both accepted (and after one both refused: unchanged).
_COMPARED = ("name", "min_ram", "min_disk", "visibility", "disk_format", "container_format",
             "protected", "p1", "p2", "a/b", "q0")


def _view(image: dict[str, Any]) -> dict[str, Any]:
    return {"tags": sorted(image.get("tags") or []),
            **{k: image.get(k) for k in _COMPARED}}


@pytest.fixture(scope="module")
def sandbox_glance() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(profile="glance")) as sb:
        yield sb


def test_patch_parity_table_is_large_enough() -> None:
    assert len(DOCS) >= 30
    assert len({d.id for d in DOCS}) == len(DOCS)
    assert {d.status for d in DOCS} >= {200, 400, 403, 409, 413, 415}


def _patch_fresh(url: str, doc: Doc) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Create an image from BASE, PATCH it with ``doc``; (status, image after, answer)."""
    # a generous timeout: a busy machine's Glance takes seconds for 130 properties
    with httpx.Client(base_url=url, headers={**JSON, "X-Auth-Token": TOKEN},
                      timeout=60) as http:
        created = http.post("/v2/images", json={"name": f"parity-{doc.id}", **BASE})
        assert created.status_code == 201, created.text
        image_id = created.json()["id"]
        try:
            answer = http.patch(f"/v2/images/{image_id}", content=_raw(doc),
                                headers={"Content-Type": doc.content_type})
            after = http.get(f"/v2/images/{image_id}").json()
            try:
                body = answer.json()
            except ValueError:
                body = {}
            return answer.status_code, after, body if isinstance(body, dict) else {}
        finally:
            delete_image(url, {"id": image_id})


@pytest.mark.parametrize("doc", DOCS, ids=[d.id for d in DOCS])
def test_glance_and_the_sandbox_give_every_patch_the_same_verdict(
        doc: Doc, glance_shared: GlanceServer, sandbox_glance: Sandbox) -> None:
    status, image, answer = _patch_fresh(glance_shared.url, doc)
    assert status == doc.status, f"{doc.id}: Glance answered {status}: {answer}"
    ours, our_image, our_answer = _patch_fresh(sandbox_glance.url, doc)
    assert ours == status, f"{doc.id}: Glance {status}, the sandbox {ours}: {our_answer}"
    assert _view(our_image) == _view(image), f"{doc.id}: the images differ afterwards"
    if status == 200:
        assert _view(our_answer) == _view(answer)


def test_reconciles_client_sends_what_glance_accepts(glance_shared: GlanceServer) -> None:
    """The client's PATCH (media type, body) as a real Glance takes it, and its errors."""
    with httpx.Client(base_url=glance_shared.url, headers={**JSON, "X-Auth-Token": TOKEN}) \
            as http:
        image = http.post("/v2/images", json={"name": "client-patch", **BASE}).json()
    try:
        with ImageClient(glance_shared.url, token_provider=StaticToken(TOKEN)) as client:
            done = client.update_image(image["id"], [
                {"op": "add", "path": "/min_ram", "value": 64},
                {"op": "replace", "path": "/tags", "value": ["a"]}])
            assert (done["min_ram"], done["tags"]) == (64, ["a"])
            assert done["updated_at"] >= image["updated_at"]
            with pytest.raises(Exception) as refused:
                client.update_image(image["id"], [{"op": "remove", "path": "/nope"}])
            assert getattr(refused.value, "status", None) == 409
            assert "Property nope does not exist" in str(refused.value)
    finally:
        delete_image(glance_shared.url, image)
