"""The apply package called as a library: the request's rules, the confirmed preview (the cloud
read once, the lock refusing a world that moved), and how a run stops. Real loopback HTTP
against the sandbox, a real SQLite state file, a ManualClock."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from apply_helpers import (
    SandboxFactory,
    assert_converged,
    image_names,
    pending_names,
    runs,
    write_images,
)

from reconciler import models, planfile
from reconciler.apply import (
    ApplyRequest,
    apply_catalog,
    check_invocation,
    local_state_warning,
    preview,
)
from reconciler.apply.run import identities, target_revision
from reconciler.client import ImageClient, RetryPolicy, StaticToken
from reconciler.clock import ManualClock
from reconciler.errors import ConfigError, PlanFileError
from reconciler.models import Outcome, Record, RecordRows
from reconciler.operations import forget_image, make_plan, save_plan
from reconciler.planfile import SavedPlan
from reconciler.sandbox import Sandbox
from reconciler.state import LockRequest, open_for_write

TOKEN = "tok-run"


# --- the request's rules (check_invocation) ----------------------------------------------------

SAVED = SavedPlan.model_construct(catalog="catalog", profile="ims")


@pytest.mark.parametrize(
    ("saved", "given", "dry_run", "yes", "interactive", "refused"),
    [
        (None, set(), False, True, False, None),
        (None, set(), False, False, True, None),            # a terminal: it will ask
        (None, set(), False, False, False, "pass --yes"),   # cron without --yes
        (None, set(), True, False, False, None),            # a dry run changes nothing
        (None, {"catalog", "refresh"}, False, True, False, None),
        (SAVED, set(), False, True, False, None),
        (SAVED, {"endpoint", "parallelism"}, False, True, False, None),
        (SAVED, {"catalog"}, False, True, False, "--catalog: a saved plan fixes"),
        (SAVED, {"refresh", "profile"}, False, True, False, "--profile, --refresh: a saved"),
        (SAVED, set(), True, True, False, "a saved plan is already reviewable"),
        (SAVED, set(), False, False, False, "pass --yes"),
    ],
)
def test_the_rules_of_an_applys_options(saved: SavedPlan | None, given: set[str],
                                        dry_run: bool, yes: bool, interactive: bool,
                                        refused: str | None) -> None:
    if refused is None:
        check_invocation(saved, given=given, dry_run=dry_run, yes=yes, interactive=interactive)
        return
    with pytest.raises(ConfigError, match=refused):
        check_invocation(saved, given=given, dry_run=dry_run, yes=yes, interactive=interactive,
                         plan_file="plan.json")


@pytest.mark.parametrize(
    ("saved", "refresh", "refresh_only", "targets", "refused"),
    [
        (None, True, True, False, None),
        (None, False, False, False, None),
        (None, False, True, False, "cannot be combined with --no-refresh"),
        (None, True, False, True, None),                 # --target picks catalog targets
        (SAVED, True, False, True, "a saved plan holds one endpoint"),
    ],
)
def test_what_refresh_only_and_target_combine_with(saved: SavedPlan | None, refresh: bool,
                                                   refresh_only: bool, targets: bool,
                                                   refused: str | None) -> None:
    def check() -> None:
        check_invocation(saved, given=set(), dry_run=False, yes=True, interactive=False,
                         refresh=refresh, refresh_only=refresh_only, targets=targets)
    if refused is None:
        check()
        return
    with pytest.raises(ConfigError, match=refused):
        check()


@pytest.mark.parametrize(
    ("ci", "state", "dry_run", "warned"),
    [
        ("true", "state.db", False, True),
        ("TRUE", "state.db", False, True),
        ("true", "state.db", True, False),   # a dry run keeps nothing
        ("true", "postgresql://db/reconcile", False, False),
        ("", "state.db", False, False),
    ],
)
def test_an_apply_in_ci_is_told_to_share_its_state(ci: str, state: str, dry_run: bool,
                                                   warned: bool) -> None:
    warning = local_state_warning({"CI": ci}, state, dry_run=dry_run)
    assert (warning is not None) is warned
    assert warning is None or "Share a PostgreSQL state" in warning


# --- library-level apply -----------------------------------------------------------------------

class Lib:
    def __init__(self, tmp_path: Path, sb: Sandbox, count: int = 3) -> None:
        self.sb = sb
        self.names = image_names(count)
        self.catalog = write_images(tmp_path / "catalog", self.names)
        self.state = tmp_path / "state.db"
        self.tmp = tmp_path
        self.clock = ManualClock(datetime(2024, 5, 17, 12, 0, tzinfo=UTC))
        self.client = ImageClient(sb.url, token_provider=StaticToken(TOKEN),
                                  read_retry=RetryPolicy(attempts=3), clock=self.clock)

    def request(self, **fields: Any) -> ApplyRequest:
        values: dict[str, Any] = {
            "catalog_dir": self.catalog, "state_path": self.state, "profile": "ims",
            "endpoint": self.sb.url, "api": self.client, "clock": self.clock,
            "parallelism": 1, **fields}
        return ApplyRequest(**values)

    def listings(self) -> int:
        return self.sb.request_count[("GET", "images")]


@pytest.fixture
def lib(tmp_path: Path, sandbox: SandboxFactory) -> Iterator[Lib]:
    world = Lib(tmp_path, sandbox())
    yield world
    world.client.close()


def test_the_confirmed_preview_is_applied_without_reading_the_cloud_again(lib: Lib) -> None:
    req = lib.request()
    shown = preview(req)
    assert [c.name for c in shown.plan.creates] == lib.names
    assert lib.listings() == 1
    req.preview = shown
    result = apply_catalog(req)
    assert result.failed == 0 and result.aborted is None
    assert lib.listings() == 1  # the apply worked from the preview's listing
    assert_converged(lib.sb, lib.state, lib.names)


def test_a_preview_made_stale_by_another_run_is_refused_and_nothing_is_done(lib: Lib) -> None:
    apply_catalog(lib.request())
    req = lib.request()
    shown = preview(req)
    forget_image(lib.state, lib.names[0], endpoint=lib.sb.url)  # meanwhile, elsewhere
    req.preview = shown
    before = runs(lib.state)
    with pytest.raises(PlanFileError, match="state file changed since the plan was shown"):
        apply_catalog(req)
    assert runs(lib.state) == before
    assert lib.sb.post_count == len(lib.names)


def test_a_preview_of_another_catalog_is_refused(lib: Lib) -> None:
    req = lib.request()
    shown = preview(req)
    write_images(lib.catalog, [*lib.names, "extra"])
    req.preview = shown
    with pytest.raises(PlanFileError, match=r"catalog .* changed since the plan was shown"):
        apply_catalog(req)
    assert lib.sb.post_count == 0


def test_a_saved_plan_with_many_stale_names_lists_twenty_and_counts_the_rest(
        tmp_path: Path, sandbox: SandboxFactory) -> None:
    lib = Lib(tmp_path, sandbox(), count=25)
    result = make_plan(lib.catalog, lib.state, profile="ims", endpoint=lib.sb.url,
                       api=lib.client, clock=lib.clock)
    saved = save_plan(result, tmp_path / "plan.json", clock=lib.clock)
    for name in lib.names:  # created out of band since the plan was made
        lib.sb.add_image({"name": name, "disk_format": "zvhd2"})
    with pytest.raises(PlanFileError) as caught:
        apply_catalog(lib.request(saved=planfile.read(tmp_path / "plan.json")))
    assert saved.plan_id
    lines = str(caught.value).splitlines()
    assert len([line for line in lines if line.startswith("  - ")]) == 20
    assert lines[-1] == "  … and 5 more"
    lib.client.close()


def test_a_401_on_the_refresh_listing_stops_the_run_before_any_create(lib: Lib) -> None:
    lib.sb.script("", get=["401"])
    result = apply_catalog(lib.request())
    assert result.aborted is not None and result.aborted.startswith("authentication failed")
    assert lib.sb.post_count == 0
    assert {o.result for o in result.report.outcomes} == {"skipped"}
    assert runs(lib.state)[-1]["outcome"] == "aborted"


def test_a_401_while_resolving_a_pending_create_stops_the_run(lib: Lib) -> None:
    lib.sb.script(lib.names[0], post=["502"], get=["503"] * 3)
    first = apply_catalog(lib.request(refresh=False))
    assert first.failed == 1 and pending_names(lib.state) == [lib.names[0]]
    lib.sb.script(lib.names[0], get=["401"])
    second = apply_catalog(lib.request(refresh=False))
    assert second.aborted is not None and "authentication failed" in second.aborted
    assert pending_names(lib.state) == [lib.names[0]]
    assert lib.sb.post_count == len(lib.names) + 1 - 1  # nothing sent by the second run


def test_a_run_stopped_during_a_backoff_sends_nothing_again(lib: Lib) -> None:
    # Ctrl-C while a throttled create waits: the wait ends, the create is not sent again and
    # its entry is released (the image certainly does not exist).
    class Stopper(ManualClock):
        def sleep(self, seconds: float, wake: Any = None) -> None:
            if wake is not None:
                wake.set()  # what RunState.stop does, from another thread
            super().sleep(seconds, wake)

    lib.clock = Stopper(datetime(2024, 5, 17, tzinfo=UTC))
    lib.sb.script(lib.names[0], post=["429"])
    result = apply_catalog(lib.request(refresh=False))
    # Sent again, it would have been created (only its first POST is answered 429). The next
    # image may have gone out while the first waited: its slot was free.
    assert lib.names[0] not in {i["name"] for i in lib.sb.images()}
    assert lib.sb.post_count <= 2
    assert pending_names(lib.state) == []
    assert {o.name: o.result for o in result.report.outcomes}[lib.names[0]] == "failed"


def test_ctrl_c_lets_running_creates_finish_and_records_them(lib: Lib) -> None:
    seen: list[Outcome] = []

    def interrupt(outcome: Outcome) -> None:
        seen.append(outcome)
        if len(seen) == 1:
            raise KeyboardInterrupt

    result = apply_catalog(lib.request(refresh=False, parallelism=2, on_outcome=interrupt))
    assert result.interrupted
    assert runs(lib.state)[-1]["outcome"] == "interrupted"
    assert pending_names(lib.state) == []
    created = {i["name"] for i in lib.sb.images()}
    assert len(created) >= 1 and created <= set(lib.names)
    assert {o.name for o in seen if o.result == "created"} <= created


# --- the several-targets freshness check (target_revision) ------------------------------------

def _revision_before(store: Any, target: str) -> int:
    """``apply.run.target_revision`` as it was computed before it hashed rows directly (one
    ``Record`` built per row): revisions saved or shown by earlier versions compare with it."""
    h = hashlib.sha256()
    for name, record in sorted(store.records(target, full=False).items()):
        h.update(f"{name}\0{record.image_id}\0{record.spec_digest}\n".encode())
    for entry in store.pending(target):
        h.update(f"{entry.nonce}\n".encode())
    return int.from_bytes(h.digest()[:4], "big")


def _store_of_two_targets(path: Path) -> Any:
    store = open_for_write(path, LockRequest("", "test"))
    for target, names in (("https://a.example", ("zeta", "alpha", "ümlaut-ä", "b 2", "b")),
                          ("https://b.example#project=p", ("alpha",))):
        for i, name in enumerate(names):  # recorded out of name order
            store.save_record(target, Record.of(
                name=name, image_id=f"id-{i}-{target[-1]}", spec_digest=f"d{i}{name}",
                request={"name": name}, response={"id": f"id-{i}"},
                recorded_at="2026-12-01T00:00:00Z",
                origin="adopted" if i % 2 else "created"))
    store.journal_open(nonce="n-1", target="https://a.example", name="new", run_id="r1",
                       request={"name": "new"})
    return store


def test_target_revision_is_the_digest_earlier_versions_computed(tmp_path: Path) -> None:
    store = _store_of_two_targets(tmp_path / "state.db")
    try:
        for target in ("https://a.example", "https://b.example#project=p",
                       "https://unknown.example"):
            assert target_revision(store, target) == _revision_before(store, target)
        # pinned as well: the digest must not move with the old computation either
        assert target_revision(store, "https://a.example") == 3241523450
        assert target_revision(store, "https://unknown.example") == 3820012610
    finally:
        store.close()
    assert target_revision(None, "https://a.example") == 3820012610  # no state yet


def test_target_revision_hashes_the_light_rows_without_building_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store_of_two_targets(tmp_path / "state.db")
    try:
        expected = _revision_before(store, "https://a.example")

        def no_models(row: Any) -> Record:
            raise AssertionError(f"a Record was built for {row[0]!r}")

        monkeypatch.setattr(models, "_light_record", no_models)
        assert target_revision(store, "https://a.example") == expected
    finally:
        store.close()


def test_identities_of_complete_records_are_those_of_their_rows() -> None:
    rows = RecordRows({"b": ("b", "id-b", "d-b", "created"), "a": ("a", "id-a", "d-a",
                                                                   "adopted")})
    complete = {name: rows[name] for name in ("b", "a")}
    assert list(identities(rows)) == list(identities(complete)) == [
        ("a", "id-a", "d-a"), ("b", "id-b", "d-b")]
