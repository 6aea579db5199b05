"""The library's entry points behind each command: load, plan, and build the report.

Each function does one command's work without printing, prompting or exiting, so the CLI
stays a thin shell and tests can call the same code directly.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import gc
import hashlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from reconciler import __version__, planfile, schemacache
from reconciler.catalog import image_names, lint_problems, load_catalog, load_catalogs
from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.errors import CatalogError, ConfigError, Problem, ReconcileError, StateError
from reconciler.models import (
    ACTIONS,
    APPLIED_ACTIONS,
    GONE_STATUSES,
    Catalog,
    Change,
    DriftPolicy,
    ImageSpec,
    Observed,
    Outcome,
    Plan,
    Record,
    RecordRows,
    RunOutcome,
    RunReport,
    Target,
    TargetReport,
    iso,
    target_key,
)
from reconciler.planfile import SavedPlan
from reconciler.planner import (
    Planner,
    adoption_request,
    diff_bodies,
    select,
    select_targets,
)
from reconciler.profiles import PROFILES, Profile
from reconciler.refresh import ListingApi, observe
from reconciler.schemacache import NO_ALLOWANCES, Allowances, RulesApi, RunProfile
from reconciler.state import LockRequest, StateStore, open_for_write, open_readonly, redact

if TYPE_CHECKING:
    from reconciler.auth import ApiSession
    from reconciler.client import ImageClient


class PlanApi(ListingApi, RulesApi, Protocol):
    """What a refreshed plan reads: the listing, and the server's rules."""


def _endpoint(endpoint: str) -> str:
    """``client.normalize_endpoint``, imported when first needed: an offline plan of one
    target never is, and starts without the HTTP library."""
    from reconciler.client import normalize_endpoint

    return normalize_endpoint(endpoint)


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile {name!r}; use one of: "
                          + ", ".join(PROFILES)) from None


def resolve_target(store: StateStore | None, endpoint: str | None) -> str:
    """Which target's records to compare with: the endpoint, or the state's only target."""
    if endpoint:
        return _endpoint(endpoint)
    targets = store.targets() if store else []
    if len(targets) > 1:
        raise ConfigError("the state file holds records for several endpoints ("
                          + ", ".join(targets) + "); choose one with --endpoint")
    return targets[0] if targets else ""


@dataclass(frozen=True)
class PlanResult:
    catalog: Catalog
    plan: Plan
    report: RunReport
    state_revision: int
    observed: Observed | None


def make_plan(catalog_dir: str | Path, state_path: str | Path, *, profile: str,
              strict: bool = False, endpoint: str | None = None,
              api: PlanApi | None = None, project_id: str | None = None,
              clock: Clock = SYSTEM_CLOCK, allow: Allowances = NO_ALLOWANCES,
              rules: RunProfile | None = None, keep: bool = True,
              only: tuple[str, ...] = (), key: str | None = None, place: str | None = None,
              must_match: bool = True, drift: DriftPolicy = "update",
              loaded: Catalog | None = None) -> PlanResult:
    """Compare the catalog with the state file, whose records are only read.

    With ``api`` the cloud is read too (``--refresh``), and the server's rules with it (kept
    in the state file as a cache unless ``keep`` is false); without it the plan is offline
    and uses the kept rules; ``rules`` given are used as they are. ``only``: limit the plan
    to the names matching these globs. One target of several: ``key`` is its state key,
    ``place`` its name (the images placed there), and ``only`` is checked over all of them
    (``must_match=False``). ``drift``: the policy of images whose catalog entry sets none.
    ``loaded``: the catalog loaded already with ``rules`` (several targets load it once for
    all, ``plan_targets``), not loaded again.
    """
    with bulk_build():
        store = open_readonly(state_path, clock=clock)
        try:
            target = key or resolve_target(store, endpoint)
            rules = rules or run_profile(profile, store, target, api=api,
                                         state_path=state_path, allow=allow, clock=clock)
            # kept even if the catalog fails; a dry run (keep=False) writes nothing
            notes = kept_notes(rules, target, state_path) if keep else rules.notes

            def planner_of(records: _HandedOver, pending: dict[str, str]) -> Planner:
                return Planner(records, target=target, profile=rules.profile.name,
                               pending=pending, drift=drift)

            # offline, one target, loaded here: the plan is made as the catalog loads
            early = api is None and place is None and loaded is None
            loading = _Loading(store, target, full=api is not None,
                               planner=planner_of if early else None)
            if loaded is None:
                catalog = load_catalog(catalog_dir, rules.profile, strict=strict,
                                       meanwhile=loading.started, each=loading.checked)
            else:
                loading.started()
                catalog = loaded
            state = loading.result()
            if place is not None:
                catalog = catalog.for_target(place)
            records = _HandedOver(state.records, loading.complete)
            if loading.planner is None:
                loading.complete.update(_drifted(store, target, state.records, catalog.images))
        finally:
            if store:
                store.close()
        observed = observe(api, catalog.profile, records.values(), project_id) if api else None
        planner = loading.planner or Planner(records, target=target, profile=catalog.profile,
                                             pending=state.pending, observed=observed,
                                             drift=drift)
        result = select(planner.plan(catalog), only, must_match=must_match)
        report = plan_report(catalog, result, clock=clock, state=str(state_path),
                             refreshed=api is not None, warnings=notes)
        revision = state.revision
    return PlanResult(catalog, result, report, revision, observed)


def run_profile(profile: str, store: StateStore | None, target: str, *,
                api: RulesApi | None, state_path: str | Path, allow: Allowances,
                clock: Clock) -> RunProfile:
    """The profile to validate with: the server's rules if ``api`` can tell them, else the
    ones kept for ``target``, else the built-in ones."""
    get_profile(profile)  # an unknown name is a ConfigError
    if api is None:
        return schemacache.offline(profile, store, target, allow)
    return schemacache.online(profile, api, target, state_path, allow=allow, clock=clock)


def kept_notes(rules: RunProfile, target: str, state_path: str | Path,
               store: StateStore | None = None) -> tuple[str, ...]:
    """Keep fresh rules in the state; the notes of reading and keeping them."""
    note = schemacache.keep(rules, target, store=store, state_path=state_path)
    return (*rules.notes, *([note] if note else []))


@dataclass(frozen=True)
class _StateRead:
    revision: int
    pending: dict[str, str]  # name -> nonce of each unresolved create
    records: dict[str, Record] | RecordRows


def _settle(future: Future[Any], call: Callable[[], Any]) -> None:
    """Run ``call`` now; its value or its error is taken from ``future`` later."""
    try:
        future.set_result(call())
    except Exception as exc:  # raised again by future.result()
        future.set_exception(exc)


def _read_state(store: StateStore | None, target: str, *, full: bool) -> _StateRead:
    """What a plan compares with: everything for a refresh; otherwise ids and digests (an
    unchanged image needs no more). The revision is read first and the journal before the
    records, so a write landing meanwhile makes a saved plan stale, never wrongly fresh, and
    an image being recorded shows as recorded or pending, never as neither."""
    if store is None:
        return _StateRead(0, {}, {})
    revision = store.revision()
    pending = {p.name: p.nonce for p in store.pending(target)}
    return _StateRead(revision, pending, store.records(target, full=full))


class _Loading:
    """A plan's work while its catalog loads: the state is read once the catalog's workers
    have started, and with ``planner`` (made from the records and the pending creates) each
    file's changes are made as its specs come, while the workers parse the next files; what
    needs the whole catalog is left for after (docs/architecture.md §3). An error of the
    state is raised by ``result``, after the catalog's own problems."""

    def __init__(self, store: StateStore | None, target: str, *, full: bool,
                 planner: Callable[[_HandedOver, dict[str, str]], Planner] | None) -> None:
        self._store, self._target, self._full, self._make = store, target, full, planner
        self._read: Future[_StateRead] = Future()
        self._error: ReconcileError | None = None
        self.complete: dict[str, Record] = {}  # records read in full for a drift diff
        self.planner: Planner | None = None

    def started(self) -> None:
        _settle(self._read, lambda: _read_state(self._store, self._target, full=self._full))
        if self._make is not None and self._read.exception() is None:
            state = self._read.result()
            self.planner = self._make(_HandedOver(state.records, self.complete), state.pending)

    def checked(self, specs: Sequence[ImageSpec],
                warnings: Mapping[str, tuple[str, ...]]) -> None:
        if self.planner is None:
            return
        try:
            self.complete.update(_drifted(self._store, self._target,
                                          self._read.result().records, specs))
        except ReconcileError as exc:
            self._error, self.planner = exc, None
            return
        self.planner.add(specs, warnings)

    def result(self) -> _StateRead:
        state = self._read.result()
        if self._error is not None:
            raise self._error
        return state


def _drifted(store: StateStore | None, target: str, records: dict[str, Record] | RecordRows,
             specs: Iterable[ImageSpec]) -> dict[str, Record]:
    """The complete records of the images whose catalog digest differs from the light
    record's: a drift diff needs the request that was sent."""
    if store is None or not isinstance(records, RecordRows):
        return {}  # complete already
    names = [s.name for s in specs if records.digest(s.name) not in (None, s.digest)]
    return store.records_of(target, names) if names else {}


class _HandedOver(Mapping[str, Record]):
    """Records handed to the planner, which looks each one up once: ``get`` lets go of the
    record it returns, so a big plan frees each record as it makes its change, and its peak
    memory is catalog plus records rather than catalog plus records plus plan.
    ``complete``: records read in full, which stand in for their light rows."""

    def __init__(self, records: dict[str, Record] | RecordRows,
                 complete: dict[str, Record]) -> None:
        self._records, self._complete = records, complete

    def __getitem__(self, key: str) -> Record:
        return self._complete.get(key) or self._records[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str, default: Any = None) -> Any:
        record = self._records.pop(key, None)
        return default if record is None else self._complete.pop(key, record)


@contextlib.contextmanager
def bulk_build() -> Iterator[None]:
    """Pause the cyclic garbage collector while building catalog, records and plan.

    Those are up to a few hundred thousand objects with no reference cycles; the collector
    would walk all of them again on every generation-2 pass (38 % of a 100,000-image plan)
    and find nothing to free. A big build is then frozen: once enabled again, the collector's
    next pass would still walk every object made in the meantime (0.3 s at 100,000 images);
    frozen, they are still freed by their reference counts. A small one is left to the
    collector (a cycle made meanwhile stays collectable). The collector is one per process:
    builds in several threads at once (one per target) resume it when the last one ends.
    """
    global _builds, _resume
    with _builds_lock:
        if _builds == 0:
            _resume = gc.isenabled()
            gc.disable()
        _builds += 1
    try:
        yield
    finally:
        with _builds_lock:
            _builds -= 1
            if _builds == 0 and _resume:
                if gc.get_count()[0] > FREEZE_MIN_OBJECTS:
                    gc.freeze()
                gc.enable()


_builds_lock = threading.Lock()
_builds = 0  # bulk builds running now, in any thread
_resume = False  # whether the collector ran before the first of them began


#: Objects made during a ``bulk_build`` above which they are frozen (about 5,000 images).
FREEZE_MIN_OBJECTS = 50_000


def save_plan(result: PlanResult, path: Path, *, clock: Clock = SYSTEM_CLOCK,
              only: tuple[str, ...] = ()) -> SavedPlan:
    saved = planfile.build(result.plan, catalog=result.catalog.directory,
                           state_revision=result.state_revision, created_at=iso(clock.now()),
                           tool_version=__version__, observed=result.observed, only=only)
    planfile.write(saved, path)
    return saved


def plan_report(catalog: Catalog, result: Plan, *, clock: Clock = SYSTEM_CLOCK,
                state: str = "", refreshed: bool = False,
                warnings: tuple[str, ...] = ()) -> RunReport:
    return RunReport.model_construct(
        format_version=1, mode="plan", dry_run=False, generated_at=iso(clock.now()),
        tool_version=__version__, catalog=catalog.directory, target=result.target,
        profile=result.profile, catalog_digest=result.catalog_digest, summary=result.summary(),
        changes=result.changes, outcomes=(), warnings=warnings, duration_s=None, run_id=None,
        auth_refreshes=0, refreshed=refreshed, state=state, plan_id=None,
    )


# --- read-only commands: validate, state list/show, history ----------------------------

@dataclass(frozen=True)
class Validation:
    catalog: Catalog
    warnings: list[Problem]  # lint warnings, each at its field's line
    rules: RunProfile
    notes: tuple[str, ...] = ()  # reading or keeping the server's rules


def validate_catalog(catalog_dir: str | Path, *, profile: str, strict: bool = False,
                     state_path: str | Path | None = None, endpoint: str | None = None,
                     api: RulesApi | None = None, clock: Clock = SYSTEM_CLOCK,
                     allow: Allowances = NO_ALLOWANCES) -> Validation:
    """Load and check the catalog against the server's rules (``api``), the ones the state
    file kept for the endpoint, or the built-in ones; the state's records are not read."""
    store = open_readonly(state_path, clock=clock) if state_path else None
    try:
        target = resolve_target(store, endpoint)
        rules = run_profile(profile, store, target, api=api, state_path=state_path or "",
                            allow=allow, clock=clock)
    finally:
        if store:
            store.close()
    notes = kept_notes(rules, target, state_path) if state_path else rules.notes
    with bulk_build():
        catalog = load_catalog(catalog_dir, rules.profile, strict=strict)
    return Validation(catalog, lint_problems(catalog), rules, notes)


@contextlib.contextmanager
def reading(state_path: str | Path) -> Iterator[StateStore]:
    """The state file opened read-only (never locked, never changed), closed afterwards."""
    store = open_readonly(state_path)
    if store is None:
        raise StateError(f"state {redact(state_path)} does not exist yet: nothing is recorded "
                         "(apply creates it)")
    try:
        yield store
    finally:
        store.close()


def list_records(state_path: str | Path,
                 targets: Collection[str] | None = None) -> list[tuple[str, Record]]:
    """Every record as (target, record), by target and name; ``targets``: only those keys."""
    with reading(state_path) as store:
        rows = store.all_records()
    return rows if targets is None else [(t, r) for t, r in rows if t in targets]


def show_records(state_path: str | Path, name: str) -> list[dict[str, Any]]:
    """Everything recorded about one image name, one document per target that has it."""
    with reading(state_path) as store:
        found = store.records_named(name)
        names = [] if found else sorted({r.name for _, r in store.all_records()})
    if not found:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"no image named {name!r} is recorded in {redact(state_path)}"
                          f"{hint} (`reconcile state list` shows what is)")
    return [{"target": target, **rec.model_dump(exclude={"request_json", "response_json"}),
             "request": rec.request, "response": rec.response} for target, rec in found]


def run_history(state_path: str | Path, limit: int = 20,
                targets: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Past apply runs, newest first (``targets``: only those keys' runs). A run still
    marked running whose process is gone (same host, no such pid) gets ``process_gone``:
    it was killed, and the next writer to take the lock records it as interrupted."""
    with reading(state_path) as store:
        if targets is None:
            runs = store.runs(limit)
        else:
            runs = [r for r in store.runs(_ALL_RUNS) if r["target"] in targets][:limit]
    for run in runs:
        if run["outcome"] == RunOutcome.RUNNING:
            run["process_gone"] = _process_gone(run.get("host"), run.get("pid"))
    return runs


_ALL_RUNS = 2**31 - 1


def _process_gone(host: str | None, pid: int | None) -> bool:
    if host != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False  # another machine's process cannot be asked
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (maybe another user's)
    return False


def show_plan(path: Path) -> RunReport:
    """A saved plan (``plan --out``) as a report, for review: what it creates (with the
    exact bodies) and adopts, and what it was made from."""
    saved = planfile.read(path)
    changes = tuple(Change.model_construct(
        name=c.name, action=c.action, reason=c.reason, detail="", diff=(), warnings=(),
        file=None, line=None, image_id=c.image_id, remote=None,
        spec=ImageSpec.from_body(c.request) if c.request is not None else None)
        for c in saved.changes)
    return RunReport.model_construct(
        format_version=1, mode="plan", dry_run=False, generated_at=saved.created_at,
        tool_version=saved.tool_version, catalog=saved.catalog, target=saved.target,
        profile=saved.profile, catalog_digest=saved.catalog_digest,
        summary={**dict.fromkeys(ACTIONS, 0), **saved.summary}, changes=changes, outcomes=(),
        warnings=(), duration_s=None, run_id=None, auth_refreshes=0,
        refreshed=saved.refreshed, state=f"revision {saved.state_revision}",
        plan_id=saved.plan_id)


def dry_run_report(catalog_dir: str | Path, state_path: str | Path, *, profile: str,
                   strict: bool = False, endpoint: str | None = None,
                   api: PlanApi | None = None, project_id: str | None = None,
                   clock: Clock = SYSTEM_CLOCK, allow: Allowances = NO_ALLOWANCES,
                   only: tuple[str, ...] = (), drift: DriftPolicy = "update") -> RunReport:
    """What apply would send. With ``api`` the cloud is read first, as apply does (so
    adoptions and recreations show as apply would do them); nothing is ever written or
    sent: only GET requests (the server's rules are used, not kept)."""
    result = make_plan(catalog_dir, state_path, profile=profile, strict=strict,
                       endpoint=endpoint, api=api, project_id=project_id, clock=clock,
                       allow=allow, keep=False, only=only, drift=drift)
    return result.report.model_copy(update={"mode": "apply", "dry_run": True})


# --- import and forget ---------------------------------------------------------------------

def import_image(catalog_dir: str | Path, state_path: str | Path, name: str, image_id: str, *,
                 profile: str, endpoint: str, api: ImageClient, force: bool = False,
                 lock_timeout_s: float = 0.0, clock: Clock = SYSTEM_CLOCK,
                 target: tuple[str, str] | None = None) -> Record:
    """Start managing an existing image under a catalog name, after comparing it.

    ``target``: one target of a catalog with targets, as its name and state key."""
    key = target[1] if target else _endpoint(endpoint)
    rules = run_profile(profile, None, key, api=api, state_path=state_path,
                        allow=NO_ALLOWANCES, clock=clock)
    catalog = load_catalog(catalog_dir, rules.profile)
    if target is not None:
        catalog = catalog.for_target(target[0])
    spec = next((s for s in catalog.images if s.name == name), None)
    if spec is None:
        raise ConfigError(f"{name!r} is not in the catalog {catalog_dir}; add it first")
    image = api.get_image(image_id)
    if image is None or image.get("status") in GONE_STATUSES:
        raise ConfigError(f"image {image_id} does not exist at {endpoint}")
    request = adoption_request(spec, image)
    differences = diff_bodies(spec.body(), request)
    if differences and not force:
        lines = "\n".join(f"  - {d.field}: catalog {d.before!r}, image {d.after!r}"
                          for d in differences)
        raise ConfigError(f"image {image_id} differs from the catalog entry {name!r}; fix the "
                          f"catalog or pass --force to import it anyway (it will show as "
                          f"drift):\n{lines}")
    store = open_for_write(state_path, LockRequest(key, "state import", lock_timeout_s),
                           clock=clock)
    try:
        existing = store.record(key, name)
        if existing and existing.image_id != image_id and not force:
            raise ConfigError(f"{name!r} is already recorded as {existing.image_id}; "
                              "`reconcile state forget` it first, or pass --force")
        record = Record.from_image(name, request, image, recorded_at=iso(clock.now()),
                                   run_id=None, origin="imported")
        store.save_record(key, record)
        return record
    finally:
        store.close()


def forget_image(state_path: str | Path, name: str, *, endpoint: str | None,
                 lock_timeout_s: float = 0.0, clock: Clock = SYSTEM_CLOCK,
                 target: str | None = None) -> str:
    """Stop managing an image (its record goes; the image stays). Returns its id.
    ``target``: the state key of one of a catalog's targets."""
    store = open_readonly(state_path)
    if store is None:
        raise StateError(f"state {redact(state_path)} does not exist: nothing to forget")
    try:
        if target is None:
            target = resolve_target(store, endpoint)
    finally:
        store.close()
    store = open_for_write(state_path, LockRequest(target, "state forget", lock_timeout_s),
                           clock=clock)
    try:
        record = store.record(target, name)
        if record is None:
            raise ConfigError(f"{name!r} is not recorded for {target or 'any endpoint'}; "
                              "`reconcile state list` shows what is")
        store.forget(target, name)
        return record.image_id
    finally:
        store.close()


def new_run_id(clock: Clock = SYSTEM_CLOCK) -> str:
    return f"{clock.now().strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


# --- moving state ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CopyResult:
    rows: dict[str, int]  # table -> rows copied (each verified by count and digest)


def copy_state(source: str | Path, destination: str | Path, *, force: bool = False,
               lock_timeout_s: float = 0.0, clock: Clock = SYSTEM_CLOCK) -> CopyResult:
    """Copy every row of one state store into another (SQLite <-> PostgreSQL), both locked.

    A destination that holds anything is refused unless ``force``; the copy is one
    transaction, then read back and compared table by table (row count and digest).
    """
    if str(source) == str(destination):
        raise ConfigError("state copy: FROM and TO are the same store")
    if open_readonly(source, clock=clock) is None:
        raise StateError(f"state {redact(source)} does not exist: nothing to copy")
    lock = LockRequest("", "state copy", lock_timeout_s)
    src = open_for_write(source, lock, clock=clock)
    try:
        dst = open_for_write(destination, lock, clock=clock)
        try:
            tables = src.dump()
            held = {t: len(rows) for t, rows in dst.dump().items() if t != "meta" and rows}
            if held and not force:
                raise ConfigError(
                    f"state {redact(destination)} is not empty ("
                    + ", ".join(f"{n} {t}" for t, n in sorted(held.items()))
                    + "); pass --force to replace everything in it")
            dst.load(tables)
            copied = dst.dump()
            wrong = [t for t in tables if _digest(tables[t]) != _digest(copied.get(t, []))]
            if wrong:
                raise StateError(f"state copy: {', '.join(wrong)} differ after copying to "
                                 f"{redact(destination)}; the copy is not to be trusted")
            return CopyResult({t: len(rows) for t, rows in tables.items()})
        finally:
            dst.close()
    finally:
        src.close()


def _digest(rows: list[tuple[Any, ...]]) -> tuple[int, str]:
    text = json.dumps(rows, default=str, ensure_ascii=False)
    return len(rows), hashlib.sha256(text.encode()).hexdigest()


# --- several targets (docs/architecture.md §13) ----------------------------------------------

def offline_keys(targets: Sequence[Target], patterns: Sequence[str], *,
                 one: bool = False) -> dict[str, str]:
    """The state keys of the targets ``--target`` picks, known without connecting: each
    needs its ``endpoint:``. ``one``: exactly one target must be picked."""
    keys = {}
    for target in [one_target(targets, patterns)] if one else select_targets(targets, patterns):
        if not target.endpoint:
            raise ConfigError(f"target {target.name} has no `endpoint:`, so its state rows "
                              "are known only by the endpoint its service catalog gives; "
                              "declare `endpoint:` for it to use --target here")
        keys[target.name] = target_key(_endpoint(target.endpoint), target.project)
    return keys


def one_target(targets: Sequence[Target], patterns: Sequence[str]) -> Target:
    """The one target ``--target`` must pick for a command that works on one."""
    chosen = select_targets(targets, patterns)
    if len(chosen) != 1:
        raise ConfigError(f"--target must pick one target here; it picks {len(chosen)} ("
                          + ", ".join(t.name for t in chosen) + ")")
    return chosen[0]


def single_target_only(*, endpoint: str | None, plan_file: object | None) -> None:
    """What only a catalog without ``targets:`` takes: one endpoint, one saved plan."""
    if endpoint:
        raise ConfigError("--endpoint (or RECONCILE_ENDPOINT) names the one endpoint of a "
                          "catalog without targets; this catalog declares `targets:`, each "
                          "with its own endpoint. Drop it, and pick targets with --target")
    if plan_file is not None:
        raise ConfigError("saved plans (plan --out, apply PLAN_FILE) hold one endpoint; they "
                          "are not available for a catalog that declares `targets:` yet. "
                          "Review with `reconcile plan --refresh`, then `reconcile apply`")

#: Opens an authenticated session for one target (its clouds.yaml entry or the run's
#: credentials, its region and project); supplied by the command line.
Connect = Callable[[Target], "contextlib.AbstractContextManager[ApiSession]"]


@dataclass(frozen=True)
class TargetPart:
    """One target's share of a run: where it went, its report, or why it failed."""

    target: Target
    endpoint: str = ""
    report: RunReport | None = None
    error: str | None = None
    failed: bool = False  # its apply had failed, skipped or blocked images


def check_distinct(parts: Sequence[TargetPart], keys: Mapping[str, str]) -> list[TargetPart]:
    """Two targets that reach the same endpoint and project would each create the images:
    every one after the first fails."""
    first: dict[str, str] = {}
    out = []
    for part in parts:
        key = keys.get(part.target.name)
        if key is not None and key in first:
            part = TargetPart(part.target, part.endpoint, error=(
                f"reaches the same endpoint and project as target {first[key]!r} "
                f"({key}); declare each place once"))
        elif key is not None:
            first[key] = part.target.name
        out.append(part)
    return out



def parallel(targets: Sequence[Target], work: Callable[[Target], TargetPart],
             parallelism: int) -> list[TargetPart]:
    """``work`` for each target, ``parallelism`` at once, in the targets' order; an error of
    one target (ReconcileError) is its part's error, never the others'."""
    def guarded(target: Target) -> TargetPart:
        try:
            return work(target)
        except ReconcileError as exc:
            return TargetPart(target, error=str(exc))

    if len(targets) < 2 or parallelism < 2:
        return [guarded(t) for t in targets]
    with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="target") as pool:
        return list(pool.map(guarded, targets))


def check_only(parts: Sequence[TargetPart], only: tuple[str, ...]) -> None:
    """``--only`` over several targets: each glob must match an image in one of them."""
    names = {c.name for p in parts if p.report for c in p.report.changes}
    for pattern in only:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(f"--only {pattern}: no image of the catalog or the state file "
                              "has a name it matches in any target (a glob: * ? [...])")


def check_only_names(loaded: Sequence[Catalog | CatalogError], catalog_dir: str | Path,
                     state_path: str | Path, only: tuple[str, ...]) -> None:
    """``--only`` before an apply of several targets: each glob must match an image of the
    catalog (``loaded`` for the targets; a load that failed has its names read from the
    files) or one the state records, so a typo fails before anything is sent."""
    if not only:
        return
    names = {s.name for c in loaded if isinstance(c, Catalog) for s in c.images}
    if not loaded or any(isinstance(c, CatalogError) for c in loaded):
        names |= image_names(catalog_dir)
    store = open_readonly(state_path)
    if store is not None:
        try:
            for target in store.targets():
                names.update(store.records(target, full=False))
        finally:
            store.close()
    for pattern in only:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(f"--only {pattern}: no image of the catalog or the state file "
                              "has a name it matches (a glob: * ? [...])")


def targets_report(catalog: CatalogInfo, parts: Sequence[TargetPart], *, mode: str,
                   clock: Clock = SYSTEM_CLOCK, state: str = "", refreshed: bool = False,
                   dry_run: bool = False, duration_s: float | None = None) -> RunReport:
    """One report of several targets (``format_version`` 2): every change and outcome with
    its target, each target's summary and error, and the total as ``summary``."""
    changes: list[Change] = []
    outcomes: list[Outcome] = []
    total: dict[str, int] = dict.fromkeys(ACTIONS, 0)
    if mode == "apply" and not dry_run:
        total.update(dict.fromkeys(("created", "adopted", "updated", "failed", "skipped"), 0))
    summaries = []
    warnings: list[str] = []
    refreshes = 0
    for part in parts:
        name = part.target.name
        report = part.report
        summary = dict(report.summary) if report else dict.fromkeys(total, 0)
        for key, value in summary.items():
            total[key] = total.get(key, 0) + value
        if report is not None:
            changes.extend(c.model_copy(update={"target": name}) for c in report.changes)
            outcomes.extend(o.model_copy(update={"target": name}) for o in report.outcomes)
            warnings.extend(f"{name}: {w}" for w in report.warnings)
            refreshes += report.auth_refreshes
        summaries.append(TargetReport.model_construct(
            name=name, endpoint=part.endpoint or (report.target if report else ""),
            summary=summary, error=part.error, run_id=report.run_id if report else None,
            duration_s=report.duration_s if report else None))
    return RunReport.model_construct(
        format_version=2, mode=mode, dry_run=dry_run, generated_at=iso(clock.now()),
        tool_version=__version__, catalog=catalog.directory,
        target=", ".join(p.target.name for p in parts), profile=catalog.profile,
        catalog_digest=catalog.digest, summary=total, changes=tuple(changes),
        outcomes=tuple(outcomes), warnings=tuple(warnings), duration_s=duration_s,
        run_id=None, auth_refreshes=refreshes, refreshed=refreshed, state=state, plan_id=None,
        targets=tuple(summaries))


@dataclass(frozen=True)
class TargetsPlan:
    parts: list[TargetPart]
    report: RunReport

    @property
    def failed(self) -> list[TargetPart]:
        return [p for p in self.parts if p.error]

    @property
    def changes(self) -> bool:
        return any(c.action in APPLIED_ACTIONS for c in self.report.changes)


def plan_targets(catalog_dir: str | Path, state_path: str | Path, targets: Sequence[Target],
                 *, connect: Connect, refresh: bool, profile: str, strict: bool = False,
                 allow: Allowances = NO_ALLOWANCES, target_parallelism: int = 4,
                 clock: Clock = SYSTEM_CLOCK, only: tuple[str, ...] = (),
                 dry_run: bool = False, drift: DriftPolicy = "update") -> TargetsPlan:
    """Plan every target side by side, each against its own state rows, each with its
    server's rules (read, or kept for it) and its profile. A target is connected to only
    when it must be: to read its cloud (``refresh``), or to find its endpoint in the service
    catalog (no ``endpoint:``). A target that cannot be planned (bad credentials,
    unreachable) fails alone: its part carries the error. The rules read are kept once all
    are planned, one target after the other (one writer at a time).

    In three steps (docs/architecture.md §13): the targets are connected to and their rules
    read, side by side; then the catalog is loaded here, once per distinct set of rules
    (``load_catalogs``), while no target's thread runs; then each target is planned with
    its part of it, side by side."""
    keys: dict[str, str] = {}
    read: dict[str, RunProfile] = {}
    sessions: dict[str, ApiSession | None] = {}
    with contextlib.ExitStack() as stack:
        lock = threading.Lock()

        def connected(target: Target) -> TargetPart:
            session = enter(stack, lock, connect(target)) \
                if refresh or not target.endpoint else None
            endpoint = session.endpoint if session else _endpoint(
                target.endpoint or "")
            key = keys[target.name] = target_key(endpoint, target.project)
            api = session.client if session and refresh else None
            store = open_readonly(state_path, clock=clock)
            try:
                read[target.name] = run_profile(target.profile or profile, store, key,
                                                api=api, state_path=state_path, allow=allow,
                                                clock=clock)
            finally:
                if store:
                    store.close()
            sessions[target.name] = session
            return TargetPart(target, endpoint)

        parts = parallel(targets, connected, target_parallelism)
        ready = [p for p in parts if p.error is None]
        endpoints = {p.target.name: p.endpoint for p in ready}
        catalogs = dict(zip([p.target.name for p in ready], load_catalogs(
            catalog_dir, [read[p.target.name].profile for p in ready], strict=strict),
            strict=True))

        def planned(target: Target) -> TargetPart:
            loaded = catalogs[target.name]
            if isinstance(loaded, CatalogError):  # as its own load would have raised it
                return TargetPart(target, error=str(loaded))
            session, rules = sessions[target.name], read[target.name]
            api = session.client if session and refresh else None
            result = make_plan(catalog_dir, state_path, profile=target.profile or profile,
                               strict=strict, api=api, project_id=session.project_id
                               if api and session else None, clock=clock, rules=rules,
                               keep=False, only=only, key=keys[target.name], place=target.name,
                               must_match=False, drift=drift, loaded=loaded)
            return TargetPart(target, endpoints[target.name], result.report)

        done = iter(parallel([p.target for p in ready], planned, target_parallelism))
        parts = [next(done) if p.error is None else p for p in parts]
    parts = check_distinct(parts, keys)
    check_only(parts, only)
    if not dry_run:  # a dry run writes nothing
        parts = [_kept(part, read, keys, state_path) for part in parts]
    report = targets_report(catalog_info(parts, catalog_dir), parts,
                            mode="apply" if dry_run else "plan", clock=clock,
                            state=str(state_path), refreshed=refresh, dry_run=dry_run)
    return TargetsPlan(parts, report)


def enter(stack: contextlib.ExitStack, lock: threading.Lock,
          manager: contextlib.AbstractContextManager[ApiSession]) -> ApiSession:
    """Enter a session from a target's thread; the stack (closed by the caller, once every
    step of every target is done) exits it."""
    session = manager.__enter__()
    with lock:
        stack.push(manager.__exit__)
    return session


def _kept(part: TargetPart, read: Mapping[str, RunProfile], keys: Mapping[str, str],
          state_path: str | Path) -> TargetPart:
    """A target's rules kept in the state (as one plan keeps them), its note added."""
    rules = read.get(part.target.name)
    if part.report is None or rules is None:
        return part
    note = schemacache.keep(rules, keys[part.target.name], state_path=state_path)
    if note is None:
        return part
    report = part.report.model_copy(update={"warnings": (*part.report.warnings, note)})
    return TargetPart(part.target, part.endpoint, report, part.error, part.failed)


def catalog_info(parts: Sequence[TargetPart], catalog_dir: str | Path) -> CatalogInfo:
    """What the report of several targets says about the catalog: its directory, the
    profile of the first target planned, and one digest of every target's catalog (each
    target's own catalog and profile are in its run row)."""
    h = hashlib.sha256()
    profile = ""
    for part in parts:
        if part.report is not None:
            h.update(f"{part.target.name}\0{part.report.catalog_digest}\n".encode())
            profile = profile or part.report.profile
    return CatalogInfo(str(catalog_dir), profile, h.hexdigest())


@dataclass(frozen=True)
class CatalogInfo:
    directory: str
    profile: str
    digest: str
