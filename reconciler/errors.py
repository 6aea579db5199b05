"""The one exception tree of reconcile.

Library code raises these; only ``cli.py`` turns them into a message and an exit code
(every one of them exits 1). Each carries the data a user needs to act on it, and its
``str()`` is the complete, secret-free message.

    ReconcileError
    ├── ConfigError            bad option, config file or environment value
    ├── CatalogError           the catalog cannot be loaded or is invalid (all problems at once)
    ├── StateError             the state file cannot be used
    │   ├── StateVersionError  written by a newer reconcile, or unknown schema
    │   ├── StateLockedError   another run holds the lock (host, pid, user, since, operation)
    │   └── StateConnectionLost  the shared store's connection (and with it the lock) dropped
    ├── PlanFileError          a saved plan is unreadable, stale or already applied
    └── ApiError               the Image API answered with an error or not at all
        ├── AuthError          401: token missing, invalid or expired
        ├── ClientError        other 4xx: the request itself is wrong; never retried
        │   └── NotFoundError  404
        ├── ThrottledError     429: refused before the service saw it; ``retry_after``
        ├── ServerError        5xx from the service itself: it is done with the request
        ├── GatewayError       502, 504: a gateway answered for a service that did not; the
        │                      request may still be in progress behind it
        ├── TransportError     no (complete) answer: connect/read timeout, reset; ``sent``
        └── MalformedResponse  a success answer whose body breaks the API's schema or limits

What a status code means is decided once, in ``client.error_from_response``; everything
else branches on these classes (``apply.decisions`` says what each means for a create).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ReconcileError(Exception):
    """Base of every error reconcile reports to the user."""


class ConfigError(ReconcileError):
    """An option, the config file or an environment value is invalid."""


@dataclass(frozen=True)
class Problem:
    """One located problem in a catalog file."""

    file: str
    line: int | None
    path: str
    message: str
    severity: str = "error"  # "error" or "warning"
    column: int | None = None  # where a syntax error is, counting from 1
    image: str | None = None  # the name of the image the path is in, when it has one
    snippet: str = ""  # the source line of a syntax error, with a caret under the column

    @property
    def field(self) -> str:
        """The path as a person finds it: ``ubuntu-18.04-base.min_disk (images[1])``."""
        index, _, rest = self.path.partition(".")
        if self.image and index.startswith("images[") and rest != "name":
            return f"{self.image}{'.' + rest if rest else ''} ({index})"
        return self.path

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.line and self.column:
            where += f":{self.column}"
        field = f" {self.field}:" if self.path else ""
        return f"{where}:{field} {self.message}" + (f"\n{self.snippet}" if self.snippet else "")


class CatalogError(ReconcileError):
    """The catalog could not be loaded; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        plural = "s" if n != 1 else ""
        head = f"catalog is invalid ({n} problem{plural}); nothing was sent or written"
        super().__init__("\n".join([head, *(str(p) for p in self.problems)]))


class StateError(ReconcileError):
    """The state file cannot be read or written."""


class StateVersionError(StateError):
    """The state file's schema is newer than this reconcile understands."""


class StateLockedError(StateError):
    """Another run holds the write lock; ``holder`` says who (host, pid, user, since,
    operation) as far as the lock tells."""

    def __init__(self, location: str, holder: dict[str, object], *, waited_s: float = 0.0,
                 what: str = "") -> None:
        self.holder = holder
        self.pid, self.host = holder.get("pid"), holder.get("host")
        self.started_at = holder.get("since")
        if self.pid:
            who = (f"{holder.get('operation') or 'a run'} (pid {self.pid} on host {self.host}, "
                   f"user {holder.get('user') or '?'}, since {self.started_at})")
        else:
            who = "another run"
        waited = f" (waited {waited_s:g}s)" if waited_s else ""
        super().__init__(
            f"state {location}{what} is locked by {who}{waited}; wait for it to finish, or "
            "pass --lock-timeout (e.g. 10m) to wait for it. A killed run releases the lock "
            "by itself"
        )


class StateConnectionLost(StateError):
    """The connection to a shared state store dropped mid-run, and the lock with it."""


class PlanFileError(ReconcileError):
    """A saved plan cannot be applied."""


class ApiError(ReconcileError):
    """The Image API failed a request. Messages are sanitised: no tokens, no HTML, truncated."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        method: str | None = None,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status, self.code, self.message = status, code, message
        self.request_id, self.method, self.url = request_id, method, url
        self.retry_after = retry_after
        parts = [f"{method} {url}" if method and url else "", f"HTTP {status}" if status else ""]
        if code and code != str(status):
            parts.append(code)
        head = " ".join(p for p in parts if p)
        rid = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{head}: {message}{rid}" if head else f"{message}{rid}")


class AuthError(ApiError):
    """401: the token is missing, invalid or expired."""


class ClientError(ApiError):
    """A 4xx other than 401 and 429: the request is wrong and retrying will not help."""


class NotFoundError(ClientError):
    """404: no such resource."""


class ThrottledError(ApiError):
    """429: the gateway refused the request before the service saw it (nothing was done);
    ``retry_after`` is the server's wish in seconds, if it said one."""


class ServerError(ApiError):
    """A 5xx answered by the service (500, 503, ...): it is done with the request, whatever
    it did; a read may be repeated, a create only after looking whether it happened."""


class GatewayError(ApiError):
    """502 or 504: a gateway answered because the service did not (in time). The request
    may have reached the service and still be in progress there."""


class TransportError(ApiError):
    """No complete answer. ``sent`` is True when the request may have reached the server."""

    def __init__(self, message: str, *, sent: bool, method: str | None = None,
                 url: str | None = None, permanent: bool = False) -> None:
        self.sent = sent
        #: The same request will fail the same way (TLS mismatch, unknown host): no retry.
        self.permanent = permanent
        super().__init__(message, method=method, url=url)


class MalformedResponse(ApiError):
    """A 2xx answer whose body is not what the API promises: not JSON, a field missing or of
    the wrong type, an id over 255 characters, a body over the size cap, endless paging.

    ``problems`` lists each thing found wrong (``"images[3].id: Field required"``). For a
    create it means the image may exist although no usable answer came back: the applier
    treats it like an unanswered create (kept pending, later adopted by marker).
    """

    def __init__(
        self,
        message: str,
        *,
        problems: Sequence[str] = (),
        status: int | None = None,
        request_id: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        self.problems = list(problems)
        super().__init__(message, status=status, request_id=request_id, method=method, url=url)
