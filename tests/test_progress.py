"""Apply's progress line on a terminal: the total is every image apply reports an outcome
for (creates, adoptions and updates in place), for one target and for several."""

from __future__ import annotations

import pytest

from reconciler.console import Progress, TargetsProgress
from reconciler.models import Change, Outcome, OutcomeResult, Plan

PLAN = Plan(target="t", profile="ims", catalog_digest="d", changes=(
    Change(name="a", action="create", reason="not_recorded"),
    Change(name="b", action="adopt", reason="adopted"),
    Change(name="c", action="update", reason="catalog_changed"),
    Change(name="d", action="unchanged", reason="in_sync"),
))
DONE: tuple[tuple[str, OutcomeResult], ...] = (("a", "created"), ("b", "adopted"),
                                               ("c", "updated"))


def test_one_targets_progress_counts_updates_in_its_total(
        capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(enabled=True)
    progress.start(PLAN)
    for name, result in DONE:
        progress(Outcome(name=name, result=result))
    progress.close()
    assert capsys.readouterr().err.split("\r")[-1].startswith("[" + "#" * 30 + "] 3/3 ")


def test_several_targets_progress_counts_updates_in_each_total(
        capsys: pytest.CaptureFixture[str]) -> None:
    bars = TargetsProgress(enabled=True)
    bars.planned("north")(PLAN)
    for name, result in DONE:
        bars.outcome("north")(Outcome(name=name, result=result))
    bars.close()
    assert capsys.readouterr().err.split("\r")[-1].startswith("north 3/3 ")
