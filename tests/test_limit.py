"""The adaptive in-flight limit (reconciler/apply/limit.py): its policy step by step, its
waiting with threads, and the signals each error class gives.

``LimitState`` is driven with made-up times: ``finish(signal, sent_at, now, busy)`` is all it
knows. ``ConcurrencyLimit`` is driven by real threads and a manual clock.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Callable

import pytest

from reconciler.apply.limit import ConcurrencyLimit, LimitState, Signal, Trend, judge, signal_of
from reconciler.errors import (
    ApiError,
    AuthError,
    ClientError,
    GatewayError,
    ServerError,
    ThrottledError,
    TransportError,
)

OK, OVERLOAD, NEUTRAL = Signal.OK, Signal.OVERLOAD, Signal.NEUTRAL


class Driver:
    """Feeds a LimitState answers of a given latency, ``busy`` as a saturated run would."""

    def __init__(self, state: LimitState) -> None:
        self.state, self.now = state, 0.0

    def answer(self, latency: float = 0.05, signal: Signal = OK, *, busy: bool = True,
               sent_at: float | None = None) -> None:
        self.now += 0.001
        start = self.now if sent_at is None else sent_at
        self.state.finish(signal, sent_at=start, now=start + latency, busy=busy)
        self.now = max(self.now, start + latency)

    def round_trips(self, n: int, latency: float = 0.05) -> None:
        """n round trips: as many answers per round trip as the limit allows."""
        for _ in range(n):
            for _ in range(self.state.slots):
                self.answer(latency)


def test_slow_start_doubles_each_round_trip_up_to_the_ceiling() -> None:
    d = Driver(LimitState(16))
    seen = []
    for _ in range(6):
        d.round_trips(1)
        seen.append(d.state.slots)
    assert seen == [2, 4, 8, 16, 16, 16]
    assert d.state.slow_start


def test_the_first_overload_halves_then_growth_is_one_per_round_trip() -> None:
    d = Driver(LimitState(64))
    d.round_trips(4)  # 1 -> 16
    assert d.state.slots == 16
    d.answer(signal=OVERLOAD)
    assert d.state.slots == 8 and not d.state.slow_start
    d.round_trips(1)
    assert d.state.slots == 9
    d.round_trips(2)
    assert d.state.slots == 11


def test_later_overloads_cut_by_the_decrease_factor_once_per_round_trip() -> None:
    d = Driver(LimitState(64))
    d.round_trips(4)
    d.answer(signal=OVERLOAD)  # 16 -> 8, slow start over
    d.round_trips(3)  # 8 -> 11
    assert d.state.slots == 11
    for _ in range(11):  # a round trip at 11 (less work than slots: no growth): it held
        d.answer(busy=False)
    assert d.state.probe_from is None
    cut_at = d.now
    d.answer(signal=OVERLOAD)
    assert d.state.slots == 8  # 11 * 0.8 = 8.8
    for _ in range(10):  # the rest of a burst, sent before the cut: ignored
        d.answer(signal=OVERLOAD, sent_at=cut_at - 0.01)
    settled = d.state.settled_at  # the cut, plus a round trip (the smoothed latency)
    assert settled == pytest.approx(cut_at + 0.001 + 0.05 + 0.05)
    d.answer(signal=OVERLOAD, sent_at=settled - 0.01)  # within a round trip: the old load
    assert d.state.slots == 8
    d.answer(signal=OVERLOAD, sent_at=settled)  # a round trip later: it saw the new limit
    assert d.state.slots == 6
    assert d.state.cuts == 3


def test_never_below_one_nor_above_the_ceiling() -> None:
    d = Driver(LimitState(3))
    d.round_trips(5)
    assert d.state.slots == 3
    for _ in range(10):
        d.answer(signal=OVERLOAD)
    assert d.state.slots == 1


def test_no_growth_without_demand() -> None:
    d = Driver(LimitState(16))
    for _ in range(50):
        d.answer(busy=False)  # fewer creates left than slots
    assert d.state.slots == 1


def test_a_server_that_takes_one_at_a_time_is_probed_ever_more_rarely() -> None:
    """Each probe to two in flight ends in a 500: the next one waits twice as long."""
    d = Driver(LimitState(10))
    d.answer()
    assert d.state.slots == 2
    d.answer(signal=OVERLOAD)  # the overlap failed
    assert d.state.slots == 1
    gaps = []
    for _ in range(4):
        answers = 0
        while d.state.slots == 1:
            d.answer()
            answers += 1
        gaps.append(answers)
        d.answer(signal=OVERLOAD)  # the probe fails again
        assert d.state.slots == 1
    assert gaps == [8, 16, 32, 64]


def test_a_probe_that_holds_resets_the_probe_interval() -> None:
    d = Driver(LimitState(10))
    d.answer()
    d.answer(signal=OVERLOAD)  # 2 -> 1
    while d.state.slots == 1:
        d.answer()
    d.answer(signal=OVERLOAD)  # the probe failed: interval 16
    assert d.state.probe == 16
    while d.state.slots == 1:
        d.answer()
    d.round_trips(1)  # two answers at two in flight, no overload: it holds
    assert d.state.probe == 8
    assert d.state.slots >= 2


def test_latency_rising_threefold_cuts_and_one_late_answer_does_not() -> None:
    d = Driver(LimitState(32))
    d.round_trips(4, latency=0.05)  # 16
    d.answer(latency=1.0)  # one answer late by 20 times: smoothed, it is no trend
    assert d.state.slots == 16
    for _ in range(40):
        d.answer(latency=0.2)  # answers four times slower, steadily
    assert d.state.cuts >= 1
    assert d.state.slots < 16


def test_latency_rising_by_half_stops_growth_without_cutting() -> None:
    d = Driver(LimitState(64))
    d.round_trips(3)  # 8
    d.answer(signal=OVERLOAD)  # 4, slow start over
    before = d.state.slots
    d.round_trips(20, latency=0.1)  # twice as slow: hold
    assert d.state.slots == before
    assert d.state.cuts == 1


def test_latency_steady_under_load_grows_to_the_ceiling() -> None:
    d = Driver(LimitState(16))
    d.round_trips(10, latency=0.05)
    assert d.state.slots == 16
    assert d.state.cuts == 0


def test_neutral_answers_change_nothing() -> None:
    d = Driver(LimitState(16))
    for _ in range(20):
        d.answer(signal=NEUTRAL)
    assert (d.state.slots, d.state.cuts, d.state.seen) == (1, 0, 0)


@pytest.mark.parametrize(("exc", "signal"), [
    (None, OK),
    (ThrottledError("429", status=429), OVERLOAD),
    (ServerError("500", status=500), OVERLOAD),
    (ServerError("503", status=503), OVERLOAD),
    (GatewayError("504", status=504), OVERLOAD),
    (TransportError("read timeout", sent=True), OVERLOAD),
    (TransportError("refused", sent=False), NEUTRAL),
    (ClientError("400", status=400), OK),
    (AuthError("401", status=401), OK),
    (ApiError("odd", status=418), OK),
    (KeyboardInterrupt(), NEUTRAL),
])
def test_signal_of_each_error(exc: BaseException | None, signal: Signal) -> None:
    assert signal_of(exc) is signal


class Ticks:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_threads_wait_for_a_slot_and_never_exceed_the_limit() -> None:
    ticks = Ticks()
    limit = ConcurrencyLimit(8, ticks, adaptive=False)
    inside, most = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        with limit.request() as slot:
            slot.send()
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.01)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most == 8 == limit.peak
    assert limit.limit == 8  # fixed: never adapted


def test_a_limit_that_grows_lets_in_as_many_waiting_threads_as_it_has_new_slots() -> None:
    """A slot given back wakes as many waiters as there are free slots, not one (nor all):
    the answer that takes a slow start from 1 to 2 lets two of the three waiters in."""
    ticks = Ticks()
    limit = ConcurrencyLimit(4, ticks, start=1)  # adaptive, from one slot
    answer, release = threading.Event(), threading.Event()
    entered = 0  # waiters that got a slot
    lock = threading.Lock()

    def first() -> None:
        with limit.request() as slot:
            slot.send()
            answer.wait(10)
            ticks.t += 0.05

    def waiter() -> None:
        nonlocal entered
        with limit.request() as slot:
            slot.send()
            with lock:
                entered += 1
            release.wait(10)

    holder = threading.Thread(target=first)
    holder.start()
    waiters = [threading.Thread(target=waiter) for _ in range(3)]
    for t in waiters:
        t.start()
    time.sleep(0.1)  # the three wait for the one slot (were they late, none would wait)
    answer.set()  # OK: the limit grows to 2, and both free slots are taken
    holder.join(10)
    deadline = time.monotonic() + 5
    while entered < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert (limit.limit, entered) == (2, 2)
    release.set()
    for t in waiters:
        t.join(10)
    assert entered == 3 and limit.peak == 2


def test_waiters_woken_but_not_yet_in_count_as_busy() -> None:
    """A release that grows a slow start wakes waiters; until they have taken their slots
    the next release still sees every slot wanted, so the limit grows on it too (counting
    only the requests in flight, it would not, and the slow start would take round trips
    longer)."""
    ticks = Ticks()
    limit = ConcurrencyLimit(8, ticks)
    limit.state.limit = 2.0  # in slow start
    entered = 0

    def waiter() -> None:
        nonlocal entered
        with limit.request() as slot:
            slot.send()
            entered += 1

    a, b = limit.request(), limit.request()
    for held in (a, b):
        held.__enter__().send()
    waiters = [threading.Thread(target=waiter, daemon=True) for _ in range(2)]
    for t in waiters:
        t.start()
    deadline = time.monotonic() + 5
    while limit.waiting < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    ticks.t += 0.05
    grown = []
    # Holding the (reentrant) lock, the woken waiters cannot take their slots in between.
    with limit._cond:
        a.__exit__(None, None, None)  # 2 in flight of 2: grows to 3, wakes both waiters
        grown.append(limit.limit)
        b.__exit__(None, None, None)  # 1 in flight, 2 woken, not yet in: 3 of 3 wanted
        grown.append(limit.limit)
    for t in waiters:
        t.join(10)
    assert grown == [3, 4]
    assert entered == 2 and limit.waiting == 0


def test_an_adaptive_limit_starts_at_two_or_its_ceiling_and_learns_from_exceptions() -> None:
    ticks = Ticks()
    assert ConcurrencyLimit(1, ticks).limit == 1  # a ceiling below the start
    assert ConcurrencyLimit(16, ticks, adaptive=False).limit == 16
    limit = ConcurrencyLimit(16, ticks)
    assert limit.limit == 2
    with pytest.raises(ServerError), limit.request() as slot:
        slot.send()
        ticks.t += 0.05
        raise ServerError("503", status=503)
    assert limit.limit == 1  # the slow start halves
    with limit.request():
        pass  # never sent: says nothing
    assert limit.limit == 1
    limit = ConcurrencyLimit(16, ticks, start=1)
    with limit.request() as slot:
        slot.send()
        ticks.t += 0.05
    assert limit.limit == 2  # one answer with every slot in use: one more


# --- the trend of latency, as a table ---------------------------------------------------------

@pytest.mark.parametrize(("slower", "more", "trend"), [
    (1.0, 1.0, Trend.GROW),    # as fast as ever
    (1.4, 0.5, Trend.GROW),    # a little slower: below hold_factor, nothing to judge
    (1.5, 1.0, Trend.HOLD),    # half again as slow for the same in-flight: a queue forming
    (2.0, 16.0, Trend.GROW),   # twice as slow at 16 times the in-flight: 8x the rate
    (2.0, 2.4, Trend.HOLD),    # rate up by 1.2x only: not worth the latency
    (2.0, 2.5, Trend.GROW),    # rate up by 1.25x
    (3.0, 3.0, Trend.HOLD),    # three times slower, rate as it was: stop, do not cut
    (3.0, 2.9, Trend.CUT),     # three times slower and fewer answers per second
    (4.0, 1.0, Trend.CUT),     # four times slower, same in-flight
    (2.9, 0.5, Trend.HOLD),    # the rate fell, but latency is below cut_factor
])
def test_judge(slower: float, more: float, trend: Trend) -> None:
    assert judge(slower, more) is trend


def test_latency_that_grows_with_load_while_the_rate_rises_does_not_stop_growth() -> None:
    """A pool of 16 workers: latency 1 + (n - 1) / 16 times the unloaded one. The limit grows
    past the 1.5x mark (reached at 9 in flight) towards 16, where the rate is highest."""
    d = Driver(LimitState(64))
    while d.state.slots < 32:  # the slow start overshoots; no 503s in this test
        d.round_trips(1, latency=0.05 * (1 + (d.state.slots - 1) / 16))
    d.answer(signal=OVERLOAD)  # 16
    for _ in range(10):
        d.round_trips(1, latency=0.05 * (1 + (d.state.slots - 1) / 16))
    assert d.state.slots > 16  # latency is 1.9x its low, the rate 8x


def test_a_failed_probe_goes_back_to_the_level_that_held_and_waits_ever_longer() -> None:
    """A server that takes exactly 5 at once: every request past 5 gets a 503 at once."""
    d = Driver(LimitState(64))
    d.round_trips(3)  # 1 -> 8: the slow start overshoots
    d.answer(signal=OVERLOAD)  # 8 -> 4
    d.now = d.state.settled_at
    gaps = []
    for _ in range(5):
        answers = 0
        while d.state.slots <= 5:
            d.answer()
            answers += 1
        assert d.state.slots == 6
        d.now = max(d.now, d.state.settled_at)
        d.answer(signal=OVERLOAD)  # the sixth request in flight: refused
        assert d.state.slots == 5  # back to where the probe started, not 6 * 0.8
        gaps.append(answers)
    # 4 -> 5 at the normal pace, then 5 -> 6 after 16, 32, ... answers at 5
    assert gaps[1:] == [16, 32, 64, 128]
    assert d.state.failed_at == 6


def test_a_probe_that_holds_at_the_failed_level_resets_the_interval() -> None:
    d = Driver(LimitState(64))
    d.round_trips(3)
    d.answer(signal=OVERLOAD)  # 8 -> 4
    d.now = d.state.settled_at
    while d.state.slots <= 5:
        d.answer()
    d.now = max(d.now, d.state.settled_at)
    d.answer(signal=OVERLOAD)  # 6 failed: back to 5, interval 16
    assert (d.state.slots, d.state.probe, d.state.failed_at) == (5, 16, 6)
    d.now = max(d.now, d.state.settled_at)
    while d.state.slots <= 5:
        d.answer()
    d.round_trips(1)  # this time a round trip at 6 holds: the server grew
    assert d.state.failed_at is None and d.state.probe == 8
    d.round_trips(2)
    assert d.state.slots == 8  # one per round trip again


# --- whole runs against simulated servers, in virtual time -----------------------------------

def capacity_server(capacity: int, latency: float) -> Callable[[int], tuple[float, Signal]]:
    """The sandbox's capacity mode (sandbox/capacity.py): over ``capacity`` in flight a 503
    at once, else a latency that grows with the load."""
    def answer(in_flight: int) -> tuple[float, Signal]:
        if in_flight > capacity:
            return 0.002, OVERLOAD
        return latency * (1 + (in_flight - 1) / capacity), OK
    return answer


def latency_bound(latency: float) -> Callable[[int], tuple[float, Signal]]:
    return lambda in_flight: (latency, OK)


def single_worker(latency: float) -> Callable[[int], tuple[float, Signal]]:
    """One worker (Glance on SQLite): requests in flight share it, so each takes ``latency``
    times their number, and overlapping ones fail (500) ever more often."""
    rng = random.Random(7)

    def answer(in_flight: int) -> tuple[float, Signal]:
        failed = rng.random() < 0.5 * (in_flight - 1) / in_flight
        return latency * in_flight, OVERLOAD if failed else OK
    return answer


RETRY_S = 0.5  # the applier's first backoff (RetryPolicy)
WORK = 2000  # requests per simulated run, as many as the benchmark's apply


def simulate(server: Callable[[int], tuple[float, Signal]], work: int, *,
             limit: int | None = None, ceiling: int = 10) -> float:
    """Images created per second of ``work`` in virtual time, as ``Creator`` runs them: at
    most ``limit`` (fixed) or ``ceiling`` (adaptive) images in progress (its worker pool), a
    failed create sent again ``RETRY_S`` later, its slot free meanwhile; in flight at most
    ``limit``, or what a ``LimitState`` of ``ceiling`` allows."""
    state = None if limit is not None else LimitState(ceiling)
    pool = limit or ceiling
    now, todo, waiting, active, done, seq = 0.0, work, 0, 0, 0, 0
    flying: list[tuple[float, int, float, Signal]] = []  # (ends, seq, sent_at, signal)
    retries: list[float] = []  # when each failed create is sent again
    while done < work:
        slots = pool if state is None else state.slots
        while len(flying) < slots and (waiting or (todo and active < pool)):
            if waiting:
                waiting -= 1
            else:
                todo, active = todo - 1, active + 1
            latency, signal = server(len(flying) + 1)
            seq += 1
            heapq.heappush(flying, (now + latency, seq, now, signal))
        if retries and (not flying or retries[0] <= flying[0][0]):
            now = heapq.heappop(retries)
            waiting += 1
            continue
        now, _, sent_at, signal = heapq.heappop(flying)
        busy = len(flying) + 1 >= slots
        if signal is OK:
            done, active = done + 1, active - 1
        else:
            heapq.heappush(retries, now + RETRY_S)
        if state is not None:
            state.finish(signal, sent_at=sent_at, now=now, busy=busy)
    return work / now


@pytest.mark.parametrize(("server", "ceiling", "fixed", "share"), [
    # a pool of workers: best fixed = the capacity; adaptive within 10 % of it
    (capacity_server(16, 0.05), 32, range(1, 33), 0.9),
    (capacity_server(6, 0.05), 10, range(1, 11), 0.9),
    (capacity_server(3, 0.02), 64, range(1, 65, 3), 0.9),
    # latency-bound: every fixed level answers at once; adaptive near the ceiling
    (latency_bound(0.05), 16, [16], 0.9),
    (latency_bound(0.05), 32, [32], 0.9),
    # one worker: the best is sequential or two in flight
    (single_worker(0.05), 10, range(1, 11), 0.9),
], ids=["capacity-16", "capacity-6", "capacity-3", "latency-p16", "latency-p32",
        "single-worker"])
def test_adaptive_reaches_the_best_fixed_parallelism(
        server: Callable[[int], tuple[float, Signal]], ceiling: int, fixed: range | list[int],
        share: float) -> None:
    best = max(simulate(server, WORK, limit=p) for p in fixed)
    assert simulate(server, WORK, ceiling=ceiling) >= share * best
