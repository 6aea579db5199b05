"""The bounded worker pool creates and updates share (docs/architecture.md §6.6, §6.7).

At most ``parallelism`` calls run at once: worker threads, which callers size a few above
``--parallelism`` (``creates.workers``); the requests in flight are bounded by the target's
limit (``limit.py``). Each outcome is delivered as it comes. On Ctrl-C
or SIGTERM no new call starts, the running ones get ``STOP_GRACE_S`` to finish and be
recorded (then their connections are cut), the rest are delivered as skipped, and the
interrupt propagates. A state store that cannot be written stops the run the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from queue import SimpleQueue
from typing import TypeVar

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
    # Each call puts its future here when it ends, so waiting for the next one costs the
    # same with 32 calls running as with one (``wait(FIRST_COMPLETED)`` visits them all).
    finished: SimpleQueue[Future[Outcome]] = SimpleQueue()
    with ThreadPoolExecutor(max_workers=max(1, parallelism),
                            thread_name_prefix=prefix) as pool:
        running: dict[Future[Outcome], str] = {}  # each call, and the image it is for
        queue = iter(todo)
        try:
            while True:
                while len(running) < parallelism and not run.stopped:
                    change = next(queue, None)
                    if change is None:
                        break
                    future = pool.submit(work, change)
                    running[future] = change.name
                    future.add_done_callback(finished.put)
                if not running:
                    break
                future = finished.get()
                outcomes.append(deliver(future.result()))
                del running[future]
        except KeyboardInterrupt:
            run.stop("interrupted")
            _, late = wait(running, timeout=STOP_GRACE_S)  # real time: a person waits
            if late:
                abort()
            # An interrupt between a delivery and its removal from ``running`` must not
            # deliver that outcome twice.
            left = {o.name for o in delivered[first:]}
            outcomes.extend(deliver(future.result()) for future, name in running.items()
                            if name not in left)
            raise
        except StateError as exc:
            # The state cannot be written (for a shared store: its connection, and the lock
            # with it, is gone): send nothing more; the journal has what was sent.
            run.stop(str(exc))
            raise
        finally:
            # what was delivered, also an outcome whose delivery an interrupt cut short
            left = {o.name for o in delivered[first:]}
            outcomes.extend(deliver(skipped(c.name)) for c in todo if c.name not in left)
    return outcomes
