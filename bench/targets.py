"""Several targets side by side: ``python bench/targets.py`` (issue 14).

One catalog of N images applied to three targets (three ``reconcile sandbox`` processes,
each with 50 ms latency, standing for three regions) next to the same images applied to one
target, interleaved, each round with fresh sandboxes and a fresh state file; the best round
of each is kept. Goal: three targets take about the wall time of one (ratio ≤ 1.5x), not
three times it. Prints the table and appends it to bench/RESULTS.md.

``python bench/targets.py --plan [--images 100000 --files 50 --targets 3 --baseline REV]``:
an offline ``reconcile plan`` of one large catalog placed in several targets, the code of
REV next to this tree's (interleaved rounds; their outputs must be byte-identical): how much
loading the catalog once per set of rules saves over once per target.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
RECONCILE = str(Path(sys.executable).parent / "reconcile")
TOKEN = "bench-token"
LATENCY_MS = 50
GOAL = 1.5


@contextlib.contextmanager
def sandboxes(count: int) -> Iterator[list[str]]:
    """``count`` sandbox processes with LATENCY_MS latency; their URLs."""
    procs = [subprocess.Popen([RECONCILE, "sandbox", "--port", "0", "--token", TOKEN,
                               "--latency-ms", str(LATENCY_MS)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, cwd=ROOT, text=True)
             for _ in range(count)]
    try:
        urls = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if not line.startswith("listening on "):
                raise SystemExit(f"the sandbox did not start: {line!r}")
            urls.append(line.removeprefix("listening on "))
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def catalog(directory: Path, urls: list[str], images: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    declared = "".join(f"  t{i}: {{endpoint: '{url}'}}\n" for i, url in enumerate(urls))
    listed = "".join(f"  - {{name: bench-{n:05d}, os_version: Ubuntu 22.04 server 64bit, "
                     f"min_disk: 40}}\n" for n in range(images))
    (directory / "images.yaml").write_text(f"targets:\n{declared}images:\n{listed}",
                                           encoding="utf-8")


def apply_once(targets: int, images: int, parallelism: int, target_parallelism: int = 4) -> float:
    """Wall time of one `reconcile apply --yes` of ``images`` images to ``targets``."""
    with sandboxes(targets) as urls, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        catalog(work / "catalog", urls, images)
        env = {**os.environ, "OS_AUTH_TOKEN": TOKEN, "HOME": tmp}
        started = time.monotonic()
        done = subprocess.run([RECONCILE, "apply", "--yes", "--catalog", "catalog", "--state",
                               "state.db", "--parallelism", str(parallelism),
                               "--target-parallelism", str(target_parallelism), "--format",
                               "json", "--output", "report.json"], cwd=work, env=env,
                              capture_output=True, text=True, check=False)
        elapsed = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"apply failed ({done.returncode}): {done.stderr[-2000:]}")
        return elapsed


def baseline(rev: str) -> tuple[str, Path]:
    """The ``reconciler`` package of commit ``rev`` unpacked in the temporary directory (run
    with PYTHONPATH, by the same venv), and the commit's short name."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    where = Path(tempfile.gettempdir()) / f"reconcile-bench-baseline-{commit}"
    if not (where / "reconciler").is_dir():
        where.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "reconciler"], cwd=ROOT,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", where], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", where / "reconciler",
                    ROOT / "reconciler"], check=True, stdout=subprocess.DEVNULL)
    return commit, where


def plan_once(work: Path, code: Path | None) -> tuple[float, float, float, str]:
    """``reconcile plan --format text`` of the catalog in ``work`` (offline: every target
    has an endpoint): wall time, CPU time (workers included), peak RSS (MB), and stdout."""
    env = {**os.environ, "HOME": str(work), **({"PYTHONPATH": str(code)} if code else {})}
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen([RECONCILE, "plan", "--catalog", "catalog", "--state",
                                 "state.db", "--format", "text"], cwd=work, env=env,
                                stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"plan failed ({os.waitstatus_to_exitcode(status)})")
        out.seek(0)
        return (wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                out.read().decode())


def plan_main(args: argparse.Namespace) -> None:
    """Before/after: an offline plan of several targets of one large catalog, the code of
    ``--baseline`` next to this tree's, interleaved; their outputs must be byte-identical."""
    sys.path.insert(0, str(BENCH))
    from gen_catalog import generate

    commit, code = baseline(args.baseline)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True, check=False).stdout.strip()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(work / "catalog", args.images, args.files, seed=1)
        declared = "".join(f"  t{i}: {{endpoint: 'https://ims.t{i}.example'}}\n"
                           for i in range(args.targets))
        (work / "catalog" / "targets.yaml").write_text(f"targets:\n{declared}",
                                                       encoding="utf-8")
        runs: dict[str, list[tuple[float, float, float]]] = {"before": [], "after": []}
        outputs: dict[str, set[str]] = {"before": set(), "after": set()}
        for i in range(args.rounds):  # interleaved, alternating which goes first
            for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
                wall, cpu, rss, text = plan_once(work, code if side == "before" else None)
                runs[side].append((wall, cpu, rss))
                outputs[side].add(text)
    same = outputs["before"] == outputs["after"] and len(outputs["after"]) == 1
    rows = []
    for side, label in (("before", f"before ({commit})"), ("after", f"after ({head})")):
        best = min(runs[side])
        rows.append(f"| {label} | {best[0]:.2f} s | {min(r[1] for r in runs[side]):.2f} s | "
                    f"{min(r[2] for r in runs[side]):.0f} MB | "
                    f"{', '.join(f'{r[0]:.2f}' for r in runs[side])} |")
    b, a = min(runs["before"]), min(runs["after"])
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = (
        f"\n## {when}, commit {head}: a plan of several targets, before and after "
        f"(bench/targets.py --plan)\n\n"
        f"{os.cpu_count()} CPUs; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after. `reconcile plan --format text` (offline) of "
        f"{args.images:,} images in {args.files} files (bench/gen_catalog.py, seed 1) placed "
        f"in each of {args.targets} targets (each with an `endpoint:`, an empty state), the "
        f"code of {commit} (PYTHONPATH, same venv) next to this tree's, {args.rounds} "
        f"interleaved rounds, the best of each; outputs byte-identical: "
        f"{'yes' if same else '**NO**'}.\n\n"
        "| code | wall (best) | CPU (best) | peak RSS (lowest) | all rounds (wall) |\n"
        "|---|---:|---:|---:|---|\n" + "\n".join(rows) + "\n\n"
        f"after / before: wall {a[0] / b[0]:.2f}x, CPU "
        f"{min(r[1] for r in runs['after']) / min(r[1] for r in runs['before']):.2f}x\n")
    print(table)
    if not args.no_append:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(table)
    if not same:
        raise SystemExit("the outputs of before and after differ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--parallelism", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plan", action="store_true",
                        help="an offline plan of several targets of a large catalog, the "
                             "code of --baseline next to this tree's")
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--baseline", default="main", metavar="REV")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    if args.plan:
        args.images = args.images or 100_000
        plan_main(args)
        return
    args.images = args.images or 400
    load_before = os.getloadavg()[0]
    one: list[float] = []
    three: list[float] = []
    serial: list[float] = []
    for _ in range(args.rounds):  # interleaved: the machine's noise hits all alike
        one.append(apply_once(1, args.images, args.parallelism))
        three.append(apply_once(3, args.images, args.parallelism))
        serial.append(apply_once(3, args.images, args.parallelism, target_parallelism=1))
    best_one, best_three, best_serial = min(one), min(three), min(serial)
    ratio = best_three / best_one
    ideal = args.images / (args.parallelism / (LATENCY_MS / 1000))
    verdict = "met" if ratio <= GOAL else "**MISSED**"
    head = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()
    table = (
        f"\n## {head}, commit {commit}: several targets side by side (bench/targets.py)\n\n"
        f"{os.cpu_count()} CPUs; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after. `reconcile apply --yes` of {args.images} images "
        f"at {LATENCY_MS} ms latency, --parallelism {args.parallelism}, default "
        f"--target-parallelism 4; each target its own sandbox process; best of "
        f"{args.rounds} interleaved rounds (each with fresh sandboxes and state). Ideal for "
        f"one target: {ideal:.1f} s of requests.\n\n"
        "| run | creates | wall time (best) | all rounds |\n|---|---:|---:|---|\n"
        f"| 1 target | {args.images} | {best_one:.2f} s | "
        f"{', '.join(f'{t:.2f}' for t in one)} |\n"
        f"| 3 targets | {3 * args.images} | {best_three:.2f} s | "
        f"{', '.join(f'{t:.2f}' for t in three)} |\n"
        f"| 3 targets, one at a time (--target-parallelism 1) | {3 * args.images} | "
        f"{best_serial:.2f} s | {', '.join(f'{t:.2f}' for t in serial)} |\n\n"
        f"| target | measured | goal | verdict |\n|---|---:|---:|---:|\n"
        f"| 3 targets vs 1 target, wall time | {ratio:.2f}x | ≤ {GOAL}x | {verdict} |\n"
        f"| 3 targets one at a time vs 1 target (for scale) | "
        f"{best_serial / best_one:.2f}x | - | - |\n")
    print(table)
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(table)


if __name__ == "__main__":
    main()
