"""The library's entry points behind each command: load, plan, and build the report.

Each function does one command's work without printing, prompting or exiting, so the CLI
stays a thin shell and tests can call the same code directly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from reconciler import __version__
from reconciler.applier import Applier, ImageApi, RetryPolicy
from reconciler.catalog import load_catalog
from reconciler.client import normalize_endpoint
from reconciler.errors import ConfigError, StateError
from reconciler.models import Catalog, Outcome, Plan, RunReport
from reconciler.planner import plan
from reconciler.profiles import PROFILES, Profile
from reconciler.state import StateStore

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile {name!r}; use one of: "
                          + ", ".join(PROFILES)) from None


def resolve_target(store: StateStore | None, endpoint: str | None) -> str:
    """Which target's records to compare with: the endpoint, or the state's only target."""
    if endpoint:
        return normalize_endpoint(endpoint)
    targets = store.targets() if store else []
    if len(targets) > 1:
        raise ConfigError("the state file holds records for several endpoints ("
                          + ", ".join(targets) + "); choose one with --endpoint")
    return targets[0] if targets else ""


@dataclass(frozen=True)
class PlanResult:
    catalog: Catalog
    plan: Plan
    report: RunReport
    state_revision: int


def make_plan(catalog_dir: str | Path, state_path: str | Path, *, profile: str,
              strict: bool = False, endpoint: str | None = None,
              clock: Clock = utc_now) -> PlanResult:
    """Plan offline: the catalog against the state file, which is only read (never created)."""
    catalog = load_catalog(catalog_dir, get_profile(profile), strict=strict)
    store = StateStore.open_readonly(state_path)
    try:
        target = resolve_target(store, endpoint)
        records = store.records(target) if store else {}
        pending = {p.name for p in store.pending(target)} if store else set()
        revision = store.revision() if store else 0
    finally:
        if store:
            store.close()
    result = plan(catalog, records, target=target, pending=pending)
    return PlanResult(catalog, result, plan_report(catalog, result, clock=clock), revision)


def plan_report(catalog: Catalog, result: Plan, *, clock: Clock = utc_now) -> RunReport:
    return RunReport.model_construct(
        format_version=1, mode="plan", dry_run=False, generated_at=iso(clock()),
        tool_version=__version__, catalog=catalog.directory, target=result.target,
        profile=result.profile, catalog_digest=result.catalog_digest, summary=result.summary(),
        changes=result.changes, outcomes=(), warnings=(),
        duration_s=None, run_id=None,
    )


def open_existing(state_path: str | Path) -> StateStore:
    store = StateStore.open_readonly(state_path)
    if store is None:
        raise StateError(f"state file {state_path} does not exist yet: nothing is recorded "
                         "(apply creates it)")
    return store


@dataclass(frozen=True)
class ApplyResult:
    report: RunReport
    failed: int
    aborted: str | None


def new_run_id(clock: Clock = utc_now) -> str:
    return f"{clock().astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def dry_run_report(catalog_dir: str | Path, state_path: str | Path, *, profile: str,
                   strict: bool = False, endpoint: str | None = None,
                   clock: Clock = utc_now) -> RunReport:
    """What apply would send, computed offline; touches neither the API nor the state file."""
    result = make_plan(catalog_dir, state_path, profile=profile, strict=strict,
                       endpoint=endpoint, clock=clock)
    return result.report.model_copy(update={"mode": "apply", "dry_run": True})


def apply_catalog(catalog_dir: str | Path, state_path: str | Path, *, profile: str,
                  endpoint: str, api: ImageApi, strict: bool = False, parallelism: int = 10,
                  retry: RetryPolicy | None = None, clock: Clock = utc_now,
                  on_outcome: Callable[[Outcome], None] = lambda o: None,
                  on_plan: Callable[[Plan], None] = lambda p: None) -> ApplyResult:
    """Create what the catalog has and the state lacks, under the state lock.

    Pending creates of earlier runs are resolved first, then the plan is made again from
    the state as it is now, so what was shown for confirmation can never be applied twice.
    """
    catalog = load_catalog(catalog_dir, get_profile(profile), strict=strict)
    target = normalize_endpoint(endpoint)
    store = StateStore.open_for_write(state_path)
    try:
        with store.lock():
            return _apply_locked(store, catalog, target, api, parallelism,
                                 retry or RetryPolicy(), clock, on_outcome, on_plan)
    finally:
        store.close()


def _apply_locked(store: StateStore, catalog: Catalog, target: str, api: ImageApi,
                  parallelism: int, retry: RetryPolicy, clock: Clock,
                  on_outcome: Callable[[Outcome], None],
                  on_plan: Callable[[Plan], None]) -> ApplyResult:
    started, t0 = clock(), time.monotonic()
    run_id = new_run_id(clock)
    store.start_run(run_id, target=target, profile=catalog.profile,
                    catalog_digest=catalog.digest(), tool_version=__version__,
                    started_at=iso(started))
    applier = Applier(store, api, target, run_id, parallelism=parallelism, retry=retry,
                      on_outcome=on_outcome)
    outcomes: list[Outcome] = []
    summary: dict[str, int] = {}
    try:
        outcomes.extend(applier.recover())
        pending = {p.name for p in store.pending(target)}
        result = plan(catalog, store.records(target), target=target, pending=pending)
        summary = result.summary()
        on_plan(result)
        if applier.abort_reason is None:
            outcomes.extend(applier.create_all(result.creates))
    except KeyboardInterrupt:
        _finish(store, run_id, summary, outcomes, "interrupted", "interrupted")
        raise
    counts = _counts(outcomes)
    if applier.abort_reason:
        verdict = "aborted"
    elif counts["failed"]:
        verdict = "partial" if counts["created"] + counts["adopted"] else "failed"
    else:
        verdict = "success"
    _finish(store, run_id, summary, outcomes, verdict, applier.abort_reason)
    report = RunReport.model_construct(
        format_version=1, mode="apply", dry_run=False, generated_at=iso(clock()),
        tool_version=__version__, catalog=catalog.directory, target=target,
        profile=catalog.profile, catalog_digest=result.catalog_digest,
        summary={**summary, **counts}, changes=result.changes,
        outcomes=tuple(sorted(outcomes, key=lambda o: o.name)),
        warnings=(f"run aborted: {applier.abort_reason}",) if applier.abort_reason else (),
        duration_s=time.monotonic() - t0, run_id=run_id,
    )
    return ApplyResult(report, counts["failed"] + counts["skipped"], applier.abort_reason)


def _counts(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {"created": 0, "adopted": 0, "failed": 0, "skipped": 0}
    for o in outcomes:
        counts[o.result] += 1
    return counts


def _finish(store: StateStore, run_id: str, summary: dict[str, int], outcomes: list[Outcome],
            verdict: str, error: str | None) -> None:
    counts = _counts(outcomes)
    store.finish_run(run_id, summary=summary, created=counts["created"],
                     adopted=counts["adopted"], failed=counts["failed"] + counts["skipped"],
                     outcome=verdict, error=error)
