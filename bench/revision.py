"""The several-targets freshness check: ``python bench/revision.py [--images N]``.

``apply.run.target_revision`` (one target of several: a digest of its own rows, computed by
the preview and again under the lock) over a SQLite state of N records, next to the way it
was computed before it hashed the light rows directly (one ``Record`` built per row).
Interleaved rounds, the best of each kept; both must give the same digest. Prints a table
(append it to bench/RESULTS.md by hand).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from reconciler.apply.run import target_revision
from reconciler.models import Record
from reconciler.state import LockRequest, StateStore, open_for_write

ROOT = Path(__file__).resolve().parent.parent
TARGET = "https://ims.bench.example"


def before(store: StateStore, target: str) -> int:
    """``target_revision`` as it was: a Record per light row."""
    h = hashlib.sha256()
    for name, record in sorted(store.records(target, full=False).items()):
        h.update(f"{name}\0{record.image_id}\0{record.spec_digest}\n".encode())
    for entry in store.pending(target):
        h.update(f"{entry.nonce}\n".encode())
    return int.from_bytes(h.digest()[:4], "big")


def filled(path: Path, images: int) -> StateStore:
    """A state file holding ``images`` records of TARGET (written as one ``load``)."""
    store = open_for_write(path, LockRequest("", "bench"))
    store.save_record(TARGET, Record.of(name="template", image_id="id", spec_digest="d",
                                        request={"name": "template"}, response={},
                                        recorded_at="2026-12-01T00:00:00Z"))
    tables = store.dump()
    columns = store.columns("images")  # type: ignore[attr-defined]
    template = tables["images"][0]
    at = {c: columns.index(c) for c in ("name", "image_id", "spec_digest")}

    def row(n: int) -> tuple[Any, ...]:
        values = list(template)
        values[at["name"]] = f"bench-{n:06d}"
        values[at["image_id"]] = f"{n:08x}-0000-4000-8000-000000000000"
        values[at["spec_digest"]] = hashlib.sha256(str(n).encode()).hexdigest()
        return tuple(values)

    tables["images"] = [row(n) for n in range(images)]
    store.load(tables)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        store = filled(Path(tmp) / "state.db", args.images)
        try:
            times: dict[str, list[float]] = {"before": [], "after": []}
            digests: dict[str, set[int]] = {"before": set(), "after": set()}
            for _ in range(args.rounds):  # interleaved: the machine's noise hits both alike
                for name, compute in (("before", before), ("after", target_revision)):
                    started = time.process_time()
                    digests[name].add(compute(store, TARGET))
                    times[name].append(time.process_time() - started)
        finally:
            store.close()
    assert digests["before"] == digests["after"] and len(digests["after"]) == 1, digests
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()
    b, a = min(times["before"]), min(times["after"])
    print(f"commit {commit}; {os.cpu_count()} CPUs; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; {args.images:,} records, best of {args.rounds} "
          f"interleaved rounds (CPU time); same digest {digests['after'].pop()}\n\n"
          "| target_revision | CPU (best) | all rounds |\n|---|---:|---|\n"
          f"| before (a Record per row) | {b * 1000:.0f} ms | "
          f"{', '.join(f'{t * 1000:.0f}' for t in times['before'])} |\n"
          f"| after (the rows hashed) | {a * 1000:.0f} ms | "
          f"{', '.join(f'{t * 1000:.0f}' for t in times['after'])} |\n\n"
          f"after / before: {a / b:.2f}x")


if __name__ == "__main__":
    main()
