"""How many requests one apply has in flight at a target: adaptive, never above
``--parallelism`` (docs/architecture.md §6.6).

A cloud that is latency-bound answers as fast with 16 requests in flight as with one; a
saturated one (a single Glance worker on SQLite, a gateway with a quota) answers 500, 503 or
429, or just slower, when more overlap. So the limit is found, not fixed: additive increase,
multiplicative decrease (AIMD), as TCP finds a link's capacity.

- It starts at ``START`` requests (two, or the ceiling if lower) and grows by one per
  answer (doubling every round trip: slow start) until the first sign of overload, which
  halves it; from then on it grows by one request per round trip. Two, not one: a round
  trip fewer below the ceiling (half a per cent of a 2,000-image apply at 16 against a
  latency-bound server). Not more: the latency judged below is compared with the lowest
  seen, at the in-flight count then, and the first answers of a run, from a server not yet
  loaded, are the quickest; at four, a server with room for eight (``sandbox --capacity
  8``) answered seven no faster per second than those first four seemed to, and the limit
  held at seven for 500 answers.
- Overload is an answer of 429, 500, 502, 503 or 504, a request sent that got no answer
  (timeout, dropped connection), or answers slowing down by more than more requests in flight
  can make up for (``judge``: by Little's law the rate is in-flight over latency, so latency
  that doubles while in-flight grows sixteenfold is a server still taking more, and latency
  that triples at twice the in-flight is a queue). Latency is smoothed first: on a busy
  client machine single answers are late for reasons of their own.
- One cut per round trip: an overload of a request sent before the last cut, or within one
  round trip after it (it met the load from before the cut), says nothing about the limit
  since, so a burst of 503s cuts once, not ten times.
- Each increase is a probe, judged after a round trip at the new level. A probe that ends in
  overload goes back to the level it came from (which held) instead of cutting further; the
  level that failed is then probed again only after ``probe`` answers, doubled at each failure
  (up to ``probe_max``), so a server that takes exactly 16 at once is asked for 17 ever more
  rarely, and one that cannot take a second request in flight is asked rarely. A probe that
  holds at or above the failed level resets that.
- It grows only while every slot is in use or wanted (requests in flight and requests
  waiting for a slot together fill the limit): a run with less work than the limit has no
  evidence that more would be taken.

The arithmetic is in ``LimitState``, a plain value tested step by step; ``ConcurrencyLimit``
adds the waiting and the clock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.errors import (
    ApiError,
    GatewayError,
    ServerError,
    ThrottledError,
    TransportError,
)

log = logging.getLogger("reconciler.apply")


class Signal(StrEnum):
    """What one finished request says about the target's load."""

    OK = "ok"              # answered, and the answer was not about load (2xx, most 4xx)
    OVERLOAD = "overload"  # 429, 5xx, or sent and never answered
    NEUTRAL = "neutral"    # says nothing about the server (not sent, a 401)


def signal_of(exc: BaseException | None) -> Signal:
    """| request ended with                              | signal   |
    |-------------------------------------------------|----------|
    | an answer (no exception)                        | ok       |
    | 429 ``ThrottledError``                          | overload |
    | 5xx ``ServerError`` (502/504 ``GatewayError``)  | overload |
    | ``TransportError`` after sending (timeout, lost)| overload |
    | ``TransportError`` before sending (refused)     | neutral  |
    | any other ``ApiError`` (4xx, a malformed 2xx)   | ok       |
    | anything else (an interrupt, a bug)             | neutral  |
    """
    if exc is None:
        return Signal.OK
    if isinstance(exc, (ThrottledError, ServerError, GatewayError)):
        return Signal.OVERLOAD
    if isinstance(exc, TransportError):
        return Signal.OVERLOAD if exc.sent else Signal.NEUTRAL
    if isinstance(exc, ApiError):
        return Signal.OK
    return Signal.NEUTRAL


_SMOOTHING = 0.1  # weight of each new answer in the moving average of latency


class Trend(StrEnum):
    """What the latency of answers says about one more request in flight."""

    GROW = "grow"  # answers as fast, or the rate still rises with the in-flight count
    HOLD = "hold"  # slower, and the rate no longer rises much: do not add requests
    CUT = "cut"    # much slower, and the rate has fallen: a queue, treat as overload


def judge(slower: float, more: float, *, hold_factor: float = 1.5,
          cut_factor: float = 3.0) -> Trend:
    """``slower``: smoothed latency over its recent lowest; ``more``: requests in flight now
    over the number in flight when that lowest was seen. ``more / slower`` is the rate of
    answers now over the rate then (Little's law).

    | slower          | rate now / rate then     | trend |
    |-----------------|--------------------------|-------|
    | < hold_factor   | any                      | grow  |
    | ≥ hold_factor   | ≥ 1.25 (still rising)    | grow  |
    | ≥ hold_factor   | < 1.25, and slower < cut | hold  |
    | ≥ cut_factor    | ≥ 1 but < 1.25           | hold  |
    | ≥ cut_factor    | < 1 (fallen)             | cut   |

    A server whose latency grows with its load but which still answers more per second (a
    pool of workers below its size) keeps getting more; one whose answers only queue (a
    single worker) does not.
    """
    if slower < hold_factor:
        return Trend.GROW
    gain = more / slower
    if gain >= _RATE_GAIN:
        return Trend.GROW
    if slower >= cut_factor and gain < 1.0:
        return Trend.CUT
    return Trend.HOLD


_RATE_GAIN = 1.25  # how much more the answers per second must be to be worth the latency


@dataclass
class LimitState:
    """The limit and what it has learnt; ``finish`` is the whole policy."""

    ceiling: int
    decrease: float = 0.8
    hold_factor: float = 1.5  # answers this much slower than at their best: judge the rate
    cut_factor: float = 3.0   # this much slower, and fewer answers per second: cut
    probe_min: int = 8
    probe_max: int = 256
    window: int = 500
    limit: float = 1.0
    slow_start: bool = True
    probe: int = 8
    settled_at: float = float("-inf")  # overloads of requests sent before: already acted on
    probe_from: int | None = None    # the level a probe started from, until it is judged
    probe_at: float = 0.0            # when that probe started
    probe_ok: int = 0                # answers at the probed level without overload
    failed_at: int | None = None     # the lowest level that met overload since it last held
    credit: int = 0        # answers towards the next increase
    cuts: int = 0
    smoothed: float = 0.0  # moving average of the latency of answers
    seen: int = 0          # answers so far
    #: the sliding minimum of ``smoothed``: (answer number, smoothed, slots then)
    lows: deque[tuple[int, float, int]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.ceiling = max(1, self.ceiling)
        self.limit = min(float(self.ceiling), max(1.0, self.limit))
        self.probe = self.probe_min

    @property
    def slots(self) -> int:
        return max(1, int(self.limit))

    def finish(self, signal: Signal, *, sent_at: float, now: float, busy: bool) -> None:
        """One request, sent at ``sent_at``, ended at ``now`` with ``signal``; ``busy``: every
        slot was in use (or wanted by a request waiting for one) until it ended."""
        if signal is Signal.NEUTRAL:
            return
        if signal is Signal.OK:
            trend = self._trend(now - sent_at)
            if trend is not Trend.CUT:
                self._grow(sent_at, busy and trend is Trend.GROW)
                return
        if sent_at >= self.settled_at:
            self._cut(now)

    def _trend(self, latency: float) -> Trend:
        """Smooth the latency (a moving average, so one slow answer on a busy machine is not
        a trend), keep its lowest value of the last ``window`` answers, and judge."""
        self.smoothed = latency if self.seen == 0 else (
            self.smoothed + _SMOOTHING * (latency - self.smoothed))
        self.seen += 1
        lows = self.lows  # smoothed increasing from the left: the sliding minimum
        while lows and lows[-1][1] >= self.smoothed:
            lows.pop()
        lows.append((self.seen, self.smoothed, self.slots))
        if lows[0][0] <= self.seen - self.window:
            lows.popleft()
        _, lowest, slots_then = lows[0]
        if self.seen < 8 or lowest <= 0:
            return Trend.GROW
        return judge(self.smoothed / lowest, self.slots / slots_then,
                     hold_factor=self.hold_factor, cut_factor=self.cut_factor)

    def _grow(self, sent_at: float, busy: bool) -> None:
        if self.probe_from is not None and sent_at >= self.probe_at:
            self.probe_ok += 1
            if self.probe_ok >= self.slots:  # a round trip at the new level: it holds
                if self.failed_at is not None and self.slots >= self.failed_at:
                    self.failed_at, self.probe = None, self.probe_min
                self.probe_from = None
        if not busy or self.slots >= self.ceiling:
            return
        if self.slow_start:
            self.limit = min(float(self.ceiling), self.limit + 1)
            return
        self.credit += 1
        risky = self.failed_at is not None and self.slots + 1 >= self.failed_at
        if self.credit >= max(self.slots, self.probe if risky else self.probe_min):
            self.credit = 0
            if self.probe_from is None:
                self.probe_from, self.probe_at, self.probe_ok = self.slots, sent_at, 0
            self.limit = min(float(self.ceiling), float(self.slots + 1))

    def _cut(self, now: float) -> None:
        failed = self.slots
        if self.probe_from is not None and self.slots > self.probe_from:
            # The probe failed: the level it came from held, so go back there, and ask for
            # the failed level again only after twice as many answers.
            self.probe = min(self.probe_max, self.probe * 2)
            self.limit = float(self.probe_from)
        else:
            cut = self.limit / 2 if self.slow_start else self.limit * self.decrease
            self.limit = float(max(1, int(cut)))
        self.failed_at = failed if self.failed_at is None else min(self.failed_at, failed)
        self.probe_from = None
        self.slow_start = False
        # Requests sent within a round trip of now met the load from before the cut.
        self.settled_at = now + self.smoothed
        self.credit = 0
        self.cuts += 1


#: Where an adaptive limit starts (its slow start's first level), if the ceiling is higher.
START = 2


class ConcurrencyLimit:
    """Requests to one target wait here for a slot; thread-safe."""

    def __init__(self, ceiling: int, monotonic: Callable[[], float], *,
                 adaptive: bool = True, start: int = START) -> None:
        self.state = LimitState(ceiling, limit=float(start if adaptive else ceiling))
        self.adaptive = adaptive
        self._monotonic = monotonic
        self._in_flight = 0
        self._waiting = 0  # threads waiting for a slot (also those woken, not yet in)
        self._peak = 0
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        return self.state.slots

    @property
    def waiting(self) -> int:
        """Threads waiting for a slot now."""
        return self._waiting

    @property
    def peak(self) -> int:
        """The most requests that were in flight at once."""
        return self._peak

    @contextmanager
    def request(self) -> Iterator[Slot]:
        """Hold a slot around one request; how it ends is judged by ``signal_of``."""
        with self._cond:
            if self._in_flight >= self.state.slots:
                self._waiting += 1
                try:
                    while self._in_flight >= self.state.slots:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
        slot = Slot(self._monotonic)
        error: BaseException | None = None
        try:
            yield slot
        except BaseException as exc:
            error = exc
            raise
        finally:
            with self._cond:
                # Every slot in use, or wanted: the requests in flight and those waiting
                # (a waiter woken by a release may not have taken its slot yet; without it
                # a slow start would miss its growth and take round trips longer).
                busy = self._in_flight + self._waiting >= self.state.slots
                self._in_flight -= 1
                had = self.state.slots
                if self.adaptive and slot.sent_at is not None:
                    signal = signal_of(error)
                    self.state.finish(signal, sent_at=slot.sent_at, now=self._monotonic(),
                                      busy=busy)
                    if self.state.slots < had:
                        log.info("requests in flight limited to %d (was %d): %s",
                                 self.state.slots, had,
                                 "the server is overloaded" if signal is Signal.OVERLOAD
                                 else "answers slowed down",
                                 extra={"event": "concurrency_lowered",
                                        "limit": self.state.slots, "signal": str(signal)})
                # One waiter per slot this release opened (the one given back, and any the
                # limit grew by), if free: not every waiter, as the pool has more workers
                # than slots (``creates.workers``), nor one per free slot, which wakes again
                # the waiters woken by the releases just before.
                opened = 1 + max(0, self.state.slots - had)
                self._cond.notify(max(0, min(opened, self.state.slots - self._in_flight)))


class Slot:
    """One held slot; ``send`` marks when the request left (its latency starts there). A
    slot given back unsent says nothing about the server."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self.sent_at: float | None = None

    def send(self) -> float:
        self.sent_at = self._monotonic()
        return self.sent_at
