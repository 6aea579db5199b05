"""What one apply is asked to do, and the rules a request must follow before anything runs."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from reconciler.apply.creates import ImageApi
from reconciler.apply.runstate import RunState
from reconciler.apply.updates import UpdateApi
from reconciler.client import RetryPolicy
from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.defaults import DEFAULT_REQUEST_TIMEOUT, DEFAULT_SETTLE_S
from reconciler.errors import ConfigError
from reconciler.models import Catalog, DriftPolicy, Observed, Outcome, Plan, RunReport
from reconciler.planfile import SavedPlan
from reconciler.refresh import ListingApi
from reconciler.schemacache import NO_ALLOWANCES, Allowances, RulesApi, RunProfile
from reconciler.state import StateStore, is_url


class ApplyApi(ImageApi, UpdateApi, ListingApi, RulesApi, Protocol):
    """What an apply uses of ``ImageClient``: creates, updates, look-ups, the refresh listing
    and the server's rules."""


#: Options a saved plan fixes (given on the command line they would contradict it).
SAVED_PLAN_FIXES = ("catalog", "profile", "refresh", "only", "refresh_only")


def check_invocation(saved: SavedPlan | None, *, given: Collection[str], dry_run: bool,
                     yes: bool, interactive: bool, plan_file: str | Path | None = None,
                     refresh: bool = True, refresh_only: bool = False,
                     targets: bool = False) -> None:
    """The rules of an apply's options, checked before any request is sent.

    ``given``: the options set explicitly (not by default). A saved plan fixes the catalog and
    profile and is always checked against the cloud; it is already reviewable, so it has no
    dry run, and it holds one endpoint (``targets``: --target was given). Without a terminal
    to ask, an apply runs only with ``--yes``.
    """
    if refresh_only and not refresh:
        raise ConfigError("--refresh-only records what the cloud shows; it cannot be "
                          "combined with --no-refresh")
    if saved is not None:
        fixed = sorted(set(given) & set(SAVED_PLAN_FIXES))
        if fixed:
            raise ConfigError(f"{', '.join('--' + g for g in fixed)}: a saved plan fixes the "
                              "catalog and profile, and is always checked against the cloud "
                              "(that is what makes it safe to apply once only)")
        if dry_run:
            raise ConfigError("--dry-run shows a catalog's plan; a saved plan is already "
                              f"reviewable: `cat {plan_file}`")
    if not dry_run and not yes and not interactive:
        raise ConfigError("apply changes the cloud; pass --yes to confirm when not running "
                          "in a terminal")
    if saved is not None and targets:
        raise ConfigError("--target picks targets of a catalog; a saved plan holds one "
                          "endpoint already")


def local_state_warning(env: Mapping[str, str], state_path: str | Path, *,
                        dry_run: bool) -> str | None:
    """Why an apply in CI (``CI=true``) should not keep a local state file, if it does."""
    if dry_run or env.get("CI", "").lower() != "true" or is_url(state_path):
        return None
    return (f"apply in CI with a local state file ({state_path}): it goes with the runner, "
            "and another runner's apply cannot see it. Share a PostgreSQL state "
            "(--state postgresql://...; README \"Working as a team\")")


@dataclass(frozen=True)
class Preview:
    """The plan shown for confirmation, and what it was made from. The locked apply works
    from the same cloud listing, after checking that the state file and the catalog are
    still what the preview saw (``run.apply_catalog``)."""

    plan: Plan
    observed: Observed | None
    state_revision: int
    catalog_digest: str
    rules: RunProfile  # the server's rules it was checked with: read once, for both
    report: RunReport | None = None  # the plan as `reconcile plan` shows it


@dataclass
class ApplyRequest:
    """Everything one apply needs. ``saved``: apply exactly this saved plan; ``preview``:
    apply the plan the user confirmed."""

    catalog_dir: str | Path
    state_path: str | Path
    profile: str
    endpoint: str
    api: ApplyApi
    strict: bool = False
    refresh: bool = True
    saved: SavedPlan | None = None
    preview: Preview | None = None
    parallelism: int = 10  # the ceiling of requests in flight
    adaptive: bool = True  # the limit adapts below the ceiling (apply/limit.py)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    clock: Clock = SYSTEM_CLOCK
    on_outcome: Callable[[Outcome], None] = lambda o: None
    on_plan: Callable[[Plan], None] = lambda p: None
    refreshes: Callable[[], int] = lambda: 0  # token refreshes so far, for the report
    settle_s: float = DEFAULT_SETTLE_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT  # the client's deadline per request
    project_id: str | None = None  # our project, when the credentials tell
    only: tuple[str, ...] = ()  # --only: the name globs the plan is limited to
    refresh_only: bool = False  # record what the cloud shows; create nothing
    lock_timeout_s: float = 0.0  # how long to wait for another run's lock
    allow: Allowances = NO_ALLOWANCES  # formats allowed beyond the built-in lists
    drift: DriftPolicy = "update"  # --drift: images whose catalog entry sets no policy
    # One target of several (apply.targets): its name (the catalog is limited to the images
    # placed there), the key of its state rows, lock and kept rules; the store the targets
    # share (SQLite: one file lock for all); who is told of the run, to stop it on Ctrl-C.
    target_name: str | None = None
    target_key: str | None = None
    store: StateStore | None = None
    on_run: Callable[[RunState], None] = lambda run: None
    # Several targets (apply.targets): the server's rules read before the catalog is loaded,
    # and the whole catalog loaded with them, once for every target with the same rules
    # (``target_name`` picks this target's part); neither is read or loaded again.
    rules: RunProfile | None = None
    loaded: Catalog | None = None

    def __post_init__(self) -> None:
        for name in ("settle_s", "request_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number of seconds, not {value!r}")

    @property
    def catalog_source(self) -> str | Path:
        return self.saved.catalog if self.saved else self.catalog_dir

    @property
    def catalog_profile(self) -> str:
        return self.saved.profile if self.saved else self.profile


def settle_time(settle_s: float, request_timeout_s: float) -> tuple[float, str | None]:
    """The settle time for this run's own lost creates, and why it is not the one asked for.

    A create is looked for until the settle time has passed since it was sent; a request may
    be in flight for up to its deadline. A shorter settle time could call a create lost while
    it is still being sent and answered, and send it again (docs/architecture.md §6.4), so it
    is raised to the deadline. (Pending entries of earlier runs keep the time as given: their
    requests are no longer in flight from here.)
    """
    if settle_s >= request_timeout_s:
        return settle_s, None
    return request_timeout_s, (
        f"the settle time ({settle_s:g} s) is shorter than the request timeout "
        f"({request_timeout_s:g} s), the longest a create can be in flight; it is raised to "
        f"{request_timeout_s:g} s for this run's creates (lower --request-timeout to settle "
        "sooner)")


@dataclass(frozen=True)
class ApplyResult:
    report: RunReport
    failed: int
    blocked: int
    aborted: str | None
    interrupted: bool = False  # Ctrl-C or SIGTERM: the report says what was done until then
