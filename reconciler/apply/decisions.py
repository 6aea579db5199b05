"""The apply protocol's choices, as pure functions over typed values (docs/architecture.md
§6.9). No I/O, no clock, no state: each function is one table, tested row by row in
tests/test_decisions.py.

A create's journal entry is written before the POST. What happens after a failed POST is
``on_create_error``; what an unresolved (pending) entry of an earlier run becomes is
``resolve_pending``; how a run ends is ``verdict``. Under ``glance`` each create carries an
id of its own choosing (``client_image_id``), and a 409 to it is ``on_id_conflict``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.errors import (
    ApiError,
    AuthError,
    ClientError,
    GatewayError,
    MalformedResponse,
    ServerError,
    ThrottledError,
    TransportError,
)
from reconciler.models import GONE_STATUSES, RunOutcome


class LookUp(StrEnum):
    """Whether to look for the image (by name and marker) before deciding."""

    NO = "no"                        # certainly not created: nothing to look for
    ONCE = "once"                    # the server is done with the request: one look decides
    UNTIL_SETTLED = "until settled"  # it may still land: look until the settle time is over


class IfAbsent(StrEnum):
    """What to do when the image was not (or could not be) looked for and is not there."""

    RELEASE = "release"            # close the journal entry; retrying will not help
    RETRY = "retry"                # send again after a backoff (the entry stays open)
    KEEP_PENDING = "keep pending"  # it may exist all the same: the next apply resolves it


@dataclass(frozen=True)
class OnError:
    """What a failed create means: look first or not, then what to do if nothing is found."""

    look_up: LookUp
    if_absent: IfAbsent
    stops_run: bool = False  # no other create can succeed either (a 401)


#: The table of ``on_create_error``, in the order it is matched (first match wins; more
#: specific classes come first).
CREATE_ERRORS: tuple[tuple[type[ApiError], bool | None, OnError], ...] = (
    # class,             sent,  decision
    (AuthError,          None,  OnError(LookUp.NO, IfAbsent.RELEASE, stops_run=True)),
    (ClientError,        None,  OnError(LookUp.NO, IfAbsent.RELEASE)),
    (ThrottledError,     None,  OnError(LookUp.NO, IfAbsent.RETRY)),
    (TransportError,     False, OnError(LookUp.NO, IfAbsent.RETRY)),
    (TransportError,     True,  OnError(LookUp.UNTIL_SETTLED, IfAbsent.RETRY)),
    (GatewayError,       None,  OnError(LookUp.UNTIL_SETTLED, IfAbsent.RETRY)),
    (ServerError,        None,  OnError(LookUp.ONCE, IfAbsent.RETRY)),
    (MalformedResponse,  None,  OnError(LookUp.UNTIL_SETTLED, IfAbsent.KEEP_PENDING)),
)  # fmt: skip
#: Any other ``ApiError`` (a status the API does not document): the image may exist.
UNKNOWN_ERROR = OnError(LookUp.NO, IfAbsent.KEEP_PENDING)


def on_create_error(exc: ApiError) -> OnError:
    """What a create's failure tells about the image, and so what to do next.

    | error                          | look up       | if absent    | why                       |
    |--------------------------------|---------------|--------------|---------------------------|
    | 401 ``AuthError``              | no            | release      | rejected; stops the run   |
    | other 4xx ``ClientError``      | no            | release      | rejected as wrong         |
    | 429 ``ThrottledError``         | no            | retry        | refused before the service|
    | ``TransportError``, not sent   | no            | retry        | never left this machine   |
    | ``TransportError``, sent       | until settled | retry        | may still be in progress  |
    | 502/504 ``GatewayError``       | until settled | retry        | may still be in progress  |
    | other 5xx ``ServerError``      | once          | retry        | the service is done       |
    | 2xx ``MalformedResponse``      | until settled | keep pending | it says created: it may be|
    | any other ``ApiError``         | no            | keep pending | unknown: assume it may be |
    """
    if isinstance(exc, TransportError) and exc.permanent:
        return OnError(LookUp.NO, IfAbsent.RELEASE)  # TLS or DNS: never left this machine
    for kind, sent, decision in CREATE_ERRORS:
        if isinstance(exc, kind) and (sent is None or getattr(exc, "sent", None) is sent):
            return decision
    return UNKNOWN_ERROR


class Next(StrEnum):
    """After a failed create that was not found: the next step."""

    SEND_AGAIN = "send again"
    RELEASE = "release"            # give up; the image certainly does not exist
    KEEP_PENDING = "keep pending"  # give up; the image may exist


def after_absent(decision: OnError, *, attempt: int, attempts: int, stopped: bool) -> Next:
    """What follows a failure whose image is not there (or was not looked for).

    | if absent    | attempts left, run going | otherwise    |
    |--------------|--------------------------|--------------|
    | retry        | send again               | release      |
    | release      | release                  | release      |
    | keep pending | keep pending             | keep pending |
    """
    if decision.if_absent is IfAbsent.KEEP_PENDING:
        return Next.KEEP_PENDING
    if decision.if_absent is IfAbsent.RETRY and attempt < attempts and not stopped:
        return Next.SEND_AGAIN
    return Next.RELEASE


class Looking(StrEnum):
    """One step of looking for an image whose create may still land."""

    FOUND = "found"              # record it; never send again
    ABSENT = "absent"            # certainly not created (settled, or the server was done)
    LOOK_AGAIN = "look again"    # wait (backing off, at most until settled) and look again
    UNSETTLED = "unsettled"      # the run stops before it is known: keep the entry pending


def look_step(look_up: LookUp, *, found: bool, since_send_s: float, settle_s: float,
              stopped: bool) -> Looking:
    """After one look-up for a failed create.

    | found | look up       | settled (since send >= settle) | run stopped | step       |
    |-------|---------------|--------------------------------|-------------|------------|
    | yes   | any           | any                            | any         | found      |
    | no    | once          | any                            | any         | absent     |
    | no    | until settled | yes                            | any         | absent     |
    | no    | until settled | no                             | yes         | unsettled  |
    | no    | until settled | no                             | no          | look again |
    """
    if found:
        return Looking.FOUND
    if look_up is not LookUp.UNTIL_SETTLED or since_send_s >= settle_s:
        return Looking.ABSENT
    return Looking.UNSETTLED if stopped else Looking.LOOK_AGAIN


class PendingFate(StrEnum):
    """What a pending journal entry of an earlier run becomes."""

    ADOPT = "adopt"      # the image exists: record it
    WAIT = "wait"        # not there yet, but it may still land: leave it pending (blocked)
    RELEASE = "release"  # not there, and too old to land: certainly not created


def resolve_pending(*, found: bool, age_s: float, settle_s: float) -> PendingFate:
    """A pending entry, given what the cloud shows (by name and marker) and its age.

    | found | age (since written) | fate    |
    |-------|---------------------|---------|
    | yes   | any                 | adopt   |
    | no    | < settle time       | wait    |
    | no    | >= settle time      | release |

    The age is measured from when the entry was written, just before the POST, so it is
    never shorter than the time since the send.
    """
    if found:
        return PendingFate.ADOPT
    return PendingFate.WAIT if age_s < settle_s else PendingFate.RELEASE


def verdict(*, done: int, failed: int, blocked: int, aborted: bool) -> RunOutcome:
    """How a run that finished ended; ``done`` counts created and adopted images, ``failed``
    those failed or skipped.

    | aborted | failed or blocked | done | outcome |
    |---------|-------------------|------|---------|
    | yes     | any               | any  | aborted |
    | no      | yes               | > 0  | partial |
    | no      | yes               | 0    | failed  |
    | no      | no                | any  | success |
    """
    if aborted:
        return RunOutcome.ABORTED
    if failed or blocked:
        return RunOutcome.PARTIAL if done else RunOutcome.FAILED
    return RunOutcome.SUCCESS


# --- client-chosen image ids (glance) ---------------------------------------------------------

#: The namespace of reconcile's image ids: uuid5(NAMESPACE, "target\0name\0generation").
ID_NAMESPACE = uuid.UUID("6f0d7c1e-2b8a-5d4e-9c3f-1a2b3c4d5e6f")
#: How many generations of one name are tried (each out-of-band delete uses one up).
MAX_GENERATIONS = 64


def client_image_id(target: str, name: str, generation: int) -> str:
    """The image id every machine chooses for (target, name, generation): the same one, so
    a second machine's create of the same image is a 409, not a duplicate."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{target}\0{name}\0{generation}"))


def generation_of(target: str, name: str, image_id: str) -> int | None:
    """Which generation ``image_id`` is for (target, name); None if it is not one of ours."""
    return next((g for g in range(MAX_GENERATIONS)
                 if client_image_id(target, name, g) == image_id), None)


class IdConflict(StrEnum):
    """What a 409 to a create with our own id means."""

    ADOPT = "adopt"            # another run created this very image: record it, send nothing
    NEXT_GENERATION = "next"   # the id was used by an image since deleted (Glance keeps it)
    FOREIGN = "foreign"        # a live image of another name holds it: give up, say so


def on_id_conflict(existing: dict[str, Any] | None, name: str) -> IdConflict:
    """| the id's image             | means                                         |
    |-----------------------------|-----------------------------------------------|
    | live, our name              | another machine created it: adopt             |
    | absent, deleted or killed   | a deleted image's id, reserved: next generation |
    | live, another name          | not ours to take: fail                        |
    """
    if existing is None or existing.get("status") in GONE_STATUSES:
        return IdConflict.NEXT_GENERATION
    return IdConflict.ADOPT if existing.get("name") == name else IdConflict.FOREIGN


# --- updates in place (docs/architecture.md §6.10) --------------------------------------------

class UpdateStep(StrEnum):
    """What a failed PATCH means, and so the next step."""

    STOP_RUN = "stop run"      # 401: rejected, and nothing else can be sent either
    FAIL = "fail"              # rejected as it is (400, 403, 404, 413): the server's message
    AS_ADD = "as add"          # IMS IMG.0035: a replaced attribute is missing; send it as add
    REPLAN = "replan"          # 409: the image changed meanwhile; read it, recompute, once
    RESEND = "resend"          # certainly not applied (429, never sent): back off, send again
    READ_BACK = "read back"    # may have been applied: read the image before anything else
    KEEP_PENDING = "keep pending"  # unknown: the next apply reads the image first


def on_update_error(exc: ApiError, *, replanned: bool, as_add: bool) -> UpdateStep:
    """A PATCH's failure, given whether its 409 re-plan and its IMG.0035 ``add`` were used.

    | error                                    | step                                 |
    |------------------------------------------|--------------------------------------|
    | 401 ``AuthError``                        | stop run                             |
    | 409, not re-planned yet                  | replan (read, recompute, send once)  |
    | 400 IMG.0035, not sent as add yet        | as add                               |
    | other 4xx ``ClientError``                | fail (the server's message)          |
    | 429 ``ThrottledError``                   | resend after a backoff               |
    | ``TransportError``, not sent             | resend after a backoff               |
    | ``TransportError`` sent, 5xx, 2xx broken | read back                            |
    | any other ``ApiError``                   | keep pending                         |

    A PATCH is never re-sent blindly: after a read back the document is computed again from
    the image as it is then (so an update that landed is recorded, not repeated).
    """
    if isinstance(exc, AuthError):
        return UpdateStep.STOP_RUN
    if isinstance(exc, ClientError):
        if exc.status == 409 and not replanned:
            return UpdateStep.REPLAN
        if exc.code == "IMG.0035" and not as_add:
            return UpdateStep.AS_ADD
        return UpdateStep.FAIL
    if isinstance(exc, ThrottledError):
        return UpdateStep.RESEND
    if isinstance(exc, TransportError):
        if exc.permanent:
            return UpdateStep.FAIL
        return UpdateStep.READ_BACK if exc.sent else UpdateStep.RESEND
    if isinstance(exc, GatewayError | ServerError | MalformedResponse):
        return UpdateStep.READ_BACK
    return UpdateStep.KEEP_PENDING


class UpdateFate(StrEnum):
    """What a pending update of an earlier run becomes, once its image is read."""

    RECORD = "record"    # the image shows the update: record it (the PATCH is not repeated)
    RELEASE = "release"  # it does not (or the image is gone): the next plan recomputes it


def resolve_pending_update(*, landed: bool) -> UpdateFate:
    """| the image shows every op of the entry's PATCH | fate    |
    |-----------------------------------------------|---------|
    | yes                                           | record  |
    | no, or the image is gone                      | release |

    No settle time: a PATCH that lands after this read changes nothing the recomputed one
    would not (``add`` is an upsert, tags a whole set); a ``remove`` it made first is a 409,
    which re-reads and re-plans (``on_update_error``).
    """
    return UpdateFate.RECORD if landed else UpdateFate.RELEASE
