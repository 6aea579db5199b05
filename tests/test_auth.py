"""Credentials (docs/api-contract.md §11): Keystone password auth from OS_* variables and
clouds.yaml, token refresh (proactive, one at a time, reactive after a 401), the precedence of
the sources, the TLS flags, and secrets that never reach any output.

Real loopback HTTP against the in-process sandbox in Keystone mode (``SandboxConfig.password``),
real SQLite state files, and the CLI through CliRunner with ``obj=Runtime(env=...)``: the
environment the code sees is exactly the test's dict, with HOME and the current directory in
``tmp_path``, so no real ``~/.config/openstack`` or ``OS_*`` variable is ever read.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from apply_helpers import generate_catalog
from click.testing import CliRunner, Result

from reconciler.auth import AkSkAuth, KeystonePassword, image_endpoint, load_cloud, resolve
from reconciler.cli import Runtime, cli
from reconciler.client import ImageClient, StaticToken
from reconciler.errors import AuthError, ConfigError
from reconciler.sandbox import Sandbox, SandboxConfig

USER = "ci-bot"
DOMAIN = "acme-account"
REGION = "cn-north-4"
PASSWORD = "pw-PLANTED-4f9c-Zq!x"  # distinctive, so any leak is found by a plain search
WRONG_PASSWORD = "pw-WRONG-PLANTED-77e1"
STATIC_TOKEN = "static-TOKEN-PLANTED-0b5d"
APPLY = ["apply", "--yes", "--catalog", "catalog", "--state", "state.db", "--format", "json"]

Invoke = Callable[..., Result]


#: Password auth with a Keystone that is never reached (os_vars points at a sandbox).
KEYSTONE_VARS = {"OS_AUTH_URL": "https://iam.example.com/v3", "OS_USERNAME": USER,
                 "OS_PASSWORD": PASSWORD, "OS_PROJECT_NAME": REGION,
                 "OS_USER_DOMAIN_NAME": DOMAIN}


def os_vars(sb: Sandbox, **extra: str) -> dict[str, str]:
    """The OS_* variables of a Huawei IAM user of ``sb`` (the region is the project name)."""
    return {**KEYSTONE_VARS, "OS_AUTH_URL": f"{sb.url}/v3", "OS_REGION_NAME": REGION, **extra}


def keystone_config(**overrides: Any) -> SandboxConfig:
    return SandboxConfig(**{"password": PASSWORD, "user": USER, "region": REGION, **overrides})


def report_of(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def names_in(sb: Sandbox) -> list[str]:
    return [str(image["name"]) for image in sb.images()]


def assert_clean_failure(result: Result) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "error: " in result.stderr.lower()


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory of the run (tmp_path/work), with a 3-image catalog in it."""
    for var in list(os.environ):
        if var.startswith(("RECONCILE_", "OS_", "HUAWEICLOUD_")) or var == "NO_COLOR":
            monkeypatch.delenv(var)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    directory = tmp_path / "work"
    directory.mkdir()
    monkeypatch.chdir(directory)
    generate_catalog(directory / "catalog", 3, files=1)
    return directory


@pytest.fixture
def home(tmp_path: Path, work: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def invoke(home: Path) -> Invoke:
    """invoke(args, env) runs the CLI with exactly ``env`` (plus HOME) as its environment."""

    def run(args: list[Any], env: Mapping[str, str]) -> Result:
        return CliRunner().invoke(cli, [str(a) for a in args], prog_name="reconcile",
                                  obj=Runtime(env={"HOME": str(home), **env}),
                                  catch_exceptions=False)

    return run


@pytest.fixture
def keystone() -> Iterator[Sandbox]:
    with Sandbox(keystone_config()) as sb:
        yield sb


class FakeClock:
    """A clock shared by the sandbox and the client; starts on a whole second (the sandbox's
    token times have whole seconds)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def provider_for(sb: Sandbox, **kwargs: Any) -> KeystonePassword:
    return KeystonePassword(auth_url=f"{sb.url}/v3", password=PASSWORD, username=USER,
                            user_domain_name=DOMAIN, project_name=REGION, **kwargs)


def token_posts(sb: Sandbox) -> int:
    return sb.request_count[("POST", "tokens")]


# --- 1. Keystone password from OS_* variables ----------------------------------------------

def test_os_variables_alone_discover_the_endpoint_and_apply(keystone: Sandbox,
                                                           invoke: Invoke) -> None:
    report = report_of(invoke(APPLY, os_vars(keystone)))
    assert report["target"] == keystone.url
    assert report["summary"]["created"] == 3
    assert len(keystone.images()) == 3
    assert token_posts(keystone) == 1


def test_unknown_region_is_an_error_listing_the_catalog_regions(keystone: Sandbox,
                                                                invoke: Invoke) -> None:
    result = invoke(APPLY, os_vars(keystone, OS_REGION_NAME="eu-west-0"))
    assert_clean_failure(result)
    assert "region eu-west-0" in result.stderr
    assert f"regions: {REGION}" in result.stderr
    assert keystone.images() == []


def test_interface_flag_is_accepted_and_the_run_works(keystone: Sandbox, invoke: Invoke) -> None:
    # The sandbox lists one URL for every interface; which one is picked is pinned below.
    report = report_of(invoke([*APPLY, "--interface", "internal"], os_vars(keystone)))
    assert report["summary"]["created"] == 3


def test_unlisted_os_interface_is_an_error(keystone: Sandbox, invoke: Invoke) -> None:
    result = invoke(APPLY, os_vars(keystone, OS_INTERFACE="private"))
    assert_clean_failure(result)
    assert "no private image endpoint" in result.stderr


def test_unreachable_keystone_is_a_clean_error(invoke: Invoke) -> None:
    with Sandbox() as sb:
        env = os_vars(sb)  # a port that was just free, and is closed again
    url = env["OS_AUTH_URL"].removesuffix("/v3")
    result = invoke(APPLY, env)
    assert_clean_failure(result)
    assert f"cannot reach Keystone at {url}/v3" in result.stderr


def test_malformed_auth_url_is_a_clean_error(keystone: Sandbox, invoke: Invoke) -> None:
    result = invoke(APPLY, os_vars(keystone, OS_AUTH_URL="https://iam.example.com:50OO/v3"))
    assert_clean_failure(result)
    assert "iam.example.com:50OO" in result.stderr


def test_auth_url_without_a_password_is_a_clean_error(keystone: Sandbox, invoke: Invoke) -> None:
    env = {k: v for k, v in os_vars(keystone).items() if k != "OS_PASSWORD"}
    result = invoke(APPLY, env)
    assert_clean_failure(result)
    assert "OS_PASSWORD" in result.stderr
    assert token_posts(keystone) == 0


def hand_made_catalog() -> list[dict[str, Any]]:
    def endpoint(region: str, interface: str) -> dict[str, str]:
        return {"region": region, "region_id": region, "interface": interface,
                "url": f"https://ims-{interface}.{region}.example.com"}

    return [{"type": "compute", "endpoints": [endpoint(REGION, "public")]},
            {"type": "image", "endpoints": [endpoint(r, i) for r in (REGION, "eu-west-0")
                                            for i in ("public", "internal", "admin")]}]


@pytest.mark.parametrize("interface", ["public", "internal", "admin"])
def test_image_endpoint_picks_the_interface(interface: str) -> None:
    url = image_endpoint(hand_made_catalog(), region=REGION, interface=interface)
    assert url == f"https://ims-{interface}.{REGION}.example.com"


def test_image_endpoint_picks_the_region() -> None:
    url = image_endpoint(hand_made_catalog(), region="eu-west-0", interface="internal")
    assert url == "https://ims-internal.eu-west-0.example.com"


def test_image_endpoint_without_a_region_refuses_to_guess_between_regions() -> None:
    with pytest.raises(ConfigError, match="several regions"):
        image_endpoint(hand_made_catalog(), region=None)


def test_image_endpoint_unknown_region_lists_the_regions() -> None:
    with pytest.raises(ConfigError, match=rf"regions: {REGION}, eu-west-0\)"):
        image_endpoint(hand_made_catalog(), region="ap-southeast-1")


def test_image_endpoint_without_an_image_service_asks_for_endpoint() -> None:
    with pytest.raises(ConfigError, match="no image service; pass --endpoint"):
        image_endpoint(hand_made_catalog()[:1], region=REGION)


def fake_keystone(catalog: list[dict[str, Any]]) -> Callable[[bool | str], httpx.Client]:
    """An http_factory whose Keystone issues a token with the given service catalog."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v3/auth/tokens"
        now = datetime.now(UTC)
        body = {"token": {"issued_at": now.isoformat(),
                          "expires_at": (now + timedelta(hours=24)).isoformat(),
                          "catalog": catalog}}
        return httpx.Response(201, json=body, headers={"X-Subject-Token": "t"})

    return lambda verify: httpx.Client(transport=httpx.MockTransport(handle))


def resolve_env(env: Mapping[str, str], *, endpoint: str | None = None,
                token_file: Path | None = None, os_cloud: str | None = None,
                interface: str | None = None, cacert: str | None = None, insecure: bool = False,
                http_factory: Callable[[bool | str], httpx.Client] | None = None) -> Any:
    return resolve(env, endpoint=endpoint, token_file=token_file, os_cloud=os_cloud,
                   interface=interface, cacert=cacert, insecure=insecure,
                   http_factory=http_factory or (lambda verify: httpx.Client(verify=verify)))


def test_os_interface_variable_selects_the_catalog_interface() -> None:
    env = {**KEYSTONE_VARS, "OS_REGION_NAME": REGION, "OS_INTERFACE": "admin"}
    creds = resolve_env(env, http_factory=fake_keystone(hand_made_catalog()))
    assert creds.endpoint == f"https://ims-admin.{REGION}.example.com"


def test_interface_flag_beats_os_interface() -> None:
    env = {**KEYSTONE_VARS, "OS_REGION_NAME": REGION, "OS_INTERFACE": "admin"}
    creds = resolve_env(env, interface="internal",
                        http_factory=fake_keystone(hand_made_catalog()))
    assert creds.endpoint == f"https://ims-internal.{REGION}.example.com"


# --- 2. Token lifetime: proactive refresh, one at a time -----------------------------------

def test_apply_outlasting_several_token_lifetimes_refreshes_without_a_401(
        invoke: Invoke, work: Path) -> None:
    # 2 s tokens are refreshed 1 s before they expire; 100 images, 4 at a time, 100 ms each,
    # take at least 2.5 s, so the run needs two refreshes or more.
    generate_catalog(work / "catalog", 100, files=4)
    with Sandbox(keystone_config(token_ttl_s=2, latency_ms=100)) as sb:
        report = report_of(invoke([*APPLY, "--parallelism", 4], os_vars(sb)))
        assert report["summary"]["created"] == 100
        assert report["summary"]["failed"] == 0
        assert report["auth_refreshes"] >= 2
        assert token_posts(sb) == report["auth_refreshes"] + 1
        names = names_in(sb)
        assert len(names) == len(set(names)) == 100
        # No create was sent twice: a 401 would have been followed by a second POST.
        assert sb.post_count == 100


@pytest.mark.parametrize(("lifetime_s", "margin_s"), [(3600, 120), (10, 5), (2, 1)])
def test_token_is_refreshed_margin_seconds_before_it_expires(lifetime_s: int,
                                                             margin_s: int) -> None:
    clock = FakeClock()
    with Sandbox(keystone_config(token_ttl_s=lifetime_s, clock=clock)) as sb:
        provider = provider_for(sb, clock=clock)
        first = provider.token()
        clock.advance(lifetime_s - margin_s - 0.5)  # not yet within the margin
        assert provider.token() == first
        assert (token_posts(sb), provider.refreshes) == (1, 0)
        clock.advance(1.0)  # now 0.5 s within the margin, the token still valid
        second = provider.token()
        assert second != first
        assert (token_posts(sb), provider.refreshes) == (2, 1)
        assert provider.token() == second  # and the new token is kept
        assert token_posts(sb) == 2


def test_expired_token_is_refreshed_once_however_many_threads_ask() -> None:
    clock = FakeClock()
    with Sandbox(keystone_config(token_ttl_s=60, clock=clock)) as sb:
        provider = provider_for(sb, clock=clock)
        old = provider.token()
        clock.advance(61)
        threads = 24
        barrier = threading.Barrier(threads)
        got: list[str] = []

        def ask() -> None:
            barrier.wait()
            got.append(provider.token())

        workers = [threading.Thread(target=ask) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert token_posts(sb) == 2
        assert provider.refreshes == 1
        assert len(got) == threads
        assert set(got) == {got[0]} and got[0] != old


# --- 3. Reactive: a 401 re-authenticates once ----------------------------------------------

@contextmanager
def restarted_keystone(
        **config: Any) -> Iterator[tuple[Sandbox, ImageClient, KeystonePassword]]:
    """A client that has listed images with its token, and its sandbox restarted on the same
    port with ``config`` (having forgotten every issued token)."""
    first = Sandbox(keystone_config()).start()
    port = first.port
    provider = provider_for(first)
    client = ImageClient(first.url, token_provider=provider)
    try:
        assert list(client.list_images()) == []
        first.stop()
        with Sandbox(keystone_config(port=port, **config)) as restarted:
            yield restarted, client, provider
    finally:
        first.stop()
        client.close()


def test_token_lost_by_a_restarted_server_is_replaced_after_the_401() -> None:
    with restarted_keystone() as (restarted, client, provider):
        restarted.add_image({"name": "survivor"})
        assert [i["name"] for i in client.list_images()] == ["survivor"]
        assert token_posts(restarted) == 1
        assert restarted.request_count[("GET", "images")] == 2  # the 401, then the retry
        assert provider.refreshes == 1


def test_a_second_401_is_final() -> None:
    clock = FakeClock()  # the client's clock stands still: it never refreshes proactively
    with Sandbox(keystone_config(token_ttl_s=0)) as sb:  # issues tokens already expired
        provider = provider_for(sb, clock=clock)
        with ImageClient(sb.url, token_provider=provider) as client, \
                pytest.raises(AuthError) as caught:
            list(client.list_images())
        assert caught.value.status == 401
        assert token_posts(sb) == 2
        assert sb.request_count[("GET", "images")] == 2


def test_password_changed_before_the_reauthentication_is_a_clear_auth_error() -> None:
    with restarted_keystone(password="rotated-by-the-admin") as (_, client, _), \
            pytest.raises(AuthError) as caught:
        list(client.list_images())
    message = str(caught.value)
    assert "Keystone" in message and f"rejected the credentials of {USER!r}" in message
    assert PASSWORD not in message


def test_wrong_password_exits_1_with_the_keystone_message(keystone: Sandbox,
                                                          invoke: Invoke) -> None:
    result = invoke(APPLY, os_vars(keystone, OS_PASSWORD=WRONG_PASSWORD))
    assert_clean_failure(result)
    assert f"Keystone at {keystone.url}/v3 rejected the credentials of {USER!r}" in result.stderr
    assert WRONG_PASSWORD not in result.output
    assert keystone.images() == []
    assert keystone.request_count[("POST", "images")] == 0


def after_creates(sb: Sandbox, count: int, action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` in a thread once the sandbox has received ``count`` creates."""

    def wait_then_act() -> None:
        deadline = time.monotonic() + 30
        while sb.post_count < count and time.monotonic() < deadline:
            time.sleep(0.002)
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def test_apply_survives_tokens_revoked_mid_run(invoke: Invoke, work: Path) -> None:
    generate_catalog(work / "catalog", 40, files=2)
    with Sandbox(keystone_config(latency_ms=20)) as sb:
        # The server forgets every issued token (as after a restart or a revocation).
        thread = after_creates(sb, 10, sb._app._issued.clear)
        report = report_of(invoke([*APPLY, "--parallelism", 4], os_vars(sb)))
        thread.join()
        assert report["summary"]["created"] == 40
        assert report["auth_refreshes"] >= 1
        names = names_in(sb)
        assert len(names) == len(set(names)) == 40


def test_password_changed_mid_run_aborts_with_a_clear_message(invoke: Invoke,
                                                              work: Path) -> None:
    generate_catalog(work / "catalog", 40, files=2)
    with Sandbox(keystone_config(latency_ms=20)) as sb:

        def rotate() -> None:
            sb.config.password = "rotated-by-the-admin"
            sb._app._issued.clear()

        thread = after_creates(sb, 10, rotate)
        result = invoke([*APPLY, "--parallelism", 4], os_vars(sb))
        thread.join()
        assert_clean_failure(result)
        assert "rejected the credentials" in result.stderr
        assert PASSWORD not in result.output
        report = json.loads(result.stdout)
        created = {o["name"] for o in report["outcomes"] if o["result"] == "created"}
        assert created == set(names_in(sb))  # everything that exists was recorded


# --- 4. clouds.yaml + secure.yaml ----------------------------------------------------------

def write_clouds(directory: Path, sb: Sandbox | None, *, name: str = "hw",
                 password_in_secure: bool = True, **cloud: Any) -> Path:
    """clouds.yaml (and secure.yaml with the password) for a Huawei IAM user."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = {"auth_url": f"{sb.url}/v3" if sb else "https://iam.example.com/v3",
            "username": USER, "user_domain_name": DOMAIN, "project_name": REGION}
    if not password_in_secure:
        auth["password"] = PASSWORD
    entry = {"region_name": REGION, "auth": auth, **cloud}
    clouds = directory / "clouds.yaml"
    clouds.write_text(yaml.safe_dump({"clouds": {name: entry}}), encoding="utf-8")
    if password_in_secure:
        secure = {"clouds": {name: {"auth": {"password": PASSWORD}}}}
        (directory / "secure.yaml").write_text(yaml.safe_dump(secure), encoding="utf-8")
    return clouds


def test_os_cloud_flag_reads_clouds_and_secure_yaml_in_the_current_directory(
        keystone: Sandbox, invoke: Invoke, work: Path) -> None:
    write_clouds(work, keystone)
    report = report_of(invoke([*APPLY, "--os-cloud", "hw"], {}))
    assert report["target"] == keystone.url
    assert len(keystone.images()) == 3


def test_os_cloud_variable_reads_home_config_openstack(keystone: Sandbox, invoke: Invoke,
                                                       home: Path) -> None:
    write_clouds(home / ".config" / "openstack", keystone)
    report = report_of(invoke(APPLY, {"OS_CLOUD": "hw"}))
    assert report["summary"]["created"] == 3


def test_os_client_config_file_names_the_clouds_yaml(keystone: Sandbox, invoke: Invoke,
                                                     tmp_path: Path) -> None:
    clouds = write_clouds(tmp_path / "elsewhere", keystone, password_in_secure=False)
    target = clouds.rename(tmp_path / "elsewhere" / "team-clouds.yaml")
    report = report_of(invoke(APPLY, {"OS_CLOUD": "hw", "OS_CLIENT_CONFIG_FILE": str(target)}))
    assert report["summary"]["created"] == 3


def test_current_directory_clouds_yaml_wins_over_home(work: Path, home: Path) -> None:
    write_clouds(work, None, region_name="from-cwd")
    write_clouds(home / ".config" / "openstack", None, region_name="from-home")
    assert load_cloud("hw", {"HOME": str(home)})["region_name"] == "from-cwd"


def test_home_clouds_yaml_is_used_without_one_in_the_current_directory(work: Path,
                                                                       home: Path) -> None:
    write_clouds(home / ".config" / "openstack", None, region_name="from-home")
    assert load_cloud("hw", {"HOME": str(home)})["region_name"] == "from-home"


def test_os_client_config_file_wins_over_the_current_directory(work: Path, home: Path,
                                                               tmp_path: Path) -> None:
    write_clouds(work, None, region_name="from-cwd")
    named = write_clouds(tmp_path / "named", None, region_name="from-variable")
    env = {"HOME": str(home), "OS_CLIENT_CONFIG_FILE": str(named)}
    assert load_cloud("hw", env)["region_name"] == "from-variable"


def test_secure_yaml_password_is_merged_into_the_cloud(work: Path, home: Path) -> None:
    write_clouds(work, None)
    cloud = load_cloud("hw", {"HOME": str(home)})
    assert cloud["auth"]["password"] == PASSWORD
    assert cloud["auth"]["username"] == USER


def test_unknown_cloud_lists_the_available_clouds(invoke: Invoke, work: Path) -> None:
    clouds = {"clouds": {"prod": {"region_name": REGION}, "staging": {"region_name": REGION}}}
    (work / "clouds.yaml").write_text(yaml.safe_dump(clouds), encoding="utf-8")
    result = invoke([*APPLY, "--os-cloud", "dev"], {})
    assert_clean_failure(result)
    assert "no cloud 'dev'" in result.stderr
    assert "it has: prod, staging" in result.stderr
    assert str(work / "clouds.yaml") in result.stderr


def test_malformed_clouds_yaml_is_a_clear_error_naming_the_file(invoke: Invoke,
                                                                work: Path) -> None:
    (work / "clouds.yaml").write_text("clouds:\n  hw:\n    auth: {username: [x\n",
                                      encoding="utf-8")
    result = invoke(APPLY, {"OS_CLOUD": "hw"})
    assert_clean_failure(result)
    assert str(work / "clouds.yaml") in result.stderr
    assert "not valid YAML" in result.stderr


MALFORMED_CLOUDS = [
    pytest.param("clouds: [prod]\n", None, "clouds.yaml", id="clouds is a list"),
    pytest.param("clouds:\n  hw:\n", None, "clouds.yaml", id="empty cloud"),
    pytest.param("clouds:\n  hw:\n", "clouds:\n  hw: {auth: {password: pw}}\n", "clouds.yaml",
                 id="empty cloud with a secure.yaml entry"),
    pytest.param("clouds:\n  hw:\n    auth: [username, password]\n", None, "clouds.yaml",
                 id="auth is a list"),
    pytest.param("clouds:\n  hw: {auth: {username: u}}\n", "clouds:\n  hw: oops\n",
                 "secure.yaml", id="secure.yaml entry is a string"),
]


@pytest.mark.parametrize(("clouds", "secure", "named"), MALFORMED_CLOUDS)
def test_misshapen_clouds_yaml_is_a_clear_error_naming_the_file(
        clouds: str, secure: str | None, named: str, invoke: Invoke, work: Path) -> None:
    (work / "clouds.yaml").write_text(clouds, encoding="utf-8")
    if secure is not None:
        (work / "secure.yaml").write_text(secure, encoding="utf-8")
    result = invoke(APPLY, {"OS_CLOUD": "hw"})
    assert_clean_failure(result)
    assert str(work / named) in result.stderr


def test_missing_clouds_yaml_says_where_it_looked(invoke: Invoke, home: Path) -> None:
    result = invoke(APPLY, {"OS_CLOUD": "hw"})
    assert_clean_failure(result)
    assert "no clouds.yaml found" in result.stderr
    assert str(home / ".config" / "openstack") in result.stderr


def test_token_cloud_works(invoke: Invoke, work: Path) -> None:
    with Sandbox(SandboxConfig(token=STATIC_TOKEN)) as sb:  # 401 for any other token
        clouds = {"clouds": {"ci": {"auth_type": "token",
                                    "auth": {"auth_url": f"{sb.url}/v3", "token": STATIC_TOKEN,
                                             "project_id": "p"},
                                    "image_endpoint_override": sb.url}}}
        (work / "clouds.yaml").write_text(yaml.safe_dump(clouds), encoding="utf-8")
        report = report_of(invoke(APPLY, {"OS_CLOUD": "ci"}))
        assert report["target"] == sb.url
        assert len(sb.images()) == 3


# --- 5. Precedence of the sources (auth.py's docstring) ------------------------------------

@pytest.fixture
def token_cloud(work: Path) -> str:
    """A clouds.yaml token cloud named 'ci' in the current directory (no network needed)."""
    clouds = {"clouds": {"ci": {"auth_type": "token", "auth": {"token": "cloud-token"}}}}
    (work / "clouds.yaml").write_text(yaml.safe_dump(clouds), encoding="utf-8")
    return "ci"


AKSK_VARS = {"HUAWEICLOUD_SDK_AK": "AK", "HUAWEICLOUD_SDK_SK": "SK-secret",
             "HUAWEICLOUD_SDK_PROJECT_ID": "p"}
ENDPOINT = "https://ims.example.com"


def test_token_file_beats_every_other_source(token_cloud: str, work: Path) -> None:
    (work / "token").write_text("file-token\n", encoding="utf-8")
    env = {"OS_CLOUD": token_cloud, "OS_AUTH_TOKEN": "env-token", **KEYSTONE_VARS, **AKSK_VARS}
    creds = resolve_env(env, endpoint=ENDPOINT, token_file=work / "token")
    assert creds.source == "--token-file"
    assert creds.tokens.token() == "file-token"


def test_os_cloud_flag_beats_os_auth_token(token_cloud: str) -> None:
    creds = resolve_env({"OS_AUTH_TOKEN": "env-token"}, endpoint=ENDPOINT, os_cloud=token_cloud)
    assert creds.tokens.token() == "cloud-token"


def test_os_cloud_variable_beats_os_auth_token(token_cloud: str) -> None:
    creds = resolve_env({"OS_CLOUD": token_cloud, "OS_AUTH_TOKEN": "env-token"},
                        endpoint=ENDPOINT)
    assert creds.tokens.token() == "cloud-token"


def test_os_cloud_variable_beats_os_auth_url(token_cloud: str) -> None:
    creds = resolve_env({"OS_CLOUD": token_cloud, **KEYSTONE_VARS}, endpoint=ENDPOINT)
    assert creds.source == "clouds.yaml cloud 'ci'"
    assert creds.tokens.token() == "cloud-token"


def test_os_auth_token_beats_os_auth_url() -> None:
    creds = resolve_env({"OS_AUTH_TOKEN": "env-token", **KEYSTONE_VARS}, endpoint=ENDPOINT)
    assert creds.source == "OS_AUTH_TOKEN"
    assert creds.tokens.token() == "env-token"


def test_os_auth_url_beats_ak_sk() -> None:
    creds = resolve_env({**KEYSTONE_VARS, **AKSK_VARS}, endpoint=ENDPOINT)
    assert isinstance(creds.tokens, KeystonePassword)
    assert creds.signer is None


def test_ak_sk_is_used_when_nothing_else_is_set() -> None:
    creds = resolve_env(AKSK_VARS, endpoint=ENDPOINT)
    assert creds.source == "AK/SK"
    assert isinstance(creds.signer, AkSkAuth)
    assert creds.tokens.token() == ""  # no X-Auth-Token next to the signature


def test_ak_sk_without_a_project_id_is_a_config_error() -> None:
    env = {k: v for k, v in AKSK_VARS.items() if k != "HUAWEICLOUD_SDK_PROJECT_ID"}
    with pytest.raises(ConfigError, match="HUAWEICLOUD_SDK_PROJECT_ID"):
        resolve_env(env, endpoint=ENDPOINT)


def test_no_credentials_is_an_error_naming_every_source() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_env({}, endpoint=ENDPOINT)
    for source in ("OS_AUTH_TOKEN", "OS_CLOUD", "OS_AUTH_URL", "HUAWEICLOUD_SDK_AK",
                   "--token-file"):
        assert source in str(caught.value)


def test_token_file_beats_a_broken_os_cloud_at_the_cli(invoke: Invoke, work: Path) -> None:
    (work / "token").write_text(STATIC_TOKEN, encoding="utf-8")
    with Sandbox(SandboxConfig(token=STATIC_TOKEN)) as sb:
        report = report_of(invoke([*APPLY, "--token-file", "token", "--endpoint", sb.url],
                                  {"OS_CLOUD": "no-such-cloud", **KEYSTONE_VARS}))
        assert len(sb.images()) == 3
    assert report["summary"]["created"] == 3


# --- 7. TLS flags --------------------------------------------------------------------------

INSECURE_WARNING = "warning: TLS certificates are NOT verified"


def test_insecure_prints_a_warning_on_every_run(keystone: Sandbox, invoke: Invoke) -> None:
    for _ in range(2):  # the second run has nothing to create and still warns
        result = invoke([*APPLY, "--insecure"], os_vars(keystone))
        assert result.exit_code == 0, result.output
        assert INSECURE_WARNING in result.stderr
        assert INSECURE_WARNING not in result.stdout
    plan = invoke(["plan", "--refresh", "--insecure", "--catalog", "catalog", "--state",
                   "state.db"], os_vars(keystone))
    assert plan.exit_code == 0, plan.output
    assert INSECURE_WARNING in plan.stderr


def test_insecure_warning_is_a_json_event_with_json_logs(keystone: Sandbox,
                                                         invoke: Invoke) -> None:
    result = invoke([*APPLY, "--insecure", "--log-format", "json", "-o", "report.json"],
                    os_vars(keystone))
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert any("--insecure" in event["message"] for event in events)


def test_no_warning_without_insecure(keystone: Sandbox, invoke: Invoke) -> None:
    result = invoke(APPLY, os_vars(keystone))
    assert result.exit_code == 0, result.output
    assert "--insecure" not in result.stderr


def test_cacert_naming_a_missing_file_is_a_clear_error(keystone: Sandbox, invoke: Invoke,
                                                       work: Path) -> None:
    result = invoke([*APPLY, "--cacert", "missing-ca.pem"], os_vars(keystone))
    assert_clean_failure(result)
    assert "--cacert" in result.stderr and "missing-ca.pem" in result.stderr
    assert "does not exist" in result.stderr


def test_os_cacert_is_the_verify_path(work: Path) -> None:
    ca = work / "ca.pem"
    creds = resolve_env({"OS_AUTH_TOKEN": "t", "OS_CACERT": str(ca)}, endpoint=ENDPOINT)
    assert creds.verify == str(ca)


def test_cacert_flag_beats_os_cacert(work: Path) -> None:
    creds = resolve_env({"OS_AUTH_TOKEN": "t", "OS_CACERT": "/env/ca.pem"}, endpoint=ENDPOINT,
                        cacert=str(work / "flag-ca.pem"))
    assert creds.verify == str(work / "flag-ca.pem")


def test_insecure_beats_os_cacert() -> None:
    creds = resolve_env({"OS_AUTH_TOKEN": "t", "OS_CACERT": "/env/ca.pem"}, endpoint=ENDPOINT,
                        insecure=True)
    assert creds.verify is False


def test_clouds_yaml_cacert_is_the_verify_path(work: Path) -> None:
    clouds = {"clouds": {"ci": {"auth_type": "token", "auth": {"token": "t"},
                                "cacert": "/cloud/ca.pem"}}}
    (work / "clouds.yaml").write_text(yaml.safe_dump(clouds), encoding="utf-8")
    creds = resolve_env({"HOME": "/nonexistent", "OS_CLOUD": "ci"}, endpoint=ENDPOINT)
    assert creds.verify == "/cloud/ca.pem"


def test_os_cacert_naming_a_missing_file_is_a_clear_error(keystone: Sandbox, invoke: Invoke,
                                                          work: Path) -> None:
    result = invoke(APPLY, os_vars(keystone, OS_CACERT=str(work / "gone.pem")))
    assert_clean_failure(result)
    assert "cannot load the CA bundle" in result.stderr
    assert str(work / "gone.pem") in result.stderr


# --- 8. Secrets: the acceptance run ------------------------------------------------

@pytest.fixture(scope="module")
def acceptance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """300 images applied with OS_* variables only, then every other run that writes output.

    Yields the sandbox, the results of every run and the directory holding every file they
    wrote (state, lock, saved plan, reports).
    """
    root = tmp_path_factory.mktemp("acceptance")
    work, home = root / "work", root / "home"
    home.mkdir()
    generate_catalog(work / "catalog", 300, files=10)
    results: dict[str, Result] = {}
    with pytest.MonkeyPatch.context() as mp, \
            Sandbox(keystone_config(token_ttl_s=5, latency_ms=50)) as sb:
        for var in list(os.environ):
            if var.startswith(("RECONCILE_", "OS_", "HUAWEICLOUD_")):
                mp.delenv(var)
        mp.setenv("HOME", str(home))
        mp.chdir(work)
        env = {"HOME": str(home), **os_vars(sb)}

        def run(key: str, args: list[str], run_env: Mapping[str, str] = env) -> None:
            results[key] = CliRunner().invoke(cli, args, obj=Runtime(env=dict(run_env)),
                                              catch_exceptions=False, prog_name="reconcile")

        # 4 at a time, not 16: 300 creates of 50 ms each then take at least 3.75 s, longer than
        # half a 5 s token's life, so a refresh is certain however fast reconcile gets (at 16
        # they take about 2.5 s, right at the edge).
        run("apply", [*APPLY, "--parallelism", "4", "--log-format", "json"])
        run("html", [*APPLY, "--log-format", "json", "--format", "html", "-o", "report.html"])
        run("markdown", [*APPLY, "--format", "markdown", "--output", "report.md"])
        run("text", ["apply", "--yes", "--catalog", "catalog", "--state", "state.db"])
        run("plan", ["plan", "--refresh", "--catalog", "catalog", "--state", "state.db",
                     "--out", "plan.json", "--format", "json"])
        run("saved", ["apply", "plan.json", "--yes", "--state", "state.db",
                      "--log-format", "json"])
        run("wrong", [*APPLY, "--log-format", "json"], {**env, "OS_PASSWORD": WRONG_PASSWORD})
        yield {"sandbox": sb, "results": results, "work": work,
               "tokens": list(sb._app._issued)}


def outputs_and_files(acceptance: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    for key, result in acceptance["results"].items():
        yield f"{key} stdout", result.stdout_bytes
        yield f"{key} stderr", result.stderr_bytes
    work: Path = acceptance["work"]
    for path in sorted(work.rglob("*")):
        if path.is_file() and "catalog" not in path.relative_to(work).parts:
            yield str(path.relative_to(work)), path.read_bytes()


def test_acceptance_creates_every_image_once_and_reports_the_refreshes(
        acceptance: dict[str, Any]) -> None:
    sb: Sandbox = acceptance["sandbox"]
    report = report_of(acceptance["results"]["apply"])
    assert report["summary"]["created"] == 300
    assert report["summary"]["failed"] == 0
    names = names_in(sb)
    assert len(names) == len(set(names)) == 300
    assert sb.post_count == 300
    # The run outlasts half a 5 s token's life: the token was refreshed, never 401'd (above:
    # no create was sent twice).
    assert report["auth_refreshes"] >= 1
    assert sb.request_count[("POST", "tokens")] >= report["auth_refreshes"] + 1
    for key in ("html", "markdown", "text", "saved"):
        assert acceptance["results"][key].exit_code == 0, acceptance["results"][key].output
    assert json.loads(acceptance["results"]["plan"].stdout)["summary"]["create"] == 0


def test_acceptance_wrote_every_kind_of_output(acceptance: dict[str, Any]) -> None:
    names = {name for name, _ in outputs_and_files(acceptance)}
    assert {"state.db", "state.db.lock", "plan.json", "report.html", "report.md"} <= names
    wrong = acceptance["results"]["wrong"]
    assert wrong.exit_code == 1
    logs = [json.loads(line) for line in wrong.stderr.splitlines()]  # --log-format json
    assert [doc["level"] for doc in logs] == ["error"]
    assert "rejected the credentials" in logs[0]["message"]


def test_acceptance_password_appears_in_no_output_or_file(acceptance: dict[str, Any]) -> None:
    for secret in (PASSWORD, WRONG_PASSWORD):
        leaks = [name for name, data in outputs_and_files(acceptance)
                 if secret.encode() in data]
        assert leaks == []


def test_acceptance_issued_tokens_appear_in_no_output_or_file(
        acceptance: dict[str, Any]) -> None:
    tokens: list[str] = acceptance["tokens"]
    assert len(tokens) >= 2  # the first token and its refreshes, one per run at least
    leaks = [(name, token) for name, data in outputs_and_files(acceptance)
             for token in tokens if token.encode() in data]
    assert leaks == []


def test_failed_authentication_exception_text_hides_the_password(keystone: Sandbox) -> None:
    env = {"HOME": "/nonexistent", **os_vars(keystone, OS_PASSWORD=WRONG_PASSWORD)}
    with pytest.raises(AuthError) as caught:
        resolve_env(env)
    text = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    assert "rejected the credentials" in text
    assert WRONG_PASSWORD not in text


def test_credentials_repr_hides_password_and_token(keystone: Sandbox) -> None:
    creds = resolve_env({"HOME": "/nonexistent", **os_vars(keystone)})
    token = creds.tokens.token()
    text = repr(creds) + repr(creds.tokens) + str(vars(creds).get("tokens"))
    assert PASSWORD not in text and token not in text
    assert repr(StaticToken(STATIC_TOKEN)) == "StaticToken(***)"
