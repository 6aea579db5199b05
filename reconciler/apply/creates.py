"""Where a create is sent, recorded and recovered (docs/architecture.md §6.3).

Every create first writes a journal entry with a fresh nonce, then POSTs with the nonce as the
``reconcile_marker`` extra property; a 201 is recorded and the entry closed in one
transaction. After a failure, ``decisions.on_create_error`` says whether to look the image up
by name and marker before anything is sent again, and what to do if it is not there. An entry
is released only when the create certainly did not happen; otherwise it stays pending and the
next apply resolves it first (``recover``, decided by ``decisions.resolve_pending``). Workers
run in a bounded thread pool; the state store serialises writes.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from reconciler.apply.decisions import (
    MAX_GENERATIONS,
    IdConflict,
    IfAbsent,
    Looking,
    LookUp,
    Next,
    PendingFate,
    after_absent,
    client_image_id,
    generation_of,
    look_step,
    on_create_error,
    on_id_conflict,
    resolve_pending,
)
from reconciler.apply.limit import ConcurrencyLimit
from reconciler.apply.pool import run_bounded
from reconciler.apply.runstate import RunState
from reconciler.client import RetryPolicy
from reconciler.defaults import DEFAULT_SETTLE_S
from reconciler.errors import ApiError, AuthError
from reconciler.models import (
    GONE_STATUSES,
    MARKER_PROPERTY,
    Change,
    ImageSpec,
    Outcome,
    OutcomeResult,
    Record,
    iso,
    parse_iso,
)
from reconciler.planner import adoption_request
from reconciler.state import StateStore

log = logging.getLogger("reconciler.apply")

_UNKNOWN = ("outcome unknown (kept as pending; the next apply looks the image up before "
            "creating it again): ")


def workers(parallelism: int) -> int:
    """Worker threads for ``parallelism`` requests in flight: a few more than that, so that
    while a create's answer is being recorded (its slot already given back) the next create
    is sent; the extra workers wait for a slot before they journal anything."""
    return parallelism + parallelism // 4 + 1


class ImageApi(Protocol):
    """The part of ``ImageClient`` the protocol needs."""

    def create_image(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def find_images(self, name: str, **props: str) -> list[dict[str, Any]]: ...

    def get_image(self, image_id: str) -> dict[str, Any] | None: ...

    def abort(self) -> None:
        """Fail every request in flight now, and every later one."""
        ...


@dataclass
class Creator:
    """Creates, adopts and recovers images for one target, recording each as soon as it
    exists."""

    store: StateStore
    api: ImageApi
    target: str
    run: RunState
    parallelism: int = 10  # the ceiling of the in-flight limit
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    settle_s: float = DEFAULT_SETTLE_S  # how long this run looks for its own lost creates
    #: How old an earlier run's pending entry must be to be released; None: ``settle_s``.
    #: Those requests are no longer in flight from here, so this is the time as given.
    recovery_settle_s: float | None = None
    on_outcome: Callable[[Outcome], None] = lambda outcome: None
    rng: random.Random = field(default_factory=random.Random)
    #: Send our own deterministic image id with each create (Glance takes one; IMS does not).
    client_ids: bool = False
    #: Every outcome so far, also those of a phase an interrupt cut short (for its report).
    delivered: list[Outcome] = field(default_factory=list)
    adaptive: bool = True  # False: always ``parallelism`` in flight (--concurrency fixed)
    limit: ConcurrencyLimit = field(init=False)

    def __post_init__(self) -> None:
        # One limit per target: a run applies to one target, so one per Creator.
        self.limit = ConcurrencyLimit(self.parallelism, self.run.clock.monotonic,
                                      adaptive=self.adaptive)

    # --- recovery of earlier runs ----------------------------------------------------------

    def recover(self) -> list[Outcome]:
        """Resolve pending journal entries: adopt what was created, release what was not."""
        outcomes = []
        clock = self.run.clock
        for entry in self.store.pending(self.target):
            started = clock.monotonic()
            try:
                found = self._find(entry.name, entry.nonce)
            except ApiError as exc:
                log.warning("cannot resolve the pending create of %s: %s", entry.name, exc,
                            extra={"event": "recover_failed", "image": entry.name})
                outcomes.append(self.run.failed(
                    entry.name, exc, 1, started,
                    "the pending create of an earlier run could not be resolved: "))
                if isinstance(exc, AuthError):
                    self.run.stop(f"authentication failed: {exc.message}")
                    break
                continue
            age = (clock.now() - parse_iso(entry.started_at)).total_seconds()
            settle = self.settle_s if self.recovery_settle_s is None else self.recovery_settle_s
            match resolve_pending(found=found is not None, age_s=age, settle_s=settle):
                case PendingFate.WAIT:
                    log.warning("%s: the create sent %ds ago by run %s may still land; it is "
                                "left pending (blocked) until %ds after it was sent",
                                entry.name, age, entry.run_id, settle,
                                extra={"event": "recover_waiting", "image": entry.name})
                case PendingFate.RELEASE:
                    self.store.journal_release(entry.nonce, f"not found by run {self.run.run_id}")
                    log.info("released pending create of %s: not on the server", entry.name,
                             extra={"event": "recover_released", "image": entry.name})
                case PendingFate.ADOPT:
                    assert found is not None
                    request = self.store.pending_request(entry.nonce)
                    outcomes.append(self._record(entry.name, request, found, entry.nonce,
                                                 started, 1, result="adopted"))
                    log.info("recovered %s (%s) created by run %s", entry.name, found["id"],
                             entry.run_id, extra={"event": "recovered", "image": entry.name,
                                                  "image_id": found["id"]})
        return outcomes

    # --- adoption --------------------------------------------------------------------------

    def adopt(self, changes: Iterable[Change]) -> list[Outcome]:
        """Record the images the plan found in the cloud carrying our marker."""
        outcomes = []
        for change in changes:
            if change.action != "adopt" or change.remote is None or change.spec is None:
                continue
            record = Record.from_image(change.name, adoption_request(change.spec, change.remote),
                                       change.remote, recorded_at=iso(self.run.clock.now()),
                                       run_id=self.run.run_id, origin="adopted")
            self.store.save_record(self.target, record)
            log.info("adopted %s (%s)", change.name, record.image_id,
                     extra={"event": "adopted", "image": change.name,
                            "image_id": record.image_id, "run_id": self.run.run_id})
            outcomes.append(self._deliver(Outcome.recorded(record, "adopted")))
        return outcomes

    def take_in(self, changes: Iterable[Change], records: Mapping[str, Record]) -> list[str]:
        """``--refresh-only``: record the cloud's current version of each image changed out
        of band (the drift is then gone); returns what was taken in, as report lines."""
        lines = []
        for change in changes:
            old = records.get(change.name)
            if change.reason != "changed_remotely" or change.remote is None or old is None:
                continue
            record = Record.from_image(change.name, old.request, change.remote,
                                       recorded_at=iso(self.run.clock.now()),
                                       run_id=self.run.run_id, origin=old.origin)
            self.store.save_record(self.target, record)
            fields = ", ".join(d.field for d in change.diff)
            log.info("recorded the cloud's version of %s (%s)", change.name, fields,
                     extra={"event": "refreshed", "image": change.name,
                            "image_id": record.image_id, "run_id": self.run.run_id})
            lines.append(f"recorded the cloud's current {change.name} (changed outside "
                         f"reconcile: {fields})")
        return lines

    # --- creates ---------------------------------------------------------------------------

    def create_all(self, changes: Sequence[Change]) -> list[Outcome]:
        """Create every image of ``changes`` (all ``create``), at most ``parallelism`` at once.

        On KeyboardInterrupt no new create starts, running ones finish and are recorded,
        then the interrupt propagates.
        """
        return run_bounded([c for c in changes if c.spec is not None], self._create_change,
                           run=self.run, parallelism=workers(self.parallelism),
                           deliver=self._deliver,
                           delivered=self.delivered, skipped=self.run.skipped,
                           abort=self.api.abort, prefix="reconcile")

    def _create_change(self, change: Change) -> Outcome:
        assert change.spec is not None
        return self._create_one(change.spec)

    def _create_one(self, spec: ImageSpec) -> Outcome:
        clock = self.run.clock
        started = clock.monotonic()
        if self.run.stopped:
            return self.run.skipped(spec.name)
        nonce = uuid.uuid4().hex
        body = {**spec.body(), MARKER_PROPERTY: nonce}
        generation = self._first_generation(spec.name) if self.client_ids else None
        if generation is not None:
            body["id"] = client_image_id(self.target, spec.name, generation)
        opened = False
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.limit.request() as slot:
                    if not opened:
                        # Journaled once a slot is free, right before the first POST: entries
                        # of creates still waiting would block their names after a crash.
                        if self.run.stopped:
                            return self.run.skipped(spec.name)
                        self.store.journal_open(nonce=nonce, target=self.target,
                                                name=spec.name, run_id=self.run.run_id,
                                                request=body)
                        opened = True
                    sent_at = slot.send()
                    image = self.api.create_image(body)
            except ApiError as exc:
                error = exc
            else:
                return self._record(spec.name, body, image, nonce, started, attempt,
                                    digest=spec.digest)
            if generation is not None and error.status == 409:
                with self.limit.request() as slot:
                    slot.send()
                    existing = self.api.get_image(str(body["id"]))
                match on_id_conflict(existing, spec.name):
                    case IdConflict.ADOPT:
                        assert existing is not None
                        log.info("%s: created meanwhile by another run (%s); adopted",
                                 spec.name, existing["id"], extra={
                                     "event": "adopted_by_id", "image": spec.name,
                                     "image_id": existing["id"]})
                        return self._record(spec.name, adoption_request(spec, existing),
                                            existing, nonce, started, attempt,
                                            result="adopted", origin="adopted")
                    case IdConflict.NEXT_GENERATION if generation + 1 < MAX_GENERATIONS:
                        generation += 1
                        body["id"] = client_image_id(self.target, spec.name, generation)
                        attempt -= 1  # a reserved id is no failed attempt
                        continue
                    case _:
                        holder = (existing or {}).get("name")
                        return self._release(spec.name, nonce, error, attempt, started,
                                             f"HTTP 409: id {body['id']} is taken",
                                             f"its id {body['id']} is held by the image "
                                             f"{holder!r}; rename or delete that image: ")
            decision = on_create_error(error)
            if decision.stops_run:
                self.run.stop(f"authentication failed: {error.message}")
            if decision.look_up is not LookUp.NO:
                try:
                    found = self._look(spec.name, nonce, decision.look_up, sent_at)
                except (ApiError, _Unsettled):
                    return self._keep_pending(spec.name, error, attempt, started)
                if found is not None:
                    log.info("found %s after a lost answer; not sending it again", spec.name,
                             extra={"event": "found_after_loss", "image": spec.name,
                                    "image_id": found["id"]})
                    return self._record(spec.name, body, found, nonce, started, attempt,
                                        digest=spec.digest)
            step = after_absent(decision, attempt=attempt, attempts=self.retry.attempts,
                                stopped=self.run.stopped)
            if step is Next.KEEP_PENDING:
                return self._keep_pending(spec.name, error, attempt, started)
            if step is Next.RELEASE:
                rejected = decision.if_absent is IfAbsent.RELEASE
                return self._release(spec.name, nonce, error, attempt, started,
                                     f"HTTP {error.status}: not created" if rejected
                                     else f"gave up: {error}")
            delay = self.retry.delay(attempt, error.retry_after, self.rng)
            log.warning("%s: %s; retrying in %.1fs (attempt %d of %d)", spec.name, error,
                        delay, attempt, self.retry.attempts,
                        extra={"event": "retry", "image": spec.name, "status": error.status,
                               "code": error.code, "request_id": error.request_id,
                               "attempt": attempt, "delay_s": round(delay, 3)})
            self.run.pause(delay)
            if self.run.stopped:  # absent, and not sent again: certainly not created
                return self._release(spec.name, nonce, error, attempt, started,
                                     f"gave up: {error}")

    def _first_generation(self, name: str) -> int:
        """0, or one past the generation of the recorded image (deleted out of band, since
        the plan creates it again): Glance keeps a deleted image's id reserved."""
        record = self.store.record(self.target, name)
        used = generation_of(self.target, name, record.image_id) if record else None
        return 0 if used is None else used + 1

    def _look(self, name: str, nonce: str, look_up: LookUp,
              sent_at: float) -> dict[str, Any] | None:
        """After a failed create: the image, if it was created after all; None if it was not.

        Raises _Unsettled if the run stops before that is known.
        """
        clock = self.run.clock
        looks = 0
        while True:
            found = self._find(name, nonce)
            since_send = clock.monotonic() - sent_at
            match look_step(look_up, found=found is not None, since_send_s=since_send,
                            settle_s=self.settle_s, stopped=self.run.stopped):
                case Looking.FOUND | Looking.ABSENT:
                    return found
                case Looking.UNSETTLED:
                    raise _Unsettled
                case Looking.LOOK_AGAIN:
                    looks += 1
                    self.run.pause(min(self.settle_s - since_send,
                                       self.retry.delay(looks, None, self.rng)))

    def _find(self, name: str, nonce: str) -> dict[str, Any] | None:
        """The live image carrying this nonce, if any (the oldest, should there be two).

        Busy answers to the look-up are retried by the client (reads are safe to repeat).
        """
        with self.limit.request() as slot:
            slot.send()
            answer = self.api.find_images(name, **{MARKER_PROPERTY: nonce})
        found = [i for i in answer if i.get("status") not in GONE_STATUSES]
        found.sort(key=lambda i: (str(i.get("created_at")), str(i.get("id"))))
        return found[0] if found else None

    # --- outcomes --------------------------------------------------------------------------

    def _deliver(self, outcome: Outcome) -> Outcome:
        self.delivered.append(outcome)
        self.on_outcome(outcome)
        return outcome

    def _record(self, name: str, body: dict[str, Any], image: dict[str, Any], nonce: str,
                started: float, attempts: int, *, result: OutcomeResult = "created",
                origin: str = "created", digest: str | None = None) -> Outcome:
        """``digest``: the spec's, when ``body`` is that spec's (it is the request's digest:
        the marker and our id do not count)."""
        # The id we chose is the record's image_id; kept out of the request, it cannot
        # make the catalog's spec look drifted.
        request = {k: v for k, v in body.items() if k != "id"} if "id" in body else body
        record = Record.from_image(name, request, image, recorded_at=iso(self.run.clock.now()),
                                   run_id=self.run.run_id, origin=origin, spec_digest=digest)
        self.store.save_record(self.target, record, nonce=nonce)
        log.info("%s %s (%s)", result, name, record.image_id,
                 extra={"event": result, "image": name, "image_id": record.image_id,
                        "status": record.status, "attempt": attempts,
                        "run_id": self.run.run_id})
        return Outcome.recorded(record, result, attempts=attempts, request=body,
                                duration_s=self.run.clock.monotonic() - started)

    def _release(self, name: str, nonce: str, exc: ApiError, attempts: int, started: float,
                 note: str, prefix: str = "") -> Outcome:
        """Certainly not created: close the journal entry."""
        self.store.journal_release(nonce, note)
        return self.run.failed(name, exc, attempts, started, prefix)

    def _keep_pending(self, name: str, exc: ApiError, attempts: int, started: float) -> Outcome:
        """May have been created: leave the journal entry for the next apply."""
        return self.run.failed(name, exc, attempts, started, _UNKNOWN)




class _Unsettled(Exception):
    """The run stopped before a lost create's fate was known."""
