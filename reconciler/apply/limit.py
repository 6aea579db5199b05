"""How many requests one apply has in flight at a target: adaptive, never above
``--parallelism`` (docs/architecture.md §6.6).

A cloud that is latency-bound answers as fast with 16 requests in flight as with one; a
saturated one (a single Glance worker on SQLite, a gateway with a quota) answers 500, 503 or
429, or just slower, when more overlap. So the limit is found, not fixed: additive increase,
multiplicative decrease (AIMD), as TCP finds a link's capacity.

- It starts at one request and doubles every round trip (slow start) until the first sign of
  overload, which halves it; from then on it grows by one request per round trip, but not
  faster than one per ``probe`` successes, and shrinks by ``decrease`` on each overload.
- Overload is an answer of 429, 500, 503, 502 or 504, a request sent that got no answer
  (timeout, dropped connection), or latency rising to ``cut_factor`` times its lowest of the
  last ``window`` answers (a queue twice as long as the work in service). Latency is
  smoothed first: on a busy client machine single answers are late for reasons of their
  own. Above ``hold_factor`` the limit stops growing.
- One cut per round trip: an overload of a request sent before the last cut says nothing
  about the limit since, so a burst of 503s halves the limit once, not ten times.
- A probe that ends in overload doubles ``probe`` (up to ``probe_max``), so a server that
  cannot take a second request in flight is asked to rarely; one that holds resets it.
- It grows only while every slot is in use: a run with less work than the limit has no
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


@dataclass
class LimitState:
    """The limit and what it has learnt; ``finish`` is the whole policy."""

    ceiling: int
    decrease: float = 0.8
    hold_factor: float = 1.5  # answers this much slower than at their best: stop growing
    cut_factor: float = 3.0   # this much slower: a queue twice the work in service, cut
    probe_min: int = 8
    probe_max: int = 256
    window: int = 500
    limit: float = 1.0
    slow_start: bool = True
    probe: int = 8
    last_cut: float = float("-inf")  # when the limit was last lowered
    probe_from: int | None = None    # the level a probe started from, until it is judged
    probe_at: float = 0.0            # when that probe started
    probe_ok: int = 0                # answers at the probed level without overload
    credit: int = 0        # answers towards the next increase
    cuts: int = 0
    smoothed: float = 0.0  # moving average of the latency of answers
    seen: int = 0          # answers so far
    lows: deque[tuple[int, float]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.ceiling = max(1, self.ceiling)
        self.limit = min(float(self.ceiling), max(1.0, self.limit))
        self.probe = self.probe_min

    @property
    def slots(self) -> int:
        return max(1, int(self.limit))

    def finish(self, signal: Signal, *, sent_at: float, now: float, busy: bool) -> None:
        """One request, sent at ``sent_at``, ended at ``now`` with ``signal``; ``busy``: every
        slot was in use until it ended."""
        if signal is Signal.NEUTRAL:
            return
        if signal is Signal.OK:
            slower = self._slower(now - sent_at)
            if slower < self.cut_factor:
                self._grow(sent_at, busy and slower < self.hold_factor)
                return
        if sent_at >= self.last_cut:
            self._cut(now)

    def _slower(self, latency: float) -> float:
        """How much answers have slowed down: the smoothed latency (a moving average, so one
        slow answer on a busy machine is not a trend) over its lowest value in the last
        ``window`` answers; 1.0 until there is a trend to speak of."""
        self.smoothed = latency if self.seen == 0 else (
            self.smoothed + _SMOOTHING * (latency - self.smoothed))
        self.seen += 1
        lows = self.lows  # (answer number, smoothed), smoothed increasing: the sliding minimum
        while lows and lows[-1][1] >= self.smoothed:
            lows.pop()
        lows.append((self.seen, self.smoothed))
        if lows[0][0] <= self.seen - self.window:
            lows.popleft()
        if self.seen < 8 or lows[0][1] <= 0:
            return 1.0
        return self.smoothed / lows[0][1]

    def _grow(self, sent_at: float, busy: bool) -> None:
        if self.probe_from is not None and sent_at >= self.probe_at:
            self.probe_ok += 1
            if self.probe_ok >= self.slots:  # a round trip at the new level: it holds
                self.probe_from, self.probe = None, self.probe_min
        if not busy or self.slots >= self.ceiling:
            return
        if self.slow_start:
            self.limit = min(float(self.ceiling), self.limit + 1)
            return
        self.credit += 1
        if self.credit >= max(self.slots, self.probe):
            self.credit = 0
            if self.probe_from is None:
                self.probe_from, self.probe_at, self.probe_ok = self.slots, sent_at, 0
            self.limit = min(float(self.ceiling), float(self.slots + 1))

    def _cut(self, now: float) -> None:
        if self.probe_from is not None and self.slots > self.probe_from:
            self.probe = min(self.probe_max, self.probe * 2)  # the probe failed
        self.probe_from = None
        cut = self.limit / 2 if self.slow_start else self.limit * self.decrease
        self.limit = float(max(1, int(cut)))
        self.slow_start = False
        self.last_cut = now
        self.credit = 0
        self.cuts += 1


class ConcurrencyLimit:
    """Requests to one target wait here for a slot; thread-safe."""

    def __init__(self, ceiling: int, monotonic: Callable[[], float], *,
                 adaptive: bool = True) -> None:
        self.state = LimitState(ceiling, limit=1.0 if adaptive else float(ceiling))
        self.adaptive = adaptive
        self._monotonic = monotonic
        self._in_flight = 0
        self._peak = 0
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        return self.state.slots

    @property
    def peak(self) -> int:
        """The most requests that were in flight at once."""
        return self._peak

    @contextmanager
    def request(self) -> Iterator[Slot]:
        """Hold a slot around one request; how it ends is judged by ``signal_of``."""
        with self._cond:
            while self._in_flight >= self.state.slots:
                self._cond.wait()
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
                busy = self._in_flight >= self.state.slots
                self._in_flight -= 1
                if self.adaptive and slot.sent_at is not None:
                    before, signal = self.state.slots, signal_of(error)
                    self.state.finish(signal, sent_at=slot.sent_at, now=self._monotonic(),
                                      busy=busy)
                    if self.state.slots < before:
                        log.info("requests in flight limited to %d (was %d): %s",
                                 self.state.slots, before,
                                 "the server is overloaded" if signal is Signal.OVERLOAD
                                 else "answers slowed down",
                                 extra={"event": "concurrency_lowered",
                                        "limit": self.state.slots, "signal": str(signal)})
                self._cond.notify_all()


class Slot:
    """One held slot; ``send`` marks when the request left (its latency starts there). A
    slot given back unsent says nothing about the server."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self.sent_at: float | None = None

    def send(self) -> float:
        self.sent_at = self._monotonic()
        return self.sent_at
