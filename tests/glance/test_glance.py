"""reconcile against a real OpenStack Glance (``glance`` from PyPI, served by gunicorn).

Run with ``make test-glance`` (or ``pytest -m glance tests/glance``). Every test uses
``--profile glance`` and the real CLI; the Glance is unauthenticated, so any token works.

* apply of a 50-image catalog: what is recorded equals what Glance lists; re-apply is a no-op;
* an image deleted out of band: ``plan --refresh`` sees it, apply restores it;
* validation parity: a table of request bodies sent straight to Glance and, as one-image
  catalogs, through ``load_catalog(..., PROFILES["glance"])``; the verdicts must agree;
* real 400/403/409/413 answers surface Glance's message and request id, without HTML;
* Glance killed (SIGKILL) in the middle of an apply: a clean failure, then a re-run after a
  restart completes without duplicates.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import Result
from glance_helpers import JSON, TOKEN, delete_image, list_images
from glance_server import GlanceServer

from reconciler.catalog import load_catalog
from reconciler.cli import Runtime
from reconciler.client import ImageClient, StaticToken
from reconciler.errors import CatalogError, ClientError
from reconciler.models import MARKER_PROPERTY
from reconciler.profiles import INT32_MAX, PROFILES, Profile
from reconciler.serverinfo import ServerInfo, profile_for
from reconciler.state import SqliteStore

pytestmark = pytest.mark.glance

N_IMAGES = 50


# --------------------------------------------------------------------------- helpers


def catalog_of(n: int, prefix: str = "it-image") -> dict[str, Any]:
    """A Glance-valid catalog of n images (no os_version: Glance has no such rule)."""
    images = []
    for i in range(n):
        images.append({
            "name": f"{prefix}-{i:02d}",
            "visibility": "private",  # Glance's own default is "shared"
            "container_format": "bare",
            "disk_format": "qcow2" if i % 2 else "raw",
            "min_ram": 512 * (i % 4),
            "min_disk": 10 * (i % 3),
            "protected": False,
            "tags": ["integration", f"batch-{i % 5}"],
            "properties": {"os_distro": "ubuntu", "build": str(i)},
        })
    return {"images": images}


def cli_args(command: str, catalog: Path, state: Path, url: str, *extra: str) -> list[str]:
    return [command, "--catalog", str(catalog), "--state", str(state), "--profile", "glance",
            "--endpoint", url, *extra]


def recorded(state: Path) -> dict[str, Any]:
    """name -> Record, for the state's only target."""
    store = SqliteStore.open_readonly(state)
    assert store is not None, f"{state} was not created"
    try:
        rows = store.all_records()
    finally:
        store.close()
    targets = {target for target, _ in rows}
    assert len(targets) <= 1, f"records for several targets: {targets}"
    return {rec.name: rec for _, rec in rows}


def assert_state_matches_glance(state: Path, url: str, names: set[str]) -> list[dict[str, Any]]:
    images = list_images(url)
    by_name = Counter(i["name"] for i in images)
    duplicates = {n: c for n, c in by_name.items() if c > 1}
    assert not duplicates, f"duplicate images in Glance: {duplicates}"
    assert set(by_name) == names, (f"Glance holds {len(images)} images; missing "
                                   f"{sorted(names - set(by_name))[:5]}, unexpected "
                                   f"{sorted(set(by_name) - names)[:5]}")
    records = recorded(state)
    assert set(records) == names, f"not recorded: {sorted(names - set(records))[:5]}"
    for image in images:
        rec = records[image["name"]]
        got = (rec.image_id, rec.created_at, rec.updated_at, rec.status)
        want = (image["id"], image["created_at"], image["updated_at"], image["status"])
        assert got == want, f"{image['name']}: recorded {got}, Glance lists {want}"
        assert image.get(MARKER_PROPERTY), f"{image['name']} has no {MARKER_PROPERTY}"
    return images


def report(result: Result) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"not a JSON report (exit {result.exit_code}):\n{result.output}")
    return data


@pytest.fixture
def cli(run_cli: Callable[..., Result]) -> Callable[..., Result]:
    """The real CLI in-process, with the real clock and a token in the environment."""

    def run(args: list[str], expect: int | None = 0) -> Result:
        result = run_cli(args, env={"OS_AUTH_TOKEN": TOKEN}, obj=Runtime())
        if expect is not None:
            assert result.exit_code == expect, (
                f"reconcile {' '.join(args[:1])} exited {result.exit_code}, expected {expect}"
                f"\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
        return result

    return run


# --------------------------------------------------------------------------- apply


def test_apply_50_images_records_what_glance_lists(
        glance: GlanceServer, write_catalog: Callable[..., Path], tmp_path: Path,
        cli: Callable[..., Result]) -> None:
    catalog = write_catalog({"images.yaml": catalog_of(N_IMAGES)})
    state = tmp_path / "state.db"
    names = {f"it-image-{i:02d}" for i in range(N_IMAGES)}

    first = report(cli(cli_args("apply", catalog, state, glance.url, "--yes", "--format",
                                "json", "--parallelism", "4")))
    assert first["summary"]["created"] == N_IMAGES, first["summary"]
    images = assert_state_matches_glance(state, glance.url, names)
    assert len(images) == N_IMAGES
    for image in images:  # what was asked is what Glance stored
        i = int(image["name"].rsplit("-", 1)[1])
        assert image["visibility"] == "private"
        assert image["status"] == "queued"
        assert image["disk_format"] == ("qcow2" if i % 2 else "raw")
        assert image["container_format"] == "bare"
        assert (image["min_ram"], image["min_disk"]) == (512 * (i % 4), 10 * (i % 3))
        assert sorted(image["tags"]) == sorted(["integration", f"batch-{i % 5}"])
        assert (image["os_distro"], image["build"]) == ("ubuntu", str(i))

    ids = {i["id"] for i in images}
    again = report(cli(cli_args("apply", catalog, state, glance.url, "--yes", "--format",
                                "json")))
    assert again["summary"].get("created") == 0, again["summary"]
    assert again["summary"]["unchanged"] == N_IMAGES, again["summary"]
    after = assert_state_matches_glance(state, glance.url, names)
    assert {i["id"] for i in after} == ids, "re-apply changed the images"
    cli(cli_args("plan", catalog, state, glance.url, "--refresh", "--detailed-exitcode"),
        expect=0)


def test_image_deleted_out_of_band_is_planned_and_restored(
        glance: GlanceServer, write_catalog: Callable[..., Path], tmp_path: Path,
        cli: Callable[..., Result]) -> None:
    catalog = write_catalog({"images.yaml": catalog_of(N_IMAGES)})
    state = tmp_path / "state.db"
    names = {f"it-image-{i:02d}" for i in range(N_IMAGES)}
    cli(cli_args("apply", catalog, state, glance.url, "--yes"))
    victim = recorded(state)["it-image-17"]

    response = httpx.delete(f"{glance.url}/v2/images/{victim.image_id}",
                            headers={**JSON, "X-Auth-Token": TOKEN})
    assert response.status_code == 204, response.text
    assert len(list_images(glance.url)) == N_IMAGES - 1

    planned = report(cli(cli_args("plan", catalog, state, glance.url, "--refresh",
                                  "--detailed-exitcode", "--format", "json"), expect=2))
    creates = [c for c in planned["changes"] if c["action"] == "create"]
    assert [(c["name"], c["reason"]) for c in creates] == [("it-image-17", "missing_remotely")]
    assert planned["summary"]["create"] == 1
    assert planned["summary"]["unchanged"] == N_IMAGES - 1, planned["summary"]

    applied = report(cli(cli_args("apply", catalog, state, glance.url, "--yes", "--format",
                                  "json")))
    assert applied["summary"]["created"] == 1, applied["summary"]
    images = assert_state_matches_glance(state, glance.url, names)
    assert len(images) == N_IMAGES
    assert recorded(state)["it-image-17"].image_id != victim.image_id
    cli(cli_args("plan", catalog, state, glance.url, "--refresh", "--detailed-exitcode"),
        expect=0)


def test_extra_formats_of_this_glance_validate_and_apply_once_its_schema_is_read(
        glance: GlanceServer, write_catalog: Callable[..., Path], tmp_path: Path,
        cli: Callable[..., Result]) -> None:
    """This Glance allows zvhd and zvhd2 (disk_formats, running-glance.md): reconcile accepts
    them once it has read the schema, and an offline plan afterwards uses the kept schema."""
    images = [{"name": f"ims-format-{fmt}", "disk_format": fmt, "container_format": "bare",
               "visibility": "private", "properties": {"kernel_id": str(uuid.uuid4())}}
              for fmt in ("zvhd", "zvhd2")]
    catalog = write_catalog({"ims.json": json.dumps({"images": images}, indent=2)})
    state = tmp_path / "state.db"
    base = ["--catalog", str(catalog), "--state", str(state), "--profile", "glance"]

    before = cli(["validate", *base], expect=1)  # nothing read yet: upstream's defaults
    assert "'zvhd' is not allowed by upstream Glance's defaults" in before.stderr
    assert "reconcile validate --endpoint URL" in before.stderr

    online = cli(["validate", *base, "--endpoint", glance.url])
    assert f"the server's schema ({glance.url}/v2/schemas/image, read " in online.stdout
    assert "catalog" in online.stdout and "is valid: 2 images" in online.stdout

    applied = report(cli(["apply", *base, "--endpoint", glance.url, "--yes", "--format",
                          "json"]))
    assert applied["summary"]["created"] == 2, applied["summary"]
    listed = {i["name"]: i["disk_format"] for i in list_images(glance.url)}
    assert listed == {"ims-format-zvhd": "zvhd", "ims-format-zvhd2": "zvhd2"}

    glance.stop()  # offline from here on: the plan must not need the server
    offline = report(cli(["plan", *base, "--detailed-exitcode", "--format", "json"]))
    assert offline["summary"]["unchanged"] == 2, offline["summary"]
    assert offline["warnings"] == []
    again = cli(["validate", *base])
    assert f"({glance.url}/v2/schemas/image, read " in again.stdout
    assert "(cached)" in again.stdout
    # what the kept schema refuses is refused offline too, naming it
    bad = write_catalog({"bad.yaml": {"images": [{"name": "x", "disk_format": "zvhd3"}]}}, "bad")
    refused = cli(["validate", "--catalog", str(bad), "--state", str(state), "--profile",
                   "glance"], expect=1)
    assert f"'zvhd3' is not allowed by the server's schema ({glance.url}/v2/schemas/image, " \
           "read " in refused.stderr
    assert "(cached)); use one of: aki, ami, ari, iso, ploop, qcow2, raw, vdi, vhd, vhdx, " \
           "vmdk, zvhd, zvhd2" in refused.stderr


# --------------------------------------------------------------------------- parity table


@dataclass(frozen=True)
class Case:
    """One request body. ``glance``: the status this Glance answers to it, sent with the
    ``reconcile_marker`` property that apply always adds (the table documents it, and the test
    checks it, so a changed Glance is noticed). ``known``: a difference README documents on
    purpose: Glance accepts the body, the catalog refuses it."""

    id: str
    body: dict[str, Any]
    glance: int
    known: str | None = field(default=None)
    # A rule only this deployment's schema states (tests/glance/schema-image.json): without
    # the schema, reconcile cannot know it.
    deployment: bool = False


U = "a" * 255
SERVER_OWNED = "property names the server owns"
UUID = str(uuid.uuid4())
PROPS = {f"prop{i:03d}": "v" for i in range(129)}


def props(n: int) -> dict[str, str]:
    return dict(list(PROPS.items())[:n])


# How a body becomes a catalog entry (``to_catalog``): the base fields stay top-level,
# ``__os_version`` becomes ``os_version``, every other key goes under ``properties:``; the
# file is YAML written by ``yaml.safe_dump`` (so strings stay strings, None is ``null`` and
# 1.0 is a float). Bodies without a name get a fresh one: the catalog cannot express a
# nameless image at all, so ``{}`` and ``{"name": null}`` (both 201 in Glance) are left out.
CASES: list[Any] = [
    # name
    Case("name-1-char", {"name": "a"}, 201),
    Case("name-255", {"name": U}, 201),
    Case("name-256", {"name": U + "a"}, 400),
    Case("name-255-3-byte-chars", {"name": "名" * 255}, 201),
    Case("name-leading-trailing-spaces", {"name": "  spaced name  "}, 201),
    Case("name-4-byte-unicode", {"name": "img-\U0001f600"}, 400),
    Case("name-int", {"name": 123}, 400),
    Case("name-bool", {"name": True}, 400),
    Case("name-empty", {"name": ""}, 201,
         known="empty name"),
    # visibility
    Case("visibility-private", {"visibility": "private"}, 201),
    Case("visibility-shared", {"visibility": "shared"}, 201),
    Case("visibility-community", {"visibility": "community"}, 201),
    Case("visibility-public", {"visibility": "public"}, 403),
    Case("visibility-wrong-case", {"visibility": "Private"}, 400),
    Case("visibility-unknown", {"visibility": "hidden"}, 400),
    Case("visibility-int", {"visibility": 1}, 400),
    # protected
    Case("protected-true", {"protected": True}, 201),
    Case("protected-false", {"protected": False}, 201),
    Case("protected-string", {"protected": "true"}, 400),
    Case("protected-int", {"protected": 1}, 400),
    Case("protected-null", {"protected": None}, 400),
    # container_format
    Case("container-bare", {"container_format": "bare"}, 201),
    Case("container-ovf", {"container_format": "ovf"}, 201),
    Case("container-ova", {"container_format": "ova"}, 201),
    Case("container-docker", {"container_format": "docker"}, 201),
    Case("container-ami", {"container_format": "ami"}, 201),
    Case("container-unknown", {"container_format": "tar"}, 400),
    Case("container-compressed", {"container_format": "compressed"}, 201),
    Case("container-wrong-case", {"container_format": "BARE"}, 400),
    Case("container-disk-format", {"container_format": "qcow2"}, 400),
    Case("container-null", {"container_format": None}, 201,
         known="null values"),
    # disk_format
    Case("disk-qcow2", {"disk_format": "qcow2"}, 201),
    Case("disk-raw", {"disk_format": "raw"}, 201),
    Case("disk-vhdx", {"disk_format": "vhdx"}, 201),
    Case("disk-ploop", {"disk_format": "ploop"}, 201),
    Case("disk-wrong-case", {"disk_format": "QCOW2"}, 400),
    Case("disk-unknown", {"disk_format": "vmdk2"}, 400),
    Case("disk-bool", {"disk_format": True}, 400),
    # this Glance adds IMS's zvhd/zvhd2 (running-glance.md), and its schema says so
    Case("disk-zvhd2", {"disk_format": "zvhd2"}, 201),
    Case("disk-zvhd", {"disk_format": "zvhd"}, 201),
    Case("disk-vmdk", {"disk_format": "vmdk"}, 201),
    Case("disk-iso", {"disk_format": "iso"}, 201),
    Case("disk-zvhd3", {"disk_format": "zvhd3"}, 400),
    # min_ram / min_disk
    Case("min-ram-0", {"min_ram": 0}, 201),
    Case("min-ram-int32-max", {"min_ram": INT32_MAX}, 201),
    Case("min-ram-over-int32", {"min_ram": INT32_MAX + 1}, 400),
    Case("min-ram-negative", {"min_ram": -1}, 400),
    Case("min-ram-string", {"min_ram": "1024"}, 400),
    Case("min-ram-bool", {"min_ram": True}, 400),
    Case("min-ram-fraction", {"min_ram": 1.5}, 400),
    Case("min-ram-float-whole", {"min_ram": 1.0}, 201,
         known="whole numbers written as fractions"),
    Case("min-disk-0", {"min_disk": 0}, 201),
    Case("min-disk-int32-max", {"min_disk": INT32_MAX}, 201),
    Case("min-disk-over-int32", {"min_disk": INT32_MAX + 1}, 400),
    Case("min-disk-negative", {"min_disk": -1}, 400),
    Case("min-disk-null", {"min_disk": None}, 400),
    Case("min-disk-string", {"min_disk": "40"}, 400),
    # reserved and read-only keys (extra keys go under properties:)
    Case("reserved-location", {"location": "http://example.com/x.img"}, 403),
    Case("reserved-locations", {"locations": []}, 403),
    Case("reserved-deleted", {"deleted": "false"}, 403),
    Case("reserved-deleted-bool", {"deleted": False}, 400),
    Case("reserved-deleted-at", {"deleted_at": "2020-01-01T00:00:00Z"}, 403),
    Case("reserved-os-glance-namespace", {"os_glance_x": "y"}, 403),
    Case("read-only-status", {"status": "active"}, 403),
    Case("read-only-status-bad-enum", {"status": "bogus"}, 400),
    Case("read-only-checksum", {"checksum": "abc"}, 403),
    Case("read-only-size", {"size": 5}, 403),
    Case("read-only-self", {"self": "/v2/images/x"}, 403),
    Case("read-only-direct-url", {"direct_url": "file:///x"}, 403),
    Case("read-only-created-at", {"created_at": "2020-01-01T00:00:00Z"}, 403),
    Case("id-bad-pattern", {"id": "not-a-uuid"}, 400),
    Case("id-valid-uuid", {"id": UUID}, 201, known=SERVER_OWNED),
    Case("owner", {"owner": "someone-else"}, 201, known=SERVER_OWNED),
    Case("os-hidden", {"os_hidden": True}, 201, known=SERVER_OWNED),
    Case("os-hash-algo", {"os_hash_algo": "sha512"}, 201, known=SERVER_OWNED),
    Case("reconcile-marker", {MARKER_PROPERTY: "0" * 32}, 201, known=SERVER_OWNED),
    # extra properties
    Case("prop-string", {"hw_firmware_type": "uefi"}, 201),
    Case("prop-int", {"build": 5}, 400),
    Case("prop-bool", {"hw_qemu_guest_agent": True}, 400),
    Case("prop-null", {"hw_video_model": None}, 400),
    # properties this Glance's schema types (tests/glance/schema-image.json, as an operator
    # sets it up): a pattern, an enumeration, plain strings
    Case("schema-prop-kernel-id-uuid", {"kernel_id": UUID}, 201),
    Case("schema-prop-kernel-id-not-uuid", {"kernel_id": "vmlinuz"}, 400),
    Case("schema-prop-ramdisk-id-not-uuid", {"ramdisk_id": "initrd-1"}, 400),
    Case("schema-prop-kernel-id-null", {"kernel_id": None}, 201, known="null values"),
    Case("schema-prop-enum-ok", {"cinder_encryption_key_deletion_policy": "do_not_delete"}, 201),
    Case("schema-prop-enum-bad", {"cinder_encryption_key_deletion_policy": "never"}, 400,
         deployment=True),
    Case("schema-prop-string-int", {"os_distro": 7}, 400),
    Case("schema-prop-string", {"os_distro": "ubuntu", "architecture": "x86_64"}, 201),
    Case("schema-prop-description", {"description": "d" * 1000}, 201),
    Case("prop-list", {"extra": ["a"]}, 400),
    Case("prop-object", {"extra": {"a": "b"}}, 400),
    Case("prop-typo-of-base-field-int", {"min_disc": 1}, 400),
    Case("prop-typo-of-base-field-string", {"min_disc": "1"}, 201),
    Case("prop-key-255", {"k" * 255: "v"}, 201),
    Case("prop-key-256", {"k" * 256: "v"}, 400),
    Case("prop-key-with-space", {"a b": "c"}, 201),
    Case("prop-empty-value", {"description": ""}, 201),
    Case("prop-value-300", {"description": "d" * 300}, 201),
    Case("prop-3-byte-unicode", {"description": "Überprüfung 名前 €"}, 201),
    Case("prop-4-byte-value", {"description": "\U0001f600"}, 400),
    Case("prop-4-byte-key", {"k\U0001f600": "v"}, 400),
    Case("prop-empty-key", {"": "v"}, 201),
    Case("os-version", {"__os_version": "Ubuntu 18.04 server 64bit"}, 201),
    Case("os-version-int", {"__os_version": 18}, 400),
    Case("os-version-empty", {"__os_version": ""}, 201),
    # Glance counts every extra property against image_property_quota (128): the marker and
    # __os_version included.
    Case("props-127", props(127), 201),
    Case("props-129", props(129), 413),
    Case("props-128", props(128), 413),
    Case("props-127-with-os-version", {**props(127), "__os_version": "Ubuntu"}, 413),
    # tags
    Case("tags-empty-list", {"tags": []}, 201),
    Case("tags-two", {"tags": ["a", "b"]}, 201),
    Case("tags-unicode", {"tags": ["généré", "镜像"]}, 201),
    Case("tags-with-spaces", {"tags": [" padded ", "two words"]}, 201),
    Case("tags-space-only", {"tags": [" "]}, 201),
    Case("tags-duplicate-pair", {"tags": ["a", "a"]}, 201),
    Case("tags-with-equals", {"tags": ["k=v"]}, 201),
    Case("tag-255", {"tags": ["t" * 255]}, 201),
    Case("tag-256", {"tags": ["t" * 256]}, 400),
    Case("tag-int", {"tags": [1]}, 400),
    Case("tag-bool", {"tags": [True]}, 400),
    Case("tag-null", {"tags": [None]}, 400),
    Case("tags-not-a-list", {"tags": "abc"}, 400),
    Case("tags-null", {"tags": None}, 400),
    Case("tag-4-byte-unicode", {"tags": ["\U0001f600"]}, 400),
    Case("tags-128", {"tags": [f"t{i}" for i in range(128)]}, 201),
    Case("tags-129", {"tags": [f"t{i}" for i in range(129)]}, 413),
    Case("tags-129-duplicates", {"tags": ["same"] * 129}, 413),
    Case("tag-empty-string", {"tags": [""]}, 201,
         known="empty tags"),
]

_BASE = frozenset({"name", "visibility", "protected", "container_format", "disk_format",
                   "min_ram", "min_disk", "tags"})


def to_catalog(body: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    for key, value in body.items():
        if key in _BASE:
            entry[key] = value
        elif key == "__os_version":
            entry["os_version"] = value
        else:
            properties[key] = value
    if properties:
        entry["properties"] = properties
    return entry


def glance_profile_verdict(body: Mapping[str, Any], directory: Path,
                           profile: Profile = PROFILES["glance"]) -> tuple[Any, str]:
    """(ImageSpec or None, the problems) for the body as a one-image glance catalog."""
    directory.mkdir(parents=True)
    (directory / "image.yaml").write_text(
        yaml.safe_dump({"images": [to_catalog(body)]}, sort_keys=False, allow_unicode=True),
        encoding="utf-8")
    try:
        loaded = load_catalog(directory, profile)
    except CatalogError as exc:
        return None, str(exc)
    assert len(loaded.images) == 1
    return loaded.images[0], ""


def _message(response: httpx.Response) -> str:
    """Glance's error message, without webob's <br /> tags."""
    try:
        text = str(response.json().get("message", response.text))
    except ValueError:
        text = response.text
    return " ".join(re.sub(r"<[^>]*>", " ", text).split())[:300]


README = Path(__file__).resolve().parents[2] / "README.md"


def test_parity_table_is_large_enough_and_its_differences_are_documented() -> None:
    cases = [c if isinstance(c, Case) else c.values[0] for c in CASES]
    assert len(cases) >= 40
    assert len({c.id for c in cases}) == len(cases), "duplicate row ids"
    assert sum(c.glance == 201 for c in cases) >= 20
    assert {c.glance for c in cases} >= {201, 400, 403, 413}
    readme = README.read_text(encoding="utf-8")
    section = readme.split("### Deliberate differences from Glance", 1)[1].split("\n## ", 1)[0]
    for case in cases:
        if case.known:
            assert f"| {case.known} |" in section, (
                f"row {case.id}: README's differences table has no row {case.known!r}")


@pytest.fixture(scope="module")
def server_profile(glance_shared: GlanceServer) -> Profile:
    """The glance profile with this Glance's own schema, as apply and validate read it."""
    with ImageClient(glance_shared.url, token_provider=StaticToken(TOKEN)) as client:
        body = client.server_info("image_schema")
    return profile_for("glance", ServerInfo("image_schema", f"{glance_shared.url}/v2/schemas/"
                                            "image", "2026-12-01T00:00:00Z", body))


@pytest.mark.parametrize("case", [c if not isinstance(c, Case) else pytest.param(c, id=c.id)
                                  for c in CASES])
def test_glance_profile_accepts_exactly_what_glance_accepts(
        case: Case, glance_shared: GlanceServer, server_profile: Profile, tmp_path: Path) -> None:
    body = case.body if "name" in case.body else {"name": f"parity-{case.id}", **case.body}
    url = glance_shared.url
    created: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, headers={**JSON, "X-Auth-Token": TOKEN}) as http:
        try:
            # apply always adds the marker, so Glance judges the body with it
            response = http.post("/v2/images",
                                 json={MARKER_PROPERTY: uuid.uuid4().hex, **body})
            if response.status_code == 201:
                created.append(response.json())
            assert response.status_code == case.glance, (
                f"row {case.id}: Glance answered {response.status_code} "
                f"({_message(response)!r}); the table says {case.glance}")
            glance_ok = response.status_code == 201
            # without the schema (offline, nothing cached): never looser than the server
            default_spec, _ = glance_profile_verdict(body, tmp_path / "default")
            assert glance_ok or default_spec is None or case.deployment, (
                f"row {case.id}: upstream defaults accept what Glance rejects "
                f"({response.status_code} {_message(response)!r})")
            spec, problems = glance_profile_verdict(body, tmp_path / "catalog", server_profile)
            ours_ok = spec is not None
            glance_says = "accepts" if glance_ok else (
                f"rejects ({response.status_code} {_message(response)!r})")
            ours_says = "accepts" if ours_ok else f"rejects ({' | '.join(problems.splitlines())})"
            if case.known:
                assert glance_ok and not ours_ok, (
                    f"row {case.id}: the documented difference ({case.known}) no longer holds: "
                    f"Glance {glance_says}, the glance profile {ours_says}")
                return
            assert ours_ok == glance_ok, (
                f"row {case.id}: Glance {glance_says} but the glance profile {ours_says}; "
                f"body {json.dumps(body, ensure_ascii=False)[:300]}")
            if ours_ok:
                # The body apply builds from the catalog entry must be accepted as well.
                sent = {**spec.body(), MARKER_PROPERTY: uuid.uuid4().hex}
                again = http.post("/v2/images", json=sent)
                if again.status_code == 201:
                    created.append(again.json())
                assert again.status_code == 201, (
                    f"row {case.id}: the glance profile accepts it, but Glance answers "
                    f"{again.status_code} ({_message(again)!r}) to the body apply sends")
        finally:
            for image in created:
                delete_image(url, image)


# --------------------------------------------------------------------------- error reporting


@pytest.mark.parametrize(("status", "body", "words"), [
    (400, {"name": "n" * 256}, "is too long"),
    (403, {"name": "reserved", "location": "http://example.com/x.img"},
     "Attribute 'location' is reserved."),
    (403, {"name": "read-only", "status": "active"}, "Attribute 'status' is read-only."),
    (409, {"name": "duplicate", "id": "11111111-2222-4333-8444-555555555555"},
     "Image ID 11111111-2222-4333-8444-555555555555 already exists!"),
    (413, {"name": "many-tags", "tags": [f"t{i}" for i in range(129)]},
     "Attempted: 129, Maximum: 128"),
], ids=["400-schema", "403-reserved", "403-read-only", "409-duplicate-id", "413-tag-quota"])
def test_glance_errors_show_message_status_and_request_id(
        status: int, body: dict[str, Any], words: str, glance_shared: GlanceServer) -> None:
    with ImageClient(glance_shared.url, token_provider=StaticToken(TOKEN)) as client:
        if status == 409:
            first = client.create_image(body)
        with pytest.raises(ClientError) as caught:
            client.create_image(body)
        if status == 409:
            client.delete_image(first["id"])
    err = caught.value
    text = str(err)
    assert err.status == status, text
    assert words in err.message, f"Glance's message is lost: {text!r}"
    assert err.request_id and err.request_id.startswith("req-"), text
    assert err.request_id in text, text
    assert f"HTTP {status}" in text, text
    assert "<" not in text and "br />" not in text and ">" not in text, f"HTML left: {text!r}"
    assert "POST" in text and "/v2/images" in text, text


def test_glance_error_reaches_the_cli_user(
        glance_low_quota: GlanceServer, write_catalog: Callable[..., Path], tmp_path: Path,
        cli: Callable[..., Result]) -> None:
    """An image Glance refuses fails alone: the others are created, the report says why."""
    glance = glance_low_quota
    catalog = write_catalog({"images.yaml": {"images": [
        {"name": "fine-image", "visibility": "private"},
        {"name": "many-properties", "visibility": "private",  # 4 + the marker: over quota
         "properties": {f"p{i}": "v" for i in range(4)}},
    ]}})
    result = cli(cli_args("apply", catalog, tmp_path / "state.db", glance.url, "--yes",
                          "--format", "json"), expect=1)
    outcomes = {o["name"]: o for o in report(result)["outcomes"]}
    assert outcomes["fine-image"]["result"] == "created"
    failed = outcomes["many-properties"]
    assert failed["result"] == "failed", failed
    assert failed["error"]["status"] == 413, failed
    assert "allowed image properties" in failed["error"]["message"], failed
    assert "<" not in failed["error"]["message"], failed
    assert str(failed["error"]["request_id"]).startswith("req-"), failed
    assert "Traceback" not in result.output
    assert [i["name"] for i in list_images(glance.url)] == ["fine-image"]


# --------------------------------------------------------------------------- a crash


def _reconcile() -> list[str]:
    exe = Path(sys.executable).with_name("reconcile")
    return [str(exe)] if exe.exists() else [sys.executable, "-c",
                                            "from reconciler.cli import main; main()"]


def test_glance_killed_during_apply_then_rerun_completes_without_duplicates(
        glance: GlanceServer, write_catalog: Callable[..., Path], tmp_path: Path) -> None:
    catalog = write_catalog({"images.yaml": catalog_of(N_IMAGES, prefix="crash")})
    state = tmp_path / "state.db"
    names = {f"crash-{i:02d}" for i in range(N_IMAGES)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    env.update(OS_AUTH_TOKEN=TOKEN, NO_COLOR="1")
    args = [*_reconcile(), *cli_args("apply", catalog, state, glance.url, "--yes",
                                     "--parallelism", "2", "--retries", "1",
                                     "--connect-timeout", "2", "--read-timeout", "20",
                                     "--log-format", "json")]
    out, err = tmp_path / "apply1.out", tmp_path / "apply1.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=stdout, stderr=stderr)
        try:
            seen = 0
            deadline = time.monotonic() + 60
            while seen < 3 and proc.poll() is None and time.monotonic() < deadline:
                seen = len(list_images(glance.url))
                time.sleep(0.02)
            assert proc.poll() is None, (f"apply finished before Glance could be killed "
                                         f"({seen} images seen)")
            glance.kill()
            killed_at = seen
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first_err = err.read_text(errors="replace")
    assert code == 1, f"exit {code}; stderr:\n{first_err[-3000:]}"
    assert "Traceback" not in first_err, first_err[-5000:]
    assert "Traceback" not in out.read_text(errors="replace")
    assert killed_at < N_IMAGES
    print(f"Glance killed once {killed_at} images existed")

    known = set(recorded(state)) if state.exists() else set()
    glance.start()  # same port, same database
    survivors = list_images(glance.url)
    assert 0 < len(survivors) < N_IMAGES, f"{len(survivors)} images survived the crash"
    unrecorded = {i["name"] for i in survivors} - known  # created, but the answer was lost

    # Glance was killed and restarted, so no create the killed run sent can land any more:
    # no need to wait out the settle time before creating what is missing.
    rerun = subprocess.run([*args, "--format", "json", "--settle-time", "0"], cwd=tmp_path,
                           env=env,
                           capture_output=True, text=True, timeout=240, check=False)
    assert rerun.returncode == 0, f"re-run exit {rerun.returncode}:\n{rerun.stderr[-5000:]}"
    assert "Traceback" not in rerun.stderr
    outcomes = {o["name"]: o["result"] for o in json.loads(rerun.stdout)["outcomes"]}
    assert {n for n, r in outcomes.items() if r == "adopted"} == unrecorded, outcomes
    assert sum(r == "created" for r in outcomes.values()) == N_IMAGES - len(survivors)
    print(f"{len(known)} recorded by the killed run, {len(survivors)} in Glance, "
          f"{len(unrecorded)} adopted by the re-run")
    images = assert_state_matches_glance(state, glance.url, names)
    assert len(images) == N_IMAGES
    survivor_ids = {i["id"] for i in survivors}
    assert survivor_ids <= {i["id"] for i in images}, "an image created before the crash was lost"

    plan = subprocess.run([*_reconcile(), *cli_args("plan", catalog, state, glance.url,
                                                    "--refresh", "--detailed-exitcode")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]


# --------------------------------------------------------------------------- two machines


def test_two_applies_with_two_state_files_at_once_create_no_duplicates(
        glance: GlanceServer, write_catalog: Callable[..., Path], tmp_path: Path) -> None:
    """Two machines, each with its own state file: every create carries the same
    deterministic id, so the second POST of an image is Glance's 409 and is adopted."""
    catalog = write_catalog({"images.yaml": catalog_of(20, prefix="twin")})
    names = {f"twin-{i:02d}" for i in range(20)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    env.update(OS_AUTH_TOKEN=TOKEN, NO_COLOR="1")
    procs = []
    for machine in ("one", "two"):
        work = tmp_path / machine
        work.mkdir()
        args = [*_reconcile(), *cli_args("apply", catalog, work / "state.db", glance.url,
                                         "--yes", "--parallelism", "4", "--format", "json")]
        procs.append(subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=180) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]
    images = list_images(glance.url)
    assert Counter(i["name"] for i in images) == Counter(names)  # one image per name
    for machine in ("one", "two"):
        records = recorded(tmp_path / machine / "state.db")
        assert {n: r.image_id for n, r in records.items()} == {
            i["name"]: i["id"] for i in images}, machine
    outcomes = Counter(o["result"] for out, _ in results for o in json.loads(out)["outcomes"])
    assert outcomes["created"] == 20 and outcomes["created"] + outcomes["adopted"] == 40


def test_recreate_after_an_out_of_band_delete_takes_the_next_generation_id(
        glance: GlanceServer, write_catalog: Callable[..., Path], tmp_path: Path,
        cli: Callable[..., Result]) -> None:
    catalog = write_catalog({"images.yaml": catalog_of(1, prefix="gen")})
    state = tmp_path / "state.db"
    cli(cli_args("apply", catalog, state, glance.url, "--yes"))
    first = recorded(state)["gen-00"].image_id
    httpx.delete(f"{glance.url}/v2/images/{first}", headers={"X-Auth-Token": TOKEN},
                 timeout=30).raise_for_status()
    cli(cli_args("apply", catalog, state, glance.url, "--yes"))  # Glance keeps `first` reserved
    second = recorded(state)["gen-00"].image_id
    assert second != first
    assert [i["id"] for i in list_images(glance.url)] == [second]
    fresh = tmp_path / "fresh.db"  # a machine that never saw the first generation
    result = cli(cli_args("apply", catalog, fresh, glance.url, "--yes", "--format", "json"))
    assert recorded(fresh)["gen-00"].image_id == second
    assert [o["result"] for o in report(result)["outcomes"]] == ["adopted"]
