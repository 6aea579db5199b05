"""Carry out a plan's creates without ever creating an image twice.

The protocol (docs/architecture.md §6): every create first writes a journal entry with a fresh
nonce, then POSTs with the nonce as the ``reconcile_marker`` extra property; a 201 is recorded
and the entry closed in one transaction. When the answer is lost (timeout, reset, 5xx), the
image is looked up by name and marker before anything is sent again. An entry is released only
when the create certainly did not happen; otherwise it stays pending and the next apply
resolves it first (``recover``). Workers run in a bounded thread pool; the state store
serialises writes.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from reconciler.client import RetryPolicy
from reconciler.errors import ApiError, AuthError, ClientError, ServerError, TransportError
from reconciler.models import (
    GONE_STATUSES,
    MARKER_PROPERTY,
    Change,
    ErrorInfo,
    ImageSpec,
    Outcome,
    Record,
    now_iso,
    parse_iso,
)
from reconciler.state import StateStore

log = logging.getLogger("reconciler.apply")


class ImageApi(Protocol):
    """The part of ``ImageClient`` the applier needs (tests may pass a fake at unit level)."""

    def create_image(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def find_images(self, name: str, **props: str) -> list[dict[str, Any]]: ...


#: How long after it was sent an unanswered create may still land. Until then a create that
#: cannot be found is not presumed lost: it is neither sent again nor released.
DEFAULT_SETTLE_S = 120.0


class _Unsettled(Exception):
    """The run stopped before a lost create's fate was known."""


def _fate(exc: ApiError) -> str:
    """What a failed create tells about the image: ``refused`` (certainly not created),
    ``answered`` (the server is done: one look-up decides) or ``unanswered`` (it may still
    be in progress)."""
    if isinstance(exc, TransportError):
        return "unanswered" if exc.sent else "refused"
    if exc.status == 429:
        return "refused"  # throttled at the gateway, before the service
    return "unanswered" if exc.status in (502, 504) else "answered"


@dataclass
class Applier:
    """Creates images for one target, recording each one as soon as it exists."""

    store: StateStore
    api: ImageApi
    target: str
    run_id: str
    parallelism: int = 10
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    settle_s: float = DEFAULT_SETTLE_S
    on_outcome: Callable[[Outcome], None] = lambda outcome: None
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    abort_reason: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    # --- recovery of earlier runs ----------------------------------------------------------

    def recover(self) -> list[Outcome]:
        """Resolve pending journal entries: adopt what was created, release what was not."""
        outcomes = []
        for entry in self.store.pending(self.target):
            started = time.monotonic()
            try:
                found = self._find(entry.name, entry.nonce)
            except ApiError as exc:
                log.warning("cannot resolve the pending create of %s: %s", entry.name, exc,
                            extra={"event": "recover_failed", "image": entry.name})
                outcomes.append(self._failed(entry.name, exc, 1, started,
                                             "the pending create of an earlier run could not "
                                             "be resolved: "))
                if isinstance(exc, AuthError):
                    self.abort(f"authentication failed: {exc.message}")
                    break
                continue
            if found is None:
                age = (datetime.now(UTC) - parse_iso(entry.started_at)).total_seconds()
                if age < self.settle_s:
                    log.warning("%s: the create sent %ds ago by run %s may still land; it is "
                                "left pending (blocked) until %ds after it was sent",
                                entry.name, age, entry.run_id, self.settle_s,
                                extra={"event": "recover_waiting", "image": entry.name})
                    continue
                self.store.journal_release(entry.nonce, f"not found by run {self.run_id}")
                log.info("released pending create of %s: not on the server", entry.name,
                         extra={"event": "recover_released", "image": entry.name})
                continue
            request = self.store.pending_request(entry.nonce)
            outcome = self._record(entry.name, request, found, entry.nonce, started, 1,
                                   result="adopted", origin="created")
            log.info("recovered %s (%s) created by run %s", entry.name, found["id"],
                     entry.run_id, extra={"event": "recovered", "image": entry.name,
                                          "image_id": found["id"]})
            outcomes.append(outcome)
        return outcomes

    # --- creates ---------------------------------------------------------------------------

    def create_all(self, changes: Sequence[Change]) -> list[Outcome]:
        """Create every image of ``changes`` (all ``create``), at most ``parallelism`` at once.

        On KeyboardInterrupt no new create starts, running ones finish and are recorded,
        then the interrupt propagates.
        """
        outcomes: list[Outcome] = []
        todo = [c for c in changes if c.spec is not None]
        with ThreadPoolExecutor(max_workers=max(1, self.parallelism),
                                thread_name_prefix="reconcile") as pool:
            running: set[Future[Outcome]] = set()
            queue = iter(todo)
            try:
                while True:
                    while len(running) < self.parallelism and not self._stop.is_set():
                        change = next(queue, None)
                        if change is None:
                            break
                        assert change.spec is not None
                        running.add(pool.submit(self._create_one, change.spec))
                    if not running:
                        break
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        outcomes.append(self._deliver(fut.result()))
            except KeyboardInterrupt:
                self.abort("interrupted")
                for fut in running:
                    outcomes.append(self._deliver(fut.result()))
                raise
            finally:
                left = {o.name for o in outcomes}
                for change in todo:
                    if change.name not in left:
                        outcomes.append(self._deliver(self._skipped(change.name)))
        return outcomes

    def _deliver(self, outcome: Outcome) -> Outcome:
        self.on_outcome(outcome)
        return outcome

    def _create_one(self, spec: ImageSpec) -> Outcome:
        started = time.monotonic()
        if self._stop.is_set():
            return self._skipped(spec.name)
        nonce = uuid.uuid4().hex
        body = {**spec.body(), MARKER_PROPERTY: nonce}
        self.store.journal_open(nonce=nonce, target=self.target, name=spec.name,
                                run_id=self.run_id, request=body)
        attempt = 0
        while True:
            attempt += 1
            sent_at = time.monotonic()
            try:
                image = self.api.create_image(body)
                return self._record(spec.name, body, image, nonce, started, attempt)
            except AuthError as exc:
                self.store.journal_release(nonce, "HTTP 401: not created")
                self.abort(f"authentication failed: {exc.message}")
                return self._failed(spec.name, exc, attempt, started)
            except ClientError as exc:
                self.store.journal_release(nonce, f"HTTP {exc.status}: not created")
                return self._failed(spec.name, exc, attempt, started)
            except (ServerError, TransportError) as exc:
                error: ApiError = exc
            except ApiError as exc:  # a 2xx without a usable body: the image may exist
                return self._give_up(spec.name, nonce, exc, attempt, started, True)
            fate = _fate(error)
            if fate != "refused":
                try:
                    found = self._settle(spec.name, nonce, sent_at, wait=fate == "unanswered")
                except (ApiError, _Unsettled):
                    return self._give_up(spec.name, nonce, error, attempt, started, True)
                if found is not None:
                    log.info("found %s after a lost answer; not sending it again", spec.name,
                             extra={"event": "found_after_loss", "image": spec.name,
                                    "image_id": found["id"]})
                    return self._record(spec.name, body, found, nonce, started, attempt)
            if attempt >= self.retry.attempts or self._stop.is_set():
                return self._give_up(spec.name, nonce, error, attempt, started, False)
            delay = self.retry.delay(attempt, error.retry_after, self.rng)
            log.warning("%s: %s; retrying in %.1fs (attempt %d of %d)", spec.name, error,
                        delay, attempt, self.retry.attempts,
                        extra={"event": "retry", "image": spec.name, "status": error.status,
                               "code": error.code, "request_id": error.request_id,
                               "attempt": attempt, "delay_s": round(delay, 3)})
            self.sleep(delay)

    def _settle(self, name: str, nonce: str, sent_at: float, *,
                wait: bool) -> dict[str, Any] | None:
        """After a failed create: the image, if it was created after all; None if it was not.

        An answered failure (500, 503) means the server is done with the request, so one
        look-up decides. Without an answer (timeout, dropped connection, 502/504 from a
        gateway) the server may still be working on it: look again, backing off, until
        ``settle_s`` after the send, and only then call it not created. Raises _Unsettled
        if the run stops first.
        """
        looks = 0
        while True:
            found = self._find(name, nonce)
            if found is not None or not wait:
                return found
            left = self.settle_s - (time.monotonic() - sent_at)
            if left <= 0:
                return None
            if self._stop.is_set():
                raise _Unsettled
            looks += 1
            self.sleep(min(left, self.retry.delay(looks, None, self.rng)))

    def _give_up(self, name: str, nonce: str, exc: ApiError, attempt: int, started: float,
                 maybe_created: bool) -> Outcome:
        if maybe_created:
            prefix = ("outcome unknown (kept as pending; the next apply looks the image up "
                      "before creating it again): ")
        else:
            self.store.journal_release(nonce, f"gave up: {exc}")
            prefix = ""
        return self._failed(name, exc, attempt, started, prefix)

    def _find(self, name: str, nonce: str) -> dict[str, Any] | None:
        """The live image carrying this nonce, if any (the oldest, should there be two).

        Busy answers to the look-up are retried by the client (reads are safe to repeat).
        """
        found = [i for i in self.api.find_images(name, **{MARKER_PROPERTY: nonce})
                 if i.get("status") not in GONE_STATUSES]
        found.sort(key=lambda i: (str(i.get("created_at")), str(i.get("id"))))
        return found[0] if found else None

    def _record(self, name: str, body: dict[str, Any], image: dict[str, Any], nonce: str,
                started: float, attempts: int, *, result: str = "created",
                origin: str = "created") -> Outcome:
        record = Record.from_image(name, body, image, recorded_at=now_iso(),
                                   run_id=self.run_id, origin=origin)
        self.store.save_record(self.target, record, nonce=nonce)
        return Outcome.model_construct(
            name=name, result=result, image_id=record.image_id, status=record.status,
            created_at=record.created_at, updated_at=record.updated_at, attempts=attempts,
            duration_s=time.monotonic() - started, error=None, request=body)

    def _failed(self, name: str, exc: ApiError, attempts: int, started: float,
                prefix: str = "") -> Outcome:
        error = ErrorInfo.model_construct(message=prefix + exc.message, status=exc.status,
                                          code=exc.code, request_id=exc.request_id)
        log.error("%s failed: %s%s", name, prefix, exc,
                  extra={"event": "failed", "image": name, "status": exc.status,
                         "code": exc.code, "request_id": exc.request_id})
        return Outcome.model_construct(name=name, result="failed", image_id=None, status=None,
                                       created_at=None, updated_at=None, attempts=attempts,
                                       duration_s=time.monotonic() - started, error=error,
                                       request=None)

    def _skipped(self, name: str) -> Outcome:
        reason = self.abort_reason or "run stopped"
        return Outcome.model_construct(
            name=name, result="skipped", image_id=None, status=None, created_at=None,
            updated_at=None, attempts=0, duration_s=0.0, request=None,
            error=ErrorInfo.model_construct(message=f"not attempted: {reason}", status=None,
                                            code=None, request_id=None))

    def abort(self, reason: str) -> None:
        """Stop the run: nothing new starts; what runs finishes and is recorded."""
        if not self._stop.is_set():
            self.abort_reason = reason
            self._stop.set()


def adoption_request(spec: ImageSpec, image: dict[str, Any]) -> dict[str, Any]:
    """What we would have sent to get ``image``: the catalog's fields, valued as in the cloud.

    Recording this (not the catalog's body) keeps the record honest: if the image differs
    from the catalog, the next plan shows it as drift.
    """
    request = {key: image.get(key) for key in spec.body()}
    if MARKER_PROPERTY in image:
        request[MARKER_PROPERTY] = image[MARKER_PROPERTY]
    return request
