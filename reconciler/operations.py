"""The library's entry points behind each command: load, plan, and build the report.

Each function does one command's work without printing, prompting or exiting, so the CLI
stays a thin shell and tests can call the same code directly.
"""

from __future__ import annotations

import contextlib
import gc
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from reconciler import __version__, planfile, schemacache
from reconciler.applier import DEFAULT_SETTLE_S, Applier, adoption_request
from reconciler.catalog import load_catalog
from reconciler.client import ImageClient, RetryPolicy, normalize_endpoint
from reconciler.errors import AuthError, ConfigError, PlanFileError, StateError
from reconciler.models import (
    ACTIONS,
    GONE_STATUSES,
    Catalog,
    Change,
    Observed,
    Outcome,
    Plan,
    Record,
    RunReport,
    iso,
    now_iso,
)
from reconciler.planfile import SavedPlan
from reconciler.planner import diff_bodies, plan
from reconciler.profiles import PROFILES, Profile
from reconciler.refresh import observe
from reconciler.schemacache import NO_ALLOWANCES, Allowances, RunProfile
from reconciler.state import StateStore

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


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
    observed: Observed | None


def make_plan(catalog_dir: str | Path, state_path: str | Path, *, profile: str,
              strict: bool = False, endpoint: str | None = None,
              api: ImageClient | None = None, project_id: str | None = None,
              clock: Clock = utc_now, allow: Allowances = NO_ALLOWANCES) -> PlanResult:
    """Compare the catalog with the state file, which is only read (no records written).

    With ``api`` the cloud is read too (``--refresh``), and the server's rules with it (kept
    in the state file as a cache); without it the plan is offline and uses the kept rules.
    """
    with bulk_build():
        store = StateStore.open_readonly(state_path)
        try:
            target = resolve_target(store, endpoint or (api.endpoint if api else None))
            rules = run_profile(profile, store, target, api=api, state_path=state_path,
                                allow=allow, clock=clock)
            notes = _kept_notes(rules, target, state_path)  # kept even if the catalog fails
            catalog = load_catalog(catalog_dir, rules.profile, strict=strict)
            records = _records_for_plan(store, target, catalog, full=api is not None) \
                if store else {}
            pending = {p.name: p.nonce for p in store.pending(target)} if store else {}
            revision = store.revision() if store else 0
        finally:
            if store:
                store.close()
        observed = observe(api, catalog.profile, records.values(), project_id) if api else None
        result = plan(catalog, records, target=target, pending=pending, observed=observed)
        report = plan_report(catalog, result, clock=clock, warnings=notes)
    return PlanResult(catalog, result, report, revision, observed)


def run_profile(profile: str, store: StateStore | None, target: str, *,
                api: ImageClient | None, state_path: str | Path, allow: Allowances,
                clock: Clock) -> RunProfile:
    """The profile to validate with: the server's rules if ``api`` can tell them, else the
    ones kept for ``target``, else the built-in ones."""
    get_profile(profile)  # an unknown name is a ConfigError
    if api is None:
        return schemacache.offline(profile, store, target, allow)
    return schemacache.online(profile, api, target, state_path, allow=allow, clock=clock)


def _kept_notes(rules: RunProfile, target: str, state_path: str | Path,
                store: StateStore | None = None) -> tuple[str, ...]:
    note = schemacache.keep(rules, target, store=store, state_path=state_path)
    return (*rules.notes, *([note] if note else []))


@dataclass(frozen=True)
class ValidateResult:
    catalog: Catalog
    rules: RunProfile
    notes: tuple[str, ...]


def validate_catalog(catalog_dir: str | Path, state_path: str | Path, *, profile: str,
                     strict: bool = False, endpoint: str | None = None,
                     api: ImageClient | None = None, clock: Clock = utc_now,
                     allow: Allowances = NO_ALLOWANCES) -> ValidateResult:
    """Load and check the catalog against the server's rules (``api``), the ones the state
    file kept for the endpoint, or the built-in ones; the state's records are not read."""
    store = StateStore.open_readonly(state_path)
    try:
        target = resolve_target(store, endpoint or (api.endpoint if api else None))
        rules = run_profile(profile, store, target, api=api, state_path=state_path,
                            allow=allow, clock=clock)
    finally:
        if store:
            store.close()
    notes = _kept_notes(rules, target, state_path)  # kept even if the catalog fails
    with bulk_build():
        catalog = load_catalog(catalog_dir, rules.profile, strict=strict)
    return ValidateResult(catalog, rules, notes)


def _records_for_plan(store: StateStore, target: str, catalog: Catalog, *,
                      full: bool) -> dict[str, Record]:
    """What the planner needs: everything for a refresh; otherwise ids and digests, plus the
    complete record where the catalog's digest differs (a drift diff needs the request)."""
    records = store.records(target, full=full)
    if not full:
        digests = {s.name: s.digest for s in catalog.images}
        drifted = [n for n, r in records.items() if n in digests and digests[n] != r.spec_digest]
        records.update(store.records_of(target, drifted))
    return records


@contextlib.contextmanager
def bulk_build() -> Iterator[None]:
    """Pause the cyclic garbage collector while building catalog, records and plan.

    Those are up to a few hundred thousand objects with no reference cycles; the collector
    would walk all of them again on every generation-2 pass (38 % of a 100,000-image plan)
    and find nothing to free.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def save_plan(result: PlanResult, path: Path, *, clock: Clock = utc_now) -> SavedPlan:
    saved = planfile.build(result.plan, catalog=result.catalog.directory,
                           state_revision=result.state_revision, created_at=iso(clock()),
                           tool_version=__version__, observed=result.observed)
    planfile.write(saved, path)
    return saved


def plan_report(catalog: Catalog, result: Plan, *, clock: Clock = utc_now,
                warnings: tuple[str, ...] = ()) -> RunReport:
    return RunReport.model_construct(
        format_version=1, mode="plan", dry_run=False, generated_at=iso(clock()),
        tool_version=__version__, catalog=catalog.directory, target=result.target,
        profile=result.profile, catalog_digest=result.catalog_digest, summary=result.summary(),
        changes=result.changes, outcomes=(), warnings=warnings, duration_s=None, run_id=None,
        auth_refreshes=0,
    )


def open_existing(state_path: str | Path) -> StateStore:
    store = StateStore.open_readonly(state_path)
    if store is None:
        raise StateError(f"state file {state_path} does not exist yet: nothing is recorded "
                         "(apply creates it)")
    return store


def dry_run_report(catalog_dir: str | Path, state_path: str | Path, *, profile: str,
                   strict: bool = False, endpoint: str | None = None,
                   clock: Clock = utc_now, allow: Allowances = NO_ALLOWANCES) -> RunReport:
    """What apply would send, computed offline; touches neither the API nor the state file."""
    result = make_plan(catalog_dir, state_path, profile=profile, strict=strict,
                       endpoint=endpoint, clock=clock, allow=allow)
    return result.report.model_copy(update={"mode": "apply", "dry_run": True})


# --- apply ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ApplyResult:
    report: RunReport
    failed: int
    blocked: int
    aborted: str | None


def new_run_id(clock: Clock = utc_now) -> str:
    return f"{clock().astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


@dataclass
class ApplyRequest:
    """Everything one apply needs. ``saved``: apply exactly this saved plan."""

    catalog_dir: str | Path
    state_path: str | Path
    profile: str
    endpoint: str
    api: ImageClient
    strict: bool = False
    refresh: bool = True
    saved: SavedPlan | None = None
    parallelism: int = 10
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    clock: Clock = utc_now
    on_outcome: Callable[[Outcome], None] = lambda o: None
    on_plan: Callable[[Plan], None] = lambda p: None
    refreshes: Callable[[], int] = lambda: 0  # token refreshes so far, for the report
    settle_s: float = DEFAULT_SETTLE_S
    project_id: str | None = None  # our project, when the credentials tell
    allow: Allowances = field(default_factory=Allowances)


def apply_catalog(req: ApplyRequest) -> ApplyResult:
    """Create (and adopt) what the catalog has and the state lacks, under the state lock.

    Pending creates of earlier runs are resolved first and the plan is made from the state
    as it is then, so a create shown for confirmation can never happen twice. A saved plan is
    checked against the world before anything is written, and then applied once.
    """
    saved = req.saved
    if saved is not None and normalize_endpoint(req.endpoint) != saved.target:
        raise PlanFileError(f"the plan was made for {saved.target}, not {req.endpoint}")
    target = normalize_endpoint(req.endpoint)
    rules = run_profile(saved.profile if saved else req.profile, None, target, api=req.api,
                        state_path=req.state_path, allow=req.allow, clock=req.clock)
    with bulk_build():
        catalog = load_catalog(saved.catalog if saved else req.catalog_dir, rules.profile,
                               strict=req.strict)
    store = StateStore.open_for_write(req.state_path)
    try:
        with store.lock():
            return _apply_locked(req, store, catalog, target, rules)
    finally:
        store.close()


def _apply_locked(req: ApplyRequest, store: StateStore, catalog: Catalog,
                  target: str, rules: RunProfile) -> ApplyResult:
    t0 = time.monotonic()
    chosen: set[tuple[str, str]] | None = None
    observed: Observed | None = None
    if req.saved is not None:
        # The cloud is read once: what the check saw is what the plan below works from.
        chosen, observed = _check_saved(req, store, catalog, target)
    notes = _kept_notes(rules, target, req.state_path, store)  # a refused plan writes nothing
    run_id = new_run_id(req.clock)
    store.start_run(run_id, target=target, profile=catalog.profile,
                    catalog_digest=catalog.digest, tool_version=__version__,
                    started_at=iso(req.clock()))
    if req.saved is not None:
        store.mark_plan_applied(req.saved.plan_id, run_id)
    applier = Applier(store, req.api, target, run_id, parallelism=req.parallelism,
                      retry=req.retry, settle_s=req.settle_s, on_outcome=req.on_outcome)
    outcomes: list[Outcome] = []
    summary: dict[str, int] = {}
    result: Plan | None = None
    try:
        outcomes.extend(applier.recover())
        if applier.abort_reason is None:
            records = store.records(target)
            if req.refresh and observed is None:
                try:
                    observed = observe(req.api, catalog.profile, records.values(), req.project_id)
                except AuthError as exc:
                    # Nothing can be sent either; the report lists what was not done.
                    applier.abort(f"authentication failed: {exc.message}")
            pending = {p.name: p.nonce for p in store.pending(target)}
            with bulk_build():
                result = plan(catalog, records, target=target, pending=pending,
                              observed=observed)
            summary = result.summary()
            req.on_plan(result)
            todo = [c for c in result.changes if chosen is None or (c.name, c.action) in chosen]
            outcomes.extend(_adopt(store, target, run_id, catalog, todo, req.on_outcome))
            outcomes.extend(applier.create_all([c for c in todo if c.action == "create"]))
    except KeyboardInterrupt:
        _finish(store, run_id, summary, outcomes, "interrupted", "interrupted")
        raise
    except Exception as exc:
        _finish(store, run_id, summary, outcomes, "failed", str(exc))
        raise
    counts = _counts(outcomes)
    if applier.abort_reason:
        verdict = "aborted"
    elif counts["failed"] or summary.get("blocked"):
        verdict = "partial" if counts["created"] + counts["adopted"] else "failed"
    else:
        verdict = "success"
    _finish(store, run_id, summary, outcomes, verdict, applier.abort_reason)
    report = RunReport.model_construct(
        format_version=1, mode="apply", dry_run=False, generated_at=iso(req.clock()),
        tool_version=__version__, catalog=catalog.directory, target=target,
        profile=catalog.profile, catalog_digest=catalog.digest,
        summary={**(summary or dict.fromkeys(ACTIONS, 0)), **counts},
        changes=result.changes if result else (),
        outcomes=tuple(sorted(outcomes, key=lambda o: o.name)),
        warnings=(*notes, *((f"run aborted: {applier.abort_reason}",)
                            if applier.abort_reason else ())),
        duration_s=time.monotonic() - t0, run_id=run_id, auth_refreshes=req.refreshes(),
    )
    return ApplyResult(report, counts["failed"] + counts["skipped"], summary.get("blocked", 0),
                       applier.abort_reason)


_MAX_REASONS = 20


def _check_saved(req: ApplyRequest, store: StateStore, catalog: Catalog,
                 target: str) -> tuple[set[tuple[str, str]], Observed | None]:
    """Refuse a saved plan that was applied already or that the world has moved past.

    Runs before anything is written. Returns the (name, action) pairs to carry out, and the
    cloud as it saw it.
    """
    saved = req.saved
    assert saved is not None
    applied = store.plan_applied(saved.plan_id)
    if applied:
        raise PlanFileError(f"this plan was applied already (run {applied['run_id']} at "
                            f"{applied['applied_at']}); a saved plan can be applied once only. "
                            "Make a new plan with `reconcile plan --out FILE`")
    records = store.records(target)
    observed = observe(req.api, catalog.profile, records.values(),
                       req.project_id) if req.refresh else None
    reasons = planfile.stale_reasons(saved, catalog_digest=catalog.digest,
                                     state_revision=store.revision(), observed=observed)
    if not reasons:
        pending = {p.name: p.nonce for p in store.pending(target)}
        fresh = plan(catalog, records, target=target, pending=pending, observed=observed)
        now = {(c.name, c.action) for c in fresh.changes if c.action in ("create", "adopt")}
        then = {(c.name, c.action) for c in saved.changes}
        reasons.extend(f"{name}: the plan says {action}, now it would not"
                       for name, action in sorted(then - now))
        reasons.extend(f"{name}: now it would {action}, the plan does not say so"
                       for name, action in sorted(now - then))
    if reasons:
        shown = [f"  - {r}" for r in reasons[:_MAX_REASONS]]
        if len(reasons) > _MAX_REASONS:
            shown.append(f"  … and {len(reasons) - _MAX_REASONS} more")
        raise PlanFileError("the saved plan is stale; nothing was done. Make a new plan.\n"
                            + "\n".join(shown))
    return {(c.name, c.action) for c in saved.changes}, observed


def _adopt(store: StateStore, target: str, run_id: str, catalog: Catalog,
           changes: list[Change], on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
    """Record the images the plan found in the cloud carrying our marker."""
    outcomes = []
    for change in changes:
        if change.action != "adopt" or change.remote is None or change.spec is None:
            continue
        remote = change.remote
        request = adoption_request(change.spec, remote)
        store.save_record(target, Record.from_image(change.name, request, remote,
                                                    recorded_at=now_iso(), run_id=run_id,
                                                    origin="adopted"))
        outcome = Outcome.model_construct(
            name=change.name, result="adopted", image_id=remote["id"],
            status=remote.get("status"), created_at=remote.get("created_at"),
            updated_at=remote.get("updated_at"), attempts=0, duration_s=0.0, error=None,
            request=None)
        on_outcome(outcome)
        outcomes.append(outcome)
    return outcomes


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


# --- import and forget ---------------------------------------------------------------------

def import_image(catalog_dir: str | Path, state_path: str | Path, name: str, image_id: str, *,
                 profile: str, endpoint: str, api: ImageClient, force: bool = False) -> Record:
    """Start managing an existing image under a catalog name, after comparing it."""
    rules = run_profile(profile, None, normalize_endpoint(endpoint), api=api,
                        state_path=state_path, allow=NO_ALLOWANCES, clock=utc_now)
    catalog = load_catalog(catalog_dir, rules.profile)
    spec = next((s for s in catalog.images if s.name == name), None)
    if spec is None:
        raise ConfigError(f"{name!r} is not in the catalog {catalog_dir}; add it first")
    image = api.get_image(image_id)
    if image is None or image.get("status") in GONE_STATUSES:
        raise ConfigError(f"image {image_id} does not exist at {endpoint}")
    request = adoption_request(spec, image)
    differences = diff_bodies(spec.body(), request)
    if differences and not force:
        lines = "\n".join(f"  - {d.field}: catalog {d.before!r}, image {d.after!r}"
                          for d in differences)
        raise ConfigError(f"image {image_id} differs from the catalog entry {name!r}; fix the "
                          f"catalog or pass --force to import it anyway (it will show as "
                          f"drift):\n{lines}")
    target = normalize_endpoint(endpoint)
    store = StateStore.open_for_write(state_path)
    try:
        with store.lock():
            existing = store.record(target, name)
            if existing and existing.image_id != image_id and not force:
                raise ConfigError(f"{name!r} is already recorded as {existing.image_id}; "
                                  "`reconcile state forget` it first, or pass --force")
            record = Record.from_image(name, request, image, recorded_at=now_iso(),
                                       run_id=None, origin="imported")
            store.save_record(target, record)
            return record
    finally:
        store.close()


def forget_image(state_path: str | Path, name: str, *, endpoint: str | None) -> str:
    """Stop managing an image (its record goes; the image stays). Returns its id."""
    store = StateStore.open_readonly(state_path)
    if store is None:
        raise StateError(f"state file {state_path} does not exist: nothing to forget")
    try:
        target = resolve_target(store, endpoint)
    finally:
        store.close()
    store = StateStore.open_for_write(state_path)
    try:
        with store.lock():
            record = store.record(target, name)
            if record is None:
                raise ConfigError(f"{name!r} is not recorded for {target or 'any endpoint'}; "
                                  "`reconcile state list` shows what is")
            store.forget(target, name)
            return record.image_id
    finally:
        store.close()
