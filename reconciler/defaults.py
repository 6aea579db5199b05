"""Defaults that the command line shows and the code under it uses, kept apart so that the
command line declares its options without importing the HTTP client or the apply package:
an offline plan or a validate needs neither, and starts faster without them
(docs/architecture.md §2)."""

#: The longest a request may take in all, from connecting to the last byte of the answer.
DEFAULT_REQUEST_TIMEOUT = 120.0

#: How long after it was sent an unanswered create may still land. Until then a create that
#: cannot be found is not presumed lost: it is neither sent again nor released.
DEFAULT_SETTLE_S = 120.0
