"""Several targets side by side: ``python bench/targets.py`` (issue 14).

One catalog of N images applied to three targets (three ``reconcile sandbox`` processes,
each with 50 ms latency, standing for three regions) next to the same images applied to one
target, interleaved, each round with fresh sandboxes and a fresh state file; the best round
of each is kept. Goal: three targets take about the wall time of one (ratio ≤ 1.5x), not
three times it. Prints the table and appends it to bench/RESULTS.md.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--parallelism", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
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
