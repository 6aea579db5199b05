"""The apply protocol's decisions, row by row (the tables of reconciler/apply/decisions.py)."""

from __future__ import annotations

import pytest
from apply_helpers import answered

from reconciler.apply.decisions import (
    IfAbsent,
    Looking,
    LookUp,
    Next,
    OnError,
    PendingFate,
    after_absent,
    look_step,
    on_create_error,
    resolve_pending,
    verdict,
)
from reconciler.errors import (
    ApiError,
    MalformedResponse,
    TransportError,
)
from reconciler.models import RunOutcome


@pytest.mark.parametrize(
    ("error", "look_up", "if_absent", "stops_run"),
    [
        (answered(401), LookUp.NO, IfAbsent.RELEASE, True),
        (answered(400), LookUp.NO, IfAbsent.RELEASE, False),
        (answered(404), LookUp.NO, IfAbsent.RELEASE, False),
        (answered(429), LookUp.NO, IfAbsent.RETRY, False),
        (TransportError("refused", sent=False), LookUp.NO, IfAbsent.RETRY, False),
        (TransportError("reset", sent=True), LookUp.UNTIL_SETTLED, IfAbsent.RETRY, False),
        (answered(502), LookUp.UNTIL_SETTLED, IfAbsent.RETRY, False),
        (answered(504), LookUp.UNTIL_SETTLED, IfAbsent.RETRY, False),
        (answered(500), LookUp.ONCE, IfAbsent.RETRY, False),
        (answered(503), LookUp.ONCE, IfAbsent.RETRY, False),
        (MalformedResponse("no id", status=201), LookUp.UNTIL_SETTLED, IfAbsent.KEEP_PENDING,
         False),
        (answered(302), LookUp.NO, IfAbsent.KEEP_PENDING, False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, ApiError) else None,
)
def test_what_a_create_error_means(error: ApiError, look_up: LookUp, if_absent: IfAbsent,
                                   stops_run: bool) -> None:
    assert on_create_error(error) == OnError(look_up, if_absent, stops_run)


RETRY = OnError(LookUp.NO, IfAbsent.RETRY)
RELEASE = OnError(LookUp.NO, IfAbsent.RELEASE)
KEEP = OnError(LookUp.UNTIL_SETTLED, IfAbsent.KEEP_PENDING)


@pytest.mark.parametrize(
    ("decision", "attempt", "stopped", "expected"),
    [
        (RETRY, 1, False, Next.SEND_AGAIN),
        (RETRY, 5, False, Next.SEND_AGAIN),
        (RETRY, 6, False, Next.RELEASE),   # the last attempt failed
        (RETRY, 1, True, Next.RELEASE),    # the run stops: nothing is sent again
        (RELEASE, 1, False, Next.RELEASE),
        (RELEASE, 6, True, Next.RELEASE),
        (KEEP, 1, False, Next.KEEP_PENDING),
        (KEEP, 6, True, Next.KEEP_PENDING),
    ],
)
def test_what_follows_an_absent_image(decision: OnError, attempt: int, stopped: bool,
                                      expected: Next) -> None:
    assert after_absent(decision, attempt=attempt, attempts=6, stopped=stopped) is expected


@pytest.mark.parametrize(
    ("look_up", "found", "since_send", "stopped", "expected"),
    [
        (LookUp.ONCE, True, 0.0, False, Looking.FOUND),
        (LookUp.UNTIL_SETTLED, True, 500.0, True, Looking.FOUND),
        (LookUp.ONCE, False, 0.0, False, Looking.ABSENT),
        (LookUp.ONCE, False, 0.0, True, Looking.ABSENT),
        (LookUp.UNTIL_SETTLED, False, 120.0, False, Looking.ABSENT),
        (LookUp.UNTIL_SETTLED, False, 130.0, True, Looking.ABSENT),
        (LookUp.UNTIL_SETTLED, False, 119.9, True, Looking.UNSETTLED),
        (LookUp.UNTIL_SETTLED, False, 0.0, False, Looking.LOOK_AGAIN),
        (LookUp.UNTIL_SETTLED, False, 119.9, False, Looking.LOOK_AGAIN),
    ],
)
def test_each_look_for_a_failed_create(look_up: LookUp, found: bool, since_send: float,
                                       stopped: bool, expected: Looking) -> None:
    assert look_step(look_up, found=found, since_send_s=since_send, settle_s=120.0,
                     stopped=stopped) is expected


@pytest.mark.parametrize(
    ("found", "age", "expected"),
    [
        (True, 0.0, PendingFate.ADOPT),
        (True, 10_000.0, PendingFate.ADOPT),
        (False, -5.0, PendingFate.WAIT),  # a clock behind the writer's: still young
        (False, 0.0, PendingFate.WAIT),
        (False, 119.9, PendingFate.WAIT),
        (False, 120.0, PendingFate.RELEASE),
        (False, 10_000.0, PendingFate.RELEASE),
    ],
)
def test_what_a_pending_entry_becomes(found: bool, age: float, expected: PendingFate) -> None:
    assert resolve_pending(found=found, age_s=age, settle_s=120.0) is expected


@pytest.mark.parametrize(
    ("done", "failed", "blocked", "aborted", "expected"),
    [
        (3, 0, 0, False, RunOutcome.SUCCESS),
        (0, 0, 0, False, RunOutcome.SUCCESS),  # nothing to do
        (2, 1, 0, False, RunOutcome.PARTIAL),
        (2, 0, 1, False, RunOutcome.PARTIAL),
        (0, 1, 0, False, RunOutcome.FAILED),
        (0, 0, 2, False, RunOutcome.FAILED),
        (5, 0, 0, True, RunOutcome.ABORTED),
        (0, 3, 1, True, RunOutcome.ABORTED),
    ],
)
def test_how_a_run_ends(done: int, failed: int, blocked: int, aborted: bool,
                        expected: RunOutcome) -> None:
    assert verdict(done=done, failed=failed, blocked=blocked, aborted=aborted) is expected


# --- client-chosen ids (glance) ------------------------------------------------------------

def test_client_image_ids_are_the_same_everywhere_and_differ_per_target_name_generation() -> None:
    from reconciler.apply.decisions import client_image_id
    one = client_image_id("https://glance.example", "ubuntu", 0)
    assert one == client_image_id("https://glance.example", "ubuntu", 0)
    assert len({one, client_image_id("https://glance.example", "ubuntu", 1),
                client_image_id("https://glance.example", "debian", 0),
                client_image_id("https://other.example", "ubuntu", 0)}) == 4


def test_generation_of_finds_our_ids_and_only_ours() -> None:
    from reconciler.apply.decisions import client_image_id, generation_of
    assert generation_of("t", "a", client_image_id("t", "a", 5)) == 5
    assert generation_of("t", "a", client_image_id("t", "b", 5)) is None
    assert generation_of("t", "a", "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba86") is None


@pytest.mark.parametrize(("existing", "expected"), [
    ({"name": "a", "status": "queued"}, "adopt"),
    ({"name": "a", "status": "active"}, "adopt"),
    (None, "next"),
    ({"name": "a", "status": "deleted"}, "next"),
    ({"name": "a", "status": "killed"}, "next"),
    ({"name": "b", "status": "active"}, "foreign"),
])
def test_on_id_conflict(existing: dict[str, str] | None, expected: str) -> None:
    from reconciler.apply.decisions import on_id_conflict
    assert on_id_conflict(existing, "a") == expected
