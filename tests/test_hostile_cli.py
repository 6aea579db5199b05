"""The installed ``reconcile`` against hostile inputs and servers, as a real process.

Each test runs ``.venv/bin/reconcile`` as a subprocess against the sandbox or the scripted
``HostileServer`` over loopback, and checks what a user (or an attacker) would see: the exit
code, stderr, the state file, and what the servers received.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apply_helpers import (
    RECONCILE,
    SandboxFactory,
    pending_names,
    recorded,
    sha256_file,
    subprocess_env,
    total_requests,
    write_images,
)
from hostile import Answer, HostileServer, Seen

from reconciler.sandbox import Sandbox

TOKEN = "tok-HOSTILE-CLI-8d2f1a7c"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def reconcile(cwd: Path, *args: Any, env: Mapping[str, str] | None = None,
              token: str | None = TOKEN) -> Run:
    full = subprocess_env(token or "")
    if token is None:
        full.pop("OS_AUTH_TOKEN")
    full.update(env or {})
    proc = subprocess.run([str(RECONCILE), *(str(a) for a in args)], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=120)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_clean_error(run: Run, *needles: str) -> None:
    assert run.code == 1, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    for needle in needles:
        assert needle in run.stderr, run.stderr


def never_answer(seen: Seen) -> Answer:
    return Answer.json(500, {"message": "this server must not be contacted"})


# --- item 3: a saved plan cannot redirect credentials ---------------------------------------

@dataclass
class SavedPlanWorld:
    sb: Sandbox
    state: Path
    plan_file: Path


@pytest.fixture
def edited_plan(tmp_path: Path, sandbox: SandboxFactory) -> SavedPlanWorld:
    """A plan saved (not applied) against the sandbox."""
    sb = sandbox()
    catalog = write_images(tmp_path / "catalog", ["img-000", "img-001"])
    state, plan_file = tmp_path / "state.db", tmp_path / "plan.json"
    made = reconcile(tmp_path, "plan", "--refresh", "--out", plan_file, "--state", state,
                     "--catalog", catalog, "--endpoint", sb.url)
    assert made.code == 0, made.stderr
    return SavedPlanWorld(sb, state, plan_file)


def retarget(plan_file: Path, url: str) -> None:
    doc = json.loads(plan_file.read_text(encoding="utf-8"))
    plan_file.write_text(json.dumps({**doc, "target": url}), encoding="utf-8")


def test_an_edited_plan_target_receives_no_request_and_no_token(
        tmp_path: Path, edited_plan: SavedPlanWorld) -> None:
    state, plan_file = edited_plan.state, edited_plan.plan_file
    before = sha256_file(state)  # the plan --refresh kept the server's rules in it
    with HostileServer(never_answer) as attacker:
        retarget(plan_file, attacker.url)

        run = reconcile(tmp_path, "apply", plan_file, "--yes", "--state", state)

        assert_clean_error(run, "--endpoint")
        assert attacker.seen == []
    assert TOKEN not in run.stderr + run.stdout
    assert sha256_file(state) == before


def test_a_plan_for_another_target_is_refused_before_any_request(
        tmp_path: Path, edited_plan: SavedPlanWorld) -> None:
    sb, state, plan_file = edited_plan.sb, edited_plan.state, edited_plan.plan_file
    before, state_before = total_requests(sb), sha256_file(state)
    with HostileServer(never_answer) as attacker:
        retarget(plan_file, attacker.url)

        run = reconcile(tmp_path, "apply", plan_file, "--yes", "--state", state,
                        "--endpoint", sb.url)

        assert_clean_error(run, f"made for {attacker.url}", "nothing was sent")
        assert attacker.seen == []
    assert total_requests(sb) == before
    assert sha256_file(state) == state_before


def test_an_unedited_plan_applies_with_the_endpoint_from_the_settings(
        tmp_path: Path, edited_plan: SavedPlanWorld) -> None:
    sb, state, plan_file = edited_plan.sb, edited_plan.state, edited_plan.plan_file

    run = reconcile(tmp_path, "apply", plan_file, "--yes", "--state", state,
                    env={"RECONCILE_ENDPOINT": sb.url})

    assert run.code == 0, run.stderr
    assert sorted(recorded(state)) == ["img-000", "img-001"]
    assert pending_names(state) == []


# --- item 5: every secret redacted everywhere --------------------------------------------------

SECURITY_TOKEN = "SECTOK-PLANTED-gQpjbi1ub3J0aC00-5e2b"
SK = "SK-PLANTED-Wq8vJz1nK5tY3rB7xC0d"


def echo_security_token(seen: Seen) -> Answer:
    """An API gateway that quotes the request's security token back in its 401."""
    return Answer.json(401, {"error_code": "APIGW.0301", "error_msg": (
        f"Incorrect IAM authentication information: X-Security-Token "
        f"{seen.headers.get('x-security-token')} is expired")})


def state_text(state: Path) -> str:
    """Every value in every table of the state file, as text (plus the raw bytes)."""
    import sqlite3

    out = [state.read_bytes().decode("utf-8", "replace")]
    with sqlite3.connect(state) as conn:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            out.extend(repr(row) for row in conn.execute(f"SELECT * FROM {table}"))
    return "\n".join(out)


@pytest.mark.parametrize("fmt", ["json", "markdown"])
def test_the_security_token_echoed_by_a_401_is_redacted_everywhere(tmp_path: Path,
                                                                   fmt: str) -> None:
    catalog = write_images(tmp_path / "catalog", ["img-000", "img-001"])
    state, report = tmp_path / "state.db", tmp_path / "report.out"
    env = {"HUAWEICLOUD_SDK_AK": "AK-EXAMPLE-0001", "HUAWEICLOUD_SDK_SK": SK,
           "HUAWEICLOUD_SDK_PROJECT_ID": "b912fb4a4c464b568ecfca1071b21b10",
           "HUAWEICLOUD_SDK_SECURITY_TOKEN": SECURITY_TOKEN}
    with HostileServer(echo_security_token) as server:
        run = reconcile(tmp_path, "apply", "--yes", "--no-refresh", "--endpoint", server.url,
                        "--catalog", catalog, "--state", state, "--log-format", "json",
                        "--format", fmt, "-o", report, env=env, token=None)
        assert server.requests("POST")  # the token was sent, and echoed
        history = reconcile(tmp_path, "history", "--json", "--state", state)

    assert_clean_error(run, "Incorrect IAM authentication information")
    assert history.code == 0, history.stderr
    # Markdown escapes its punctuation (`\*\*\*`): compare with the escapes taken out too.
    unescaped = re.sub(r"\\(.)", r"\1", report.read_text())
    outputs = {"stderr": run.stderr, "stdout": run.stdout, "report": report.read_text(),
               "report without escapes": unescaped, "state": state_text(state),
               "history --json": history.stdout}
    assert "***" in unescaped
    for where, text in outputs.items():
        assert SECURITY_TOKEN not in text, where
        assert SK not in text, where


PASSWORD = 'Pw"X\\Y-\u00e9-PLANTED-9f3c'


def keystone_echo(encode: str) -> Any:
    """A Keystone that answers a 401 quoting the password it got, in one of its spellings."""
    from urllib.parse import quote_plus

    def answer(seen: Seen) -> Answer:
        sent = json.loads(seen.body)["auth"]["identity"]["password"]["user"]["password"]
        spelled = {"raw": sent, "json": json.dumps(sent), "json-utf8": json.dumps(
            sent, ensure_ascii=False), "url": quote_plus(sent)}[encode]
        return Answer(401, f"401 Unauthorized: bad credentials password={spelled}".encode(),
                      {"Content-Type": "text/plain; charset=utf-8"})

    return answer


@pytest.mark.parametrize("encode", ["raw", "json", "json-utf8", "url"])
def test_a_password_echoed_in_any_spelling_is_redacted(tmp_path: Path, encode: str) -> None:
    from reconciler.redaction import forms

    with HostileServer(keystone_echo(encode)) as keystone:
        env = {"OS_AUTH_URL": f"{keystone.url}/v3", "OS_USERNAME": "alice",
               "OS_PASSWORD": PASSWORD, "OS_PROJECT_NAME": "cn-north-4",
               "OS_USER_DOMAIN_NAME": "acme"}
        run = reconcile(tmp_path, "plan", "--refresh", env=env, token=None)
        assert keystone.requests("POST")

    assert_clean_error(run, "bad credentials password=")
    assert "***" in run.stderr
    for form in forms(PASSWORD) | {json.dumps(PASSWORD)[1:-1]}:
        assert form not in run.stderr + run.stdout, form


def test_a_token_file_with_two_lines_is_refused_before_any_request(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-LINE-ONE-6a1f\ntok-LINE-TWO-90bd\n", encoding="utf-8")
    with HostileServer(never_answer) as server:
        run = reconcile(tmp_path, "apply", "--yes", "--no-refresh", "--endpoint", server.url,
                        "--token-file", token_file, "--catalog",
                        write_images(tmp_path / "catalog", ["img-000"]),
                        "--state", tmp_path / "state.db", token=None)
        assert server.seen == []
    assert_clean_error(run, f"--token-file {token_file} contains a line break")
    assert run.stderr.count("error:") == 1
    assert "tok-LINE" not in run.stderr + run.stdout
    assert not (tmp_path / "state.db").exists()


def test_a_token_file_with_a_trailing_newline_is_fine(tmp_path: Path,
                                                      sandbox: SandboxFactory) -> None:
    sb = sandbox(token="tok-ONE-LINE-51c0")
    token_file = tmp_path / "token"
    token_file.write_text("tok-ONE-LINE-51c0\n", encoding="utf-8")
    run = reconcile(tmp_path, "apply", "--yes", "--endpoint", sb.url, "--token-file",
                    token_file, "--catalog", write_images(tmp_path / "catalog", ["img-000"]),
                    "--state", tmp_path / "state.db", token=None)
    assert run.code == 0, run.stderr
    assert sorted(recorded(tmp_path / "state.db")) == ["img-000"]


USERINFO_PASSWORD = "pw-USERINFO-PLANTED-77"


@pytest.mark.parametrize("command", [["plan"], ["plan", "--refresh"], ["apply", "--yes"]])
def test_userinfo_in_the_endpoint_is_refused_never_printed_stored_or_sent(
        tmp_path: Path, command: list[str]) -> None:
    state = tmp_path / "state.db"
    with HostileServer(never_answer) as server:
        url = server.url.replace("http://", f"http://alice:{USERINFO_PASSWORD}@")
        run = reconcile(tmp_path, *command, "--endpoint", url, "--state", state,
                        "--catalog", write_images(tmp_path / "catalog", ["img-000"]))
        assert server.seen == []
    assert_clean_error(run, "carries a user name or password before '@'",
                       server.url.replace("http://", "http://…@"))
    assert USERINFO_PASSWORD not in run.stderr + run.stdout
    assert "alice" not in run.stderr
    assert not state.exists()


def test_userinfo_in_os_auth_url_is_refused_never_printed_or_sent(tmp_path: Path) -> None:
    with HostileServer(never_answer) as keystone:
        url = keystone.url.replace("http://", f"http://alice:{USERINFO_PASSWORD}@") + "/v3"
        env = {"OS_AUTH_URL": url, "OS_USERNAME": "alice", "OS_PASSWORD": "pw-REAL-0c9d",
               "OS_PROJECT_NAME": "cn-north-4", "OS_USER_DOMAIN_NAME": "acme"}
        run = reconcile(tmp_path, "plan", "--refresh", env=env, token=None)
        assert keystone.seen == []
    assert_clean_error(run, "the Keystone URL", "OS_USERNAME and OS_PASSWORD")
    assert USERINFO_PASSWORD not in run.stderr + run.stdout


# --- item 12: a non-ASCII token; nothing unsent stays pending ------------------------------

def test_a_non_ascii_os_auth_token_is_a_usage_error_and_leaves_nothing_pending(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    catalog = write_images(tmp_path / "catalog", ["img-000", "img-001"])
    state = tmp_path / "state.db"

    run = reconcile(tmp_path, "apply", "--yes", "--no-refresh", "--endpoint", sb.url,
                    "--catalog", catalog, "--state", state, token="tok-\u00e9t\u00e9-4411")

    assert_clean_error(run, "OS_AUTH_TOKEN contains a non-ASCII character (at character 5)")
    assert sb.post_count == 0
    assert not state.exists() or pending_names(state) == []
    # The next, correct run is not blocked by anything the bad one left.
    fixed = reconcile(tmp_path, "apply", "--yes", "--no-refresh", "--endpoint", sb.url,
                      "--catalog", catalog, "--state", state)
    assert fixed.code == 0, fixed.stderr
    assert sorted(recorded(state)) == ["img-000", "img-001"]
    assert sb.post_count == 2


# --- items 6 and 7: bad answers end in one message, exit 1 -----------------------------------

def listing_with(*images: dict[str, Any], **extra: Any) -> Answer:
    return Answer.json(200, {"images": list(images), **extra})


@pytest.mark.parametrize(("bad", "problem"), [
    ({"name": "no-id", "status": "active"}, "images.0.id: Field required"),
    ({"id": "a1", "status": ["active"]}, "images.0.status: Input should be a valid string"),
    ({"id": {"uuid": "a1"}}, "images.0.id: Input should be a valid string"),
    ({"id": "a1", "updated_at": 1767225600}, "images.0.updated_at: Input should be a valid "
                                             "string"),
])
def test_plan_refresh_with_a_malformed_listing_is_one_clean_error(
        tmp_path: Path, bad: dict[str, Any], problem: str) -> None:
    with HostileServer(lambda seen: listing_with(bad)) as server:
        run = reconcile(tmp_path, "plan", "--refresh", "--endpoint", server.url,
                        "--catalog", write_images(tmp_path / "catalog", ["img-000"]))
    assert_clean_error(run, problem, "unexpected response")


def test_plan_refresh_against_alternating_pages_ends_with_a_clear_message(
        tmp_path: Path) -> None:
    pages = iter_pages()
    def answer(seen: Seen) -> Answer:  # the listing loops; nothing else is served
        return next(pages) if seen.path == "/v2/images" else Answer(404)

    with HostileServer(answer) as server:
        run = reconcile(tmp_path, "plan", "--refresh", "--endpoint", server.url,
                        "--catalog", write_images(tmp_path / "catalog", ["img-000"]))
    assert_clean_error(run, "page 3 lists image a1 again: the server's paging loops")


def iter_pages() -> Any:
    import itertools

    full_a = [{"id": f"a{i}", "name": "x"} for i in range(1, 1001)]
    full_b = [{"id": f"b{i}", "name": "x"} for i in range(1, 1001)]
    return (listing_with(*page, next="/v2/images?marker=z")
            for page in itertools.cycle([full_a, full_b]))


@pytest.mark.parametrize(("answer", "problem"), [
    ({"name": "img-000", "status": "active"}, "id: Field required"),
    ({"id": "someone-else", "name": "img-000", "status": "active"},
     "describes another image than 4ca46bf1"),
])
def test_state_import_of_a_malformed_answer_is_refused_and_records_nothing(
        tmp_path: Path, answer: dict[str, Any], problem: str) -> None:
    state = tmp_path / "state.db"
    with HostileServer(lambda seen: Answer.json(200, answer)) as server:
        run = reconcile(tmp_path, "state", "import", "img-000",
                        "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba86", "--endpoint", server.url,
                        "--state", state,
                        "--catalog", write_images(tmp_path / "catalog", ["img-000"]))
    assert_clean_error(run, problem)
    assert not state.exists() or recorded(state) == {}


def test_two_names_answered_with_one_id_record_one_and_keep_the_other_pending(
        tmp_path: Path) -> None:
    def same_id(seen: Seen) -> Answer:
        if seen.method == "GET":  # the look-up by marker after the lie: the server is down
            return Answer.json(503, {"message": "look-ups are down"})
        body = json.loads(seen.body)
        return Answer.json(201, {"id": "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba86",
                                 "name": body["name"], "status": "queued"})

    state = tmp_path / "state.db"
    with HostileServer(same_id) as server:
        run = reconcile(tmp_path, "apply", "--yes", "--no-refresh", "--endpoint", server.url,
                        "--state", state, "--parallelism", 1, "--retries", 0, "--catalog",
                        write_images(tmp_path / "catalog", ["img-000", "img-001"]))
    assert_clean_error(run, "gives the id 4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba86 that it gave "
                            "'img-000' before")
    assert {n: r["image_id"] for n, r in recorded(state).items()} == {
        "img-000": "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba86"}
    assert pending_names(state) == ["img-001"]
