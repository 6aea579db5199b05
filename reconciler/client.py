"""HTTP client for the Image API (Huawei Cloud IMS / OpenStack Glance v2 ``/v2/images``).

``ImageClient`` sends one request per call and turns every failure into the ``ApiError`` family
of ``reconciler.errors``: ``error_from_response`` is the one place that decides what a status
code means (every body shape of docs/api-contract.md §9), ``TransportError.sent`` says whether
a request that got no answer may have reached the server, and a success answer with an
unusable body is a ``MalformedResponse``. Writes are retried here only once, after a 401, with
a fresh token (docs/api-contract.md §11.2); reads may also be retried with backoff
(``read_retry``). Backoff and the look-up-before-retry protocol of creates belong to
``reconciler.apply``, which alone knows whether repeating a create is safe
(docs/architecture.md §6.5). One client is shared by the apply's worker threads: it keeps no
per-request state, and httpx's connection pool is thread-safe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import httpcore
import httpx
from pydantic import BaseModel, ValidationError

from . import redaction
from .answers import ImageAnswer, ImagePage, problems
from .clock import SYSTEM_CLOCK, Clock
from .defaults import DEFAULT_REQUEST_TIMEOUT
from .errors import (
    ApiError,
    AuthError,
    ClientError,
    ConfigError,
    GatewayError,
    MalformedResponse,
    NotFoundError,
    ServerError,
    ThrottledError,
    TransportError,
)
from .models import MARKER_PROPERTY
from .patch import MEDIA_TYPE as PATCH_MEDIA_TYPE
from .serverinfo import OS_VERSIONS_PATH, SCHEMA_PATH, InvalidServerInfo, Kind, validate_body

log = logging.getLogger("reconciler.client")
_Model = TypeVar("_Model", bound=BaseModel)

__all__ = [
    "DEFAULT_USER_AGENT",
    "ImageClient",
    "StaticToken",
    "TokenProvider",
    "error_from_response",
    "send_capped",
]


def _package_version() -> str:
    try:
        return version("reconcile")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


DEFAULT_USER_AGENT = f"reconcile/{_package_version()}"

# Sized for the applier's thread pool: a worker must never wait for a free connection.
_POOL_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64)
# Glance's api_limit_max; larger limits are silently capped (docs/api-contract.md §10.1).
_MAX_PAGE_SIZE = 1000
_MAX_MESSAGE = 500
_MAX_CODE = 64
# Only the head of a non-JSON body is parsed: the message is in the first lines, and a
# megabyte of HTML must cost neither time nor log space.
_SCAN_LIMIT = 64 * 1024
#: The largest answer body read (8 MiB, a listing page of 1,000 images with long descriptions
#: is under 2 MiB). A success answer over it is refused while it is read, never loaded whole;
#: of an error answer only the head is kept.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: The most pages one listing may take: 10 million images at 1,000 a page. A server that keeps
#: sending fresh pages beyond it is looping, and the listing fails instead of running forever.
MAX_PAGES = 10_000
_GONE_STATUSES = frozenset({"deleted", "pending_delete", "killed"})


class TokenProvider(Protocol):
    """Where the client gets its ``X-Auth-Token``; ``reconciler.auth`` adds Keystone refresh."""

    def token(self) -> str:
        """The token to send now."""
        ...

    def invalidate(self, failed_token: str) -> bool:
        """Drop ``failed_token`` after a 401; True if a fresh token can be tried."""
        ...


def header_value_problem(token: str) -> str | None:
    """Why ``token`` cannot be sent as an HTTP header value, or None if it can.

    Tokens are visible ASCII (RFC 9110 field values; Keystone and IAM tokens are base64url),
    so anything else is a paste error that no retry can fix: it is refused before any request.
    """
    for position, char in enumerate(token, 1):
        if char in "\r\n":
            return f"contains a line break (at character {position}): a token is one line"
        if not "!" <= char <= "~":
            what = "a non-ASCII" if ord(char) > 127 else "a space or control"
            return f"contains {what} character (at character {position})"
    return None


class StaticToken:
    """A fixed token (e.g. ``OS_TOKEN``): nothing to refresh, so a 401 is final."""

    def __init__(self, token: str, source: str = "the API token") -> None:
        if not token:
            raise ConfigError(f"{source} is empty")
        problem = header_value_problem(token)
        if problem:
            raise ConfigError(f"{source} {problem}; nothing was sent. Check how it was "
                              "copied (a token is printable ASCII without spaces)")
        redaction.register(token)
        self._token = token

    def token(self) -> str:
        return self._token

    def invalidate(self, failed_token: str) -> bool:
        return False

    def __repr__(self) -> str:
        return "StaticToken(***)"  # a repr ends up in tracebacks and logs


# --------------------------------------------------------------------------- error mapping


def error_from_response(response: httpx.Response, *, secrets: Iterable[str] = (),
                        clock: Clock = SYSTEM_CLOCK) -> ApiError:
    """Map an error answer to the ``ApiError`` subclass for its status, with a clean message.

    This is where a status code gets its meaning, once (docs/api-contract.md §9):

    =========  ==================  ========================================    """
    secret_list = [s for s in secrets if s]
    status = response.status_code
    reason = response.reason_phrase or httpx.codes.get_reason_phrase(status)
    response.read()
    text = _redact(response.text, secret_list)

    code: object = None
    message = ""
    body_request_id: object = None
    try:
        body = json.loads(text) if text.strip() else None
    except ValueError:
        body = None
        message = _text_of_html(text) if _looks_like_html(response, text) else text[:_SCAN_LIMIT]
    else:
        found = _code_and_message(body)
        if found is not None:
            code, raw_message = found
            message = raw_message if isinstance(raw_message, str) else json.dumps(raw_message)
        else:
            message = text[:_SCAN_LIMIT]
        if isinstance(body, dict):
            body_request_id = body.get("request_id")

    message = _without_status_line(_clean(message), status, reason) or reason or "no message"
    request_id = (
        response.headers.get("x-request-id")
        or response.headers.get("x-openstack-request-id")
        or (body_request_id if isinstance(body_request_id, str) else None)
    )
    if request_id:
        request_id = _truncate(_redact(request_id, secret_list), _MAX_CODE)
    method, url = _request_line(response)
    fields: dict[str, Any] = {
        "status": status,
        "code": _code_text(code, status, secret_list),
        "request_id": request_id,
        "method": method,
        "url": url,
    }
    message = _truncate(_redact(message, secret_list), _MAX_MESSAGE)
    kind = _error_class(status)
    if kind in (ThrottledError, GatewayError, ServerError):
        fields["retry_after"] = _retry_after(response, clock)
    return kind(message, **fields)


def _error_class(status: int) -> type[ApiError]:
    if status == 401:
        return AuthError
    if status == 404:
        return NotFoundError
    if status == 429:
        return ThrottledError
    if status in (502, 504):
        return GatewayError
    if 500 <= status <= 599:
        return ServerError
    if 400 <= status <= 499:
        return ClientError
    return ApiError


#: What a read may be retried after: nothing was changed, and the next try may succeed.
RETRYABLE_READ: tuple[type[ApiError], ...] = (
    ThrottledError, GatewayError, ServerError, TransportError)


def _code_and_message(body: object) -> tuple[object, object] | None:
    """Find (code, message) like the Huawei SDK: known key pairs first, then nested objects."""
    if not isinstance(body, dict):
        return None
    for code_key, message_key in (
        ("error_code", "error_msg"),  # API gateway
        ("errorCode", "errorMsg"),
        ("code", "message"),  # Glance webob; inside "error": IMS and keystonemiddleware
    ):
        if code_key in body and message_key in body:
            return body[code_key], body[message_key]
    for value in body.values():
        found = _code_and_message(value)
        if found is not None:
            return found
    for message_key in ("error_msg", "errorMsg", "message"):
        if message_key in body:
            return None, body[message_key]
    return None


def _code_text(code: object, status: int, secrets: Sequence[str]) -> str:
    # Glance's "code" is the status line ("400 Bad Request") and keystonemiddleware's an int:
    # neither says more than the status, so only service codes such as IMG.0056 are kept.
    if isinstance(code, str) and code.strip() and not re.match(r"\d{3}(\s|$)", code.strip()):
        return _truncate(_redact(_clean(code), secrets), _MAX_CODE)
    return str(status)


def _looks_like_html(response: httpx.Response, text: str) -> bool:
    head = text.lstrip()[:64].lower()
    return "html" in response.headers.get("content-type", "") or head.startswith(
        ("<!doctype", "<html")
    )


class _TextExtractor(HTMLParser):
    """Collects the visible text of an HTML page; the title would only repeat the status."""

    _HIDDEN = frozenset({"head", "title", "script", "style"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth += 1
        self.parts.append(" ")  # "<h1>400 Bad Request</h1>Detail" must not glue words

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self._hidden_depth:
            self._hidden_depth -= 1
        self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.parts.append(data)


def _text_of_html(text: str) -> str:
    extractor = _TextExtractor()
    extractor.feed(text[:_SCAN_LIMIT])
    extractor.close()
    return "".join(extractor.parts)


def _clean(text: str) -> str:
    """Strip tags (Glance's JSON messages carry ``<br />``) and collapse whitespace."""
    text = re.sub(r"<[^<>]*>", " ", text)
    text = re.sub(r"<[^<>]*$", " ", text)  # a tag cut in half by _SCAN_LIMIT
    return " ".join(text.split())


def _without_status_line(message: str, status: int, reason: str) -> str:
    # webob's plain-text and HTML bodies open with "400 Bad Request", which the error's
    # own "HTTP 400" already says.
    for line in {f"{status} {reason}", f"{status} {httpx.codes.get_reason_phrase(status)}"}:
        if message.lower().startswith(line.lower()):
            return message[len(line) :].lstrip(" :-")
    return message


def _redact(text: str, secrets: Sequence[str]) -> str:
    return redaction.redact(text, secrets)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _retry_after(response: httpx.Response, clock: Clock) -> float | None:
    """``Retry-After`` in seconds: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    value = response.headers.get("retry-after", "").strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    when = http_date(value)
    if when is None:
        return None
    # Measured against the server's own Date header when there is one, so a skewed local
    # clock does not turn "in 30 s" into "now" or "in an hour".
    now = http_date(response.headers.get("date", "")) or clock.now()
    return max(0.0, (when - now).total_seconds())


def http_date(value: str) -> datetime | None:
    """An HTTP-date header value (``Date``, ``Retry-After``) as an aware time; None if it is
    missing or unreadable."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _request_line(response: httpx.Response) -> tuple[str | None, str | None]:
    try:
        request = response.request
    except RuntimeError:  # a Response built by hand has no request
        return None, None
    return request.method, _safe_url(request.url)


def _safe_url(url: httpx.URL) -> str:
    # Errors are logged and shown: no query string, no user info.
    return str(url.copy_with(query=None, fragment=None, userinfo=b""))


def without_userinfo(url: str) -> str:
    """``url`` with anything before an ``@`` in its authority cut off, for messages: a URL
    given as ``https://user:password@host`` must not print the password when refused."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:]
    if "@" in authority:
        authority = "…@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{path}"


def refuse_userinfo(url: str, what: str, fix: str) -> None:
    """Refuse ``user:password@`` in a URL: it would be printed, stored as the target and sent
    as Basic auth. Credentials come from tokens, passwords and keys, never URLs."""
    shown = without_userinfo(url)
    if shown != url:
        raise ConfigError(f"{what} {shown} carries a user name or password before '@'; "
                          f"remove it: {fix}")


def send_capped(http: httpx.Client, request: httpx.Request, *,
                auth: httpx.Auth | None = None) -> httpx.Response:
    """Send ``request`` and read at most ``MAX_BODY_BYTES`` of the answer, streaming.

    A success answer that is larger is a ``MalformedResponse``; reading stops at the cap,
    whatever the server keeps sending. An error answer keeps its first ``MAX_BODY_BYTES``
    (its message is in the head). Transport failures propagate as httpx raises them.
    """
    response = http.send(request, auth=auth, stream=True)
    chunks: list[bytes] = []
    try:
        size = 0
        try:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    if response.is_success:
                        raise _too_big(response, request)
                    chunks.append(chunk[: len(chunk) - (size - MAX_BODY_BYTES)])
                    break
                chunks.append(chunk)
        except httpx.DecodingError:
            if response.is_success:
                raise _malformed(request, response.status_code, "cannot be decoded "
                                 f"(Content-Encoding {response.headers.get('content-encoding')})"
                                 ) from None
            chunks = []
    finally:
        response.close()
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _BODY_HEADERS]
    return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks),
                          request=request, extensions=response.extensions)


#: What described the body as it came (encoded, chunked): not true of the decoded copy.
_BODY_HEADERS = (b"content-encoding", b"content-length", b"transfer-encoding")


def _json_of(response: httpx.Response) -> Any:
    """The answer's JSON; ``ValueError`` saying why if there is none to be had."""
    try:
        return response.json()
    except ValueError:
        raise ValueError("is not JSON") from None
    except RecursionError:  # e.g. [[[[... : json's C parser gives up this way
        raise ValueError("is JSON nested too deeply to read") from None


def _too_big(response: httpx.Response, request: httpx.Request) -> MalformedResponse:
    return _malformed(request, response.status_code,
                      f"is over {MAX_BODY_BYTES // (1024 * 1024)} MiB; reading stopped there")


def _malformed(request: httpx.Request, status: int, problem: str, *,
               found: Sequence[str] = (), request_id: str | None = None) -> MalformedResponse:
    return MalformedResponse(f"unexpected response: the body {problem}", problems=found,
                             status=status, request_id=request_id, method=request.method,
                             url=_safe_url(request.url))


# --------------------------------------------------------------------------- transport errors

# Failures that happen before any byte of the request can have reached the server.
_NOT_SENT: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)


def _transport_error(
    exc: httpx.TransportError, request: httpx.Request, secrets: Sequence[str]
) -> TransportError:
    # Anything not known to fail before sending (read/write timeouts and errors, a server that
    # hangs up) counts as possibly received: the applier then looks before it retries.
    sent = not isinstance(exc, _NOT_SENT)
    what = (
        "no complete response; the request may have been received"
        if sent
        else "the request was not sent"
    )
    detail = _truncate(_redact(_clean(str(exc)), secrets), 200)
    kind = type(exc).__name__
    permanent, hint = _diagnose(exc)
    message = f"{what} ({kind}: {detail})" if detail else f"{what} ({kind})"
    return TransportError(
        f"{message}; {hint}" if hint else message,
        sent=sent,
        method=request.method,
        url=_safe_url(request.url),
        permanent=permanent,
    )


def _diagnose(exc: httpx.TransportError) -> tuple[bool, str]:
    """Whether the failure is certain to repeat, and which setting to check."""
    text = str(exc).lower()
    if "wrong_version_number" in text or "wrong version number" in text or \
            "record layer failure" in text or "packet length too long" in text:
        return True, ("the server does not speak TLS there: is the endpoint http://, not "
                      "https://? (check --endpoint)")
    if "certificate" in text and ("verify failed" in text or "self-signed" in text
                                  or "mismatch" in text or "expired" in text):
        return True, ("the server's TLS certificate is not trusted: pass its CA bundle with "
                      "--cacert (OS_CACERT), or check the host name in --endpoint")
    if any(m in text for m in ("name or service not known", "nodename nor servname",
                               "no address associated with hostname", "name does not resolve",
                               "getaddrinfo failed")):
        return True, "the host name does not resolve: check --endpoint (RECONCILE_ENDPOINT)"
    if "connection refused" in text:
        return False, ("nothing listens at that address: check --endpoint "
                       "(RECONCILE_ENDPOINT) and that the service is up")
    if isinstance(exc, httpx.ConnectTimeout):
        return False, ("no answer to the connection: check --endpoint, the network (proxy, "
                       "firewall) and --connect-timeout")
    return False, ""


# --------------------------------------------------------------------------- the client


def normalize_endpoint(endpoint: str) -> str:
    """The API root of an endpoint (no trailing / or /v2); also the state's target key."""
    refuse_userinfo(endpoint, "the image endpoint",
                    "give the token or password as `reconcile apply --help` shows")
    root = endpoint.strip().rstrip("/")
    if root.endswith("/v2"):
        root = root[: -len("/v2")].rstrip("/")
    if not re.match(r"https?://[^/]", root):
        raise ConfigError(f"image endpoint {endpoint!r} must be an http:// or https:// URL")
    try:
        httpx.URL(root)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"image endpoint {endpoint!r} is not a valid URL: {exc}") from None
    return root


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: exponential backoff with ±50 % jitter, or the
    server's ``Retry-After`` when it gives one."""

    attempts: int = 6          # tries in all, the first one included
    base_delay: float = 0.5    # first backoff, doubled each time
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        backoff: float = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return backoff * rng.uniform(0.5, 1.5)


#: ... and a read of the server's rules (a few dozen KiB), which the run can do without.
RULES_DEADLINE = 10.0


def http_client(verify: bool | str = True, *, connect_timeout: float = 10.0,
                read_timeout: float = 60.0,
                request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> httpx.Client:
    """A pooled client sized for the apply's worker threads; ``verify`` may be a CA path.

    ``connect_timeout`` and ``read_timeout`` bound each wait for the network;
    ``request_timeout`` bounds a whole request, so a server trickling one byte a second
    cannot hold it for ever. ``abort_requests(client)`` cuts every connection at once.
    """
    deadline = _RequestDeadline(request_timeout)
    client = _Client(timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
                          limits=_POOL_LIMITS, verify=_ssl_context(verify),
                          event_hooks={"request": [deadline.start]})
    for transport in (client._transport, *client._mounts.values()):
        # httpx takes no network backend; its connection pools get one that bounds every
        # socket wait by what is left of the request's deadline.
        pool = getattr(transport, "_pool", None)
        inner = getattr(pool, "_network_backend", None)
        if pool is None or not isinstance(inner, httpcore.NetworkBackend):
            raise RuntimeError("this httpx version hides its network backend; request "
                               "deadlines cannot be enforced")
        pool._network_backend = _DeadlineBackend(inner, deadline)
        if type(pool) is httpcore.ConnectionPool and _LEAN_POOL_FITS:
            pool.__class__ = _LeanPool  # the same pool, its bookkeeping done in one pass
    return client


#: The httpcore whose ``_assign_requests_to_connections`` ``_LeanPool`` redoes (1.0.x,
#: requests queued as ``PoolRequest``); with any other the pool is left as it is.
_LEAN_POOL_FITS = httpcore.__version__.startswith("1.0.") and hasattr(
    httpcore.ConnectionPool, "_assign_requests_to_connections")


class _LeanPool(httpcore.ConnectionPool):
    """httpcore's connection pool, with less bookkeeping on every request and every answer
    closed (done under the pool's lock, one thread at a time). httpcore asks every
    connection whether it has expired (for an idle one a ``poll()`` of its socket: has the
    server closed it?) on each request and each close, and counts the connections once per
    idle one. Here a connection is asked when it is about to be given a request, and all of
    them only when none is available (before a new one is opened or an idle one replaced):
    the same connection serves the same request as with httpcore, never one that expired,
    which is closed when it is found; an expired one not needed meanwhile is closed later
    (``tests/test_client_pool.py`` holds both side by side). Only for pools that keep every
    connection they may open (``max_keepalive_connections`` ≥ ``max_connections``, as
    ``http_client``'s do); any other does as httpcore does."""

    def _assign_requests_to_connections(self) -> list[httpcore.ConnectionInterface]:
        if self._max_keepalive_connections < self._max_connections:
            return super()._assign_requests_to_connections()
        closing: list[httpcore.ConnectionInterface] = []
        connections = self._connections
        connections[:] = [c for c in connections if not c.is_closed()]
        for pool_request in self._requests:
            if not pool_request.is_queued():
                continue
            origin = pool_request.request.url.origin
            chosen = None
            for connection in list(connections):
                if connection.can_handle_request(origin) and connection.is_available():
                    if not connection.has_expired():
                        chosen = connection
                        break
                    connections.remove(connection)
                    closing.append(connection)
            if chosen is None:  # as httpcore decides it: with every expired one gone
                for connection in list(connections):
                    if connection.has_expired():
                        connections.remove(connection)
                        closing.append(connection)
                idle = next((c for c in connections if c.is_idle()), None)
                if len(connections) < self._max_connections:
                    chosen = self.create_connection(origin)
                elif idle is not None:
                    connections.remove(idle)
                    closing.append(idle)
                    chosen = self.create_connection(origin)
                else:
                    continue
                connections.append(chosen)
            pool_request.assign_to_connection(chosen)
        return closing


class _Cookies(httpx.Cookies):
    """httpx's cookie jar, minus the work of looking for cookies in an answer that sets none
    (as costly as reading the answer's JSON, on every answer)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers or "set-cookie2" in response.headers:
            super().extract_cookies(response)


class _Client(httpx.Client):
    """``httpx.Client`` with ``_Cookies`` for a jar: cookies a server (or a gateway before it)
    sets are kept and sent back as before."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._jar = _Cookies(kwargs.get("cookies"))

    @property
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._jar = _Cookies(cookies)


def abort_requests(client: httpx.Client) -> None:
    """Fail every request of ``client`` now and from now on: each open connection is shut
    down, and no new one is made. For a run being stopped that cannot wait for a slow server
    (the requests cut off count as sent without an answer)."""
    for transport in (client._transport, *client._mounts.values()):
        backend = getattr(getattr(transport, "_pool", None), "_network_backend", None)
        if isinstance(backend, _DeadlineBackend):
            backend.abort()


class _RequestDeadline(threading.local):
    """When the request this thread is sending must be done (one request per thread at a
    time: httpx reads the whole answer before ``send`` returns). A request may ask for a
    shorter deadline than the client's in its ``deadline_s`` extension."""

    at: float | None = None
    current: float = 0.0  # the deadline of the request under way

    def __init__(self, total: float) -> None:
        self.total = total

    def start(self, request: httpx.Request) -> None:
        self.current = min(self.total, request.extensions.get("deadline_s") or self.total)
        self.at = SYSTEM_CLOCK.monotonic() + self.current  # network time is real time

    def bound(self, timeout: float | None, expired: type[Exception]) -> float | None:
        """``timeout``, or less if the deadline is nearer; raises ``expired`` past it."""
        if self.at is None:
            return timeout
        left = self.at - SYSTEM_CLOCK.monotonic()
        if left <= 0:
            raise expired(self.message)
        return left if timeout is None else min(timeout, left)

    @property
    def message(self) -> str:
        return f"the request took longer than its deadline of {self.current:g} s"

    def passed(self) -> bool:
        return self.at is not None and SYSTEM_CLOCK.monotonic() >= self.at


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _DeadlineBackend) -> None:
        self._inner, self._backend = inner, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        deadline = self._backend.deadline
        try:
            return self._inner.read(max_bytes, deadline.bound(timeout, httpcore.ReadTimeout))
        except httpcore.ReadTimeout:
            if deadline.passed():  # say which limit it was
                raise httpcore.ReadTimeout(deadline.message) from None
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        deadline = self._backend.deadline
        try:
            self._inner.write(buffer, deadline.bound(timeout, httpcore.WriteTimeout))
        except httpcore.WriteTimeout:
            if deadline.passed():
                raise httpcore.WriteTimeout(deadline.message) from None
            raise

    def close(self) -> None:
        self._backend.forget(self)
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        bounded = self._backend.deadline.bound(timeout, httpcore.ConnectTimeout)
        tls = self._inner.start_tls(ssl_context, server_hostname, bounded)
        self._backend.forget(self)
        return self._backend.track(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """The socket backend, with each wait bounded by the request's deadline, and a way to cut
    every connection at once."""

    def __init__(self, inner: httpcore.NetworkBackend, deadline: _RequestDeadline) -> None:
        self._inner, self.deadline = inner, deadline
        self._streams: set[_DeadlineStream] = set()
        self._lock = threading.Lock()
        self._aborted = False

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        if self._aborted:
            raise httpcore.ConnectError("not sent: the run was stopped")
        stream = self._inner.connect_tcp(
            host, port, self.deadline.bound(timeout, httpcore.ConnectTimeout), local_address,
            socket_options)
        return self.track(stream)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        if self._aborted:
            raise httpcore.ConnectError("not sent: the run was stopped")
        stream = self._inner.connect_unix_socket(
            path, self.deadline.bound(timeout, httpcore.ConnectTimeout), socket_options)
        return self.track(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def track(self, stream: httpcore.NetworkStream) -> _DeadlineStream:
        wrapped = _DeadlineStream(stream, self)
        with self._lock:
            self._streams.add(wrapped)
        if self._aborted:
            self.abort()
        return wrapped

    def forget(self, stream: _DeadlineStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def abort(self) -> None:
        self._aborted = True
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            sock = stream.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):  # closed meanwhile
                    sock.shutdown(socket.SHUT_RDWR)


def _ssl_context(verify: bool | str) -> ssl.SSLContext | bool:
    if isinstance(verify, bool):
        return verify
    # httpx 0.28 deprecates verify=<path>; build the context it would have built.
    try:
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA bundle {verify}: {exc}") from exc


class ImageClient:
    """The Image API calls reconcile makes: create, get, delete and list image metadata.

    ``http`` injects a ready ``httpx.Client`` (tests pass one on ``httpx.MockTransport``);
    ``connect_timeout``, ``read_timeout``, ``request_timeout`` and ``verify`` then do not apply
    (nor does ``abort``), and ``close()``
    leaves it open. The client is safe to call from many threads at once.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        token_provider: TokenProvider,
        http: httpx.Client | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        verify: bool | str = True,
        user_agent: str = DEFAULT_USER_AGENT,
        auth: httpx.Auth | None = None,
        read_retry: RetryPolicy | None = None,
        max_pages: int = MAX_PAGES,
        clock: Clock = SYSTEM_CLOCK,
        limiter: threading.Semaphore | None = None,
    ) -> None:
        self.endpoint = normalize_endpoint(endpoint)
        # Shared with the clients of other targets: requests in flight of all of them.
        self._limiter: contextlib.AbstractContextManager[Any] = (
            limiter if limiter is not None else contextlib.nullcontext())
        self._clock = clock
        self._aborted = False
        self._max_pages = max_pages
        # Which request name each id answered to a create belongs to: a server that answers
        # two creates with one id is lying about one of them.
        self._created: dict[str, str] = {}
        self._created_lock = threading.Lock()
        self._tokens = token_provider
        self._auth = auth  # request signing (AK/SK), applied to every request
        self._read_retry = read_retry
        self._rng = random.Random()
        self._answered = False  # no HTTP answer from this endpoint yet
        self._user_agent = user_agent
        self._owns_http = http is None
        self._http = http if http is not None else http_client(
            verify, connect_timeout=connect_timeout, read_timeout=read_timeout,
            request_timeout=request_timeout)
        # The collection's URL, parsed once: every create and listing page is sent there, and
        # parsing a URL costs as much as the rest of building the request.
        self._images_url = httpx.URL(self.endpoint + "/v2/images")

    def __repr__(self) -> str:
        return f"ImageClient({self.endpoint!r})"

    def abort(self) -> None:
        """Fail every request in flight now, and every later one (a run being stopped)."""
        self._aborted = True
        abort_requests(self._http)

    def close(self) -> None:
        """Close the connection pool, unless it was passed in."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> ImageClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- API calls

    def create_image(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v2/images``; returns the created image (expected status 201).

        An answer that does not describe the image asked for (no valid image, another name or
        marker, or an id already answered to another create) is a ``MalformedResponse``: the
        image may have been created all the same.
        """
        response = self._send("POST", "/v2/images", json_body=body)
        consequence = "the image may have been created"
        image = self._json_object(response, consequence)
        checked = self._validated(response, ImageAnswer, image, consequence)
        for key, value in (("name", checked.name), (MARKER_PROPERTY, checked.marker)):
            if value is not None and key in body and value != body[key]:
                raise self._bad_body(response, f"describes another image ({key} differs "
                                     f"from the request); {consequence}")
        name = str(body.get("name"))
        with self._created_lock:
            earlier = self._created.setdefault(checked.id, name)
        if earlier != name:
            raise self._bad_body(response, f"gives the id {checked.id} that it gave "
                                 f"{earlier!r} before; {consequence}")
        return image

    def get_image(self, image_id: str) -> dict[str, Any] | None:
        """``GET /v2/images/{id}``; None if the image does not exist (404)."""
        try:
            response = self._send("GET", self._image_path(image_id))
        except NotFoundError:
            return None
        image = self._json_object(response)
        if self._validated(response, ImageAnswer, image).id != image_id:
            raise self._bad_body(response, f"describes another image than {image_id}")
        return image

    def update_image(self, image_id: str, patch: Sequence[Mapping[str, Any]], *,
                     api: str = "images") -> dict[str, Any]:
        """``PATCH /v2/images/{id}`` (or IMS's ``/v2/cloudimages/{id}`` with ``api``) with a
        v2.1 JSON-patch document; returns the image as saved (docs/api-contract.md §16).

        An answer that is not this image is a ``MalformedResponse``: the update may have
        been made all the same.
        """
        if api not in ("images", "cloudimages"):
            raise ValueError(f"unknown image API {api!r}")
        if not image_id:
            raise ValueError("image_id must not be empty")
        response = self._send("PATCH", f"/v2/{api}/{quote(image_id, safe='')}",
                              json_body=list(patch), content_type=PATCH_MEDIA_TYPE)
        consequence = "the image may have been updated"
        image = self._json_object(response, consequence)
        if self._validated(response, ImageAnswer, image, consequence).id != image_id:
            raise self._bad_body(response, f"describes another image than {image_id}; "
                                 f"{consequence}")
        return image

    def server_info(self, kind: Kind) -> Any:
        """What the server says it accepts, as JSON: its image schema (``GET
        /v2/schemas/image``) or the region's OS versions (IMS ``GET
        /v1/cloudimages/os_version``), checked against their documented shape
        (``MalformedResponse`` if they break it)."""
        path = SCHEMA_PATH if kind == "image_schema" else OS_VERSIONS_PATH
        # One try, and a short deadline: the rules are best effort (the caller falls back to
        # the kept ones), and a down or trickling server must not hold up the run (nor the
        # recovery of an earlier run's creates, which comes after this) for long.
        response = self._send("GET", path, retry_read=False, deadline_s=RULES_DEADLINE)
        try:
            body = _json_of(response)
        except ValueError as exc:
            raise self._bad_body(response, str(exc)) from None
        try:
            validate_body(kind, body)
        except InvalidServerInfo as exc:
            raise self._bad_body(response, f"is not the documented {kind.replace('_', ' ')} "
                                 f"({exc.summary()})", exc.problems) from None
        return body

    def delete_image(self, image_id: str) -> None:
        """``DELETE /v2/images/{id}``; a missing image is a ``NotFoundError``."""
        self._send("DELETE", self._image_path(image_id))

    def list_images(
        self,
        filters: Mapping[str, str | Sequence[str]] | None = None,
        *,
        page_size: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """``GET /v2/images`` page by page; a sequence value repeats the parameter (``tag``).

        Each next page is the original query plus ``marker=<last id>``: Glance's ``next`` link
        keeps only one value of a repeated parameter (docs/api-contract.md §10.2).
        """
        if not 1 <= page_size <= _MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {_MAX_PAGE_SIZE}")
        params: list[tuple[str, str]] = []
        for key, value in (filters or {}).items():
            if key in ("limit", "marker"):
                raise ValueError(f"{key!r} is managed by list_images, not a filter")
            values = [value] if isinstance(value, str) else list(value)
            params.extend((key, v) for v in values)
        params.append(("limit", str(page_size)))
        return self._pages(tuple(params), page_size)  # a generator would defer the checks above

    def _pages(
        self, params: tuple[tuple[str, str], ...], page_size: int
    ) -> Iterator[dict[str, Any]]:
        marker: str | None = None
        listed: set[str] = set()  # a server whose paging loops repeats ids: stop at the first
        for number in range(1, self._max_pages + 1):
            query = (*params, ("marker", marker)) if marker else params
            try:
                response = self._send("GET", "/v2/images", params=query)
            except NotFoundError as exc:
                # The collection itself is never missing from an Image API.
                raise NotFoundError(
                    f"{exc.message}; is {self.endpoint} the Image API endpoint? Check "
                    "--endpoint: the API's root, e.g. https://ims.cn-north-4.myhuaweicloud.com "
                    "or Glance's http://HOST:9292 (a trailing /v2 is accepted)",
                    status=exc.status, code=exc.code, request_id=exc.request_id,
                    method=exc.method, url=exc.url) from None
            body = self._json_object(response)
            page = self._validated(response, ImagePage, body)
            for entry in page.images:
                if entry.id in listed:
                    raise self._bad_body(response, f"of page {number} lists image {entry.id} "
                                         "again: the server's paging loops")
                listed.add(entry.id)
            images: list[dict[str, Any]] = body["images"]
            yield from images
            # A short page ends the listing, unless the server says there is more: a server
            # that caps limit below page_size returns short pages that still have a "next".
            if not images or (len(images) < page_size and "next" not in body):
                return
            marker = page.images[-1].id
        raise self._bad_body(response, f"still links a next page after {self._max_pages:,} "
                             "pages: the listing does not end (the server keeps sending pages)")

    def find_images(self, name: str, **props: str) -> list[dict[str, Any]]:
        """Live images whose name and properties equal the given ones exactly.

        The server's match may ignore case (MySQL collation), so results are checked again
        here; deleted and killed images are dropped (docs/api-contract.md §10.3).
        """
        filters: dict[str, str] = dict(props)
        # Glance reads a leading "in:" as a list operator; such a name is matched here only.
        if not name.startswith("in:"):
            filters["name"] = name
        wanted = {"name": name, **props}
        return [
            image
            for image in self.list_images(filters)
            if all(image.get(key) == value for key, value in wanted.items())
            and image.get("status") not in _GONE_STATUSES
        ]

    # ---------------------------------------------------------------- plumbing

    def _image_path(self, image_id: str) -> str:
        if not image_id:
            raise ValueError("image_id must not be empty")  # would address the list instead
        return f"/v2/images/{quote(image_id, safe='')}"

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: tuple[tuple[str, str], ...] | None = None,
        json_body: object = None,
        retry_read: bool = True,
        deadline_s: float | None = None,
        content_type: str = "application/json",
    ) -> httpx.Response:
        """The success answer to one request; every failure raised as its ``ApiError``.

        Reads (GET) are also retried after the errors of ``RETRYABLE_READ`` when
        ``read_retry`` is set: they change nothing, so retrying them is always safe. Writes
        are never retried here; the apply protocol owns that. ``deadline_s`` shortens the
        client's request deadline for this request.
        """
        retry = self._read_retry if method == "GET" and retry_read else None
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._authenticated(method, path, params, json_body, deadline_s,
                                           content_type)
            except RETRYABLE_READ as exc:
                if (retry is None or attempt >= retry.attempts or self._aborted
                        or self._unpromising(exc)):
                    raise
                delay = retry.delay(attempt, exc.retry_after, self._rng)
                why = str(exc) if isinstance(exc, TransportError) else f"HTTP {exc.status}"
            log.warning("%s %s: %s; retrying in %.1fs (attempt %d of %d)", method, path, why,
                        delay, attempt, retry.attempts,
                        extra={"event": "read_retry", "attempt": attempt})
            self._clock.sleep(delay)

    def _unpromising(self, exc: ApiError) -> bool:
        """A failure not worth retrying: one that repeats by nature, or a connection that
        failed before this endpoint ever answered (a wrong endpoint far more often than a
        server restarting just now; the next run will try again)."""
        if not isinstance(exc, TransportError):
            return False
        return exc.permanent or (not exc.sent and not self._answered)

    def _authenticated(
        self,
        method: str,
        path: str,
        params: tuple[tuple[str, str], ...] | None,
        json_body: object,
        deadline_s: float | None = None,
        content_type: str = "application/json",
    ) -> httpx.Response:
        """Send, and once more with a fresh token after a 401 if the provider has one."""
        tokens = [self._tokens.token()]
        response = self._attempt(method, path, params, json_body, tokens, deadline_s,
                                 content_type)
        self._answered = True
        if response.is_success:
            return response
        error = error_from_response(response, secrets=tokens, clock=self._clock)
        if not isinstance(error, AuthError) or not self._tokens.invalidate(tokens[-1]):
            raise error
        tokens.append(self._tokens.token())
        response = self._attempt(method, path, params, json_body, tokens, deadline_s,
                                 content_type)
        if response.is_success:
            return response
        raise error_from_response(response, secrets=tokens, clock=self._clock)

    def _attempt(
        self,
        method: str,
        path: str,
        params: tuple[tuple[str, str], ...] | None,
        json_body: object,
        tokens: list[str],
        deadline_s: float | None = None,
        content_type: str = "application/json",
    ) -> httpx.Response:
        headers = {
            # webob answers JSON instead of HTML (docs/api-contract.md §9.1)
            "Accept": "application/json",
            "User-Agent": self._user_agent,
        }
        if tokens[-1]:  # no token when requests are signed instead (AK/SK)
            headers["X-Auth-Token"] = tokens[-1]
        content: bytes | None = None
        try:
            if json_body is not None:
                headers["Content-Type"] = content_type
                content = json.dumps(json_body, ensure_ascii=False).encode()
            url = self._images_url if path == "/v2/images" else self.endpoint + path
            request = self._http.build_request(
                method, url, params=params, headers=headers, content=content,
                extensions={"deadline_s": deadline_s} if deadline_s else None,
            )
        except (UnicodeError, ValueError) as exc:
            # Nothing left the machine (a lone surrogate in a body, a header that is not
            # ASCII): "not sent" lets the caller release what it journaled for this request.
            raise TransportError(f"the request was not sent: it cannot be encoded "
                                 f"({type(exc).__name__})", sent=False, method=method,
                                 url=_safe_url(httpx.URL(self.endpoint + path))) from None
        try:
            with self._limiter:
                return send_capped(self._http, request, auth=self._auth)
        except httpx.TransportError as exc:
            # "from None": a chained httpx error would print its own text in tracebacks, and
            # h11 quotes offending header values, which may be the token.
            raise _transport_error(exc, request, tokens) from None

    @staticmethod
    def _validated(response: httpx.Response, model: type[_Model], body: dict[str, Any],
                   consequence: str = "") -> _Model:
        """``body`` checked against the API's schema (``reconciler.answers``)."""
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            found = problems(exc)
            more = f"; +{len(found) - 3} more" if len(found) > 3 else ""
            problem = f"breaks the API's schema ({'; '.join(found[:3])}{more})"
            raise ImageClient._bad_body(
                response, f"{problem}; {consequence}" if consequence else problem, found
            ) from None

    @staticmethod
    def _json_object(response: httpx.Response, consequence: str = "") -> dict[str, Any]:
        try:
            body = _json_of(response)
        except ValueError as exc:
            problem = str(exc)
        else:
            if isinstance(body, dict):
                return body
            problem = "is not a JSON object"
        raise ImageClient._bad_body(
            response, f"{problem}; {consequence}" if consequence else problem
        )

    @staticmethod
    def _bad_body(response: httpx.Response, problem: str,
                  found: Sequence[str] = ()) -> MalformedResponse:
        request_id = response.headers.get("x-request-id") or response.headers.get(
            "x-openstack-request-id"
        )
        return _malformed(response.request, response.status_code, problem, found=found,
                          request_id=_truncate(_redact(request_id, ()), _MAX_CODE)
                          if request_id else None)
