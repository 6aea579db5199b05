"""One apply over several targets of the catalog, side by side (docs/architecture.md §13).

Each target is connected to with its own credentials, then applied by ``apply_catalog`` as
a run of its own: its own catalog (the images placed there), state rows and lock key
(endpoint and project), journal and run row. Up to ``target_parallelism`` targets run at
once; the clients of all of them share one bound on requests in flight, which the caller's
``connect`` hands to each session. A target that cannot be connected to, or whose apply
fails, fails alone: its part of the report says why, and the others finish.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.apply.pool import STOP_GRACE_S
from reconciler.apply.request import ApplyRequest
from reconciler.apply.run import INTERRUPTED, apply_catalog, preview, rules_of
from reconciler.apply.runstate import RunState
from reconciler.auth import ApiSession
from reconciler.catalog import load_catalogs
from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.errors import CatalogError, ReconcileError
from reconciler.models import Catalog, RunReport, Target, target_key
from reconciler.operations import (
    Connect,
    TargetPart,
    catalog_info,
    check_distinct,
    check_only,
    check_only_names,
    enter,
    targets_report,
)
from reconciler.schemacache import RunProfile
from reconciler.state import LockRequest, StateStore, is_url, open_for_write

#: Builds one target's ApplyRequest from its session (endpoint, client, project).
MakeRequest = Callable[[Target, ApiSession], ApplyRequest]
#: The error of a target that a Ctrl-C (or SIGTERM) kept from starting.
NOT_STARTED = "not started: the run was interrupted"


@dataclass
class TargetsApply:
    """An apply of several targets: what to apply where, and how."""

    catalog_dir: str | Path
    targets: Sequence[Target]
    state_path: str | Path
    connect: Connect
    make_request: MakeRequest
    strict: bool = False
    target_parallelism: int = 4
    lock_timeout_s: float = 0.0
    clock: Clock = SYSTEM_CLOCK
    only: tuple[str, ...] = ()
    #: Shown the plan of every target before anything is written; False cancels.
    confirm: Callable[[RunReport], bool] | None = None


@dataclass(frozen=True)
class TargetsResult:
    report: RunReport
    parts: list[TargetPart]
    cancelled: bool = False
    interrupted: bool = False

    @property
    def failed(self) -> list[TargetPart]:
        """Targets that failed (not connected, not applied) or left images not done."""
        return [p for p in self.parts if p.error or p.failed]


@dataclass
class _Runs:
    """The runs started so far, so that Ctrl-C can stop every one of them."""

    runs: list[RunState] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, run: RunState) -> None:
        with self.lock:
            self.runs.append(run)

    def stop(self) -> None:
        with self.lock:
            for run in self.runs:
                run.stop(INTERRUPTED)


def apply_targets(job: TargetsApply) -> TargetsResult:
    """Connect to every target, make sure no two are the same place, then apply each."""
    t0 = job.clock.monotonic()
    runs = _Runs()
    requests: dict[str, ApplyRequest] = {}
    with contextlib.ExitStack() as stack:
        lock = threading.Lock()

        def connect(part: TargetPart) -> TargetPart:
            target = part.target
            session = enter(stack, lock, job.connect(target))
            request = job.make_request(target, session)
            request.target_name = target.name
            request.target_key = target_key(session.endpoint, target.project)
            request.on_run = runs.add
            requests[target.name] = request
            return TargetPart(target, session.endpoint)

        parts, _ = _side_by_side(job, [TargetPart(t) for t in job.targets], connect, runs)
        parts = check_distinct(parts, {n: r.target_key or "" for n, r in requests.items()})
        if job.confirm is not None:
            parts, _ = _ready(job, parts, requests, runs)
            parts, _ = _side_by_side(job, parts, lambda p: _preview(requests[p.target.name],
                                                                    p), runs)
            check_only(parts, job.only)
            shown = targets_report(catalog_info(parts, job.catalog_dir), parts, mode="apply",
                                   clock=job.clock,
                                   state=str(job.state_path), refreshed=True, dry_run=True)
            if not job.confirm(shown):
                return TargetsResult(shown, parts, cancelled=True)
        store = _shared_store(job)
        if store is not None:
            stack.callback(store.close)
            for request in requests.values():
                request.store = store

        def abort() -> None:
            for request in requests.values():
                request.api.abort()

        # Loaded again once confirmed, as one target's apply does: a catalog changed while
        # the question was asked is refused (the preview's digest), never applied unseen.
        parts, interrupted = _ready(job, parts, requests, runs)
        if not interrupted:
            parts, interrupted = _side_by_side(
                job, parts, lambda p: _apply(requests[p.target.name], p), runs, abort=abort)
    report = targets_report(catalog_info(parts, job.catalog_dir), parts, mode="apply",
                            clock=job.clock,
                            state=str(job.state_path), refreshed=True,
                            duration_s=job.clock.monotonic() - t0)
    if interrupted:
        report = report.model_copy(update={"warnings": (
            *report.warnings, "run interrupted: run `reconcile apply` again to finish")})
    return TargetsResult(report, parts, interrupted=interrupted)


def _ready(job: TargetsApply, parts: Sequence[TargetPart], requests: dict[str, ApplyRequest],
           runs: _Runs) -> tuple[list[TargetPart], bool]:
    """Each target's rules (read side by side, where no preview read them) and catalog,
    loaded here once per distinct set of rules while no target's thread runs (a large
    catalog forks its workers from this thread), before the next step starts them. A target
    whose catalog is invalid fails with the error its own load would give. ``--only`` is
    checked against what was loaded (a typo fails here, before anything is sent). Ctrl-C:
    the targets are not started."""
    def rules(part: TargetPart) -> TargetPart:
        request = requests[part.target.name]
        if request.rules is None:
            request.rules = request.preview.rules if request.preview else rules_of(request)
        return part

    parts, interrupted = _side_by_side(job, parts, rules, runs)
    ready = [p.target.name for p in parts if p.error is None]
    catalogs: list[Catalog | CatalogError] = []
    try:
        if not interrupted:
            catalogs = load_catalogs(job.catalog_dir, [_rules_of(requests[n]).profile
                                                       for n in ready], strict=job.strict)
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:  # nothing more starts
        return [TargetPart(p.target, p.endpoint, error=NOT_STARTED) if p.error is None else p
                for p in parts], True
    check_only_names(catalogs, job.catalog_dir, job.state_path, job.only)  # before any is sent
    loaded = dict(zip(ready, catalogs, strict=True))
    out = []
    for part in parts:
        catalog = loaded.get(part.target.name)
        if isinstance(catalog, CatalogError):
            part = TargetPart(part.target, part.endpoint, error=str(catalog))
        elif catalog is not None:
            requests[part.target.name].loaded = catalog
        out.append(part)
    return out, False


def _rules_of(request: ApplyRequest) -> RunProfile:
    assert request.rules is not None  # read by _ready
    return request.rules


def _preview(request: ApplyRequest, part: TargetPart) -> TargetPart:
    shown = preview(request)
    request.preview = shown  # what the locked apply checks and works from
    return TargetPart(part.target, part.endpoint, report=shown.report)


def _apply(request: ApplyRequest, part: TargetPart) -> TargetPart:
    result = apply_catalog(request)
    aborted = f"run aborted: {result.aborted}" if result.aborted and \
        not result.interrupted else None
    return TargetPart(part.target, part.endpoint, report=result.report, error=aborted,
                      failed=bool(result.failed or result.blocked or result.interrupted))


def _shared_store(job: TargetsApply) -> StateStore | None:
    """SQLite locks the whole file, once, for every target (each run still writes only its
    own rows); PostgreSQL locks per target, so each target's apply opens its own session."""
    if is_url(job.state_path):
        return None
    return open_for_write(job.state_path, LockRequest("", "apply", job.lock_timeout_s),
                          clock=job.clock)


def _side_by_side(job: TargetsApply, parts: Sequence[TargetPart],
                  work: Callable[[TargetPart], TargetPart], runs: _Runs, *,
                  abort: Callable[[], None] = lambda: None,
                  ) -> tuple[list[TargetPart], bool]:
    """``work`` for every part that has not failed yet, ``target_parallelism`` at once; a
    ReconcileError fails that target alone. Ctrl-C (or SIGTERM) stops every run: what is in
    flight finishes and is recorded (cut after STOP_GRACE_S), targets not started yet are
    not; returns whether that happened."""
    def guarded(part: TargetPart) -> TargetPart:
        try:
            return work(part)
        except ReconcileError as exc:
            return TargetPart(part.target, part.endpoint, error=str(exc))

    out = list(parts)
    pool = ThreadPoolExecutor(max_workers=max(1, job.target_parallelism),
                              thread_name_prefix="target")
    futures: dict[int, Future[TargetPart]] = {
        i: pool.submit(guarded, p) for i, p in enumerate(parts) if p.error is None}
    interrupted = False
    try:
        wait(futures.values())
    except KeyboardInterrupt:
        interrupted = True
        for future in futures.values():
            future.cancel()  # targets not started: not applied at all
        runs.stop()
        _, late = wait(futures.values(), timeout=STOP_GRACE_S)  # real time: a person waits
        if late:
            abort()
        wait(futures.values())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for i, future in futures.items():
        out[i] = TargetPart(parts[i].target, parts[i].endpoint, error=NOT_STARTED) \
            if future.cancelled() else future.result()
    return out, interrupted
