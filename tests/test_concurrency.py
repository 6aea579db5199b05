"""Adaptive concurrency end to end: ``reconcile apply`` over real loopback HTTP against the
sandbox in capacity mode (a server with a fixed number of workers: over its capacity it
answers 503 at once, below it latency grows with the load), with a real state file and the
real clock. Only counts are asserted (what was created, refused, in flight), never times."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apply_helpers import SandboxFactory, assert_converged, image_names, json_lines, write_images
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


def apply(run_cli: Run, tmp_path: Path, sb: Sandbox, count: int, *extra: Any) -> Result:
    names = image_names(count)
    catalog = write_images(tmp_path / "catalog", names)
    state = tmp_path / "state.db"
    result = run_cli(["apply", "--yes", "--endpoint", sb.url, "--state", state,
                      "--catalog", catalog, "--no-refresh", "--log-format", "json", *extra],
                     env=ENV, obj=Runtime(clock=SYSTEM_CLOCK))  # latency needs real time
    assert result.exit_code == 0, result.output
    assert_converged(sb, state, names)
    return result


def test_adaptive_apply_finds_the_capacity_below_its_ceiling(
        tmp_path: Path, run_cli: Run, sandbox: SandboxFactory) -> None:
    # Room for 3 at once, a ceiling of 12: a fixed 12 would have 9 of 12 refused each time.
    sb = sandbox(capacity=3, latency_ms=20)
    result = apply(run_cli, tmp_path, sb, 80, "--parallelism", "12")
    peak, refused = sb.capacity_counts
    assert peak == 3  # it did use all the room there was
    assert refused <= 16, refused  # the slow start's overshoot, then rare probes
    lowered = [e for e in json_lines(result.stderr) if e["event"] == "concurrency_lowered"]
    assert lowered and all(e["limit"] <= 3 for e in lowered[1:]), lowered
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
