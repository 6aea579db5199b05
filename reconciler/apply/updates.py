"""Where an update is sent, recorded and recovered (docs/architecture.md §6.10).

An update is journaled like a create: the entry (kind ``update``, the image id, the PATCH
document and the request to record) is committed before the PATCH is sent; the answer
replaces the record's response and closes the entry in one transaction. After a failure,
``decisions.on_update_error`` says what to do; an update whose fate is unknown is resolved
by reading the image (``decisions.resolve_pending_update``), here or in the next run, and the
document is computed again from what the image shows: a PATCH is never re-sent blindly.

Every PATCH and every read of an image goes through the target's in-flight limit
(``apply/limit.py``), the one its creates use: one server, one limit (docs/architecture.md
§6.6). The entry is written once a slot is free, right before the first PATCH.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any, Protocol

from reconciler import patch
from reconciler.apply.creates import workers
from reconciler.apply.decisions import (
    UpdateFate,
    UpdateStep,
    on_update_error,
    resolve_pending_update,
)
from reconciler.apply.limit import ConcurrencyLimit
from reconciler.apply.pool import run_bounded
from reconciler.apply.runstate import RunState
from reconciler.client import RetryPolicy
from reconciler.errors import ApiError
from reconciler.models import (
    GONE_STATUSES,
    MARKER_PROPERTY,
    Change,
    ImageSpec,
    Outcome,
    Record,
    iso,
)
from reconciler.state import StateStore

log = logging.getLogger("reconciler.apply")

_UNKNOWN = ("outcome unknown (kept as pending; the next apply reads the image before "
            "updating it again): ")


class UpdateApi(Protocol):
    """The part of ``ImageClient`` updates need."""

    def update_image(self, image_id: str, patch: Sequence[Mapping[str, Any]], *,
                     api: str = "images") -> dict[str, Any]: ...

    def get_image(self, image_id: str) -> dict[str, Any] | None: ...

    def abort(self) -> None: ...


@dataclass
class _Work:
    """One image's update as it goes: the document may be recomputed on the way."""

    name: str
    spec: ImageSpec
    old: Record
    ops: tuple[dict[str, Any], ...]
    api: str
    request: dict[str, Any]  # what the record will say was sent (the marker kept)
    started: float
    attempt: int = 0
    journaled: bool = False
    replanned: bool = False
    as_add: bool = False


class _Done(Exception):
    """An update's outcome is known (carries it out of the retry loop)."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


@dataclass
class Updater:
    """Updates images in place for one target, recording each answer as soon as it comes."""

    store: StateStore
    api: UpdateApi
    target: str
    run: RunState
    profile: str
    parallelism: int = 10  # the ceiling of the in-flight limit
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_outcome: Callable[[Outcome], None] = lambda outcome: None
    rng: random.Random = field(default_factory=random.Random)
    delivered: list[Outcome] = field(default_factory=list)
    adaptive: bool = True  # False: always ``parallelism`` in flight (--concurrency fixed)
    #: The target's limit, shared with its creates; None: one of its own, made from
    #: ``parallelism`` and ``adaptive``.
    shared_limit: InitVar[ConcurrencyLimit | None] = None
    limit: ConcurrencyLimit = field(init=False)

    def __post_init__(self, shared_limit: ConcurrencyLimit | None) -> None:
        self.limit = shared_limit if shared_limit is not None else ConcurrencyLimit(
            self.parallelism, self.run.clock.monotonic, adaptive=self.adaptive)

    # --- recovery of earlier runs ----------------------------------------------------------

    def recover(self) -> list[Outcome]:
        """Resolve the pending updates of earlier runs by reading each image."""
        outcomes = []
        clock = self.run.clock
        for entry in self.store.pending_updates(self.target):
            started = clock.monotonic()
            try:
                image = self._read(entry.image_id)
            except ApiError as exc:
                log.warning("cannot resolve the pending update of %s: %s", entry.name, exc,
                            extra={"event": "recover_failed", "image": entry.name})
                outcomes.append(self.run.failed(
                    entry.name, exc, 1, started,
                    "the pending update of an earlier run could not be resolved: ",
                    what=": update"))
                continue
            ops = tuple(entry.intent.get("patch") or ())
            live = image is not None and image.get("status") not in GONE_STATUSES
            landed = live and image is not None and patch.expected(ops, image)
            match resolve_pending_update(landed=landed):
                case UpdateFate.RECORD:
                    assert image is not None
                    old = self.store.record(self.target, entry.name)
                    request = dict(entry.intent.get("request") or {})
                    outcomes.append(self._record(entry.name, request, image, entry.nonce,
                                                 old.origin if old else "created", started,
                                                 1, ops))
                    log.info("recovered the update of %s (%s) sent by run %s", entry.name,
                             entry.image_id, entry.run_id, extra={
                                 "event": "recovered_update", "image": entry.name,
                                 "image_id": entry.image_id})
                case UpdateFate.RELEASE:
                    self.store.journal_release(entry.nonce, f"not applied (read by run "
                                               f"{self.run.run_id}); the plan recomputes it")
                    log.info("released the pending update of %s: the image does not show it",
                             entry.name, extra={"event": "recover_released",
                                                "image": entry.name})
        return outcomes

    # --- updates ---------------------------------------------------------------------------

    def update_all(self, changes: Sequence[Change],
                   records: Mapping[str, Record]) -> list[Outcome]:
        """Update every image of ``changes`` (all ``update``), as many at once as the limit
        allows (a few more workers, as for creates). On KeyboardInterrupt no new update
        starts, running ones finish and are recorded, then the interrupt propagates."""
        todo = [c for c in changes if c.spec is not None and c.name in records]
        return run_bounded(todo, lambda c: self._update_one(c, records[c.name]), run=self.run,
                           parallelism=workers(self.parallelism), deliver=self._deliver,
                           delivered=self.delivered, skipped=self.run.skipped,
                           abort=self.api.abort, prefix="reconcile-update")

    def _update_one(self, change: Change, old: Record) -> Outcome:
        clock = self.run.clock
        assert change.spec is not None
        if self.run.stopped:
            return self.run.skipped(change.name)
        request = change.spec.body()
        if MARKER_PROPERTY in old.request:
            request[MARKER_PROPERTY] = old.request[MARKER_PROPERTY]  # it stays on the image
        work = _Work(change.name, change.spec, old, change.patch, change.patch_api or "images",
                     request, clock.monotonic())
        if not work.ops:  # the cloud holds the catalog's values already: record them
            image = change.remote or old.response
            return self._record(work.name, request, image, None, old.origin, work.started, 0,
                                ())
        nonce = uuid.uuid4().hex
        try:
            while True:
                self._send(work, nonce)
        except _Done as done:
            return done.outcome

    def _send(self, work: _Work, nonce: str) -> None:
        """One PATCH and what follows from its answer; raises _Done once the outcome is
        known, returns to have the (possibly recomputed) document sent again."""
        work.attempt += 1
        image_id = work.old.image_id
        try:
            with self.limit.request() as slot:
                if not work.journaled:
                    # Once a slot is free: updates still waiting for one leave no entry
                    # behind a crash, nor does one the run stopped meanwhile.
                    if self.run.stopped:
                        raise _Done(self.run.skipped(work.name))
                    self.store.journal_open(
                        nonce=nonce, target=self.target, name=work.name,
                        run_id=self.run.run_id, kind="update", image_id=image_id,
                        request={"patch": list(work.ops), "api": work.api,
                                 "request": work.request})
                    work.journaled = True
                slot.send()
                image = self.api.update_image(image_id, work.ops, api=work.api)
        except ApiError as exc:
            error = exc
        else:
            raise _Done(self._record(work.name, work.request, image, nonce, work.old.origin,
                                     work.started, work.attempt, work.ops))
        step = on_update_error(error, replanned=work.replanned, as_add=work.as_add)
        match step:
            case UpdateStep.STOP_RUN:
                self.run.stop(f"authentication failed: {error.message}")
                raise _Done(self._release(work, nonce, error, "HTTP 401: not updated"))
            case UpdateStep.FAIL:
                raise _Done(self._release(work, nonce, error,
                                          f"HTTP {error.status}: not updated"))
            case UpdateStep.AS_ADD:
                work.as_add = True
                work.ops = patch.as_add(work.ops)
                log.info("%s: IMS says a replaced attribute is missing; sending it as add",
                         work.name, extra={"event": "update_as_add", "image": work.name})
                return
            case UpdateStep.REPLAN:
                work.replanned = True
                log.warning("%s: %s; reading the image and planning its update again",
                            work.name, error, extra={"event": "update_replan",
                                                     "image": work.name})
                self._recompute(work, nonce, error)
                return
            case UpdateStep.KEEP_PENDING:
                raise _Done(self.run.failed(work.name, error, work.attempt, work.started,
                                            _UNKNOWN, what=": update"))
            case UpdateStep.READ_BACK:
                self._recompute(work, nonce, error)
            case UpdateStep.RESEND:
                pass
        # Resent (or read back and found not applied): certainly not applied as it stands.
        if work.attempt >= self.retry.attempts or self.run.stopped:
            raise _Done(self._release(work, nonce, error, f"gave up: {error}"))
        delay = self.retry.delay(work.attempt, error.retry_after, self.rng)
        log.warning("%s: %s; updating again in %.1fs (attempt %d of %d)", work.name, error,
                    delay, work.attempt, self.retry.attempts,
                    extra={"event": "retry", "image": work.name, "status": error.status,
                           "code": error.code, "request_id": error.request_id,
                           "attempt": work.attempt, "delay_s": round(delay, 3)})
        self.run.pause(delay)
        if self.run.stopped:
            raise _Done(self._release(work, nonce, error, f"gave up: {error}"))

    def _recompute(self, work: _Work, nonce: str, error: ApiError) -> None:
        """Read the image and compute its update again: done if it shows the catalog's
        values (the PATCH landed after all), failed if a change is now impossible."""
        try:
            image = self._read(work.old.image_id)
        except ApiError:
            raise _Done(self.run.failed(work.name, error, work.attempt, work.started,
                                        _UNKNOWN, what=": update")) from None
        if image is None or image.get("status") in GONE_STATUSES:
            raise _Done(self._release(work, nonce, error, "the image is gone"))
        again = patch.compute(work.spec, work.old.request, work.old.response, image,
                              profile=self.profile)
        if again.blocked:
            raise _Done(self._release(work, nonce, error, "replace required",
                                      patch.replace_required_detail(again)))
        if not again.ops:
            raise _Done(self._record(work.name, work.request, image, nonce, work.old.origin,
                                     work.started, work.attempt, work.ops))
        work.ops, work.api = again.ops, again.api

    def _read(self, image_id: str) -> dict[str, Any] | None:
        """The image as the server shows it now: a request to the target like a PATCH."""
        with self.limit.request() as slot:
            slot.send()
            return self.api.get_image(image_id)

    # --- outcomes --------------------------------------------------------------------------

    def _deliver(self, outcome: Outcome) -> Outcome:
        self.delivered.append(outcome)
        self.on_outcome(outcome)
        return outcome

    def _record(self, name: str, request: dict[str, Any], image: dict[str, Any],
                nonce: str | None, origin: str, started: float, attempts: int,
                ops: tuple[dict[str, Any], ...]) -> Outcome:
        """The answer replaces the record's response (new ``updated_at``)."""
        record = Record.from_image(name, request, image, recorded_at=iso(self.run.clock.now()),
                                   run_id=self.run.run_id, origin=origin)
        self.store.save_record(self.target, record, nonce=nonce)
        log.info("updated %s (%s)", name, record.image_id,
                 extra={"event": "updated", "image": name, "image_id": record.image_id,
                        "status": record.status, "attempt": attempts,
                        "run_id": self.run.run_id})
        return Outcome.recorded(record, "updated", attempts=attempts, patch=ops,
                                duration_s=self.run.clock.monotonic() - started)

    def _release(self, work: _Work, nonce: str, exc: ApiError, note: str,
                 message: str | None = None) -> Outcome:
        """Certainly not applied (as it stands): close the journal entry."""
        self.store.journal_release(nonce, note)
        if message is not None:
            return Outcome.failure(work.name, "failed", message, attempts=work.attempt,
                                   duration_s=self.run.clock.monotonic() - work.started)
        return self.run.failed(work.name, exc, work.attempt, work.started, what=": update")



