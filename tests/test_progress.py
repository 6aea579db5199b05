"""Apply's progress line on a terminal: the total is every image apply reports an outcome
for (creates, adoptions and updates in place), for one target and for several; the line is
drawn at most every ``REDRAW_S``, the last state always. Unit level: the terminal is
click's stderr captured by pytest, the clock a counter."""

from __future__ import annotations

import pytest

from reconciler.console import REDRAW_S, Progress, TargetsProgress
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


class Ticks:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def creates(count: int) -> Plan:
    return Plan(target="t", profile="ims", catalog_digest="d", changes=tuple(
        Change(name=f"img-{i}", action="create", reason="not_recorded")
        for i in range(count)))


def created(name: str) -> Outcome:
    return Outcome(name=name, result="created")


def lines(err: str) -> list[str]:
    return [line for line in err.split("\r") if line.strip()]


def test_a_burst_of_outcomes_draws_the_first_and_the_last_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    ticks = Ticks()
    progress = Progress(True, ticks)
    progress.start(creates(300))
    for i in range(300):
        progress(created(f"img-{i}"))
        ticks.t += REDRAW_S / 100  # 300 answers in three redraw intervals
    progress.close()
    drawn = lines(capsys.readouterr().err)
    assert 3 <= len(drawn) <= 5  # not 300
    assert drawn[0].startswith("[") and " 1/300 " in drawn[0]
    assert " 300/300 300 created" in drawn[-1]


def test_a_slow_run_draws_every_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    ticks = Ticks()
    progress = Progress(True, ticks)
    progress.start(creates(3))
    for i in range(3):
        progress(created(f"img-{i}"))
        ticks.t += REDRAW_S
    assert len(lines(capsys.readouterr().err)) == 3


def test_several_targets_draw_their_last_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    ticks = Ticks()
    bars = TargetsProgress(True, ticks)
    plan = creates(50)
    for target in ("north", "east"):
        bars.planned(target)(plan)
    for i in range(50):
        for target in ("north", "east"):
            bars.outcome(target)(created(f"img-{i}"))
    drawn = lines(capsys.readouterr().err)
    assert len(drawn) == 2  # the first, and the last once every target is done
    assert "east 50/50 · north 50/50 (100 created)" in drawn[-1]
