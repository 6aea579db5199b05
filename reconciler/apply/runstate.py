"""One apply run's shared state: its id, its clock and the flag that stops it."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from reconciler.clock import Clock
from reconciler.errors import ApiError
from reconciler.models import Outcome

log = logging.getLogger("reconciler.apply")


@dataclass
class RunState:
    """Owned by the run; read by every worker. Stopping is one-way: nothing new starts, what
    runs finishes and is recorded, and waits (backoff, settling) end at once."""

    run_id: str
    clock: Clock
    _reason: str | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self, reason: str) -> None:
        """Stop the run; the first reason given is the one reported."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    @property
    def reason(self) -> str | None:
        """Why the run stopped, or None while it goes on."""
        return self._reason

    def pause(self, seconds: float) -> None:
        """Wait ``seconds``, or until the run is stopped."""
        self.clock.sleep(seconds, wake=self._stopped)

    # --- the outcomes every worker reports the same way ---------------------------------

    def failed(self, name: str, exc: ApiError, attempts: int, started: float,
               prefix: str = "", *, what: str = "") -> Outcome:
        """Log and report an image that failed (``what`` names the step, e.g. ": update")."""
        log.error("%s%s failed: %s%s", name, what, prefix, exc,
                  extra={"event": "failed", "image": name, "status": exc.status,
                         "code": exc.code, "request_id": exc.request_id})
        return Outcome.failure(name, "failed", prefix + exc.message, status=exc.status,
                               code=exc.code, request_id=exc.request_id, attempts=attempts,
                               duration_s=self.clock.monotonic() - started)

    def skipped(self, name: str) -> Outcome:
        """An image not attempted because the run stopped."""
        return Outcome.failure(name, "skipped", f"not attempted: {self.reason or 'run stopped'}")
