"""Helpers shared by the apply tests: catalogs on disk, sandboxes, and what the state file and
the server hold, read independently of reconcile's own code (plain ``sqlite3`` and HTTP)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import yaml
from click.testing import Result

from reconciler.apply import ApplyRequest, TargetsApply
from reconciler.auth import ApiSession, ConnectOptions, open_session
from reconciler.client import RetryPolicy, error_from_response
from reconciler.errors import ApiError
from reconciler.models import Outcome, Target
from reconciler.sandbox import Sandbox, SandboxConfig

#: The console script of this venv (``python -m reconciler.cli`` would not run ``main``).
RECONCILE = Path(sys.executable).with_name("reconcile")
OS_VERSIONS = ("Ubuntu 18.04 server 64bit", "CentOS 7.6 64bit", "EulerOS 2.9 64bit")
#: Known to the client only as a warning; the sandbox's ``ims`` profile answers IMG.0056.
UNKNOWN_OS_VERSION = "Plan9 4th edition 64bit"


def answered(status: int, code: str | None = None) -> ApiError:
    """The error ImageClient makes of an error answer with this status (and service code),
    by its one mapping (``client.error_from_response``): a decision table names the status,
    and the class is the one the client really gives it."""
    body = {"error": {"code": code, "message": "boom"}} if code else {"message": "boom"}
    request = httpx.Request("POST", "http://ims.test/v2/images")
    return error_from_response(httpx.Response(status, json=body, request=request))


def image_names(count: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(count)]


def write_images(root: Path, names: Iterable[str], *, file: str = "images.yaml",
                 overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """A catalog directory with one valid ``ims`` image per name (tags and a property too)."""
    root.mkdir(parents=True, exist_ok=True)
    images = []
    for i, name in enumerate(names):
        image: dict[str, Any] = {
            "name": name, "os_version": OS_VERSIONS[i % len(OS_VERSIONS)],
            "min_disk": 40, "tags": ["reconcile-test", f"n{i}"],
            "properties": {"build_id": f"{i:08d}"},
        }
        image.update((overrides or {}).get(name, {}))
        images.append(image)
    doc = {"defaults": {"disk_format": "zvhd2", "min_ram": 1024}, "images": images}
    (root / file).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return root


def generate_catalog(out: Path, images: int, files: int, seed: int = 1) -> None:
    """bench/gen_catalog.py's ``generate`` (bench/ is no package, so it is loaded by path)."""
    path = Path(__file__).resolve().parent.parent / "bench" / "gen_catalog.py"
    spec = importlib.util.spec_from_file_location("gen_catalog", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(out, images, files, seed)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def catalog_names(root: Path) -> list[str]:
    """Every image name of a catalog directory, read with plain YAML."""
    names: list[str] = []
    for path in sorted(root.rglob("*.yaml")):
        names += [i["name"] for i in yaml.safe_load(path.read_text(encoding="utf-8"))["images"]]
    return names


# --- the sandbox -------------------------------------------------------------------------------

SandboxFactory = Callable[..., Sandbox]


def sandboxes() -> Iterator[SandboxFactory]:
    """Body of a ``sandbox`` fixture: make(**SandboxConfig fields) -> a started Sandbox
    (Retry-After 0.05 s by default); all are stopped at the end."""
    started: list[Sandbox] = []

    def make(**config: Any) -> Sandbox:
        sb = Sandbox(SandboxConfig(**{"retry_after_s": 0.05, **config})).start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()


def by_name(images: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for image in images:
        out.setdefault(str(image.get("name")), []).append(image)
    return out


def live_image(sb: Sandbox, image_id: str) -> dict[str, Any]:
    """GET /v2/images/{id} over HTTP, as any client would see it."""
    headers = {"Accept": "application/json"}
    if sb.config.token:
        headers["X-Auth-Token"] = sb.config.token
    saved = (sb.config.fail_rate, sb.config.throttle_rate)
    sb.config.fail_rate = sb.config.throttle_rate = 0.0
    try:
        response = httpx.get(f"{sb.url}/v2/images/{image_id}", headers=headers, timeout=10)
    finally:
        sb.config.fail_rate, sb.config.throttle_rate = saved
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def total_requests(sb: Sandbox) -> int:
    return sum(sb.request_count.values())


def replace_image(sb: Sandbox, image_id: str, **fields: Any) -> dict[str, Any]:
    """Change a stored image in place, as an out-of-band PATCH would (the sandbox has none);
    ``updated_at`` becomes 2099-01-01T00:00:00Z unless ``fields`` says otherwise.

    The store's records are immutable, so the record is swapped for one with the same
    sequence number and ``created_at`` (its place in listings does not move).
    """
    from reconciler.sandbox.store import Record as StoreRecord

    store = sb._app.store
    with store._lock:
        old = store._by_id[image_id]
        image = {**old.image, "updated_at": "2099-01-01T00:00:00Z", **fields}
        new = StoreRecord(old.seq, image, json.dumps(image, ensure_ascii=False))
        store._by_id[image_id] = new
        store._order[store._order.index(old)] = new
    return image


# --- the state, read with plain sqlite3 (or psycopg for a PostgreSQL URL) ----------------------

StateLocation = Path | str  # an SQLite file, or a postgresql:// URL


def query(state: StateLocation, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if str(state).startswith("postgresql://"):
        import psycopg
        with psycopg.connect(str(state), autocommit=True) as pg:
            pg.execute("SET search_path TO reconcile")
            # rowid: SQLite's insertion order; ids are time-ordered enough for these tests
            cur = pg.execute(sql.replace("?", "%s").replace("rowid", "id").encode(),
                             params or None)
            return [tuple(r) for r in cur.fetchall()]
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


def recorded(state: StateLocation) -> dict[str, dict[str, Any]]:
    """name -> {image_id, request, response, status, created_at, updated_at, origin, target}."""
    rows = query(state, "SELECT name, image_id, request_json, response_json, status, created_at,"
                        " updated_at, origin, target FROM images")
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)), f"a name is recorded twice: {sorted(names)}"
    return {r[0]: {"image_id": r[1], "request": json.loads(r[2]), "response": json.loads(r[3]),
                   "status": r[4], "created_at": r[5], "updated_at": r[6], "origin": r[7],
                   "target": r[8]} for r in rows}


def drop_record(state: Path, name: str) -> None:
    """Delete the record of one name, as if the state file had lost it."""
    conn = sqlite3.connect(state)
    try:
        with conn:
            assert conn.execute("DELETE FROM images WHERE name = ?", (name,)).rowcount == 1
    finally:
        conn.close()


def journal(state: StateLocation) -> list[tuple[str, str, str]]:
    """(name, state, nonce) of every journal entry."""
    return [(r[0], r[1], r[2]) for r in query(state, "SELECT name, state, nonce FROM journal")]


def pending_names(state: StateLocation) -> list[str]:
    return sorted(name for name, st, _ in journal(state) if st == "pending")


def runs(state: StateLocation) -> list[dict[str, Any]]:
    rows = query(state, "SELECT id, outcome, created, adopted, failed, error FROM runs "
                        "ORDER BY started_at, rowid")
    return [dict(zip(("id", "outcome", "created", "adopted", "failed", "error"), r, strict=True))
            for r in rows]


def assert_converged(sb: Sandbox, state: StateLocation, names: Iterable[str]) -> None:
    """Exactly one image per catalog name on the server, each recorded once with its id, and no
    create left pending."""
    wanted = sorted(names)
    server = by_name(sb.images())
    duplicates = {n: len(v) for n, v in server.items() if len(v) > 1}
    assert duplicates == {}, f"duplicate images on the server: {duplicates}"
    assert sorted(server) == wanted
    records = recorded(state)
    assert sorted(records) == wanted
    mismatched = {n: (records[n]["image_id"], server[n][0]["id"]) for n in wanted
                  if records[n]["image_id"] != server[n][0]["id"]}
    assert mismatched == {}, f"recorded ids differ from the server's: {mismatched}"
    assert pending_names(state) == []


# --- the CLI -----------------------------------------------------------------------------------

@dataclass
class CliWorld:
    """A sandbox, a catalog and a state file, with the CLI (conftest's ``run_cli``) pointed at
    them through the environment; subclasses set ``token``."""

    sb: Sandbox
    state: Path
    catalog: Path
    run_cli: Callable[..., Result]
    token: ClassVar[str] = "tok-test"

    def cli(self, *args: Any) -> Result:
        env = {"OS_AUTH_TOKEN": self.token, "RECONCILE_ENDPOINT": self.sb.url,
               "RECONCILE_STATE": str(self.state), "RECONCILE_CATALOG": str(self.catalog)}
        return self.run_cli(list(args), env=env)


# --- subprocesses ------------------------------------------------------------------------------

def subprocess_env(token: str = "tok-test") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RECONCILE_") and k not in ("NO_COLOR", "OS_AUTH_TOKEN", "CI")}
    env["OS_AUTH_TOKEN"] = token
    return env


def reconcile(*args: object, cwd: Path, env: Mapping[str, str] | None = None,
              stdout: int | None = subprocess.PIPE,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed ``reconcile``, run as a user runs it (``env``: added to
    ``subprocess_env()``); its output as text."""
    return subprocess.run([str(RECONCILE), *map(str, args)], cwd=cwd,
                          env={**subprocess_env(), **(env or {})}, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert alive(), f"the process ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def served(sb: Sandbox) -> None:
    """Wait until the sandbox has no connection left (its clients have exited or were
    killed): every request it received has been served and what it commits is committed.
    No guessed sleep: a loaded machine only makes this wait longer."""
    wait_for(lambda: sb.connections == 0, 60, "the sandbox to serve what it received")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line parsed as a JSON object (fails on the first line that is not)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line on stderr: {line!r}")
        assert isinstance(doc, dict), line
        out.append(doc)
    return out


# --- a hostile server --------------------------------------------------------------------------

@contextlib.contextmanager
def trickling_server(gap_s: float = 0.2, *, head: bool = True) -> Iterator[str]:
    """A server that answers every request one byte per ``gap_s``, for ever: the status line
    itself (``head``), or a valid head and then a body that never ends. Yields its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                if not head:
                    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 100000\r\n\r\n")
                payload = b"HTTP/1.1 201 Created\r\n" if head else b"{" + b" " * 99_999
                for byte in itertools.cycle(payload):
                    if stop.wait(gap_s):
                        return
                    conn.sendall(bytes([byte]))

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


class Apply:
    """One ``reconcile apply --yes`` subprocess; output goes to files (no pipe can fill up)."""

    count = 0

    def __init__(self, tmp_path: Path, sb: Sandbox, state: Path | str, catalog: Path,
                 *extra: Any):
        Apply.count += 1
        self.out = tmp_path / f"apply-{Apply.count}.out"
        self.err = tmp_path / f"apply-{Apply.count}.err"
        args = [str(RECONCILE), "apply", "--yes", "--endpoint", sb.url, "--state", str(state),
                "--catalog", str(catalog), *(str(a) for a in extra)]
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, env=subprocess_env(),
                                         cwd=tmp_path)
        self.started = time.monotonic()
        self.state = state

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8")

    @property
    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8")

    def output(self) -> str:
        return f"exit {self.proc.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def token_targets_apply(directory: Path, targets: Sequence[Target], state: Path,
                        on_outcome: Callable[[Target, Outcome], None] | None = None,
                        **job: Any) -> TargetsApply:
    """A TargetsApply of ``targets`` (token-auth sandboxes at their ``endpoint:``), one
    request at a time, no retries, no settle time."""
    def connect(target: Target) -> Any:
        return open_session({"OS_AUTH_TOKEN": "t"}, target.endpoint, ConnectOptions(),
                            retries=0)

    def request(target: Target, session: ApiSession) -> ApplyRequest:
        return ApplyRequest(catalog_dir=directory, state_path=state, profile="ims",
                            endpoint=session.endpoint, api=session.client, parallelism=1,
                            retry=RetryPolicy(attempts=1), settle_s=0.0,
                            request_timeout_s=30.0,
                            on_outcome=(lambda o: on_outcome(target, o)) if on_outcome
                            else (lambda o: None))

    return TargetsApply(directory, targets, state, connect, request, **job)
