"""Capacity mode: the sandbox behaves like a server with a fixed number of workers.

More than ``capacity`` requests in flight: the extra ones are answered 503 at once, as an
overloaded Glance or a gateway in front of it does. Those admitted are slowed by the load they
meet: with ``n`` in flight (this one included) a request takes
``latency * (1 + (n - 1) / capacity)``, so at full load twice the unloaded latency. Throughput
then grows with parallelism up to ``capacity`` and the best fixed parallelism is ``capacity``;
an adaptive client has to find that without being told.

Without a capacity every request is admitted and served at the unloaded latency; the requests
in flight are counted all the same, so tests can see how many the server held at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Capacity:
    """Requests in flight at the sandbox, and the load factor each one gets (``capacity``
    None: no limit, factor 1)."""

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self._in_flight = 0
        self._lock = threading.Lock()
        self.peak = 0     # the most requests admitted at once
        self.refused = 0  # requests answered 503 for want of a place

    @contextmanager
    def admit(self) -> Iterator[float | None]:
        """Hold a place while the request is served; yields its latency factor, or None
        when it is refused (no place is held then)."""
        with self._lock:
            if self.capacity is not None and self._in_flight >= self.capacity:
                load = None
                self.refused += 1
            else:
                self._in_flight += 1
                load = self._in_flight
                self.peak = max(self.peak, load)
        if load is None:
            yield None
            return
        try:
            yield 1.0 if self.capacity is None else 1 + (load - 1) / self.capacity
        finally:
            with self._lock:
                self._in_flight -= 1
