"""The benchmark's child processes: ``python bench/tasks.py TASK ARGS...``.

``bench/run.py`` starts each task in a fresh interpreter, so that its wall time and peak RSS
are its own. A task prints one JSON object as its last line of stdout. Tasks that prepare
inputs (state files, sandbox data) are not measured; the others are.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import io
import json
import os
import pstats
import re
import resource
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from gen_catalog import merged_images  # bench/ is sys.path[0] when run as a script

TARGET = "https://ims.bench.example"
TOKEN = "bench-token"
PROJECT_ID = "b912fb4a4c464b568ecfca1071b21b10"
_EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _bodies(images: int, files: int, seed: int) -> Iterator[dict[str, Any]]:
    """The POST body of each generated image, exactly as reconcile builds it."""
    from reconciler.models import ImageSpec
    from reconciler.profiles import IMS

    for fields in merged_images(images, files, seed):
        yield ImageSpec(**{**IMS.defaults, **fields}).body()


def _server_image(body: dict[str, Any], index: int) -> dict[str, Any]:
    """What the sandbox (IMS profile) answers to the valid ``body``: a record's ``response``.

    The sandbox's own ``build_image``, minus the request validation (the bodies are valid).
    """
    from reconciler.sandbox.images import build_image
    from reconciler.sandbox.validation import BASE_KEYS, CreateRequest

    extras = {k: v for k, v in body.items() if k not in BASE_KEYS}
    create = CreateRequest(base={k: body[k] for k in BASE_KEYS if k in body and k != "tags"},
                           image_id=None, tags=list(body.get("tags", ())), extras=extras)
    return build_image(create, profile="ims", image_id=str(uuid.UUID(int=index + 1)),
                       owner=PROJECT_ID, now=_iso(_EPOCH + index))


# --- preparation (not measured) ----------------------------------------------------------

_INSERT = ("INSERT INTO images (target, name, image_id, spec_digest, request_json, "
           "response_json, status, created_at, updated_at, recorded_at, run_id, origin) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def build_state(args: argparse.Namespace) -> dict[str, Any]:
    """A state file recording every generated image, as apply would have left it.

    The rows are those ``SqliteStore.save_record`` writes after a create (the request with its
    marker, the server's answer, the request's digest), inserted in one transaction into a
    file whose schema ``SqliteStore.open_for_write`` created.
    """
    from reconciler.models import MARKER_PROPERTY, body_digest
    from reconciler.state import SqliteStore

    gc.disable()  # preparation, not measured: 100k rows of acyclic data need no collector
    rows = []
    for index, body in enumerate(_bodies(args.images, args.files, args.seed)):
        request = {**body, MARKER_PROPERTY: uuid.UUID(int=index + 1).hex}
        response = _server_image(request, index)
        rows.append((TARGET, body["name"], response["id"], body_digest(request),
                     json.dumps(request, sort_keys=True), json.dumps(response, sort_keys=True),
                     response["status"], response["created_at"], response["updated_at"],
                     response["created_at"], "20260101T000000Z-bench0", "created"))
    args.out.unlink(missing_ok=True)
    store = SqliteStore.open_for_write(args.out)
    with store.conn:
        store.conn.executemany(_INSERT, rows)
        store.conn.execute("UPDATE meta SET value = '1' WHERE key = 'revision'")
    store.close()
    return {"records": len(rows)}


def wal_state(args: argparse.Namespace) -> dict[str, Any]:
    """What-if: an empty state file (schema by ``SqliteStore``) switched to WAL journaling.

    SQLite keeps the journal mode in the file, so ``reconcile apply`` then writes it in WAL
    mode, with its own ``synchronous = FULL``: the fix measured without changing reconcile.
    """
    from reconciler.state import SqliteStore

    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{args.out}{suffix}").unlink(missing_ok=True)
    store = SqliteStore.open_for_write(args.out)
    mode = store.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    store.close()
    return {"journal_mode": mode}


def sandbox_data(args: argparse.Namespace) -> dict[str, Any]:
    """A ``reconcile sandbox --data`` file holding the generated images, as if created."""
    entries = []
    for index, body in enumerate(_bodies(args.images, args.files, args.seed)):
        image = _server_image(body, index)
        entries.append(f'{{"seq": {index}, "image": {json.dumps(image, ensure_ascii=False)}}}')
    header = {"format": "reconcile-sandbox-images", "version": 1, "next_seq": len(entries),
              "deleted_ids": []}
    args.out.write_text(json.dumps(header)[:-1] + ', "images": [\n' + ",\n".join(entries)
                        + "\n]}\n", encoding="utf-8")
    return {"images": len(entries)}


# --- plan at scale -----------------------------------------------------------------------

def _rss_mb() -> tuple[float, float]:
    """(peak RSS so far, RSS now) of this process, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/statm", encoding="ascii") as handle:
        now = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return peak, now


def _render_all(report: Any, *, parse: bool = True) -> dict[str, Any]:
    """Every format's size and render time; the JSON is parsed to count its changes (or,
    without ``parse``, its changes are counted in the text)."""
    from reconciler.report import FORMATS, render

    out: dict[str, Any] = {}
    for fmt in FORMATS:
        start = time.perf_counter()
        text = render(report, fmt)
        out[fmt] = {"seconds": time.perf_counter() - start, "chars": len(text),
                    "bytes": len(text.encode()), "lines": text.count("\n")}
        if fmt == "json":
            out[fmt]["changes"] = len(json.loads(text)["changes"]) if parse else text.count(
                '\n      "action": ')
    return out


class _Probes:
    """Time, garbage-collector pauses and RSS of each phase of ``make_plan``, by wrapping
    the functions it calls.

    ``make_plan`` itself runs unchanged; a function it no longer calls is simply not listed.
    GC pauses are timed with ``gc.callbacks`` (they are C time that cProfile charges to
    whatever Python function happened to allocate).
    """

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}
        self.values: dict[str, Any] = {}
        self.gc_seconds = 0.0
        self.gc_runs = [0, 0, 0]
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, event: str, info: dict[str, int]) -> None:
        if event == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_start
            self.gc_runs[info["generation"]] += 1

    def gc(self) -> dict[str, Any]:
        return {"seconds": self.gc_seconds, "collections": list(self.gc_runs)}

    def wrap(self, owner: Any, attr: str, name: str, *, nested: bool = False) -> None:
        """Time ``owner.attr`` as phase ``name``; ``nested``: it runs within another phase
        (it is not added up with the others)."""
        original = getattr(owner, attr, None)
        if original is None:
            return

        def probe(*args: Any, **kwargs: Any) -> Any:
            start, gc_before, full_before = time.perf_counter(), self.gc_seconds, self.gc_runs[2]
            value = original(*args, **kwargs)
            peak, now = _rss_mb()
            phase = self.phases.setdefault(name, {"seconds": 0.0, "gc": 0.0, "full_gc": 0,
                                                  "nested": nested})
            phase.update(seconds=phase["seconds"] + time.perf_counter() - start,
                         gc=phase["gc"] + self.gc_seconds - gc_before,
                         full_gc=phase["full_gc"] + self.gc_runs[2] - full_before,
                         peak_mb=peak, rss_mb=now)
            self.values[name] = value
            return value

        setattr(owner, attr, probe)


def profile(args: argparse.Namespace) -> dict[str, Any]:
    """cProfile ``make_plan`` + the text report (what ``reconcile plan`` does); write the top.

    Then, outside the profiler: every report format of that plan, and of the same catalog
    planned against every second record only (half created), for their sizes. With
    ``--no-profile``: the phases' times without a profiler, next to plain ``yaml.load`` of the
    same files in the same process.
    """
    from reconciler import operations
    from reconciler.operations import make_plan, plan_report
    from reconciler.planner import Planner, plan
    from reconciler.state import SqliteStore

    # First, and before the probes count GC: later, the plan's objects would slow its GC.
    floor = _floor(args.catalog) if args.no_profile else None
    probes = _Probes()
    probes.wrap(operations, "load_catalog", "load_catalog")
    probes.wrap(SqliteStore, "open_readonly", "SqliteStore.open_readonly")
    # the state is read, and each file's changes made, while the catalog loads
    probes.wrap(SqliteStore, "records", "SqliteStore.records (within load_catalog)",
                nested=True)
    probes.wrap(Planner, "add", "Planner.add, each file (within load_catalog)", nested=True)
    probes.wrap(Planner, "plan", "Planner.plan")
    probes.wrap(operations, "plan_report", "plan_report")
    probes.wrap(sys.modules[__name__], "_text_report", "render text")
    if args.no_profile:
        start = time.perf_counter()
        result = make_plan(args.catalog, args.state, profile="ims")
        _text_report(result.report)
        wall = time.perf_counter() - start
        return {"wall": wall, "phases": probes.phases, "gc": probes.gc(), "floor": floor,
                "reports": _render_all(result.report)}
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    result = make_plan(args.catalog, args.state, profile="ims")
    text = _text_report(result.report)
    profiler.disable()
    wall = time.perf_counter() - start
    gc_info = probes.gc()
    stats = pstats.Stats(profiler)
    rows: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in rows.values())
    top = sorted(rows.items(), key=lambda kv: kv[1][2], reverse=True)[:args.top]
    hot = [{"function": _func_name(func), "calls": row[1], "tottime": row[2],
            "cumtime": row[3], "share": row[2] / total} for func, row in top]
    buffer = io.StringIO()
    buffer.write(f"cProfile of reconciler.operations.make_plan + render(text) for "
                 f"{args.catalog.name} ({len(result.plan.changes)} changes, {len(text):,} "
                 f"characters of report); profiled wall {wall:.1f} s, total own time "
                 f"{total:.1f} s\n\n== top by own time (tottime) ==\n")
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(args.top)
    buffer.write("\n== top by cumulative time ==\n")
    pstats.Stats(profiler, stream=buffer).sort_stats("cumulative").print_stats(args.top)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_shorten(buffer.getvalue()), encoding="utf-8")

    phases = copy.deepcopy(probes.phases)  # the plan below would count in them
    store = SqliteStore.open_readonly(Path(args.state))
    assert store is not None
    try:  # read again: the plan's own records were handed over to the planner, and let go
        records = dict(store.records(result.plan.target))
    finally:
        store.close()
    kept = {name: records[name] for name in sorted(records)[::2]}
    half = plan(result.catalog, kept, target=result.plan.target, pending={})
    reports_half = _render_all(plan_report(result.catalog, half), parse=False)
    reports_half["summary"] = half.summary()
    return {"wall": wall, "total": total, "hot": hot, "phases": phases, "gc": gc_info,
            "reports": _render_all(result.report), "reports_half": reports_half}


def _floor(catalog: Path) -> float:
    """Plain ``yaml.load`` (CSafeLoader) of the catalog's files in this process, each
    document dropped once loaded, as bench/parse_floor.py does."""
    import yaml

    start = time.perf_counter()
    for path in sorted(catalog.rglob("*.yaml")):
        yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    return time.perf_counter() - start


def _text_report(report: Any) -> str:
    from reconciler.report import render

    return render(report, "text")


def _func_name(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    return _shorten(f"{filename}:{line}({name})")


def _shorten(text: str) -> str:
    """Paths relative to site-packages, the standard library or the repository, so the
    profile reads the same on every machine."""
    text = re.sub(r"[^\s(]*/(?:site|dist)-packages/", "", text)
    text = re.sub(r"[^\s(]*/lib/python3\.\d+/", "", text)
    return text.replace(str(Path(__file__).resolve().parent.parent) + "/", "")


# --- the API -------------------------------------------------------------------------------

def naive(args: argparse.Namespace) -> dict[str, Any]:
    """A plain loop of single POSTs, one new connection each: a shell loop's best case."""
    bodies = list(_bodies(args.images, 1, args.seed))
    start = time.perf_counter()
    for body in bodies:
        response = httpx.post(f"{args.url}/v2/images", json=body,
                              headers={"X-Auth-Token": TOKEN, "Accept": "application/json"})
        response.raise_for_status()
    seconds = time.perf_counter() - start
    return {"requests": len(bodies), "seconds": seconds, "per_second": len(bodies) / seconds}


def glance_loop(args: argparse.Namespace) -> dict[str, Any]:
    """A sequential loop of single Glance-valid POSTs, one new connection each (curl's way)."""
    bodies = [{"name": f"{args.prefix}-{i:03d}", "visibility": "private",
               "container_format": "bare", "disk_format": "qcow2" if i % 2 else "raw",
               "min_ram": 512 * (i % 4), "min_disk": 10 * (i % 3), "protected": False,
               "tags": ["bench", f"b-{i % 5}"], "os_distro": "ubuntu", "build": str(i)}
              for i in range(args.images)]
    start = time.perf_counter()
    for body in bodies:
        httpx.post(f"{args.url}/v2/images", json=body, headers={"X-Auth-Token": TOKEN},
                   timeout=60).raise_for_status()
    seconds = time.perf_counter() - start
    return {"requests": len(bodies), "seconds": seconds, "per_second": len(bodies) / seconds}


def raw(args: argparse.Namespace) -> dict[str, Any]:
    """The same POSTs as apply, with its pooled ImageClient and parallelism, recording nothing."""
    from reconciler.client import ImageClient, StaticToken
    from reconciler.models import MARKER_PROPERTY

    bodies = [{**b, MARKER_PROPERTY: uuid.uuid4().hex}
              for b in _bodies(args.images, args.files, args.seed)]
    with ImageClient(args.url, token_provider=StaticToken(TOKEN)) as client:
        client.list_images()  # warm up like apply's refresh does
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.parallelism) as pool:
            created = sum(1 for _ in pool.map(client.create_image, bodies))
        seconds = time.perf_counter() - start
    return {"requests": created, "seconds": seconds, "per_second": created / seconds}


def state_writes(args: argparse.Namespace) -> dict[str, Any]:
    """What recording costs alone: apply's two transactions per create, on a fresh file."""
    from reconciler.models import MARKER_PROPERTY, Record, body_digest
    from reconciler.state import SqliteStore

    items = []
    for index, body in enumerate(_bodies(args.images, args.files, args.seed)):
        request = {**body, MARKER_PROPERTY: uuid.uuid4().hex}
        items.append((request, _server_image(request, index)))
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{args.state}{suffix}").unlink(missing_ok=True)
    store = SqliteStore.open_for_write(args.state)
    if args.wal:
        store.conn.execute("PRAGMA journal_mode = WAL")
    start = time.perf_counter()
    for request, image in items:
        nonce = request[MARKER_PROPERTY]
        store.journal_open(nonce=nonce, target=TARGET, name=request["name"], run_id="bench",
                           request=request)
        store.save_record(TARGET, Record.model_construct(
            name=request["name"], image_id=image["id"], spec_digest=body_digest(request),
            request=request, response=image, status=image["status"],
            created_at=image["created_at"], updated_at=image["updated_at"],
            recorded_at=image["created_at"], run_id="bench", origin="created"), nonce=nonce)
    seconds = time.perf_counter() - start
    store.close()
    return {"creates": len(items), "seconds": seconds, "per_second": len(items) / seconds}


def listing(args: argparse.Namespace) -> dict[str, Any]:
    """Refresh's read: ``refresh.observe`` (every page of GET /v2/images with
    ImageClient.list_images, each live image kept), its requests, time and memory."""
    from reconciler.client import ImageClient, StaticToken
    from reconciler.refresh import observe

    requests: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [requests.append]})
    with http, ImageClient(args.url, token_provider=StaticToken(TOKEN), http=http) as client:
        client.get_image(str(uuid.UUID(int=1)))  # connect and warm up, outside the figure
        requests.clear()
        gc.collect()
        _, before = _rss_mb()
        start = time.perf_counter()
        seen = observe(client, "ims", [])
        seconds = time.perf_counter() - start
        peak, after = _rss_mb()
    count = len(seen.images)
    return {"images": count, "requests": len(requests), "seconds": seconds,
            "per_second": count / seconds, "kept_mb": after - before, "peak_mb": peak,
            "kb_per_image": (after - before) * 1024 / count}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="task", required=True)

    def task(name: str, fn: Callable[[argparse.Namespace], dict[str, Any]],
             generated: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name)
        p.set_defaults(fn=fn)
        if generated:
            p.add_argument("--images", type=int, required=True)
            p.add_argument("--files", type=int, default=1)
            p.add_argument("--seed", type=int, default=1)
        return p

    task("state", build_state).add_argument("--out", type=Path, required=True)
    task("wal-state", wal_state, generated=False).add_argument("--out", type=Path, required=True)
    task("sandbox-data", sandbox_data).add_argument("--out", type=Path, required=True)
    p = task("profile", profile, generated=False)
    p.add_argument("--catalog", type=Path, required=True)
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--no-profile", action="store_true",
                   help="only time the phases (and plain yaml.load in-process), render every "
                        "format")
    task("naive", naive).add_argument("--url", required=True)
    p = task("raw", raw)
    p.add_argument("--url", required=True)
    p.add_argument("--parallelism", type=int, required=True)
    p = task("state-writes", state_writes)
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--wal", action="store_true",
                   help="what-if: PRAGMA journal_mode = WAL on the store's connection")
    p = task("glance-loop", glance_loop, generated=False)
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--images", type=int, default=60)
    p = task("list", listing, generated=False)
    p.add_argument("--url", required=True)
    p.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args()
    result = args.fn(args)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
