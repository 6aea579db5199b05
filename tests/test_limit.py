"""The adaptive in-flight limit (reconciler/apply/limit.py): its policy step by step, its
waiting with threads, and the signals each error class gives.

``LimitState`` is driven with made-up times: ``finish(signal, sent_at, now, busy)`` is all it
knows. ``ConcurrencyLimit`` is driven by real threads and a manual clock.
"""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.apply.limit import ConcurrencyLimit, LimitState, Signal, signal_of
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
    cut_at = d.now
    d.answer(signal=OVERLOAD)
    assert d.state.slots == 8  # 11 * 0.8 = 8.8
    for _ in range(10):  # the rest of a burst, sent before the cut: ignored
        d.answer(signal=OVERLOAD, sent_at=cut_at - 0.01)
    assert d.state.slots == 8
    d.answer(signal=OVERLOAD)  # sent after the cut: it saw the new limit
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


def test_an_adaptive_limit_starts_at_one_and_learns_from_exceptions() -> None:
    ticks = Ticks()
    limit = ConcurrencyLimit(4, ticks)
    assert limit.limit == 1
    with limit.request() as slot:
        slot.send()
        ticks.t += 0.05
    assert limit.limit == 2
    with pytest.raises(ServerError), limit.request() as slot:
        slot.send()
        ticks.t += 0.05
        raise ServerError("503", status=503)
    assert limit.limit == 1
    with limit.request():
        pass  # never sent: says nothing
    assert limit.limit == 1
