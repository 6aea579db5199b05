"""Capacity mode: the sandbox behaves like a server with a fixed number of workers.

More than ``capacity`` requests in flight: the extra ones are answered 503 at once, as an
overloaded Glance or a gateway in front of it does. Those admitted are slowed by the load they
meet: with ``n`` in flight (this one included) a request takes
``latency * (1 + (n - 1) / capacity)``, so at full load twice the unloaded latency. Throughput
then grows with parallelism up to ``capacity`` and the best fixed parallelism is ``capacity``;
an adaptive client has to find that without being told.

Every ``/v2`` request counts against the capacity, whatever its method: a PATCH takes a worker
as a POST or a GET does. What each method met is kept apart too (``Load``), so a test can say
how a client sent its updates, not only its requests.

Without a capacity every request is admitted and served at the unloaded latency; the requests
in flight are counted all the same, so tests can see how many the server held at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace


@dataclass
class Load:
    """The requests of one method (or of all) that met the capacity."""

    in_flight: int = 0
    peak: int = 0     # the most admitted at once
    refused: int = 0  # answered 503 for want of a place
    #: the most admitted at once before the first of them was answered: how the client
    #: started (one request and then more, or all at once)
    opening: int = 0
    answered: bool = False

    def admitted(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if not self.answered:
            self.opening = self.peak

    def done(self) -> None:
        self.in_flight -= 1
        self.answered = True


class Capacity:
    """Requests in flight at the sandbox, and the load factor each one gets (``capacity``
    None: no limit, factor 1)."""

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self._all = Load()
        self._methods: dict[str, Load] = {}
        self._lock = threading.Lock()

    @property
    def peak(self) -> int:
        """The most requests admitted at once."""
        return self._all.peak

    @property
    def refused(self) -> int:
        """Requests answered 503 for want of a place."""
        return self._all.refused

    def load(self, method: str) -> Load:
        """A copy of what the requests of ``method`` met so far."""
        with self._lock:
            return replace(self._methods.get(method) or Load())

    @contextmanager
    def admit(self, method: str) -> Iterator[float | None]:
        """Hold a place while the request is served; yields its latency factor, or None
        when it is refused (no place is held then)."""
        with self._lock:
            loads = (self._all, self._methods.setdefault(method, Load()))
            if self.capacity is not None and self._all.in_flight >= self.capacity:
                load = None
                for one in loads:
                    one.refused += 1
            else:
                for one in loads:
                    one.admitted()
                load = self._all.in_flight
        if load is None:
            yield None
            return
        try:
            yield 1.0 if self.capacity is None else 1 + (load - 1) / self.capacity
        finally:
            with self._lock:
                for one in loads:
                    one.done()
