"""A large catalog is parsed by worker processes: same catalog, same problems, same order.

Worker processes are real (forked) here; ``PARALLEL_MIN_BYTES`` is lowered so that a small
test catalog counts as large.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler import catalog as catalog_module
from reconciler.catalog import check_file, load_catalog
from reconciler.errors import CatalogError
from reconciler.models import body_digest
from reconciler.profiles import GLANCE, IMS

OK_OS = "Ubuntu 18.04 server 64bit"


def images(prefix: str, n: int) -> str:
    lines = ["defaults:", "  tags: [managed]", "  properties:", "    team: web", "images:"]
    for i in range(n):
        lines += [f"  - name: {prefix}-{i:03d}", f"    os_version: {OK_OS}", "    min_disk: 40",
                  f"    tags: [t{i % 3}]", "    properties:", f"      build: \"{i}\""]
    return "\n".join(lines) + "\n"


VALID = {f"f{k}.yaml": images(f"img{k}", 30) for k in range(6)}
INVALID = {
    **VALID,
    "f1.yaml": images("img1", 5) + "  - name: bad\n    min_disk: lots\n",
    "f3.yaml": "images: [\n",  # a syntax error
    "f4.yaml": images("img0", 3),  # names that f0.yaml defines already
    "f5.yaml": images("img5", 2) + "  - name: odd\n    min_dsk: 4\n",
}


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every catalog counts as large; returns the worker counts of the pools started."""
    started: list[int] = []
    real = concurrent.futures.ProcessPoolExecutor

    def spy(workers: int, **kwargs: Any) -> concurrent.futures.ProcessPoolExecutor:
        started.append(workers)
        return real(workers, **kwargs)

    monkeypatch.setattr(catalog_module, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", spy)
    return started


def test_workers_build_the_same_catalog(write_catalog: Callable[..., Path],
                                        pools: list[int]) -> None:
    root = write_catalog(VALID)
    alone = load_catalog(root, IMS, workers=1)
    assert pools == []
    shared = load_catalog(root, IMS, workers=2)
    assert pools == [2]
    assert shared == alone
    assert [s.digest for s in shared.images] == [s.digest for s in alone.images]
    # the workers' digests are the specs' own (computed again here, from the spec)
    assert [s.digest for s in shared.images] == [body_digest(s.body()) for s in shared.images]
    assert len(shared.images) == 180
    assert shared.warnings == alone.warnings


def test_workers_report_every_problem_in_file_order(write_catalog: Callable[..., Path],
                                                    pools: list[int]) -> None:
    root = write_catalog(INVALID)
    with pytest.raises(CatalogError) as alone:
        load_catalog(root, IMS, workers=1)
    with pytest.raises(CatalogError) as shared:
        load_catalog(root, IMS, workers=3)
    assert pools == [3]
    assert shared.value.problems == alone.value.problems
    files = [Path(p.file).name for p in shared.value.problems]
    assert files == sorted(files)
    assert {"f1.yaml", "f3.yaml", "f4.yaml", "f5.yaml"} <= set(files)
    assert any("first defined at" in p.message for p in shared.value.problems)


def test_large_catalogs_use_one_worker_per_cpu_by_default(
        write_catalog: Callable[..., Path], pools: list[int]) -> None:
    load_catalog(write_catalog(VALID), IMS)
    expected = min(len(os.sched_getaffinity(0)), len(VALID))
    assert pools == ([expected] if expected >= 2 else [])


def test_small_catalogs_stay_in_one_process(write_catalog: Callable[..., Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a small catalog started worker processes")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", refuse)
    assert len(load_catalog(write_catalog(VALID), IMS).images) == 180


def test_a_worker_that_dies_is_replaced_by_this_process(
        write_catalog: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
        pools: list[int]) -> None:
    root = write_catalog(VALID)
    parent = os.getpid()

    def dies_in_a_worker(path: Path, *args: Any) -> Any:
        if os.getpid() != parent and path.name == "f2.yaml":
            os._exit(9)  # as if killed: no exception, no answer
        return check_file(path, *args)

    monkeypatch.setattr(catalog_module, "check_file", dies_in_a_worker)
    shared = load_catalog(root, IMS, workers=2)
    assert pools == [2]
    assert len(shared.images) == 180


def test_the_callers_work_runs_once_the_workers_are_forked(
        write_catalog: Callable[..., Path], pools: list[int]) -> None:
    # A thread running while workers are forked could leave a lock held in them; so the
    # caller's work meanwhile (a plan reads its state) runs in this thread, after the fork.
    seen: list[int] = []
    catalog = load_catalog(write_catalog(VALID), IMS, workers=2,
                           meanwhile=lambda: seen.append(len(multiprocessing.active_children())))
    assert pools == [2]
    assert seen == [2] and len(catalog.images) == 180
    alone: list[int] = []
    load_catalog(write_catalog(VALID), IMS, workers=1, meanwhile=lambda: alone.append(1))
    assert alone == [1]


@pytest.mark.parametrize("workers", [1, 2])
def test_repeated_values_of_a_file_are_one_object(write_catalog: Callable[..., Path],
                                                  pools: list[int], workers: int) -> None:
    # A catalog repeats a few OS versions, tags and property names: each is held once per
    # file however many images use it (from a worker too: its answer is pickled with them).
    catalog = load_catalog(write_catalog(VALID), IMS, workers=workers)
    first = [s for s in catalog.images if s.file.endswith("f0.yaml")]
    assert len(first) == 30
    assert len({id(s.os_version) for s in first}) == 1
    assert len({id(s.tags) for s in first}) == 3  # [managed, tN] for N in 0..2
    assert len({id(k) for s in first for k in s.properties}) == 2  # team, build
    assert len({id(s.properties["team"]) for s in first}) == 1


def test_two_loads_at_once_each_check_with_their_own_profile(
        write_catalog: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # A plan of several targets loads the catalog in one thread per target, each with its
    # target's profile: a load that starts and ends while another is starting its workers
    # must leave that one's job alone.
    monkeypatch.setattr(catalog_module, "PARALLEL_MIN_BYTES", 0)
    root = write_catalog({**VALID, "g.yaml": "images:\n  - name: g\n    visibility: shared\n"
                                             "    container_format: ovf\n"})
    real = concurrent.futures.ProcessPoolExecutor
    nested: list[Any] = []

    def another_load_first(workers: int, **kwargs: Any) -> concurrent.futures.Executor:
        if not nested:
            nested.append(None)
            with pytest.raises(CatalogError):
                load_catalog(root, IMS, workers=2)  # not an IMS visibility nor format
        return real(workers, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", another_load_first)
    glance = load_catalog(root, GLANCE, workers=2)
    assert nested and "g" in [s.name for s in glance.images]


@pytest.mark.parametrize("workers", [1, 2])
def test_each_files_specs_are_handed_over_as_they_are_built(
        write_catalog: Callable[..., Path], pools: list[int], workers: int) -> None:
    # A plan makes each file's changes while the next files are parsed: every spec once, in
    # file order, the very objects the catalog holds, with the warnings found so far.
    odd = f'  - name: "odd!"\n    os_version: {OK_OS}\n    min_disk: 4\n'  # a lint warning
    files = {**VALID, "f5.yaml": images("img5", 2) + odd}
    handed: list[tuple[list[str], bool]] = []
    catalog = load_catalog(write_catalog(files), IMS, workers=workers, each=lambda specs,
                           warnings: handed.append(([s.name for s in specs], "odd!" in warnings)))
    assert [n for names, _ in handed for n in names] == [
        n for k in range(6) for n in [f"img{k}-{i:03d}" for i in range(30 if k < 5 else 2)]
        + (["odd!"] if k == 5 else [])]
    assert [warned for _, warned in handed] == [False] * 5 + [True]
    assert sorted(n for names, _ in handed for n in names) == [s.name for s in catalog.images]


def test_no_specs_are_handed_over_once_a_problem_is_found(
        write_catalog: Callable[..., Path], pools: list[int]) -> None:
    handed: list[str] = []
    with pytest.raises(CatalogError):
        load_catalog(write_catalog(INVALID), IMS, workers=2,
                     each=lambda specs, _: handed.extend(s.name for s in specs))
    assert handed == [f"img0-{i:03d}" for i in range(30)]  # f1.yaml holds the first problem
