"""Time, injected: the one place reconcile reads the wall clock, the monotonic clock or sleeps.

Everything that needs time (the apply protocol's settle window and backoff, the state store's
timestamps, the client's read retries and ``Retry-After`` dates, reports) takes a ``Clock``.
``SYSTEM_CLOCK`` is the real one; ``ManualClock`` is a clock that tests advance: its
``sleep`` returns at once after moving both clocks forward, so a 120 s settle window costs a
test nothing and its outcome does not depend on the machine's load.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Wall time for timestamps that cross processes, monotonic time for durations."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...

    def sleep(self, seconds: float, wake: threading.Event | None = None) -> None:
        """Wait ``seconds``, or less if ``wake`` is set meanwhile (a run being stopped)."""
        ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, wake: threading.Event | None = None) -> None:
        if seconds <= 0:
            return
        if wake is None:
            time.sleep(seconds)
        else:
            wake.wait(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told to (``advance``) or when someone sleeps on it.

    Thread-safe: the applier's workers may sleep on it at once; each sleep moves time forward
    by its own length. ``sleeps`` lists every sleep asked for, in order.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._start = start.astimezone(UTC)
        self._elapsed = 0.0
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        with self._lock:
            return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        with self._lock:
            return self._elapsed

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._elapsed += seconds

    def sleep(self, seconds: float, wake: threading.Event | None = None) -> None:
        with self._lock:
            self.sleeps.append(seconds)
        if wake is not None and wake.is_set():
            return
        self.advance(max(0.0, seconds))

    def __repr__(self) -> str:
        return f"ManualClock({self.now().isoformat()})"
