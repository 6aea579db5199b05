"""``reconcile apply`` end to end: the CLI, real loopback HTTP against the sandbox, and a real
SQLite state file; no mocks. What must hold: every catalog image exists exactly once on the
server and is recorded with what the server holds, whatever the network does (429, 5xx,
committed-then-dropped answers); failures are reported and never lose or duplicate anything;
dry runs and refusals touch nothing; the token never leaks."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from apply_helpers import (
    UNKNOWN_OS_VERSION,
    SandboxFactory,
    assert_converged,
    by_name,
    catalog_names,
    generate_catalog,
    image_names,
    journal,
    json_lines,
    live_image,
    pending_names,
    recorded,
    runs,
    sha256_file,
    total_requests,
    write_images,
)
from click.testing import Result

from reconciler.models import MARKER_PROPERTY
from reconciler.sandbox import Sandbox

Run = Callable[..., Result]
TOKEN = "tok-test-0001"
ENV = {"OS_AUTH_TOKEN": TOKEN}


def apply_args(sb: Sandbox, state: Path, catalog: Path, *extra: Any) -> list[Any]:
    return ["apply", "--yes", "--endpoint", sb.url, "--state", state, "--catalog", catalog,
            *extra]


def apply_until_success(run_cli: Run, args: list[Any], runs_allowed: int) -> list[Result]:
    """Re-run apply until it exits 0 (each run must exit 0 or 1); returns every result."""
    results = []
    for _ in range(runs_allowed):
        result = run_cli(args, env=ENV)
        assert result.exit_code in (0, 1), result.output
        results.append(result)
        if result.exit_code == 0:
            break
    assert results[-1].exit_code == 0, (
        f"apply still failing after {runs_allowed} runs:\n{results[-1].output}")
    return results


def report_of(result: Result) -> dict[str, Any]:
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict)
    return doc


# --- 1. the happy path -------------------------------------------------------------------------

def applied(tmp_path: Path, run_cli: Run, sb: Sandbox, count: int = 5,
            *extra: Any) -> tuple[Path, list[str], Result]:
    names = image_names(count)
    catalog = write_images(tmp_path / "catalog", names)
    state = tmp_path / "state.db"
    result = run_cli(apply_args(sb, state, catalog, *extra), env=ENV)
    return state, names, result


def test_apply_creates_every_catalog_image_exactly_once(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    state, names, result = applied(tmp_path, run_cli, sb)
    assert result.exit_code == 0, result.output
    assert sb.post_count == len(names)
    assert_converged(sb, state, names)


def test_state_show_records_exactly_what_the_server_holds(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    state, names, result = applied(tmp_path, run_cli, sb)
    assert result.exit_code == 0, result.output
    for name in names:
        shown = run_cli(["state", "show", name, "--state", state, "--json"])
        assert shown.exit_code == 0, shown.output
        doc = json.loads(shown.stdout)
        live = live_image(sb, doc["image_id"])
        assert (doc["name"], doc["target"]) == (name, sb.url)
        assert {k: doc[k] for k in ("image_id", "created_at", "updated_at", "status")} == {
            "image_id": live["id"], "created_at": live["created_at"],
            "updated_at": live["updated_at"], "status": live["status"]}
        fields = ("self", "file", "schema", "owner", "__os_type", "__platform")
        assert {k: doc["response"].get(k) for k in fields} == {k: live[k] for k in fields}
        assert doc["response"] == live


def test_each_create_carries_its_own_marker_which_the_server_keeps(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    state, names, result = applied(tmp_path, run_cli, sb)
    assert result.exit_code == 0, result.output
    records = recorded(state)
    markers = {name: records[name]["request"].get(MARKER_PROPERTY) for name in names}
    assert all(isinstance(m, str) and len(m) >= 16 for m in markers.values()), markers
    assert len(set(markers.values())) == len(names)
    on_server = {name: images[0].get(MARKER_PROPERTY)
                 for name, images in by_name(sb.images()).items()}
    assert on_server == markers
    # the journal closed each create under the same nonce
    assert sorted((n, s, m) for n, s, m in journal(state)) == sorted(
        (n, "done", markers[n]) for n in names)


def test_history_shows_one_successful_run_with_its_counts(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    state, _, result = applied(tmp_path, run_cli, sb)
    assert result.exit_code == 0, result.output
    history = run_cli(["history", "--state", state, "--json"])
    assert history.exit_code == 0, history.output
    lines = [json.loads(line) for line in history.stdout.splitlines()]
    assert len(lines) == 1
    run = lines[0]
    assert (run["mode"], run["outcome"], run["target"]) == ("apply", "success", sb.url)
    assert (run["created"], run["adopted"], run["failed"]) == (5, 0, 0)
    assert run["summary"]["create"] == 5
    assert run["finished_at"]
    text = run_cli(["history", "--state", state])
    assert "success" in text.stdout and "created 5, adopted 0, failed 0" in text.stdout


def test_second_apply_sends_no_create_and_exits_0(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    state, names, first = applied(tmp_path, run_cli, sb)
    assert first.exit_code == 0, first.output
    before = recorded(state)
    second = run_cli(apply_args(sb, state, tmp_path / "catalog", "--format", "json"), env=ENV)
    assert second.exit_code == 0, second.output
    assert sb.post_count == len(names)
    report = report_of(second)
    assert report["summary"]["unchanged"] == len(names)
    assert (report["summary"]["create"], report["outcomes"]) == (0, [])
    assert recorded(state) == before


# --- 2. partial failure ------------------------------------------------------------------------

def partly_rejected(tmp_path: Path, run_cli: Run, sb: Sandbox) -> tuple[Path, list[str], Result]:
    names = image_names(5)
    catalog = write_images(tmp_path / "catalog", names,
                           overrides={"img-002": {"os_version": UNKNOWN_OS_VERSION}})
    state = tmp_path / "state.db"
    result = run_cli(apply_args(sb, state, catalog, "--format", "json"), env=ENV)
    return state, names, result


def test_server_rejection_fails_that_image_only_and_exits_1(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(profile="ims", os_version_policy="reject")
    state, names, result = partly_rejected(tmp_path, run_cli, sb)
    assert result.exit_code == 1, result.output
    others = [n for n in names if n != "img-002"]
    assert_converged(sb, state, others)
    assert sb.post_count == len(names)  # a 400 is never retried
    report = report_of(result)
    assert {o["name"]: o["result"] for o in report["outcomes"]} == {
        **dict.fromkeys(others, "created"), "img-002": "failed"}
    assert [r["outcome"] for r in runs(state)] == ["partial"]


def test_server_rejection_is_reported_with_status_code_message_and_request_id(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(profile="ims", os_version_policy="reject")
    _, _, result = partly_rejected(tmp_path, run_cli, sb)
    assert result.exit_code == 1, result.output
    report = report_of(result)
    failed = [o for o in report["outcomes"] if o["result"] == "failed"]
    assert [o["name"] for o in failed] == ["img-002"]
    error = failed[0]["error"]
    assert (error["status"], error["code"]) == (400, "IMG.0056")
    assert "os version" in error["message"].lower()
    assert re.fullmatch(r"[0-9a-f]{32}", error["request_id"] or ""), error
    assert report["summary"]["failed"] == 1 and report["summary"]["created"] == 4
    assert "img-002" in result.stderr and "IMG.0056" in result.stderr


def test_rejected_create_releases_its_journal_entry(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(profile="ims", os_version_policy="reject")
    state, _, result = partly_rejected(tmp_path, run_cli, sb)
    assert result.exit_code == 1, result.output
    assert [(n, s) for n, s, _ in journal(state) if n == "img-002"] == [("img-002", "released")]
    assert pending_names(state) == []
    assert "img-002" not in recorded(state)
    # nothing blocks the next run: it tries img-002 again (and only it)
    again = run_cli(apply_args(sb, state, tmp_path / "catalog", "--format", "json"), env=ENV)
    assert again.exit_code == 1
    assert [o["name"] for o in report_of(again)["outcomes"]] == ["img-002"]


# --- 3. throttling and server errors -----------------------------------------------------------

def test_429_and_503_are_retried_until_every_image_exists_once(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    # One worker keeps the seeded fault sequence the same from run to run; --no-refresh keeps
    # the faults on the creates (the refresh listing has its own test below).
    sb = sandbox(throttle_rate=0.4, fail_rate=0.15, seed=20)
    state, names, result = applied(tmp_path, run_cli, sb, 6, "--parallelism", "1",
                                   "--retries", "10", "--no-refresh", "--format", "json",
                                   "--log-format", "json")
    assert result.exit_code == 0, result.output
    assert_converged(sb, state, names)
    attempts = {o["name"]: o["attempts"] for o in report_of(result)["outcomes"]}
    assert sorted(attempts) == names
    assert max(attempts.values()) > 1, attempts
    retried = {e.get("status") for e in json_lines(result.stderr) if e["event"] == "retry"}
    assert {429, 503} <= retried, retried  # both faults really hit creates


@pytest.mark.parametrize("status", [429, 503])
def test_a_throttled_or_failing_refresh_listing_is_retried(
        status: int, tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    # The first refresh listing fails once; everything after succeeds.
    sb = sandbox()
    sb.script("", get=[str(status)])
    state, names, result = applied(tmp_path, run_cli, sb, 1, "--parallelism", "1")
    assert sb.request_count[("GET", "images")] >= 2
    assert sb.scripted_left == 0
    assert result.exit_code == 0, result.output
    assert_converged(sb, state, names)


def test_429_retries_wait_exactly_the_retry_after_seconds(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(throttle_rate=0.5, seed=5, retry_after_s=0.05)
    state, names, result = applied(tmp_path, run_cli, sb, 10, "--retries", "12",
                                   "--log-format", "json")
    assert result.exit_code == 0, result.output
    assert_converged(sb, state, names)
    retries = [e for e in json_lines(result.stderr) if e["event"] == "retry"]
    assert retries, "the sandbox throttled nothing"
    assert {(e["status"], e["delay_s"]) for e in retries} == {(429, 0.05)}


# --- 4. committed, then the answer dropped -----------------------------------------------------

def test_dropped_answers_never_duplicate_and_every_image_is_recorded(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(drop_response_rate=0.3, seed=4)
    names = image_names(50)
    catalog = write_images(tmp_path / "catalog", names)
    state = tmp_path / "state.db"
    results = apply_until_success(
        run_cli, apply_args(sb, state, catalog, "--log-format", "json"), 5)
    assert_converged(sb, state, names)
    found = [e for r in results for e in json_lines(r.stderr) if e["event"] == "found_after_loss"]
    assert found, "no answer was dropped: the test proved nothing"
    records = recorded(state)
    assert all(records[e["image"]]["image_id"] == e["image_id"] for e in found)


# --- 5. the acceptance scenario --------------------------------------------------------

@pytest.mark.timeout(120)
def test_acceptance_200_images_under_drops_errors_and_throttling(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(drop_response_rate=0.3, fail_rate=0.1, throttle_rate=0.1, seed=7)
    catalog = tmp_path / "catalog"
    generate_catalog(catalog, 200, 4, seed=1)
    names = catalog_names(catalog)
    assert len(set(names)) == 200
    state = tmp_path / "state.db"
    apply_until_success(run_cli, apply_args(sb, state, catalog, "--parallelism", "20"), 6)
    assert len(sb.images()) == 200
    assert_converged(sb, state, names)
    assert sb.post_count > 200  # the faults really hit creates


# --- 6. dry run --------------------------------------------------------------------------------

POST_BLOCK = re.compile(r"^POST /v2/images  # (\S+)\n(\{\n.*?\n\})$", re.M | re.S)


def only_reads(sb: Sandbox) -> bool:
    return sb.post_count == 0 and all(m == "GET" for m, _ in sb.request_count)


def test_dry_run_without_a_state_file_creates_nothing_and_sends_nothing(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    state, _, result = applied(tmp_path, run_cli, sb, 3, "--dry-run")
    assert result.exit_code == 0, result.output
    assert not state.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog"]  # no lock file either
    assert only_reads(sb) and total_requests(sb) > 0  # it read the cloud, like apply
    offline = sandbox()
    result = run_cli(apply_args(offline, state, tmp_path / "catalog", "--dry-run",
                                "--no-refresh"), env=ENV)
    assert result.exit_code == 0, result.output
    assert total_requests(offline) == 0


def test_dry_run_reads_the_cloud_so_it_adopts_what_apply_would_adopt(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    state, names, first = applied(tmp_path, run_cli, sb, 3)
    assert first.exit_code == 0, first.output
    state.unlink()  # a fresh state file: the images are in the cloud, with our marker
    write_images(tmp_path / "catalog", [*names, "new-a"])
    dry = run_cli(apply_args(sb, state, tmp_path / "catalog", "--dry-run", "--format",
                             "json"), env=ENV)
    doc = json.loads(dry.stdout)
    assert doc["refreshed"] is True
    assert {c["name"]: c["action"] for c in doc["changes"]} == {
        **dict.fromkeys(names, "adopt"), "new-a": "create"}
    text = run_cli(apply_args(sb, state, tmp_path / "catalog", "--dry-run"), env=ENV).stdout
    assert text.count("POST /v2/images") == 1  # bodies only for the create apply will send
    assert sb.post_count == 3  # the first apply's creates; the dry runs sent none
    assert not state.exists()


def test_dry_run_leaves_an_existing_state_file_byte_identical_and_sends_nothing(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    state, names, first = applied(tmp_path, run_cli, sb, 3)
    assert first.exit_code == 0, first.output
    write_images(tmp_path / "catalog", [*names, "new-a", "new-b"])
    digest, seen = sha256_file(state), total_requests(sb)
    for fmt in ("text", "json"):
        result = run_cli(apply_args(sb, state, tmp_path / "catalog", "--dry-run",
                                    "--format", fmt), env=ENV)
        assert result.exit_code == 0, result.output
        assert sha256_file(state) == digest
        assert sb.post_count == 3  # the first apply's creates; the dry runs sent none
    assert total_requests(sb) > seen  # it read the cloud, like apply
    assert len(recorded(state)) == 3


def test_dry_run_prints_the_exact_bodies_apply_then_sends(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    state, names, dry = applied(tmp_path, run_cli, sb, 3, "--dry-run")
    assert dry.exit_code == 0, dry.output
    blocks = {name: text for name, text in POST_BLOCK.findall(dry.stdout)}
    assert sorted(blocks) == names
    expected_first = {
        "name": "img-000", "__os_version": "Ubuntu 18.04 server 64bit", "visibility": "private",
        "protected": False, "container_format": "bare", "disk_format": "zvhd2",
        "min_ram": 1024, "min_disk": 40, "tags": ["reconcile-test", "n0"],
        "build_id": "00000000"}
    assert blocks["img-000"] == json.dumps(expected_first, indent=2, ensure_ascii=False)
    real = run_cli(apply_args(sb, state, tmp_path / "catalog"), env=ENV)
    assert real.exit_code == 0, real.output
    sent = {name: {k: v for k, v in rec["request"].items() if k != MARKER_PROPERTY}
            for name, rec in recorded(state).items()}
    assert {name: json.loads(text) for name, text in blocks.items()} == sent


# --- 7. refusals before anything is sent -------------------------------------------------------

def refused_without_yes(tmp_path: Path, run_cli: Run, sb: Sandbox) -> tuple[Path, Result]:
    catalog = write_images(tmp_path / "catalog", image_names(2))
    state = tmp_path / "state.db"
    result = run_cli(["apply", "--endpoint", sb.url, "--state", state, "--catalog", catalog],
                     env=ENV)
    return state, result


def test_without_a_terminal_apply_requires_yes(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    state, result = refused_without_yes(tmp_path, run_cli, sb)
    assert result.exit_code == 1
    assert "--yes" in result.stderr
    assert "Traceback" not in result.output
    assert sb.post_count == 0 and not state.exists()


def test_without_a_terminal_apply_sends_no_request_at_all(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    _, result = refused_without_yes(tmp_path, run_cli, sb)
    assert result.exit_code == 1
    assert total_requests(sb) == 0


def test_apply_without_an_endpoint_exits_1_with_a_clear_message(
        tmp_path: Path, run_cli: Run) -> None:
    catalog = write_images(tmp_path / "catalog", image_names(2))
    state = tmp_path / "state.db"
    result = run_cli(["apply", "--yes", "--state", state, "--catalog", catalog], env=ENV)
    assert result.exit_code == 1
    assert re.search(r"endpoint.*(--endpoint|RECONCILE_ENDPOINT)", result.stderr), result.stderr
    assert "Traceback" not in result.output and not state.exists()


def test_apply_without_a_token_exits_1_with_a_clear_message(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OS_AUTH_TOKEN", raising=False)
    sb = sandbox()
    catalog = write_images(tmp_path / "catalog", image_names(2))
    state = tmp_path / "state.db"
    result = run_cli(apply_args(sb, state, catalog))
    assert result.exit_code == 1
    assert "OS_AUTH_TOKEN" in result.stderr and "--token-file" in result.stderr
    assert "Traceback" not in result.output
    assert total_requests(sb) == 0 and not state.exists()


# --- 8. authentication failure -----------------------------------------------------------------

REFRESH_MODES = [pytest.param([], id="refresh"),
                 pytest.param(["--no-refresh"], id="no-refresh")]


def unauthorized(tmp_path: Path, run_cli: Run, sb: Sandbox,
                 mode: list[str]) -> tuple[Path, Result]:
    catalog = write_images(tmp_path / "catalog", image_names(10))
    state = tmp_path / "state.db"
    result = run_cli(apply_args(sb, state, catalog, "--parallelism", "2", *mode),
                     env={"OS_AUTH_TOKEN": "wrong-token"})
    return state, result


@pytest.mark.parametrize("mode", REFRESH_MODES)
def test_401_stops_the_run_with_an_authentication_message_and_creates_nothing(
        mode: list[str], tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(token="right-token")
    state, result = unauthorized(tmp_path, run_cli, sb, mode)
    assert result.exit_code == 1
    assert "authentication" in result.stderr.lower()
    assert "Traceback" not in result.output
    assert sb.images() == []
    assert sb.post_count <= 2  # nothing is sent once the first 401 is back
    assert pending_names(state) == [] and recorded(state) == {}


@pytest.mark.parametrize("mode", REFRESH_MODES)
def test_401_run_is_recorded_as_aborted_in_history(
        mode: list[str], tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(token="right-token")
    state, result = unauthorized(tmp_path, run_cli, sb, [*mode, "--format", "json"])
    assert result.exit_code == 1
    [run] = runs(state)
    assert run["outcome"] == "aborted"
    assert "authentication" in (run["error"] or "")
    assert report_of(result)["summary"]["created"] == 0


# --- 11. secrets -------------------------------------------------------------------------------

SECRET = "tok-SECRET-7f3a9c"


def test_the_token_appears_in_no_output_report_log_or_file(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    data = tmp_path / "sandbox-data.json"
    sb = sandbox(drop_response_rate=0.2, throttle_rate=0.25, fail_rate=0.05, seed=3,
                 data_file=str(data))
    locked = sandbox(token="right-token")
    names = image_names(8)
    catalog = write_images(tmp_path / "catalog", names,
                           overrides={"img-005": {"os_version": UNKNOWN_OS_VERSION}})
    state = tmp_path / "state.db"
    token_file = tmp_path / "token.txt"
    token_file.write_text(SECRET + "\n", encoding="utf-8")
    env = {"OS_AUTH_TOKEN": SECRET}

    def apply(sb: Sandbox, *extra: Any, env: dict[str, str] = env) -> Result:
        return run_cli(apply_args(sb, state, catalog, *extra), env=env)

    results = [  # retries, drops and 5xx on creates; img-005 answered 400 every time
        apply(sb, "--no-refresh", "--retries", "10", "--log-format", "json",
              "--format", "html", "-o", tmp_path / "report.html")]
    sb.config.drop_response_rate = sb.config.throttle_rate = sb.config.fail_rate = 0.0
    results += [
        apply(sb, "--format", "markdown", "-o", tmp_path / "report.md"),
        apply(sb, "--log-format", "json", "--format", "json", "-o", tmp_path / "report.json"),
        apply(sb, "--token-file", token_file, env={}),
        apply(locked, "--log-format", "json", "--format", "json"),  # 401 on the refresh
        apply(locked, "--no-refresh", "--log-format", "json", "--format", "json"),  # on a POST
    ]
    sb.config.throttle_rate = 1.0
    results.append(apply(sb, "--log-format", "json"))  # the refresh listing is throttled
    sb.config.throttle_rate = 0.0
    results += [
        apply(sb, "--dry-run"),
        run_cli(["state", "list", "--state", state]),
        run_cli(["state", "show", "img-000", "--state", state]),
        run_cli(["history", "--state", state, "--json"]),
    ]
    assert [r.exit_code for r in results[:7]] == [1] * 7, [r.output for r in results]
    assert sorted(recorded(state)) == [n for n in names if n != "img-005"]
    sb.stop()  # flushes the data file
    for result in results:
        assert SECRET not in result.stdout and SECRET not in result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != token_file]
    assert {"report.html", "report.md", "report.json", "state.db", "state.db.lock",
            "sandbox-data.json"} <= {p.name for p in written}
    leaks = [p.name for p in written if SECRET.encode() in p.read_bytes()]
    assert leaks == []


# --- 12. JSON logs -----------------------------------------------------------------------------

def test_json_logs_are_one_json_event_per_line_on_stderr(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(throttle_rate=0.3, drop_response_rate=0.2, seed=2)
    state, names, result = applied(tmp_path, run_cli, sb, 10, "--retries", "10",
                                   "--log-format", "json", "--format", "json")
    assert result.exit_code == 0, result.output
    assert_converged(sb, state, names)
    events = json_lines(result.stderr)
    assert events
    assert all({"ts", "level", "event", "message"} <= set(e) for e in events), events
    kinds = {e["event"] for e in events}
    assert {"retry", "found_after_loss"} <= kinds, kinds
    retry = next(e for e in events if e["event"] == "retry")
    assert retry["status"] == 429 and retry["image"] in names and retry["attempt"] >= 1
    assert report_of(result)["summary"]["created"] == 10  # stdout holds only the report


def test_json_logs_stay_json_lines_in_the_documented_cron_command(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(throttle_rate=0.3, seed=2)
    _, _, result = applied(tmp_path, run_cli, sb, 5, "--retries", "10", "--log-format", "json",
                           "--format", "html", "--output", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.html").exists()
    json_lines(result.stderr)


def test_json_logs_stay_json_lines_when_the_run_aborts(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(token="right-token")
    _, _, result = applied(tmp_path, run_cli, sb, 3, "--log-format", "json")
    assert result.exit_code == 1
    events = json_lines(result.stderr)
    assert any("authentication" in e["message"] for e in events)
