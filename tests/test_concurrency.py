"""Adaptive concurrency end to end: ``reconcile apply`` over real loopback HTTP against the
sandbox in capacity mode (a server with a fixed number of workers: over its capacity it
answers 503 at once, below it latency grows with the load), with a real state file and the
real clock. Only counts are asserted (what was created, refused, in flight), never times."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from apply_helpers import SandboxFactory, assert_converged, image_names, json_lines, write_images
from click.testing import Result

from reconciler.cli import Runtime
from reconciler.clock import SYSTEM_CLOCK
from reconciler.sandbox import Sandbox

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
