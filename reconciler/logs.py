"""Where the library's log records go: warnings as text, or every event as a JSON line.

Library modules log to the ``reconciler`` logger (``reconciler.apply``, ``reconciler.client``,
…) and never configure it; the command line calls ``configure`` once per invocation, and
again when ``apply --log-format json`` asks for JSON lines for cron. The records' ``extra``
fields (image, status, request id, …) become keys of the JSON line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from reconciler import redaction
from reconciler.escape import terminal

LOGGER = logging.getLogger("reconciler")

#: ``extra`` keys copied into a JSON line when a record has them.
FIELDS = ("image", "image_id", "status", "code", "request_id", "attempt", "delay_s", "run_id",
          "target", "outcome", "counts", "limit", "signal")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, event, message and the known extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        doc: dict[str, Any] = {
            "ts": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "event": getattr(record, "event", record.name),
            "message": record.getMessage(),
        }
        for key in FIELDS:
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        return json.dumps(doc, sort_keys=True)


class TextFormatter(logging.Formatter):
    """``LEVEL: message`` for a terminal: names and server messages in a record cannot move
    the cursor or forge a line (control characters become visible escapes)."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal(super().format(record), newlines=True)


def configure(log_format: str) -> None:
    """Send the ``reconciler`` logger to stderr: ``text`` shows warnings and errors as
    ``LEVEL: message``, ``json`` every event from INFO up as a JSON line."""
    handler = logging.StreamHandler(sys.stderr)  # stderr as it is now (CliRunner swaps it)
    handler.addFilter(_redacted)
    LOGGER.handlers[:] = [handler]
    LOGGER.propagate = False
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        LOGGER.setLevel(logging.INFO)
    else:
        handler.setFormatter(TextFormatter("%(levelname)s: %(message)s"))
        LOGGER.setLevel(logging.WARNING)


def _redacted(record: logging.LogRecord) -> bool:
    """The last line of defence: no log line leaves with a registered secret in it."""
    record.msg, record.args = redaction.redact(record.getMessage()), None
    return True


def json_lines() -> bool:
    """Whether logs are JSON lines now, so user messages should be JSON lines too."""
    return any(isinstance(h.formatter, JsonFormatter) for h in LOGGER.handlers)
