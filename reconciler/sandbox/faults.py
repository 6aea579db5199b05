"""Fault decisions for ``/v2`` requests, repeatable for a seed and a request order.

Every ``/v2`` request draws exactly two numbers from one locked ``random.Random``, whatever
the rates and whatever the request, so changing a rate at runtime or mixing GETs and POSTs
never shifts the sequence of later decisions.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    """``status``: answer this instead of processing; ``drop``: commit, then send nothing."""

    status: int | None = None
    drop: bool = False


class FaultInjector:
    """Draws one ``Fault`` per request."""

    def __init__(self, seed: int | None) -> None:
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def draw(self, *, fail_rate: float, throttle_rate: float, drop_rate: float) -> Fault:
        with self._lock:
            kind, drop = self._random.random(), self._random.random()
        if kind < fail_rate:
            return Fault(status=500 if kind < fail_rate / 2 else 503)
        if kind < fail_rate + throttle_rate:
            return Fault(status=429)
        return Fault(drop=drop < drop_rate)
