"""What one apply is asked to do, and the rules a request must follow before anything runs."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from reconciler.apply.creates import DEFAULT_SETTLE_S, ImageApi
from reconciler.client import RetryPolicy
from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.errors import ConfigError
from reconciler.models import Observed, Outcome, Plan, RunReport
from reconciler.planfile import SavedPlan
from reconciler.refresh import ListingApi
from reconciler.schemacache import NO_ALLOWANCES, Allowances, RulesApi


class ApplyApi(ImageApi, ListingApi, RulesApi, Protocol):
    """What an apply uses of ``ImageClient``: creates, look-ups, the refresh listing and the
    server's rules."""


#: Options a saved plan fixes (given on the command line they would contradict it).
SAVED_PLAN_FIXES = ("catalog", "profile", "refresh")


def check_invocation(saved: SavedPlan | None, *, given: Collection[str], dry_run: bool,
                     yes: bool, interactive: bool, plan_file: str | Path | None = None) -> None:
    """The rules of an apply's options, checked before any request is sent.

    ``given``: the options set explicitly (not by default). A saved plan fixes the catalog and
    profile and is always checked against the cloud; it is already reviewable, so it has no
    dry run. Without a terminal to ask, an apply runs only with ``--yes``.
    """
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


@dataclass(frozen=True)
class Preview:
    """The plan shown for confirmation, and what it was made from. The locked apply works
    from the same cloud listing, after checking that the state file and the catalog are
    still what the preview saw (``run.apply_catalog``)."""

    plan: Plan
    observed: Observed | None
    state_revision: int
    catalog_digest: str
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
    parallelism: int = 10
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    clock: Clock = SYSTEM_CLOCK
    on_outcome: Callable[[Outcome], None] = lambda o: None
    on_plan: Callable[[Plan], None] = lambda p: None
    refreshes: Callable[[], int] = lambda: 0  # token refreshes so far, for the report
    settle_s: float = DEFAULT_SETTLE_S
    project_id: str | None = None  # our project, when the credentials tell
    lock_timeout_s: float = 0.0  # how long to wait for another run's lock
    allow: Allowances = NO_ALLOWANCES  # formats allowed beyond the built-in lists

    @property
    def catalog_source(self) -> str | Path:
        return self.saved.catalog if self.saved else self.catalog_dir

    @property
    def catalog_profile(self) -> str:
        return self.saved.profile if self.saved else self.profile


@dataclass(frozen=True)
class ApplyResult:
    report: RunReport
    failed: int
    blocked: int
    aborted: str | None
    interrupted: bool = False  # Ctrl-C or SIGTERM: the report says what was done until then
