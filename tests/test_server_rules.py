"""The server's own rules: Glance's image schema and IMS's OS list, read online, kept in the
state per target, used offline, and named in every refusal.

CLI tests run against the sandbox over loopback HTTP; ``profile_for`` is tested on plain
schema documents (the real Glance's answer is covered by tests/glance).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from apply_helpers import SandboxFactory, trickling_server
from click.testing import Result
from hostile import Answer, HostileServer, endless

from reconciler import client as client_module
from reconciler.catalog import load_catalog
from reconciler.client import MAX_BODY_BYTES, ImageClient, StaticToken, http_client
from reconciler.errors import CatalogError, MalformedResponse, TransportError
from reconciler.osversions import KNOWN_OS_VERSIONS
from reconciler.serverinfo import InvalidServerInfo, ServerInfo, os_versions, profile_for
from reconciler.state import (
    SCHEMA_VERSION,
    LockRequest,
    open_for_write,
    open_readonly,
    schema_version,
)

Run = Callable[..., Result]
ENV = {"OS_AUTH_TOKEN": "t0ken"}
CUSTOM_OS = "Kylin V10 SP2 64bit"  # not in the built-in list
UUID = "11111111-2222-4333-8444-555555555555"


def glance_schema(disk: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "name": {"type": ["null", "string"], "maxLength": 255},
        "visibility": {"type": "string", "enum": ["community", "public", "private", "shared"]},
        "container_format": {"type": ["null", "string"], "enum": [None, "bare", "ovf"]},
        "disk_format": {"type": ["null", "string"],
                        "enum": disk if disk is not None else [None, "raw", "qcow2"]},
        **extra,
    }
    return {"name": "image", "properties": props, "additionalProperties": {"type": "string"}}


def schema_info(body: dict[str, Any]) -> ServerInfo:
    return ServerInfo("image_schema", "http://glance:9292/v2/schemas/image",
                      "2026-12-01T10:00:00Z", body)


def one_image(write_catalog: Callable[..., Path], **fields: Any) -> Path:
    return write_catalog({"a.yaml": {"images": [{"name": "img", **fields}]}})


def problems(root: Path, profile: Any) -> list[str]:
    try:
        load_catalog(root, profile)
    except CatalogError as exc:
        return [p.message for p in exc.problems]
    return []


# --- the profile a schema makes (pure) -------------------------------------------------------

def test_server_schema_formats_replace_the_upstream_defaults(
        write_catalog: Callable[..., Path]) -> None:
    profile = profile_for("glance", schema_info(glance_schema([None, "raw", "zvhd2"])))
    assert problems(one_image(write_catalog, disk_format="zvhd2"), profile) == []
    [message] = problems(one_image(write_catalog, disk_format="qcow2"), profile)
    assert message == ("'qcow2' is not allowed by the server's schema "
                       "(http://glance:9292/v2/schemas/image, read 2026-12-01); use one of: "
                       "raw, zvhd2")


def test_without_a_schema_refusals_name_the_upstream_defaults_and_how_to_read_one(
        write_catalog: Callable[..., Path]) -> None:
    [message] = problems(one_image(write_catalog, disk_format="zvhd2"), profile_for("glance"))
    assert "upstream Glance's defaults" in message
    assert "reconcile validate --endpoint URL" in message


def test_allow_setting_widens_the_defaults_but_never_the_server_schema(
        write_catalog: Callable[..., Path]) -> None:
    root = one_image(write_catalog, disk_format="zvhd2", container_format="docker")
    offline = profile_for("glance", allow_disk_formats=["zvhd2"])
    assert problems(root, offline) == []
    assert "plus the allow_* settings" in offline.source
    online = profile_for("glance", schema_info(glance_schema()), allow_disk_formats=["zvhd2"])
    found = sorted(problems(root, online))
    assert len(found) == 2
    assert "'docker' is not allowed by the server's schema" in found[0]
    assert "your allow_* setting adds it, but the server's schema does not list it" in found[1]


def test_property_rules_the_schema_states_are_enforced_like_the_server_does(
        write_catalog: Callable[..., Path]) -> None:
    uuid_rule = {"type": ["null", "string"], "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-"
                 "([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"}
    policy = {"type": "string", "enum": ["on_image_deletion", "do_not_delete"]}
    profile = profile_for("glance", schema_info(glance_schema(
        kernel_id=uuid_rule, cinder_encryption_key_deletion_policy=policy)))
    ok = one_image(write_catalog, properties={
        "kernel_id": UUID, "cinder_encryption_key_deletion_policy": "do_not_delete"})
    assert problems(ok, profile) == []
    bad = write_catalog({"b.yaml": {"images": [{"name": "bad", "properties": {
        "kernel_id": "not-a-uuid", "cinder_encryption_key_deletion_policy": "never"}}]}}, "bad")
    found = sorted(problems(bad, profile), key=lambda m: "never" in m)
    assert len(found) == 2
    assert all(m.startswith("is refused by the server's schema (http://glance:9292") for m in found)
    assert "'not-a-uuid' does not match" in found[0]
    assert "'never' is not one of ['on_image_deletion', 'do_not_delete']" in found[1]
    # no schema: upstream's own typed properties (kernel_id, ramdisk_id) only
    [default] = problems(bad, profile_for("glance"))
    assert default.startswith("is refused by upstream Glance's defaults")


def test_a_schema_narrower_than_the_defaults_is_followed(
        write_catalog: Callable[..., Path]) -> None:
    mitaka = glance_schema(visibility={"type": "string", "enum": ["public", "private"]},
                           name={"type": ["null", "string"], "maxLength": 100})
    profile = profile_for("glance", schema_info(mitaka))
    found = problems(write_catalog({"a.yaml": {"images": [
        {"name": "x" * 101, "visibility": "shared"}]}}), profile)
    assert len(found) == 2 and "'shared' is not allowed" in found[1]
    assert found[0] == ("is 101 characters long; the server's schema (http://glance:9292/v2/"
                        "schemas/image, read 2026-12-01) allows at most 100")


@pytest.mark.parametrize("body", [
    {"properties": 5}, [], {"properties": {"disk_format": {"enum": "raw"}}},
    {"properties": {"disk_format": {"enum": [1, 2]}}},
], ids=["properties-not-a-mapping", "not-an-object", "enum-not-a-list", "enum-of-numbers"])
def test_a_malformed_schema_is_refused_with_where_it_is_wrong(body: Any) -> None:
    with pytest.raises(InvalidServerInfo) as info:
        profile_for("glance", schema_info(body))
    assert info.value.problems


def test_os_list_answer_is_read_like_the_documented_example() -> None:
    body = [{"platform": "SUSE", "version_list": [
        {"platform": "SUSE", "os_version_key": "SUSE Linux Enterprise Server 15 64bit",
         "os_version": "SUSE Linux Enterprise Server 15 64bit", "os_bit": 64,
         "os_type": "Linux"}]},
        {"platform": "Other", "version_list": [
            {"platform": "Other", "os_version_key": "Other(32 bit)",
             "os_version": "Other(32 bit)", "os_bit": 32, "os_type": "Linux"}]}]
    assert os_versions(body) == {"SUSE Linux Enterprise Server 15 64bit", "Other(32 bit)"}
    malformed: list[Any] = [[], [{"platform": "x"}], {"version_list": []},
                            [{"version_list": [{}]}]]
    for bad in malformed:
        with pytest.raises(InvalidServerInfo):
            os_versions(bad)


def test_client_refuses_a_malformed_answer_as_malformed_response() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"properties": 1}))
    with httpx.Client(transport=transport) as http, ImageClient(
            "http://glance:9292", token_provider=StaticToken("t0ken"), http=http) as client, \
            pytest.raises(MalformedResponse) as info:
        client.server_info("image_schema")
    assert str(info.value) == (
        "GET http://glance:9292/v2/schemas/image HTTP 200: unexpected response: the body is "
        "not the documented image schema (properties: Input should be a valid dictionary)")


def test_rules_are_read_within_their_own_short_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A server trickling its answer holds the rule read for RULES_DEADLINE, not for the
    # client's request deadline (120 s by default), and the request after it keeps that one.
    monkeypatch.setattr(client_module, "RULES_DEADLINE", 0.5)
    with trickling_server(0.05) as url, http_client(request_timeout=3) as http, \
            ImageClient(url, token_provider=StaticToken("t0ken"), http=http) as client:
        with pytest.raises(TransportError) as info:
            client.server_info("os_versions")
        assert "deadline of 0.5 s" in str(info.value)
        with pytest.raises(TransportError) as other:
            client.get_image(UUID)
        assert "deadline of 3 s" in str(other.value)


# --- the sandbox serves both -----------------------------------------------------------------

def test_sandbox_serves_its_os_list_and_its_schema(sandbox: SandboxFactory) -> None:
    ims, glance = sandbox(), sandbox(profile="glance")
    with ImageClient(ims.url, token_provider=StaticToken("t0ken")) as client:
        assert os_versions(client.server_info("os_versions")) == KNOWN_OS_VERSIONS
    with ImageClient(glance.url, token_provider=StaticToken("t0ken")) as client:
        profile = profile_for("glance", ServerInfo(
            "image_schema", glance.url, "2026-12-01T00:00:00Z", client.server_info(
                "image_schema")))
    assert "vmdk" in profile.disk_formats and "zvhd2" not in profile.disk_formats


# --- online, cached, offline through the CLI -------------------------------------------------

def validate(run_cli: Run, catalog: Path, state: Path, *flags: Any) -> Result:
    return run_cli(["validate", "--catalog", catalog, "--state", state, *flags], env=ENV)


def test_region_os_list_is_read_kept_and_used_offline(
        tmp_path: Path, write_catalog: Callable[..., Path], run_cli: Run,
        sandbox: SandboxFactory) -> None:
    sb = sandbox(os_versions=frozenset({CUSTOM_OS, *KNOWN_OS_VERSIONS}))
    catalog = one_image(write_catalog, os_version=CUSTOM_OS, min_disk=40)
    state = tmp_path / "state.db"

    fresh = validate(run_cli, catalog, tmp_path / "other.db", "--strict")
    assert fresh.exit_code == 1
    assert "is not in reconcile's built-in IMS OS list" in fresh.stderr

    online = validate(run_cli, catalog, state, "--strict", "--endpoint", sb.url)
    assert online.exit_code == 0, online.output
    assert "warning" not in online.stderr
    assert f"OS versions from the region's OS list ({sb.url}/v1/cloudimages/os_version" \
        in online.stdout
    row = open_readonly(state)
    assert row is not None
    kept = row.server_info(sb.url, "os_versions")
    row.close()
    assert kept is not None and kept["url"] == f"{sb.url}/v1/cloudimages/os_version"
    assert kept["read_at"] == "2024-05-17T12:30:00Z"  # the injected clock

    offline = validate(run_cli, catalog, state, "--strict")  # no --endpoint: the kept list
    assert offline.exit_code == 0, offline.output
    other = validate(run_cli, write_catalog({"a.yaml": {"images": [
        {"name": "x", "os_version": "Plan9", "min_disk": 40}]}}, "c2"), state)
    assert f"is not in the region's OS list ({sb.url}/v1/cloudimages/os_version, read " \
           "2024-05-17 (cached))" in other.stderr


def test_apply_reads_the_os_list_and_the_sandbox_accepts_current_versions(
        tmp_path: Path, write_catalog: Callable[..., Path], run_cli: Run,
        sandbox: SandboxFactory) -> None:
    sb = sandbox()
    catalog = write_catalog({"a.yaml": {"images": [
        {"name": f"i{n}", "os_version": v, "min_disk": 40} for n, v in enumerate(
            ["Ubuntu 22.04 server 64bit", "Ubuntu 20.04 server 64bit", "openEuler 22.03 64bit",
             "EulerOS 2.10 64bit"])]}})
    state = tmp_path / "state.db"
    result = run_cli(["apply", "--yes", "--strict", "--catalog", catalog, "--state", state,
                      "--endpoint", sb.url], env=ENV)
    assert result.exit_code == 0, result.output
    assert len(sb.images()) == 4
    store = open_readonly(state)
    assert store is not None
    assert store.server_info(sb.url, "os_versions") is not None
    store.close()


def test_glance_schema_refusal_names_the_server_then_the_cache(
        tmp_path: Path, write_catalog: Callable[..., Path], run_cli: Run,
        sandbox: SandboxFactory) -> None:
    sb = sandbox(profile="glance")
    catalog = one_image(write_catalog, disk_format="zvhd2")
    state = tmp_path / "state.db"
    online = validate(run_cli, catalog, state, "--profile", "glance", "--endpoint", sb.url)
    assert online.exit_code == 1
    assert (f"'zvhd2' is not allowed by the server's schema ({sb.url}/v2/schemas/image, read "
            "2024-05-17); use one of:") in online.stderr
    offline = validate(run_cli, catalog, state, "--profile", "glance")
    assert f"({sb.url}/v2/schemas/image, read 2024-05-17 (cached))" in offline.stderr
    ok = validate(run_cli, one_image(write_catalog, disk_format="vmdk"), state,
                  "--profile", "glance")
    assert ok.exit_code == 0
    assert f"the server's schema ({sb.url}/v2/schemas/image" in ok.stdout


def test_kept_rules_are_per_target(tmp_path: Path, write_catalog: Callable[..., Path],
                                   run_cli: Run, sandbox: SandboxFactory) -> None:
    one, two = sandbox(os_versions=frozenset({CUSTOM_OS})), sandbox()
    state = tmp_path / "state.db"
    catalog = one_image(write_catalog, os_version=CUSTOM_OS, min_disk=40)
    for sb in (one, two):
        assert validate(run_cli, catalog, state, "--endpoint", sb.url).exit_code == 0
    env_one = {**ENV, "RECONCILE_ENDPOINT": one.url}
    assert run_cli(["validate", "--catalog", catalog, "--state", state, "--strict"],
                   env=env_one).exit_code == 0  # the env var selects, it does not go online
    env_two = {**ENV, "RECONCILE_ENDPOINT": two.url}
    result = run_cli(["validate", "--catalog", catalog, "--state", state, "--strict"],
                     env=env_two)
    assert result.exit_code == 1 and "the region's OS list" in result.stderr
    reads = ("GET", "os_versions")
    assert one.request_count[reads] == 1 == two.request_count[reads]


def test_plan_refresh_keeps_the_rules_for_the_offline_plan(
        tmp_path: Path, write_catalog: Callable[..., Path], run_cli: Run,
        sandbox: SandboxFactory) -> None:
    sb = sandbox(os_versions=frozenset({CUSTOM_OS}))
    catalog = one_image(write_catalog, os_version=CUSTOM_OS, min_disk=40)
    state = tmp_path / "state.db"
    args = ["plan", "--catalog", catalog, "--state", state, "--strict"]
    assert run_cli([*args, "--refresh", "--endpoint", sb.url], env=ENV).exit_code == 0
    result = run_cli([*args, "--endpoint", sb.url], env=ENV)
    assert result.exit_code == 0, result.output


def test_unreadable_rules_are_a_note_and_the_built_ins_apply(
        tmp_path: Path, write_catalog: Callable[..., Path], run_cli: Run,
        sandbox: SandboxFactory) -> None:
    sb = sandbox(profile="glance")  # Glance has no /v1/cloudimages/os_version
    catalog = one_image(write_catalog, os_version="Ubuntu 22.04 server 64bit", min_disk=40)
    result = validate(run_cli, catalog, tmp_path / "state.db", "--endpoint", sb.url)
    assert result.exit_code == 0, result.output
    assert (f"warning: could not read the server's OS list: GET {sb.url}/v1/cloudimages/"
            "os_version HTTP 404: ") in result.stderr
    assert "404" in result.stderr
    assert "using reconcile's built-in rules" in result.stderr


# --- hostile answers: one note, and the kept or built-in rules ------------------------------

def nested(depth: int) -> bytes:
    return b'{"properties": ' + b"[" * depth + b"]" * depth + b"}"


HOSTILE_SCHEMAS: dict[str, tuple[Answer, str]] = {
    "huge": (Answer(200, endless(b" " * 65536, MAX_BODY_BYTES + 65536),
                    {"Content-Type": "application/json"}), "is over 8 MiB; reading stopped"),
    "not json": (Answer(200, b"<html>schema</html>"), "the body is not JSON"),
    "nested too deeply": (Answer(200, nested(100_000)), "is JSON nested too deeply to read"),
    "not an object": (Answer.json(200, ["disk_format"]), "body: Input should be"),
    "enum of numbers": (Answer.json(200, glance_schema([1, 2])), "properties.disk_format.enum"),
    "negative maxLength": (Answer.json(200, glance_schema(
        name={"type": "string", "maxLength": -1})), "should be greater than or equal to 0"),
    "rule not a schema": (Answer.json(200, glance_schema(kernel_id={"type": "uuid"})),
                          "properties.kernel_id: is not a valid JSON schema"),
    "rule with a bad pattern": (Answer.json(200, glance_schema(
        kernel_id={"type": "string", "pattern": "(["})), "is not a 'regex'"),
    "rule pointing elsewhere": (Answer.json(200, glance_schema(
        kernel_id={"$ref": "http://evil.example/x.json"})), "refers elsewhere ($ref)"),
    "thousands of bad rules": (Answer.json(200, glance_schema(
        None, **{f"p{n}": {"type": "nope"} for n in range(5000)})), "+4997 more"),
}


@pytest.mark.parametrize(("answer", "why"), HOSTILE_SCHEMAS.values(), ids=HOSTILE_SCHEMAS.keys())
def test_a_hostile_schema_is_one_note_and_the_built_in_rules_apply(
        answer: Answer, why: str, tmp_path: Path, write_catalog: Callable[..., Path],
        run_cli: Run) -> None:
    catalog = one_image(write_catalog, disk_format="qcow2")
    state = tmp_path / "state.db"
    with HostileServer(lambda seen: answer) as server:
        result = validate(run_cli, catalog, state, "--profile", "glance",
                          "--endpoint", server.url)
        assert len(server.requests("GET", "/v2/schemas/image")) == 1
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    [note] = result.stderr.splitlines()
    assert note.startswith(f"warning: could not read the server's image schema: GET "
                           f"{server.url}/v2/schemas/image HTTP 200: unexpected response: ")
    assert why in note
    assert note.endswith("; using reconcile's built-in rules")
    assert len(note) < 1200
    assert not state.exists()  # nothing to keep


def test_a_schema_listing_thousands_of_formats_is_followed_and_named_briefly(
        write_catalog: Callable[..., Path]) -> None:
    formats = [f"fmt{n:05d}" for n in range(5000)]
    profile = profile_for("glance", schema_info(glance_schema([None, *formats])))
    [message] = problems(one_image(write_catalog, disk_format="qcow2"), profile)
    assert "use one of: fmt00000, fmt00001," in message and "(and 4970 more)" in message
    assert len(message) < 600
    [none] = problems(one_image(write_catalog, disk_format="qcow2"),
                      profile_for("glance", schema_info(glance_schema([None]))))
    assert none.endswith("; it allows no value here")


def test_an_unusable_kept_schema_is_said_and_the_built_in_rules_apply(
        tmp_path: Path, write_catalog: Callable[..., Path], run_cli: Run) -> None:
    state = tmp_path / "state.db"
    store = open_for_write(state)
    store.save_server_info("http://glance:9292", "image_schema",
                           url="http://glance:9292/v2/schemas/image",
                           body=glance_schema(kernel_id={"type": "uuid"}),
                           read_at="2026-11-30T08:00:00Z")
    store.close()
    result = validate(run_cli, one_image(write_catalog, disk_format="vmdk"), state,
                      "--profile", "glance")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "warning: the image schema kept for http://glance:9292 (read 2026-11-30) is not usable "
        "(properties.kernel_id: is not a valid JSON schema: 'uuid' is not valid under any of "
        "the given schemas); using reconcile's built-in rules until it is read again"]


def old_state_file(path: Path) -> Path:
    """A state file of schema version 3 (before server_info)."""
    from sqlite_utils import Database

    from reconciler.state import MIGRATIONS
    conn = sqlite3.connect(path)
    db = Database(conn)
    for step in MIGRATIONS[:3]:
        step(db)
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    return path


def test_an_old_state_file_is_not_migrated_by_validate_and_the_run_goes_on(
        tmp_path: Path, write_catalog: Callable[..., Path], run_cli: Run,
        sandbox: SandboxFactory, file_sha256: Callable[[Path], str]) -> None:
    sb = sandbox()
    state = old_state_file(tmp_path / "state.db")
    before = file_sha256(state)
    catalog = one_image(write_catalog, os_version="Ubuntu 22.04 server 64bit", min_disk=40)
    result = validate(run_cli, catalog, state, "--endpoint", sb.url)
    assert result.exit_code == 0, result.output
    assert "warning: the OS list was not kept: state file" in result.stderr
    assert "older schema (the next apply migrates it)" in result.stderr
    assert file_sha256(state) == before


def test_rules_not_kept_because_an_apply_holds_the_state_are_a_note(
        tmp_path: Path, write_catalog: Callable[..., Path], run_cli: Run,
        sandbox: SandboxFactory) -> None:
    # A PR check validating while the nightly apply runs: the check passes, says why the
    # rules were not kept, and never waits for the apply's lock.
    sb = sandbox()
    state = tmp_path / "state.db"
    holder = open_for_write(state, LockRequest(sb.url, "apply"))
    try:
        catalog = one_image(write_catalog, os_version="Ubuntu 22.04 server 64bit", min_disk=40)
        result = validate(run_cli, catalog, state, "--endpoint", sb.url)
    finally:
        holder.close()
    assert result.exit_code == 0, result.output
    [note] = result.stderr.splitlines()
    assert note.startswith("warning: the OS list was not kept in the state file: ")
    assert "apply" in note
    reader = open_readonly(state)
    assert reader is not None and reader.server_info(sb.url, "os_versions") is None
    reader.close()


def test_allow_setting_from_reconcile_toml(tmp_path: Path, write_catalog: Callable[..., Path],
                                           run_cli: Run) -> None:
    catalog = one_image(write_catalog, disk_format="zvhd2")
    (tmp_path / "reconcile.toml").write_text('allow_disk_formats = ["zvhd", "zvhd2"]\n')
    result = run_cli(["validate", "--catalog", catalog, "--profile", "glance"])
    assert result.exit_code == 0, result.output
    assert "plus the allow_* settings" in result.stdout
    (tmp_path / "reconcile.toml").write_text('allow_disk_formats = "zvhd2"\n')
    bad = run_cli(["validate", "--catalog", catalog, "--profile", "glance"])
    assert bad.exit_code == 1
    assert "'allow_disk_formats' must be a list of strings" in bad.stderr


# --- the state's cache -----------------------------------------------------------------------

def test_kept_rules_do_not_move_the_revision_saved_plans_pin(tmp_path: Path) -> None:
    store = open_for_write(tmp_path / "state.db")
    before = store.revision()
    store.save_server_info("http://x", "os_versions", url="http://x/v1", body=[1],
                           read_at="2026-12-01T00:00:00Z")
    store.save_server_info("http://x", "os_versions", url="http://x/v1", body=[2],
                           read_at="2026-12-02T00:00:00Z")
    assert store.revision() == before
    assert store.server_info("http://x", "os_versions") == {
        "url": "http://x/v1", "body": [2], "read_at": "2026-12-02T00:00:00Z"}
    assert store.server_info("http://y", "os_versions") is None
    store.close()


def test_migration_to_v4_adds_the_server_info_table(tmp_path: Path) -> None:
    path = old_state_file(tmp_path / "old.db")
    assert schema_version(path) == 3
    reader = open_readonly(path)  # migrated in memory only
    assert reader is not None and reader.server_info("t", "os_versions") is None
    reader.close()
    assert schema_version(path) == 3
    open_for_write(path).close()
    assert schema_version(path) == SCHEMA_VERSION >= 4
