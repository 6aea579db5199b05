"""The library's entry points behind each command: load, plan, and build the report.

Each function does one command's work without printing, prompting or exiting, so the CLI
stays a thin shell and tests can call the same code directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from reconciler import __version__
from reconciler.catalog import load_catalog
from reconciler.errors import ConfigError, StateError
from reconciler.models import Catalog, Plan, RunReport
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


def normalize_endpoint(endpoint: str) -> str:
    """The target key of an endpoint: scheme://host[:port][/path] without a trailing / or /v2."""
    url = endpoint.strip().rstrip("/")
    if url.endswith("/v2"):
        url = url[:-3]
    if not url.startswith(("http://", "https://")) or "://" == url[-3:]:
        raise ConfigError(f"endpoint {endpoint!r} must be an http:// or https:// URL, e.g. "
                          "https://ims.cn-north-4.myhuaweicloud.com")
    return url


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
