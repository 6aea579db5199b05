"""The bounded worker pool creates and updates share (docs/architecture.md §6.6, §6.7).

At most ``parallelism`` calls run at once: worker threads, which callers size a few above
``--parallelism`` (``creates.workers``); the requests in flight are bounded by the target's
limit (``limit.py``). Each worker takes the next change itself as soon as it is done with
one and hands the outcome to the calling thread, which delivers each as it comes: no task
object per change, and no hand-off from the calling thread to a worker. On Ctrl-C or
SIGTERM no new call starts, the running ones get ``STOP_GRACE_S`` to finish and be recorded
(then their connections are cut), the rest are delivered as skipped, and the interrupt
propagates. A state store that cannot be written stops the run the same way; so does a call
that raises anything else (no worker takes another change).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from queue import SimpleQueue
from typing import Generic, TypeVar

from reconciler.apply.runstate import RunState
from reconciler.errors import StateError
from reconciler.models import Change, Outcome

#: After Ctrl-C or SIGTERM, how long calls in flight may take to finish and be recorded
#: before their connections are cut (their journal entries then stay pending).
STOP_GRACE_S = 3.0

T = TypeVar("T", bound=Change)


def run_bounded(todo: Sequence[T], work: Callable[[T], Outcome], *, run: RunState,
                parallelism: int, deliver: Callable[[Outcome], Outcome],
                delivered: list[Outcome], skipped: Callable[[str], Outcome],
                abort: Callable[[], None], prefix: str) -> list[Outcome]:
    """``work(change)`` for every change of ``todo``, at most ``parallelism`` (threads) at
    once."""
    outcomes: list[Outcome] = []
    first = len(delivered)
    pool = _Workers(todo, work, run, min(max(1, parallelism), len(todo)), prefix)
    try:
        for outcome in pool.outcomes():
            outcomes.append(deliver(outcome))
    except KeyboardInterrupt:
        run.stop("interrupted")
        if not pool.wait(STOP_GRACE_S):  # real time: a person waits
            abort()
        pool.wait()
        # Every outcome a call returned, also one the interrupt took from the queue before
        # it was delivered, and none twice.
        left = {o.name for o in delivered[first:]}
        outcomes.extend(deliver(o) for o in pool.returned() if o.name not in left)
        raise
    except StateError as exc:
        # The state cannot be written (for a shared store: its connection, and the lock
        # with it, is gone): send nothing more; the journal has what was sent.
        run.stop(str(exc))
        raise
    finally:
        pool.halt()  # after an error of a call: no worker takes another change
        pool.wait()
        # what was delivered, also an outcome whose delivery an interrupt cut short
        left = {o.name for o in delivered[first:]}
        outcomes.extend(deliver(skipped(c.name)) for c in todo if c.name not in left)
    return outcomes


class _Workers(Generic[T]):
    """``size`` threads that call ``work`` on the changes of ``todo`` in turn, until they
    are all taken, the run stops, or the pool is halted."""

    def __init__(self, todo: Sequence[T], work: Callable[[T], Outcome], run: RunState,
                 size: int, prefix: str) -> None:
        self._todo = iter(todo)
        self._work, self._run = work, run
        self._take = threading.Lock()
        self._halted = False
        # Every outcome returned, in the order returned: what the queue hands over is also
        # here, so an outcome taken from the queue by an interrupted caller is not lost.
        self._returned: list[Outcome] = []
        # (outcome, None), (None, the exception a call raised), or None: a worker ended
        self._done: SimpleQueue[tuple[Outcome | None, BaseException | None] | None] = (
            SimpleQueue())
        self._running = size
        self._lock = threading.Lock()
        self._ended = threading.Event()
        if not size:
            self._ended.set()
        self._threads = [threading.Thread(target=self._serve, name=f"{prefix}_{i}")
                         for i in range(size)]
        for thread in self._threads:
            thread.start()

    def _next(self) -> T | None:
        with self._take:
            if self._halted or self._run.stopped:
                return None
            return next(self._todo, None)

    def _serve(self) -> None:
        try:
            while (change := self._next()) is not None:
                try:
                    outcome = self._work(change)
                except BaseException as exc:  # raised in the calling thread
                    self.halt()
                    self._done.put((None, exc))
                    return
                self._returned.append(outcome)
                self._done.put((outcome, None))
        finally:
            self._done.put(None)
            with self._lock:
                self._running -= 1
                if not self._running:
                    self._ended.set()

    def outcomes(self) -> Iterator[Outcome]:
        """Each outcome as it comes, until every worker has ended; a call's exception is
        raised here."""
        working = len(self._threads)
        while working:
            item = self._done.get()
            if item is None:
                working -= 1
                continue
            outcome, error = item
            if error is not None:
                raise error
            assert outcome is not None
            yield outcome

    def halt(self) -> None:
        """No worker takes another change."""
        with self._take:
            self._halted = True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every worker to end (at most ``timeout`` seconds); whether they have."""
        return self._ended.wait(timeout)

    def returned(self) -> list[Outcome]:
        """Every outcome the calls returned so far (all of them, once the workers ended)."""
        return list(self._returned)
