"""One apply run from start to verdict, under the state lock (docs/architecture.md §6).

1. Load the catalog; open the state file and take its lock.
2. A saved plan is checked against the world, a confirmed preview against the state file;
   either refuses before anything is written if the world moved.
3. Record the run; resolve the pending creates of earlier runs (``Creator.recover``).
4. Plan from the state as it is now (and the cloud, read once), so a create shown for
   confirmation can never happen twice; adopt, create, then update in place
   (docs/architecture.md §6.10).
5. Close the run with its verdict (``decisions.verdict``) and build the report.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from reconciler import __version__, planfile
from reconciler.apply.creates import Creator
from reconciler.apply.decisions import verdict
from reconciler.apply.request import ApplyRequest, ApplyResult, Preview, settle_time
from reconciler.apply.runstate import RunState
from reconciler.apply.updates import Updater
from reconciler.catalog import load_catalog
from reconciler.client import normalize_endpoint
from reconciler.errors import AuthError, PlanFileError
from reconciler.models import (
    ACTIONS,
    Catalog,
    DriftPolicy,
    Observed,
    Outcome,
    Plan,
    Record,
    RecordRows,
    RunOutcome,
    RunReport,
    iso,
)
from reconciler.operations import bulk_build, kept_notes, make_plan, new_run_id, run_profile
from reconciler.planner import plan, select
from reconciler.refresh import observe
from reconciler.schemacache import RunProfile
from reconciler.state import (
    LockRequest,
    SqliteStore,
    StateStore,
    is_url,
    open_for_write,
    open_readonly,
)

log = logging.getLogger("reconciler.apply")
#: The reason of a run stopped by Ctrl-C or SIGTERM.
INTERRUPTED = "interrupted"


def preview(req: ApplyRequest) -> Preview:
    """The plan to confirm before ``apply_catalog(req)`` with ``preview=`` set: made without
    the lock, from the cloud as it is now (read once; the apply reuses what it saw)."""
    rules = req.rules or rules_of(req)  # read online even without a refresh, as the apply would
    result = make_plan(req.catalog_source, req.state_path, profile=req.catalog_profile,
                       strict=req.strict, endpoint=req.endpoint,
                       api=req.api if req.refresh else None, project_id=req.project_id,
                       clock=req.clock, rules=rules, keep=False,  # the apply keeps
                       only=req.saved.only if req.saved else req.only,
                       key=req.target_key, place=req.target_name,
                       must_match=req.target_key is None, drift=_policy(req),
                       loaded=req.loaded)
    shown, report = result.plan, result.report
    if req.refresh_only:  # what a refresh-only apply does: adopt and take in, nothing more
        shown = shown.model_copy(update={"changes": tuple(
            c for c in shown.changes if c.action == "adopt" or c.reason == "changed_remotely")})
        report = report.model_copy(update={"changes": shown.changes,
                                           "summary": shown.summary()})
    revision = result.state_revision
    if req.target_key is not None:  # one target of several: its own rows
        reader = open_readonly(req.state_path, clock=req.clock)
        try:
            revision = target_revision(reader, req.target_key)
        finally:
            if reader is not None:
                reader.close()
    return Preview(shown, result.observed, revision, result.catalog.digest, rules, report)


def target_revision(store: StateStore | None, target: str) -> int:
    """For one target of several, what the preview check compares instead of the store's
    revision (which the other targets' runs move as they write): a digest of the target's
    own rows, its records and pending creates (docs/architecture.md §13)."""
    h = hashlib.sha256()
    if store is not None:
        for name, image_id, digest in identities(store.records(target, full=False)):
            h.update(f"{name}\0{image_id}\0{digest}\n".encode())
        for entry in store.pending(target):
            h.update(f"{entry.nonce}\n".encode())
    return int.from_bytes(h.digest()[:4], "big")


def identities(records: Mapping[str, Record] | RecordRows) -> Iterator[tuple[str, str, str]]:
    """(name, image id, spec digest) of every record, by name: straight from light rows (a
    target of 100,000 images builds no model), or from the records a store gave in full."""
    if isinstance(records, RecordRows):
        return records.identities()
    return ((name, r.image_id, r.spec_digest) for name, r in sorted(records.items()))


def apply_catalog(req: ApplyRequest) -> ApplyResult:
    """Create (and adopt) what the catalog has and the state lacks, under the state lock.

    Pending creates of earlier runs are resolved first and the plan is made from the state
    as it is then. A saved plan is checked against the world before anything is written,
    and then applied once.
    """
    saved = req.saved
    if saved is not None and normalize_endpoint(req.endpoint) != saved.target:
        raise PlanFileError(f"the plan was made for {saved.target}, not {req.endpoint}")
    target = req.target_key or normalize_endpoint(req.endpoint)
    # The server's rules first (read now, or by the preview; kept once the work is done):
    # the catalog is checked against what this server accepts.
    rules = req.preview.rules if req.preview else req.rules or rules_of(req)
    with bulk_build():
        catalog = req.loaded if req.loaded is not None else load_catalog(
            req.catalog_source, rules.profile, strict=req.strict)
        if req.target_name is not None:  # one target of several: the images placed there
            catalog = catalog.for_target(req.target_name)
    if req.store is not None:  # shared by several targets, and closed by their run
        return _apply_locked(req, req.store, catalog, target, rules)
    prechecked = _precheck_without_state(req, catalog, target)
    store = open_for_write(req.state_path, LockRequest(target, "apply", req.lock_timeout_s),
                           clock=req.clock)
    try:
        return _apply_locked(req, store, catalog, target, rules, prechecked)
    finally:
        store.close()


def rules_of(req: ApplyRequest) -> RunProfile:
    """The server's rules the apply checks its catalog with (read online: ``req.api``)."""
    return run_profile(req.catalog_profile, None,
                       req.target_key or normalize_endpoint(req.endpoint),
                       api=req.api, state_path=req.state_path, allow=req.allow,
                       clock=req.clock)


def _precheck_without_state(req: ApplyRequest, catalog: Catalog,
                            target: str) -> Observed | None:
    """A saved plan and no state file yet: check the plan against the empty state the apply
    would create, so a refused plan leaves no file behind. The check under the lock still
    runs (with the cloud as seen here): a state file created meanwhile has moved on."""
    if req.saved is None or req.preview is not None or is_url(req.state_path) or \
            Path(req.state_path).exists():
        return None
    empty = SqliteStore.empty(req.state_path)
    try:
        return _check_saved(req, empty, catalog, target, None)[1]
    finally:
        empty.close()


def _apply_locked(req: ApplyRequest, store: StateStore, catalog: Catalog,
                  target: str, rules: RunProfile,
                  prechecked: Observed | None = None) -> ApplyResult:
    t0 = req.clock.monotonic()
    chosen: set[tuple[str, str]] | None = None
    observed: Observed | None = prechecked
    if req.preview is not None:
        observed = _check_preview(req.preview, store, catalog, req.target_key)
    if req.saved is not None:
        # The cloud is read once: what the check saw is what the plan below works from.
        chosen, observed = _check_saved(req, store, catalog, target, observed)
    run = RunState(new_run_id(req.clock), req.clock)
    req.on_run(run)
    store.start_run(run.run_id, target=target, profile=catalog.profile,
                    catalog_digest=catalog.digest, tool_version=__version__,
                    started_at=iso(req.clock.now()))
    log.info("run %s started at %s", run.run_id, target,
             extra={"event": "run_start", "run_id": run.run_id, "target": target})
    if req.saved is not None:
        store.mark_plan_applied(req.saved.plan_id, run.run_id)
    settle_s, why = settle_time(req.settle_s, req.request_timeout_s)
    if why:
        log.warning(why, extra={"event": "settle_time_raised"})
    creator = Creator(store, req.api, target, run, parallelism=req.parallelism,
                      retry=req.retry, settle_s=settle_s, recovery_settle_s=req.settle_s,
                      on_outcome=req.on_outcome, adaptive=req.adaptive,
                      client_ids=catalog.profile == "glance")  # IMS takes no id (README)
    # One server, one limit: updates go on from what the creates found the target takes.
    updater = Updater(store, req.api, target, run, catalog.profile,
                      parallelism=req.parallelism, retry=req.retry, on_outcome=req.on_outcome,
                      shared_limit=creator.limit)
    outcomes: list[Outcome] = []
    taken_in: list[str] = []
    summary: dict[str, int] = {}
    result: Plan | None = None
    try:
        outcomes.extend(creator.recover())
        if not run.stopped:
            outcomes.extend(updater.recover())
        if not run.stopped:
            records = store.records(target)
            if req.refresh and observed is None:
                try:
                    observed = observe(req.api, catalog.profile, records.values(),
                                       req.project_id)
                except AuthError as exc:
                    # Nothing can be sent either; the report lists what was not done.
                    run.stop(f"authentication failed: {exc.message}")
            pending = {p.name: p.nonce for p in store.pending(target)}
            with bulk_build():
                result = select(plan(catalog, records, target=target, pending=pending,
                                     observed=observed, drift=_policy(req)),
                                req.saved.only if req.saved else req.only,
                                # one target of several: checked over all (targets.py)
                                must_match=req.target_key is None)
            summary = result.summary()
            req.on_plan(result)
            todo = [c for c in result.changes if chosen is None or (c.name, c.action) in chosen]
            outcomes.extend(creator.adopt(todo))
            if req.refresh_only:
                taken_in = creator.take_in(todo, records)
            else:
                outcomes.extend(creator.create_all([c for c in todo if c.action == "create"]))
                outcomes.extend(updater.update_all([c for c in todo if c.action == "update"],
                                                   records))
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: what was recorded is counted and reported, and the caller says
        # how to finish; the creates in flight have finished and are recorded.
        seen = {id(o) for o in outcomes}
        outcomes += [o for o in creator.delivered + updater.delivered if id(o) not in seen]
        _finish(store, run.run_id, summary, outcomes, RunOutcome.INTERRUPTED, "interrupted")
        return _result(req, catalog, target, run, result, summary, outcomes, t0,
                       rules.notes, interrupted=True)
    except Exception as exc:
        _finish(store, run.run_id, summary, outcomes, RunOutcome.FAILED, str(exc))
        raise
    if run.reason == INTERRUPTED:  # stopped from outside: the run of several targets
        _finish(store, run.run_id, summary, outcomes, RunOutcome.INTERRUPTED, INTERRUPTED)
        return _result(req, catalog, target, run, result, summary, outcomes, t0,
                       rules.notes, interrupted=True)
    counts = _counts(outcomes)
    # Kept once the work is done: pending creates are resolved first, and a refused saved
    # plan or preview (which raise above) writes nothing.
    notes = kept_notes(rules, target, req.state_path, store)
    outcome = verdict(done=counts["created"] + counts["adopted"] + counts["updated"],
                      failed=counts["failed"],
                      blocked=summary.get("blocked", 0), aborted=run.reason is not None)
    _finish(store, run.run_id, summary, outcomes, outcome, run.reason)
    return _result(req, catalog, target, run, result, summary, outcomes, t0,
                   (*notes, *taken_in))


def _policy(req: ApplyRequest) -> DriftPolicy:
    """``--refresh-only`` records what the cloud shows and changes nothing: drift is reported,
    so an image changed out of band is taken in rather than changed back."""
    return "report" if req.refresh_only else req.drift


def _result(req: ApplyRequest, catalog: Catalog, target: str, run: RunState,
            result: Plan | None, summary: dict[str, int], outcomes: list[Outcome], t0: float,
            notes: tuple[str, ...] = (), *, interrupted: bool = False) -> ApplyResult:
    counts = _counts(outcomes)
    reason = "interrupted" if interrupted else run.reason
    report = RunReport.model_construct(
        format_version=1, mode="apply", dry_run=False, generated_at=iso(req.clock.now()),
        tool_version=__version__, catalog=catalog.directory, target=target,
        profile=catalog.profile, catalog_digest=catalog.digest,
        summary={**(summary or dict.fromkeys(ACTIONS, 0)), **counts},
        changes=result.changes if result else (),
        outcomes=tuple(sorted(outcomes, key=lambda o: o.name)),
        warnings=(*notes, *(("run interrupted: run `reconcile apply` again to finish",)
                            if interrupted else (f"run aborted: {run.reason}",) if run.reason
                            else ())),
        duration_s=req.clock.monotonic() - t0, run_id=run.run_id,
        auth_refreshes=req.refreshes(), refreshed=req.refresh or req.saved is not None,
        state=str(req.state_path), plan_id=req.saved.plan_id if req.saved else None,
    )
    return ApplyResult(report, counts["failed"] + counts["skipped"], summary.get("blocked", 0),
                       reason, interrupted=interrupted)


def _check_preview(preview: Preview, store: StateStore, catalog: Catalog,
                   target_key: str | None = None) -> Observed | None:
    """Refuse if the state file or the catalog changed since the preview was made (another
    apply, import or forget ran in between); returns the cloud as the preview saw it.
    ``target_key``: one target of several, whose own rows are compared."""
    now = store.revision() if target_key is None else target_revision(store, target_key)
    reasons = planfile.moved_since(
        catalog=catalog.directory, catalog_then=preview.catalog_digest,
        catalog_now=catalog.digest, revision_then=preview.state_revision,
        revision_now=now, event="the plan was shown")
    if reasons:
        raise PlanFileError("the plan you confirmed is stale; nothing was done. Run apply "
                            "again to see the new plan.\n" + _listed(reasons))
    return preview.observed


_MAX_REASONS = 20


def _listed(reasons: list[str]) -> str:
    shown = [f"  - {r}" for r in reasons[:_MAX_REASONS]]
    if len(reasons) > _MAX_REASONS:
        shown.append(f"  … and {len(reasons) - _MAX_REASONS} more")
    return "\n".join(shown)


def _check_saved(req: ApplyRequest, store: StateStore, catalog: Catalog, target: str,
                 seen: Observed | None) -> tuple[set[tuple[str, str]], Observed | None]:
    """Refuse a saved plan that was applied already or that the world has moved past.

    Runs before anything is written. ``seen``: the cloud as the confirmed preview saw it
    (then it is not read again). Returns the (name, action) pairs to carry out, and the
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
    observed = seen
    if observed is None and req.refresh:
        observed = observe(req.api, catalog.profile, records.values(), req.project_id)
    reasons = planfile.stale_reasons(saved, catalog_digest=catalog.digest,
                                     state_revision=store.revision(), observed=observed)
    if not reasons:
        pending = {p.name: p.nonce for p in store.pending(target)}
        fresh = select(plan(catalog, records, target=target, pending=pending,
                            observed=observed, drift=req.drift), saved.only)
        now = {(c.name, c.action) for c in fresh.changes if c.action in ("create", "adopt")}
        then = {(c.name, c.action) for c in saved.changes}
        reasons.extend(f"{name}: the plan says {action}, now it would not"
                       for name, action in sorted(then - now))
        reasons.extend(f"{name}: now it would {action}, the plan does not say so"
                       for name, action in sorted(now - then))
    if reasons:
        raise PlanFileError("the saved plan is stale; nothing was done. Make a new plan.\n"
                            + _listed(reasons))
    return {(c.name, c.action) for c in saved.changes}, observed


def _counts(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {"created": 0, "adopted": 0, "updated": 0, "failed": 0, "skipped": 0}
    for o in outcomes:
        counts[o.result] += 1
    return counts


def _finish(store: StateStore, run_id: str, summary: dict[str, int], outcomes: list[Outcome],
            outcome: RunOutcome, error: str | None) -> None:
    counts = _counts(outcomes)
    store.finish_run(run_id, summary=summary, created=counts["created"],
                     adopted=counts["adopted"], updated=counts["updated"],
                     failed=counts["failed"] + counts["skipped"],
                     outcome=outcome, error=error)
    log.info("run %s ended: %s", run_id, outcome.value,
             extra={"event": "run_end", "run_id": run_id, "outcome": outcome.value,
                    "counts": counts})
