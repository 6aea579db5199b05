"""Each branch of the apply protocol produced on purpose, end to end: the CLI (or the apply
package), real loopback HTTP against the sandbox with scripted faults, a real SQLite state
file. The rows of docs/architecture.md §6.3 and §6.2, one test each; the clock is a
ManualClock (conftest), so the settle window costs no real time, except where a server that
really takes its time is the point."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from apply_helpers import (
    SandboxFactory,
    assert_converged,
    journal,
    json_lines,
    pending_names,
    recorded,
    runs,
    trickling_server,
    write_images,
)
from click.testing import Result

from reconciler.apply.creates import Creator
from reconciler.apply.request import settle_time
from reconciler.apply.runstate import RunState
from reconciler.cli import Runtime
from reconciler.client import ImageClient, RetryPolicy, StaticToken
from reconciler.clock import SYSTEM_CLOCK, ManualClock
from reconciler.models import MARKER_PROPERTY, Change, ImageSpec
from reconciler.sandbox import Sandbox
from reconciler.state import open_for_write

Run = Callable[..., Result]
TOKEN = "tok-protocol"
NAMES = ["alpha", "beta"]


class World:
    """A sandbox, a two-image catalog and a state file; ``apply`` runs the CLI on them."""

    def __init__(self, tmp_path: Path, run_cli: Run, sb: Sandbox) -> None:
        self.sb, self.run_cli = sb, run_cli
        self.catalog = write_images(tmp_path / "catalog", NAMES)
        self.state = tmp_path / "state.db"

    def apply(self, *extra: Any, obj: Runtime | None = None) -> Result:
        args = ["apply", "--yes", "--endpoint", self.sb.url, "--state", self.state,
                "--catalog", self.catalog, "--no-refresh", "--parallelism", "1",
                "--log-format", "json", "--format", "json", *extra]
        return self.run_cli(args, env={"OS_AUTH_TOKEN": TOKEN}, obj=obj)

    def events(self, result: Result, event: str) -> list[dict[str, Any]]:
        return [e for e in json_lines(result.stderr) if e.get("event") == event]

    def posts(self) -> int:
        return self.sb.post_count

    def lookups(self) -> int:  # with --no-refresh every listing is a look-up by marker
        return self.sb.request_count[("GET", "images")]


@pytest.fixture
def world(tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> World:
    return World(tmp_path, run_cli, sandbox())


def outcome(result: Result, name: str) -> dict[str, Any]:
    doc = json.loads(result.stdout)
    found = [o for o in doc["outcomes"] if o["name"] == name]
    assert len(found) == 1, doc["outcomes"]
    return dict(found[0])


# --- what a failed create means (decisions.on_create_error) -----------------------------------

@pytest.mark.parametrize(
    ("script", "posts", "lookups"),
    [
        pytest.param(["429"], 2, 0, id="429-throttled-retried-without-looking"),
        pytest.param(["500"], 2, 1, id="500-one-look-up-then-retried"),
        pytest.param(["503"], 2, 1, id="503-one-look-up-then-retried"),
        pytest.param(["commit:500"], 1, 1, id="500-after-commit-found-by-the-one-look-up"),
        pytest.param(["commit:502"], 1, 1, id="502-after-commit-found-not-sent-again"),
        pytest.param(["commit:504"], 1, 1, id="504-after-commit-found-not-sent-again"),
        pytest.param(["drop"], 1, 1, id="dropped-after-commit-found-not-sent-again"),
        pytest.param(["garbage"], 1, 1, id="malformed-201-found-by-marker"),
        pytest.param(["429", "503", "drop"], 3, 2, id="three-faults-in-a-row"),
    ],
)
def test_a_failed_create_is_looked_up_as_its_error_says_and_never_duplicated(
        world: World, script: list[str], posts: int, lookups: int) -> None:
    world.sb.script("alpha", post=script)
    result = world.apply()
    assert result.exit_code == 0, result.output
    assert world.sb.scripted_left == 0
    assert_converged(world.sb, world.state, NAMES)
    assert world.posts() == posts + 1  # beta: one clean create
    assert world.lookups() == lookups
    assert outcome(result, "alpha")["attempts"] == posts


@pytest.mark.parametrize("status", ["502", "504"])
def test_an_unanswered_gateway_error_is_looked_for_until_settled_then_sent_again(
        world: World, fixed_clock: ManualClock, status: str) -> None:
    # Nothing was committed behind the gateway: the image is looked for until the settle
    # time has passed since the send, and only then sent again.
    world.sb.script("alpha", post=[status])
    start = fixed_clock.monotonic()
    result = world.apply("--settle-time", "120")
    assert result.exit_code == 0, result.output
    assert_converged(world.sb, world.state, NAMES)
    assert world.posts() == 3
    assert world.lookups() >= 3  # looked again and again, backing off
    assert fixed_clock.monotonic() - start >= 120  # waited out on the clock, not for real
    assert [e["status"] for e in world.events(result, "retry")] == [int(status)]


def test_a_lost_create_is_looked_for_until_settled_then_sent_again(
        world: World, fixed_clock: ManualClock) -> None:
    world.sb.script("alpha", post=["lost"])
    result = world.apply("--settle-time", "30")
    assert result.exit_code == 0, result.output
    assert_converged(world.sb, world.state, NAMES)
    assert world.posts() == 3 and world.lookups() >= 2


def test_a_malformed_201_is_found_by_marker_and_the_message_does_not_blame_the_state(
        world: World) -> None:
    world.sb.script("alpha", post=["garbage"])
    result = world.apply()
    assert result.exit_code == 0, result.output
    assert_converged(world.sb, world.state, NAMES)
    [found] = world.events(result, "found_after_loss")
    assert found["image"] == "alpha"
    assert recorded(world.state)["alpha"]["image_id"] == found["image_id"]
    assert "state" not in result.stderr.lower().replace('"state":', "")


def test_a_malformed_201_whose_look_up_fails_stays_pending_and_is_adopted_next_run(
        world: World) -> None:
    # The look-ups after the malformed answer fail (503 past every read retry): the image
    # may exist, so the entry stays pending; the next apply finds and records it.
    world.sb.script("alpha", post=["garbage"], get=["503"] * 6)
    first = world.apply()
    assert first.exit_code == 1, first.output
    assert pending_names(world.state) == ["alpha"]
    message = outcome(first, "alpha")["error"]["message"]
    assert message.startswith("outcome unknown (kept as pending"), message
    assert "state file" not in message
    second = world.apply()
    assert second.exit_code == 0, second.output
    assert outcome(second, "alpha")["result"] == "adopted"
    assert_converged(world.sb, world.state, NAMES)
    assert world.posts() == 2  # alpha once, beta once


def test_a_rejected_create_is_released_without_a_look_up(world: World) -> None:
    world.sb.script("alpha", post=["400"])
    result = world.apply()
    assert result.exit_code == 1, result.output
    assert world.lookups() == 0 and world.posts() == 2
    assert ("alpha", "released") in {(n, s) for n, s, _ in journal(world.state)}
    assert outcome(result, "alpha")["error"]["status"] == 400
    assert runs(world.state)[-1]["outcome"] == "partial"


def test_a_401_releases_the_create_and_stops_the_run(world: World) -> None:
    world.sb.script("alpha", post=["401"])
    result = world.apply()
    assert result.exit_code == 1, result.output
    assert world.posts() == 1  # beta is not attempted
    assert outcome(result, "beta")["result"] == "skipped"
    assert pending_names(world.state) == []
    assert runs(world.state)[-1]["outcome"] == "aborted"
    assert "authentication failed" in result.stderr


def test_throttling_past_the_last_attempt_releases_the_entry(world: World) -> None:
    world.sb.script("alpha", post=["429"] * 3)
    result = world.apply("--retries", "2")
    assert result.exit_code == 1, result.output
    assert world.posts() == 4 and world.lookups() == 0
    assert outcome(result, "alpha")["attempts"] == 3
    assert pending_names(world.state) == []  # certainly not created
    assert [i["name"] for i in world.sb.images()] == ["beta"]


def test_a_failing_look_up_after_a_gateway_error_keeps_the_entry_pending(
        world: World, fixed_clock: ManualClock) -> None:
    world.sb.script("alpha", post=["502"], get=["503"] * 6)
    first = world.apply()
    assert first.exit_code == 1, first.output
    assert pending_names(world.state) == ["alpha"]
    # The next run within the settle time leaves it blocked; after it, the entry is
    # released (nothing was committed) and the image created once.
    blocked = world.apply()
    assert blocked.exit_code == 1, blocked.output
    assert world.events(blocked, "recover_waiting")
    fixed_clock.advance(121)
    last = world.apply()
    assert last.exit_code == 0, last.output
    assert world.events(last, "recover_released")
    assert_converged(world.sb, world.state, NAMES)


# --- what a pending entry becomes (decisions.resolve_pending) ---------------------------------

def test_a_pending_create_that_landed_is_adopted(world: World) -> None:
    world.sb.script("alpha", post=["commit:502"], get=["503"] * 6)
    assert world.apply().exit_code == 1
    result = world.apply()
    assert result.exit_code == 0, result.output
    assert world.events(result, "recovered")
    assert outcome(result, "alpha")["result"] == "adopted"
    assert_converged(world.sb, world.state, NAMES)
    assert world.posts() == 2


def test_a_look_up_that_fails_during_recovery_keeps_the_entry(world: World) -> None:
    world.sb.script("alpha", post=["commit:502"], get=["503"] * 12)
    assert world.apply().exit_code == 1
    result = world.apply()
    assert result.exit_code == 1, result.output
    assert world.events(result, "recover_failed")
    assert pending_names(world.state) == ["alpha"]
    assert world.apply().exit_code == 0  # the scripts are used up: resolved now
    assert_converged(world.sb, world.state, NAMES)


# --- a server that really takes its time ------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_create_outliving_the_read_timeout_is_found_once_it_lands(world: World) -> None:
    # The sandbox holds the POST for 1 s, then commits; the client gave up after 0.3 s.
    # Real time: the settle window must really wait for the server. It is far longer than
    # the hang, so that a loaded machine cannot make the create look lost; the run ends as
    # soon as the create is found, so a long window costs nothing.
    world.sb.config.hang_s = 1.0
    world.sb.script("alpha", post=["timeout"])
    result = world.apply("--read-timeout", "0.3", "--settle-time", "30", "--request-timeout",
                         "5", obj=Runtime(clock=SYSTEM_CLOCK))
    assert result.exit_code == 0, result.output
    assert_converged(world.sb, world.state, NAMES)
    assert world.posts() == 3 - 1  # alpha once (never sent again), beta once
    assert world.events(result, "found_after_loss")


# --- the run stops before a lost create settles -----------------------------------------------

class StoppingClock(ManualClock):
    """Stops the run the first time anyone waits on it (as Ctrl-C would, mid-settle)."""

    run: RunState | None = None

    def sleep(self, seconds: float, wake: Any = None) -> None:
        if self.run is not None:
            self.run.stop("interrupted")
        super().sleep(seconds, wake)


def test_a_run_stopped_before_a_lost_create_settles_keeps_it_pending(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    sb = sandbox()
    sb.script("alpha", post=["lost"])
    clock = StoppingClock(datetime(2024, 5, 17, tzinfo=UTC))
    store = open_for_write(tmp_path / "state.db", clock=clock)
    client = ImageClient(sb.url, token_provider=StaticToken(TOKEN), clock=clock,
                         read_retry=RetryPolicy())
    run = clock.run = RunState("run-1", clock)
    store.start_run("run-1", target=client.endpoint, profile="ims", catalog_digest="x",
                    tool_version="test", started_at="2024-05-17T00:00:00Z")
    spec = ImageSpec(name="alpha", disk_format="zvhd2", min_disk=40)
    creator = Creator(store, client, client.endpoint, run, parallelism=1)
    try:
        [out] = creator.create_all([Change(name="alpha", action="create", reason="new",
                                           spec=spec)])
        assert out.result == "failed"
        assert out.error is not None and out.error.message.startswith("outcome unknown")
        assert [p.name for p in store.pending(client.endpoint)] == ["alpha"]
        assert sb.post_count == 1  # never sent again
    finally:
        store.close()
        client.close()


def test_each_create_carries_the_marker_its_journal_entry_holds(world: World) -> None:
    world.sb.script("alpha", post=["commit:502"])
    assert world.apply().exit_code == 0
    [image] = [i for i in world.sb.images() if i["name"] == "alpha"]
    entries = {n: nonce for n, _, nonce in journal(world.state)}
    assert image[MARKER_PROPERTY] == entries["alpha"]


# --- the settle window cannot vanish (settle time >= request deadline) ------------------------

@pytest.mark.parametrize(
    ("settle", "deadline", "used", "raised"),
    [(120.0, 120.0, 120.0, False), (300.0, 120.0, 300.0, False), (2.0, 3.0, 3.0, True),
     (0.0, 120.0, 120.0, True)],
)
def test_the_settle_time_is_never_shorter_than_the_request_deadline(
        settle: float, deadline: float, used: float, raised: bool) -> None:
    got, why = settle_time(settle, deadline)
    assert got == used
    assert (why is not None) is raised
    if why:
        assert f"raised to {deadline:g} s" in why


def test_a_settle_time_shorter_than_the_deadline_is_raised_and_said(
        world: World, fixed_clock: ManualClock) -> None:
    # 502 with nothing committed: this run looks for the create until the raised settle
    # time (5 s, the request deadline) has passed, not for the 1 s asked for.
    world.sb.script("alpha", post=["502"])
    start = fixed_clock.monotonic()
    result = world.apply("--settle-time", "1", "--request-timeout", "5")
    assert result.exit_code == 0, result.output
    [raised] = world.events(result, "settle_time_raised")
    assert "raised to 5 s" in raised["message"]
    assert fixed_clock.monotonic() - start >= 5
    assert_converged(world.sb, world.state, NAMES)


@pytest.mark.parametrize(
    ("args", "env", "config", "bad"),
    [
        (["--settle-time", "nan"], {}, "", "--settle-time"),
        ([], {"RECONCILE_SETTLE_TIME": "nan"}, "", "--settle-time"),
        ([], {"RECONCILE_SETTLE_TIME": "inf"}, "", "--settle-time"),
        (["--connect-timeout", "inf"], {}, "", "--connect-timeout"),
        (["--read-timeout", "nan"], {}, "", "--read-timeout"),
        (["--request-timeout", "inf"], {}, "", "--request-timeout"),
        ([], {}, "connect_timeout = inf", "--connect-timeout"),
        ([], {}, "read_timeout = nan", "--read-timeout"),
        ([], {}, "settle_time = nan", "--settle-time"),
    ],
)
def test_non_finite_times_are_usage_errors_before_anything_is_sent(
        world: World, tmp_path: Path, args: list[str], env: dict[str, str], config: str,
        bad: str) -> None:
    (tmp_path / "reconcile.toml").write_text(f"[reconcile]\n{config}\n", encoding="utf-8")
    result = world.run_cli(
        ["apply", "--yes", "--endpoint", world.sb.url, "--state", world.state,
         "--catalog", world.catalog, *args], env={"OS_AUTH_TOKEN": TOKEN, **env})
    assert result.exit_code == 1, result.output
    assert bad in result.output and "finite" in result.output
    assert "Traceback" not in result.output
    assert not world.state.exists() and sum(world.sb.request_count.values()) == 0


# --- every request has a deadline --------------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_trickling_server_cannot_hold_an_apply(tmp_path: Path, run_cli: Run) -> None:
    catalog = write_images(tmp_path / "catalog", ["alpha"])
    state = tmp_path / "state.db"
    with trickling_server(0.05) as url:
        result = run_cli(["apply", "--yes", "--endpoint", url, "--state", state,
                          "--catalog", catalog, "--no-refresh", "--retries", "0",
                          "--request-timeout", "1", "--format", "json"],
                         env={"OS_AUTH_TOKEN": TOKEN})
    assert result.exit_code == 1, result.output
    [failed] = json.loads(result.stdout)["outcomes"]
    assert "deadline of 1 s" in failed["error"]["message"]
    # The POST may have been received: kept pending, never presumed lost.
    assert failed["error"]["message"].startswith("outcome unknown")
    assert pending_names(state) == ["alpha"]


# --- our own image ids on Glance (decisions.on_id_conflict) -----------------------------------

def _glance_world(tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> World:
    world = World(tmp_path, run_cli, sandbox(profile="glance"))
    images = [{"name": n, "disk_format": "qcow2", "container_format": "bare"} for n in NAMES]
    (world.catalog / "images.yaml").write_text(json.dumps({"images": images}), encoding="utf-8")
    return world


def _our_id(world: World, name: str, generation: int = 0) -> str:
    from reconciler.apply.decisions import client_image_id
    from reconciler.client import normalize_endpoint
    return client_image_id(normalize_endpoint(world.sb.url), name, generation)


def test_a_409_on_our_id_held_by_our_image_adopts_it_without_a_second_create(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    """Another machine created alpha between our plan and our POST: its id is ours too."""
    world = _glance_world(tmp_path, run_cli, sandbox)
    theirs = world.sb.add_image({"id": _our_id(world, "alpha"), "name": "alpha",
                                 "disk_format": "qcow2", "container_format": "bare"})

    result = world.apply("--profile", "glance")

    assert result.exit_code == 0, result.output
    assert outcome(result, "alpha")["result"] == "adopted"
    assert recorded(world.state)["alpha"]["image_id"] == theirs["id"]
    assert [i["id"] for i in world.sb.images() if i["name"] == "alpha"] == [theirs["id"]]
    assert len(world.events(result, "adopted_by_id")) == 1


def test_a_409_on_the_id_of_a_deleted_image_moves_to_the_next_generation(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    """Glance keeps a deleted image's id reserved: the create takes the next one."""
    world = _glance_world(tmp_path, run_cli, sandbox)
    gone = world.sb.add_image({"id": _our_id(world, "alpha"), "name": "alpha",
                               "disk_format": "qcow2", "container_format": "bare"})
    assert world.sb.delete_image(gone["id"])

    result = world.apply("--profile", "glance")

    assert result.exit_code == 0, result.output
    assert outcome(result, "alpha")["result"] == "created"
    assert recorded(world.state)["alpha"]["image_id"] == _our_id(world, "alpha", 1)
    assert world.posts() == 3  # alpha twice (the 409, then generation 1), beta once


def test_a_409_on_our_id_held_by_an_image_of_another_name_fails_that_image_alone(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    world = _glance_world(tmp_path, run_cli, sandbox)
    world.sb.add_image({"id": _our_id(world, "alpha"), "name": "not-alpha",
                        "disk_format": "qcow2", "container_format": "bare"})

    result = world.apply("--profile", "glance")

    assert result.exit_code == 1, result.output
    failed = outcome(result, "alpha")
    assert failed["result"] == "failed"
    assert "held by the image 'not-alpha'" in failed["error"]["message"], failed
    assert set(recorded(world.state)) == {"beta"}
    assert pending_names(world.state) == []
