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
from reconciler.apply.run import INTERRUPTED, apply_catalog, preview
from reconciler.apply.runstate import RunState
from reconciler.auth import ApiSession
from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.errors import ReconcileError
from reconciler.models import RunReport, Target, target_key
from reconciler.operations import (
    Connect,
    TargetPart,
    catalog_info,
    check_distinct,
    check_only,
    check_only_names,
    targets_report,
)
from reconciler.state import LockRequest, StateStore, is_url, open_for_write

#: Builds one target's ApplyRequest from its session (endpoint, client, project).
MakeRequest = Callable[[Target, ApiSession], ApplyRequest]


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
    check_only_names(job.catalog_dir, job.state_path, job.only)  # before anything is sent
    runs = _Runs()
    requests: dict[str, ApplyRequest] = {}
    with contextlib.ExitStack() as stack:
        lock = threading.Lock()

        def connect(part: TargetPart) -> TargetPart:
            target = part.target
            session = _enter(stack, lock, job.connect(target))
            request = job.make_request(target, session)
            request.target_name = target.name
            request.target_key = target_key(session.endpoint, target.project)
            request.on_run = runs.add
            requests[target.name] = request
            return TargetPart(target, session.endpoint)

        parts, _ = _side_by_side(job, [TargetPart(t) for t in job.targets], connect, runs)
        parts = check_distinct(parts, {n: r.target_key or "" for n, r in requests.items()})
        if job.confirm is not None:
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


def _enter(stack: contextlib.ExitStack, lock: threading.Lock,
           manager: contextlib.AbstractContextManager[ApiSession]) -> ApiSession:
    """Enter a session from a worker thread; the stack (closed by the caller) exits it."""
    session = manager.__enter__()
    with lock:
        stack.push(manager.__exit__)
    return session


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
        out[i] = TargetPart(parts[i].target, parts[i].endpoint, error="not started: the run "
                            "was interrupted") if future.cancelled() else future.result()
    return out, interrupted
