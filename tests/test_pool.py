"""The bounded worker pool (reconciler/apply/pool.py): every change is delivered once, as
what its call returned or as skipped, whatever stops the run."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from reconciler.apply.pool import run_bounded
from reconciler.apply.runstate import RunState
from reconciler.clock import SYSTEM_CLOCK
from reconciler.errors import StateError
from reconciler.models import Change, Outcome


def changes(n: int) -> list[Change]:
    return [Change(name=f"c{i}", action="create", reason="not_recorded") for i in range(n)]


def done(change: Change) -> Outcome:
    return Outcome.failure(change.name, "failed", "done by its call")


class Pool:
    """run_bounded with a ``work`` and a ``deliver`` of the test's choosing."""

    def __init__(self) -> None:
        self.run = RunState("run-1", SYSTEM_CLOCK)
        self.delivered: list[Outcome] = []
        self.aborted = 0

    def deliver(self, outcome: Outcome) -> Outcome:
        self.delivered.append(outcome)
        return outcome

    def __call__(self, todo: list[Change], work: Callable[[Change], Outcome],
                 parallelism: int,
                 deliver: Callable[[Outcome], Outcome] | None = None) -> list[Outcome]:
        def abort() -> None:
            self.aborted += 1

        return run_bounded(todo, work, run=self.run, parallelism=parallelism,
                           deliver=deliver or self.deliver, delivered=self.delivered,
                           skipped=self.run.skipped, abort=abort, prefix="test")

    def results(self) -> dict[str, str]:
        names = [o.name for o in self.delivered]
        assert len(names) == len(set(names)), names  # none delivered twice
        return {o.name: o.result for o in self.delivered}


def test_every_change_is_called_once_and_delivered_as_it_returned() -> None:
    pool = Pool()
    calls: list[str] = []
    lock = threading.Lock()

    def work(change: Change) -> Outcome:
        with lock:
            calls.append(change.name)
        return done(change)

    outcomes = pool(changes(50), work, 4)
    assert sorted(calls) == sorted(c.name for c in changes(50))
    assert pool.results() == {f"c{i}": "failed" for i in range(50)}
    assert len(outcomes) == 50


def test_no_change_is_called_when_there_is_none() -> None:
    pool = Pool()
    assert pool([], done, 4) == []


def test_an_interrupt_before_a_returned_outcome_is_delivered_does_not_lose_it() -> None:
    """Ctrl-C can strike after the caller took an outcome from the workers and before it was
    delivered: that outcome (its image created and recorded) is still delivered, not
    reported as skipped."""
    pool = Pool()
    first = True

    def deliver(outcome: Outcome) -> Outcome:
        nonlocal first
        if first:  # the interrupt, before this outcome was delivered
            first = False
            raise KeyboardInterrupt
        return pool.deliver(outcome)

    called: list[str] = []

    def work(change: Change) -> Outcome:
        called.append(change.name)
        while change.name != "c0" and not pool.run.stopped:  # the next call runs on
            threading.Event().wait(0.01)
        return done(change)

    with pytest.raises(KeyboardInterrupt):
        pool(changes(20), work, 1, deliver)
    results = pool.results()
    assert set(results) == {c.name for c in changes(20)}
    assert {n for n, r in results.items() if r == "failed"} == set(called)  # none lost
    assert called[0] == "c0" and len(called) <= 2  # the interrupt stopped the rest
    assert [n for n, r in results.items() if r == "skipped"] == [
        f"c{i}" for i in range(len(called), 20)]


def test_a_call_that_raises_stops_the_other_workers_taking_changes() -> None:
    """A bug in one call ends the pool: the others finish what they run and take nothing
    more; everything not called is delivered as skipped."""
    pool = Pool()
    calls: list[str] = []
    lock = threading.Lock()
    started = threading.Event()
    failing: list[threading.Thread] = []

    def work(change: Change) -> Outcome:
        with lock:
            calls.append(change.name)
        if change.name == "c0":
            started.wait(10)
            failing.append(threading.current_thread())
            raise RuntimeError("a bug")
        if change.name == "c1":
            started.set()
            while not failing:
                threading.Event().wait(0.01)
            failing[0].join(2)  # its worker is done: it said so before it ended
        return done(change)

    with pytest.raises(RuntimeError, match="a bug"):
        pool(changes(10), work, 2)
    assert sorted(calls) == ["c0", "c1"]
    assert set(pool.results().values()) == {"skipped"}  # as the run fails, it reports none


def test_a_state_error_stops_the_run_and_skips_the_rest() -> None:
    pool = Pool()

    def work(change: Change) -> Outcome:
        if change.name == "c3":
            raise StateError("the state cannot be written")
        return done(change)

    with pytest.raises(StateError):
        pool(changes(10), work, 1)
    assert pool.run.stopped
    results = pool.results()
    assert [n for n, r in results.items() if r == "failed"] == ["c0", "c1", "c2"]
    assert [n for n, r in results.items() if r == "skipped"] == [f"c{i}" for i in range(3, 10)]
