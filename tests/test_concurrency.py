"""Adaptive concurrency end to end: ``reconcile apply`` over real loopback HTTP against the
sandbox in capacity mode (a server with a fixed number of workers: over its capacity it
answers 503 at once, below it latency grows with the load), with a real state file and the
real clock. Only counts are asserted (what was created, patched, refused, in flight), never
times. A request refused for want of a place is one the client sent while the server was
full: so few refusals means few moments with more in flight than the server takes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apply_helpers import (
    SandboxFactory,
    assert_converged,
    image_names,
    json_lines,
    pending_names,
    recorded,
    write_images,
)
from click.testing import Result

from reconciler.apply.creates import Creator
from reconciler.apply.runstate import RunState
from reconciler.cli import Runtime
from reconciler.client import ImageClient, StaticToken
from reconciler.clock import SYSTEM_CLOCK
from reconciler.models import Change, ImageSpec, Record
from reconciler.sandbox import Sandbox
from reconciler.state import open_for_write

Run = Callable[..., Result]
ENV = {"OS_AUTH_TOKEN": "tok-test"}


def apply(run_cli: Run, tmp_path: Path, sb: Sandbox, count: int, *extra: Any,
          edited: int = 0) -> Result:
    """Apply ``count`` images; ``edited``: the first that many are in the state already (an
    earlier apply created them) and changed in the catalog since, so they are updated."""
    names = image_names(count)
    state = tmp_path / "state.db"
    if edited:
        apply(run_cli, tmp_path, sb, edited)
    catalog = write_images(tmp_path / "catalog", names, overrides={
        n: {"properties": {"build_id": "rebuilt"}} for n in names[:edited]})
    result = run_cli(["apply", "--yes", "--endpoint", sb.url, "--state", state,
                      "--catalog", catalog, "--no-refresh", "--log-format", "json", *extra],
                     env=ENV, obj=Runtime(clock=SYSTEM_CLOCK))  # latency needs real time
    assert result.exit_code == 0, result.output
    assert_converged(sb, state, names)
    return result


def update(run_cli: Run, tmp_path: Path, sb: Sandbox, count: int, *extra: Any) -> Result:
    """Create ``count`` images, change each in the catalog and apply again: ``count`` updates,
    each patched exactly once (a refused PATCH is not applied, so it does not count)."""
    result = apply(run_cli, tmp_path, sb, count, *extra, edited=count)
    assert patched_once(sb, tmp_path / "state.db", count)
    return result


def patched_once(sb: Sandbox, state: Path, count: int) -> bool:
    """``count`` PATCHes applied, every image shows the catalog's new value, all recorded."""
    sent = sb.request_count[("PATCH", "image")] + sb.request_count[("PATCH", "cloudimage")]
    applied = sent - sb.capacity_load("PATCH").refused
    shown = sorted(i["name"] for i in sb.images() if i.get("build_id") == "rebuilt")
    rows = recorded(state)
    return (applied == count and shown == image_names(count) and pending_names(state) == []
            and all(rows[n]["response"]["build_id"] == "rebuilt" for n in shown))


def test_adaptive_apply_finds_the_capacity_below_its_ceiling(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    # Room for 3 at once, a ceiling of 12: a fixed 12 would have 9 of 12 refused each time.
    sb = sandbox(capacity=3, latency_ms=20)
    result = apply(run_cli, tmp_path, sb, 80, "--parallelism", "12")
    peak, refused = sb.capacity_counts
    assert peak == 3  # it did use all the room there was
    assert refused <= 16, refused  # the slow start's overshoot, then rare probes
    # After the first cut it stays near the capacity, far below the ceiling: not exactly at
    # 3, since a slot comes back when the answer arrives, a moment after the server let go
    # of the request, so on a loaded machine the limit may probe a step or two above it.
    lowered = [e for e in json_lines(result.stderr) if e["event"] == "concurrency_lowered"]
    assert lowered and all(e["limit"] <= 5 for e in lowered[1:]), [
        e["message"] for e in lowered]
    assert sb.post_count == 80 + refused  # each refused create sent once more, no others


def test_fixed_concurrency_keeps_every_slot_in_use_whatever_the_server_answers(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(capacity=3, latency_ms=20)
    apply(run_cli, tmp_path, sb, 40, "--parallelism", "6", "--concurrency", "fixed",
          "--retries", "20")
    peak, refused = sb.capacity_counts
    assert peak == 3
    assert refused >= 3  # the first six at once: three refused


def test_the_adaptive_limit_never_exceeds_the_ceiling(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    # A latency-bound server with room for far more: the limit grows to --parallelism, no more.
    sb = sandbox(capacity=64, latency_ms=30)
    apply(run_cli, tmp_path, sb, 60, "--parallelism", "4")
    assert sb.capacity_counts == (4, 0)


def test_the_next_create_is_sent_while_an_answer_is_recorded(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    """A create gives its slot back once answered: with one request in flight at most, the
    second POST goes out while the first answer is still being written to the state. The
    extra worker journals only once it has the slot, so nothing waiting is left pending."""
    sb = sandbox()
    clock = SYSTEM_CLOCK
    store = open_for_write(tmp_path / "state.db", clock=clock)
    client = ImageClient(sb.url, token_provider=StaticToken(ENV["OS_AUTH_TOKEN"]), clock=clock)
    run = RunState("run-1", clock)
    store.start_run("run-1", target=client.endpoint, profile="ims", catalog_digest="x",
                    tool_version="test", started_at="2024-05-17T00:00:00Z")
    save = store.save_record
    seen: list[tuple[int, list[str]]] = []  # at each record: POSTs sent, entries pending

    def save_record(target: str, record: Record, *, nonce: str | None = None) -> None:
        if not seen:  # the first answer: wait (a while) for the second POST to go out
            deadline = time.monotonic() + 10
            while sb.post_count < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        seen.append((sb.post_count, sorted(p.name for p in store.pending(target))))
        save(target, record, nonce=nonce)

    store.save_record = save_record  # type: ignore[method-assign]
    creator = Creator(store, client, client.endpoint, run, parallelism=1, adaptive=False)
    changes = [Change(name=n, action="create", reason="not_recorded",
                      spec=ImageSpec(name=n, disk_format="zvhd2", min_disk=40))
               for n in ("alpha", "beta", "gamma")]
    try:
        outcomes = creator.create_all(changes)
    finally:
        store.close()
        client.close()
    assert sorted(o.result for o in outcomes) == ["created"] * 3
    posts, pending = seen[0]
    assert posts == 2  # beta was sent while alpha's answer was being recorded
    assert pending == ["alpha", "beta"]  # gamma, waiting for the slot, journaled nothing
    assert creator.limit.peak == 1  # and never more than one request in flight


# -- updates in place: the same limit --------------------------------------------------------


def test_adaptive_updates_find_the_capacity_below_their_ceiling(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(capacity=3, latency_ms=20)
    result = update(run_cli, tmp_path, sb, 80, "--parallelism", "12")
    patches = sb.capacity_load("PATCH")
    assert patches.peak == 3  # it did use all the room there was
    # The slow start's overshoot, then rare probes; a fixed 12 has 9 of 12 refused each time.
    # (Refusals, not the limit's levels: a slot is held from before the journal write to
    # after the record's, so on a busy client the limit may settle above what the server
    # holds at once, and rightly: it bounds the client's pipeline.)
    assert patches.refused <= 16, patches
    assert any(e["event"] == "concurrency_lowered" for e in json_lines(result.stderr))


def test_adaptive_updates_start_at_two_not_at_the_ceiling(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(capacity=64, latency_ms=100)
    update(run_cli, tmp_path, sb, 30, "--parallelism", "12")
    patches = sb.capacity_load("PATCH")
    assert (patches.opening, patches.refused) == (2, 0)
    assert patches.peak > 2  # then more


def test_fixed_concurrency_sends_updates_at_the_ceiling_whatever_the_server_answers(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(capacity=3, latency_ms=100)
    update(run_cli, tmp_path, sb, 30, "--parallelism", "6", "--concurrency", "fixed",
           "--retries", "20")
    patches = sb.capacity_load("PATCH")
    assert patches.peak == 3
    assert patches.opening >= 2  # sent together from the start, not one then more
    assert patches.refused >= 3  # the first six at once: three refused


def test_adaptive_updates_never_exceed_the_ceiling(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    sb = sandbox(capacity=64, latency_ms=30)
    update(run_cli, tmp_path, sb, 60, "--parallelism", "4")
    patches = sb.capacity_load("PATCH")
    assert (patches.peak, patches.refused, patches.opening) == (4, 0, 2)


def test_creates_and_updates_of_one_target_share_one_limit(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    # One run: 40 creates, then 30 updates, against a server with room for three: they
    # share the limit the creates cut down to it (that they go on at its level, rather than
    # from a start of their own, is the next test's: the start is two, below three here).
    sb = sandbox(capacity=3, latency_ms=50)
    apply(run_cli, tmp_path, sb, 70, "--parallelism", "12", edited=30)
    assert patched_once(sb, tmp_path / "state.db", 30)
    patches = sb.capacity_load("PATCH")
    assert patches.peak == 3
    # No slow start of their own, only the rare probe; a fixed 12 has 9 refused at once.
    assert patches.refused <= 4, patches


def test_updates_go_on_at_the_level_the_creates_reached(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    # Room for all: the creates take the limit from its start (2) to the ceiling (12), and the
    # updates after them send more than two at once from their first PATCH.
    sb = sandbox(capacity=64, latency_ms=100)
    apply(run_cli, tmp_path, sb, 70, "--parallelism", "12", edited=30)
    assert patched_once(sb, tmp_path / "state.db", 30)
    patches = sb.capacity_load("PATCH")
    assert patches.opening > 2, patches  # a limit of their own would start at two
    assert patches.refused == 0
