"""Settings of one sandbox instance; fault rates may be changed while it runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from reconciler.clock import SYSTEM_CLOCK
from reconciler.errors import ConfigError
from reconciler.sandbox.faults import parse_script
from reconciler.sandbox.validation import OsVersionPolicy, Profile

# The project id of Huawei's documented create example (docs/api-contract.md §5.3).
DEFAULT_PROJECT_ID = "b912fb4a4c464b568ecfca1071b21b10"


@dataclass
class SandboxConfig:
    """How the sandbox answers.

    ``token`` set: every ``/v2`` request must carry it in ``X-Auth-Token`` (else 401), and
    ``POST /v3/auth/tokens`` issues it; unset: any token, or none, is accepted.
    ``password`` set (Keystone mode): ``/v3/auth/tokens`` checks it (and ``user``, if set)
    and issues a new token that expires after ``token_ttl_s``; ``/v2`` then accepts only
    unexpired issued tokens (or ``token``). The catalog's image endpoints are in ``region``.

    Fault rates are fractions of ``/v2`` requests, drawn from one ``random.Random(seed)``, so
    a seeded run is repeatable for a given request order: ``fail_rate`` answers 500/503
    without committing anything, ``throttle_rate`` answers 429 with
    ``Retry-After: retry_after_s``, ``drop_response_rate`` commits a create and then closes
    the connection without a response. ``faults`` is a script consumed by creates in the
    order they arrive, before any rate applies (``"502,drop,timeout,ok"``; the steps are
    ``faults.STEPS``); ``hang_s`` is how long a ``timeout`` step holds its request before it
    commits and closes. ``os_version_policy="fallback"`` stores an unknown
    ``__os_version`` as ``Other Linux(64 bit)`` instead of answering IMG.0056.
    ``capacity`` set: at most that many ``/v2`` requests in flight (more get 503), each
    slowed by the load it meets (``sandbox/capacity.py``).
    """

    host: str = "127.0.0.1"
    port: int = 0
    profile: str = "ims"  # "ims" or "glance"; a plain str so CLI choices pass as they are
    token: str | None = None
    password: str | None = None
    project_id: str = DEFAULT_PROJECT_ID
    latency_ms: float = 0.0
    capacity: int | None = None
    fail_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after_s: float = 1.0
    drop_response_rate: float = 0.0
    faults: str = ""
    hang_s: float = 2.0
    seed: int | None = None
    data_file: str | None = None
    os_version_policy: str = "reject"  # or "fallback"
    token_ttl_s: float = 24 * 3600.0
    user: str | None = None
    region: str = "sandbox"
    verbose: bool = False
    # The region's OS versions: served by GET /v1/cloudimages/os_version and accepted by
    # creates; None = reconcile's built-in list (osversions.KNOWN_OS_VERSIONS).
    os_versions: frozenset[str] | None = None
    clock: Callable[[], datetime] = field(default=SYSTEM_CLOCK.now, repr=False)

    @property
    def api_profile(self) -> Profile:
        """``profile`` narrowed for the typed internals (validated in ``__post_init__``)."""
        return "glance" if self.profile == "glance" else "ims"

    @property
    def unknown_os_version(self) -> OsVersionPolicy:
        """``os_version_policy`` narrowed likewise."""
        return "fallback" if self.os_version_policy == "fallback" else "reject"

    def __post_init__(self) -> None:
        if self.profile not in ("ims", "glance"):
            raise ConfigError(f"sandbox profile must be 'ims' or 'glance', not {self.profile!r}")
        if self.os_version_policy not in ("reject", "fallback"):
            raise ConfigError(
                f"os_version_policy must be 'reject' or 'fallback', not {self.os_version_policy!r}"
            )
        rates = {
            "fail_rate": self.fail_rate,
            "throttle_rate": self.throttle_rate,
            "drop_response_rate": self.drop_response_rate,
        }
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, not {rate}")
        if self.fail_rate + self.throttle_rate > 1.0:
            raise ConfigError("fail_rate + throttle_rate must not exceed 1")
        if self.latency_ms < 0 or self.retry_after_s < 0 or self.hang_s < 0:
            raise ConfigError("latency_ms, retry_after_s and hang_s must not be negative")
        if self.capacity is not None and self.capacity < 1:
            raise ConfigError(f"capacity must be at least 1, not {self.capacity}")
        parse_script(self.faults)  # a bad step fails here, not at the request it is for
