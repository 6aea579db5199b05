"""HTTP replies of the sandbox and the four error-body dialects a client must parse.

Errors are raised as exceptions deep in validation and turned into bytes in one place, so
each dialect is rendered exactly one way (docs/api-contract.md §9):
- ``GlanceError``: WebOb's ``WSGIHTTPException`` body, negotiated on ``Accept`` (§9.1);
- ``ImsError``: Huawei's ``{"error": {"code": "IMG.xxxx", "message": ...}}`` (§9.3);
- ``keystone_unauthorized``: keystonemiddleware's 401 (§9.2);
- ``apig_throttled``: the API gateway's 429 (§9.4).
"""

from __future__ import annotations

import html
import json
import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from http import HTTPStatus

SERVER_ERROR_EXPLANATION = (
    "The server has either erred or is incapable of performing the requested operation."
)

# WebOb's class-level explanations (webob/exc.py), used when Glance passes the message as
# the positional ``detail`` instead of ``explanation=``.
_WEBOB_EXPLANATIONS = {
    400: "The server could not comply with the request since it is either malformed "
    "or otherwise incorrect.",
    401: "This server could not verify that you are authorized to access the document you "
    "requested.  Either you supplied the wrong credentials (e.g., bad password), or your "
    "browser does not understand how to supply the credentials required.",
    403: "Access was denied to this resource.",
    404: "The resource could not be found.",
    409: "There was a conflict when trying to complete your request.",
    413: "The body of your request was too large for this server.",
    415: "The request media type is not supported by this server.",
    429: "The client has sent too many requests in a given amount of time.",
    500: SERVER_ERROR_EXPLANATION,
    503: "The server is currently unavailable. Please try again at a later time.",
}


@dataclass
class Reply:
    """A complete HTTP response; ``drop`` means: send nothing and close the connection."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False


def json_reply(status: int, payload: object, headers: list[tuple[str, str]] | None = None) -> Reply:
    """Serialise *payload* like Glance does (``ensure_ascii=False``, UTF-8)."""
    body = json.dumps(payload, ensure_ascii=False).encode()
    return Reply(status, body, "application/json", list(headers or []))


class SandboxError(Exception, ABC):
    """An error the sandbox answers with; subclasses know how to render themselves."""

    status: int

    @abstractmethod
    def reply(self, accept: str) -> Reply:
        """Render this error for a request that sent *accept*."""


class GlanceError(SandboxError):
    """A ``webob.exc.HTTP*`` raised by Glance.

    ``positional=True`` mirrors ``HTTPForbidden(msg)``: WebOb then prints its class
    explanation first and *msg* as the detail, which is what clients see for reserved
    attributes and owner mismatches.
    """

    def __init__(self, status: int, message: str, *, positional: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.positional = positional

    def reply(self, accept: str) -> Reply:
        if self.positional:
            explanation, detail = _WEBOB_EXPLANATIONS[self.status], self.message
        else:
            explanation, detail = self.message, ""
        return webob_reply(self.status, explanation, detail, accept)


class ImsError(SandboxError):
    """A Huawei IMS error with an ``IMG.xxxx`` code."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def reply(self, accept: str) -> Reply:
        return json_reply(self.status, {"error": {"code": self.code, "message": self.message}})


def status_line(status: int) -> str:
    """``"400 Bad Request"``: WebOb's ``code`` field and the plain/HTML heading."""
    return f"{status} {HTTPStatus(status).phrase}"


def _negotiate(accept: str) -> str | None:
    """Pick ``text/html`` or ``application/json`` like WebOb's ``acceptable_offers``.

    Each offer gets the q of the most specific matching media range; ties keep WebOb's offer
    order (html first), so ``*/*`` yields HTML. An empty or absent header matches nothing.
    """
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges.append((media.lower(), q))
    best: tuple[float, str] | None = None
    for offer in ("text/html", "application/json"):
        kind = offer.split("/")[0]
        matches = [
            (3 if m == offer else 2 if m == f"{kind}/*" else 1, q)
            for m, q in ranges
            if m in (offer, f"{kind}/*", "*/*")
        ]
        if not matches:
            continue
        q = max(matches)[1]
        if q > 0 and (best is None or q > best[0]):
            best = (q, offer)
    return best[1] if best else None


_BR = re.compile(r"<br.*?>", re.I | re.S)
_TAG = re.compile(r"<.*?>", re.S)


def webob_reply(status: int, explanation: str, detail: str, accept: str) -> Reply:
    """Render a WebOb error body byte-for-byte as WebOb 1.8 does (docs/api-contract.md §9.1)."""
    line = status_line(status)
    offer = _negotiate(accept)
    if offer == "text/html":
        inner = f"{html.escape(explanation)}<br /><br />\n{html.escape(detail)}\n\n"
        text = (
            f"<html>\n <head>\n  <title>{line}</title>\n </head>\n <body>\n"
            f"  <h1>{line}</h1>\n  {inner}\n </body>\n</html>"
        )
        return Reply(status, text.encode(), "text/html; charset=UTF-8")
    inner = f"{explanation}<br /><br />\n{detail}\n\n"
    if offer == "application/json":
        payload = {"message": inner, "code": line, "title": HTTPStatus(status).phrase}
        return Reply(status, json.dumps(payload).encode(), "application/json")
    plain = _TAG.sub("", _BR.sub("\n", inner.replace("\n", " ").replace("\r", "")))
    return Reply(status, f"{line}\n\n{plain}".encode(), "text/plain; charset=UTF-8")


def webob_default(status: int, accept: str) -> Reply:
    """A WebOb error carrying only its class explanation (404 routes, injected 5xx)."""
    return webob_reply(status, _WEBOB_EXPLANATIONS[status], "", accept)


def fault_reply(status: int, accept: str) -> Reply:
    """An injected error answer: WebOb's for the statuses Glance itself answers, otherwise
    the HTML page of the reverse proxy in front of it (nginx's 502 and 504)."""
    if status in _WEBOB_EXPLANATIONS:
        return webob_default(status, accept)
    line = f"{status} {HTTPStatus(status).phrase}"
    page = (f"<html><head><title>{line}</title></head><body><center><h1>{line}</h1></center>"
            "<hr><center>nginx</center></body></html>")
    return Reply(status, page.encode(), "text/html")


def keystone_unauthorized(www_authenticate_uri: str) -> Reply:
    """keystonemiddleware's 401 for a missing or invalid ``X-Auth-Token``
    (docs/api-contract.md §9.2)."""
    payload = {
        "error": {
            "code": 401,
            "title": "Unauthorized",
            "message": "The request you have made requires authentication.",
        }
    }
    return json_reply(
        401, payload, [("WWW-Authenticate", f'Keystone uri="{www_authenticate_uri}"')]
    )


def apig_throttled() -> Reply:
    """Huawei API gateway's flow-control rejection (docs/api-contract.md §9.4)."""
    payload = {
        "error_msg": "The throttling threshold has been reached: policy user over ratelimit",
        "error_code": "APIG.0308",
        "request_id": uuid.uuid4().hex,
    }
    return json_reply(429, payload)
