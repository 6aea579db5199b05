"""Fault decisions for ``/v2`` requests: seeded random rates, and scripts that say exactly
which request gets which fault.

Every ``/v2`` request draws exactly two numbers from one locked ``random.Random``, whatever
the rates and whatever the request, so changing a rate at runtime or mixing GETs and POSTs
never shifts the sequence of later decisions. A script overrides the draw: the sandbox's
``faults`` script is consumed by creates (``POST /v2/images``) in the order they arrive, and a
per-name script (``Sandbox.script``) by the creates, the look-ups (``GET /v2/images`` with
``name=``) and the updates (``PATCH`` of the image of that name) of one image name, so each
branch of the apply protocol can be produced on purpose.
"""

from __future__ import annotations

import random
import re
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus

from reconciler.errors import ConfigError

#: What a script step may say (``NNN`` is any HTTP status from 400 to 599).
STEPS = {
    "ok": "answer normally",
    "NNN": "answer status NNN (4xx or 5xx); nothing is committed (a refusal)",
    "commit:NNN": "commit the create (or update), then answer status NNN (the answer was lost "
                  "behind it)",
    "drop": "commit the create (or update), then close the connection without an answer",
    "lost": "close the connection without an answer; nothing is committed",
    "timeout": "answer nothing for hang_s seconds, then commit the create (or update) and "
               "close",
    "garbage": "commit the create (or update), then answer 201 (200 for a read or an update) "
               "with a body that is not JSON",
}


@dataclass(frozen=True)
class Fault:
    """``status``: answer this; ``commit``: process the request first (creates only);
    ``drop``: send no answer; ``hang``: wait hang_s first; ``garbage``: an unusable body."""

    status: int | None = None
    drop: bool = False
    commit: bool = True
    hang: bool = False
    garbage: bool = False

    @property
    def answers_early(self) -> bool:
        """Answered before anything is committed (and before the token is checked)."""
        return self.status is not None and not self.commit


OK = Fault()
_STATUSES = frozenset(s.value for s in HTTPStatus)


def parse_step(step: str) -> Fault:
    """One step of a fault script (see ``STEPS``)."""
    text = step.strip().lower()
    match = re.fullmatch(r"(commit:)?([45]\d\d)", text)
    if match and int(match.group(2)) in _STATUSES:
        return Fault(status=int(match.group(2)), commit=match.group(1) is not None)
    simple = {"ok": OK, "drop": Fault(drop=True), "lost": Fault(drop=True, commit=False),
              "timeout": Fault(drop=True, hang=True), "garbage": Fault(garbage=True)}
    if text not in simple:
        raise ConfigError(f"unknown fault {step!r}; a fault script is a comma-separated list of "
                          + ", ".join(STEPS))
    return simple[text]


def parse_script(script: str | Iterable[str]) -> list[Fault]:
    """``"502,drop,ok"`` or ``["502", "drop", "ok"]`` as faults."""
    steps = script.split(",") if isinstance(script, str) else list(script)
    return [parse_step(s) for s in steps if s.strip()]


class FaultInjector:
    """Draws one ``Fault`` per request; scripted steps come first."""

    def __init__(self, seed: int | None, script: str | Iterable[str] = ()) -> None:
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._creates: deque[Fault] = deque(parse_script(script))
        self._named: dict[tuple[str, str], deque[Fault]] = {}

    def script(self, name: str, *, post: str | Iterable[str] = (),
               get: str | Iterable[str] = (), patch: str | Iterable[str] = ()) -> None:
        """Faults for the creates (``post``), look-ups (``get``) and updates (``patch``) of
        one image name, in order; appended to what is left of an earlier script for that
        name. The name ``""`` scripts the listings without a name filter (a refresh)."""
        with self._lock:
            for method, steps in (("POST", post), ("GET", get), ("PATCH", patch)):
                self._named.setdefault((method, name), deque()).extend(parse_script(steps))

    def scripted_left(self) -> int:
        """Steps not consumed yet, of every script."""
        with self._lock:
            return len(self._creates) + sum(len(q) for q in self._named.values())

    def draw(self, *, fail_rate: float, throttle_rate: float, drop_rate: float,
             method: str = "GET", name: str | None = None, create: bool = False) -> Fault:
        with self._lock:
            kind, drop = self._random.random(), self._random.random()
            queue = self._named.get((method, name)) if name is not None else None
            if queue:
                return queue.popleft()
            if create and self._creates:
                return self._creates.popleft()
        if kind < fail_rate:
            return Fault(status=500 if kind < fail_rate / 2 else 503, commit=False)
        if kind < fail_rate + throttle_rate:
            return Fault(status=429, commit=False)
        return Fault(drop=create and drop < drop_rate)  # only creates are dropped at random
