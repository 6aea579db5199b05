"""A real OpenStack Glance (from PyPI) on loopback, for the integration suite.

Follows /work/shared/spec/running-glance.md: Glance and gunicorn live in their own venv
(``.glance-venv/`` in the repository root, built once and reused), the API is served by
gunicorn (``glance.wsgi.api:application``) on a free ``127.0.0.1`` port, unauthenticated, with
SQLite and the filesystem store in a private work directory.

    python tests/glance/glance_server.py --setup     # only build (or check) the venv
    python tests/glance/glance_server.py             # run a Glance in the foreground

From Python::

    server = GlanceServer(tmp_path / "glance")
    server.start()          # config + db_sync on first start, then gunicorn; waits for GET /
    server.url              # http://127.0.0.1:PORT
    server.kill()           # SIGKILL master and workers (its own process group)
    server.restart()        # same port, same database
    server.stop()           # SIGTERM, then SIGKILL after a grace period

This file depends only on the standard library: it also runs before the project's venv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: The versions the suite was verified with (Python 3.11). The constraints file pins every
#: other package of that install, so a fresh CI machine builds the same venv.
GLANCE_VERSION = "33.0.0"
GUNICORN_VERSION = "27.0.1"
REQUIREMENTS = (f"glance=={GLANCE_VERSION}", f"gunicorn=={GUNICORN_VERSION}")
CONSTRAINTS = HERE / "constraints.txt"

#: Where the venv lives; RECONCILE_GLANCE_VENV overrides it (e.g. a cache directory in CI).
VENV = Path(os.environ.get("RECONCILE_GLANCE_VENV") or REPO / ".glance-venv")

#: Custom image properties with types and patterns, as an operator configures them.
SCHEMA_IMAGE = HERE / "schema-image.json"

#: IMS's formats are added to Glance's default list (running-glance.md).
DISK_FORMATS = "ami,ari,aki,vhd,vhdx,vmdk,raw,qcow2,vdi,iso,ploop,zvhd,zvhd2"

START_TIMEOUT = 90.0  # seconds until GET / must answer (imports take a few seconds)
STOP_TIMEOUT = 15.0


class GlanceError(RuntimeError):
    """Glance could not be installed, configured or started; the message has its log."""


# --------------------------------------------------------------------------- the venv


def _stamp_text() -> str:
    constraints = CONSTRAINTS.read_bytes() if CONSTRAINTS.exists() else b""
    digest = hashlib.sha256(constraints).hexdigest()[:16]
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"{' '.join(REQUIREMENTS)} constraints={digest} python={py}\n"


def venv_ready(venv: Path = VENV) -> bool:
    stamp = venv / ".reconcile-glance-stamp"
    return (
        stamp.exists()
        and stamp.read_text() == _stamp_text()
        and (venv / "bin" / "gunicorn").exists()
        and (venv / "bin" / "glance-manage").exists()
    )


def ensure_venv(venv: Path = VENV, *, log: IO[str] | None = None) -> Path:
    """Build the Glance venv unless an up-to-date one is there; returns its path.

    A venv without a matching stamp (half-built, other versions) is removed and rebuilt. A
    lock file serialises concurrent builds (two pytest runs, or make and pytest).
    """
    out = log or sys.stderr
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.with_name(venv.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if venv_ready(venv):
            return venv
        if venv.exists():
            print(f"glance venv {venv} is stale or incomplete; rebuilding", file=out)
            shutil.rmtree(venv)
        started = time.monotonic()
        print(f"building the glance venv in {venv}: {' '.join(REQUIREMENTS)} (from PyPI)",
              file=out, flush=True)
        python = venv / "bin" / "python"
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "--upgrade", "pip"])
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if CONSTRAINTS.exists():
            pip += ["-c", str(CONSTRAINTS)]
        _run([*pip, *REQUIREMENTS])
        if not (venv / "etc" / "glance" / "glance-api-paste.ini").exists():
            raise GlanceError(f"{venv}/etc/glance/glance-api-paste.ini is missing after install")
        (venv / ".reconcile-glance-stamp").write_text(_stamp_text())
        print(f"glance venv ready in {time.monotonic() - started:.0f} s", file=out, flush=True)
        return venv


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode != 0:
        raise GlanceError(f"command failed (exit {done.returncode}): {' '.join(cmd)}\n"
                          f"{done.stdout[-4000:]}{done.stderr[-8000:]}")
    return done


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class GlanceServer:
    """One Glance API process tree (gunicorn master + worker) over a persistent work dir.

    One worker with one thread by default: Glance's create is several SQLite transactions, and
    concurrent creates on SQLite fail with "database is locked" after the image row is
    committed (a 500 for an image that exists without its tags). Serving one request at a time
    keeps such SQLite artefacts out of the tests; clients may still send concurrently.

    The work directory holds ``etc/`` (``glance-api.conf``), ``glance.sqlite``, the stores and
    ``api.log``. The database is created by ``db_sync`` on the first start and kept across
    ``restart()``, ``kill()`` + ``start()``, so a restarted Glance has the same images.
    """

    def __init__(self, workdir: Path, *, port: int | None = None, venv: Path = VENV,
                 workers: int = 1, threads: int = 1, property_quota: int = 128) -> None:
        self.workdir = Path(workdir).resolve()
        self.property_quota = property_quota  # image_property_quota, Glance's default 128
        self.venv = venv
        self.port = port
        self.workers, self.threads = workers, threads
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # ------------------------------------------------------------ paths

    @property
    def url(self) -> str:
        if self.port is None:
            raise GlanceError("Glance has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_dir(self) -> Path:
        return self.workdir / "etc"

    @property
    def log_path(self) -> Path:
        return self.workdir / "api.log"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "api.pid"

    @property
    def database(self) -> Path:
        return self.workdir / "glance.sqlite"

    def log_text(self, tail: int = 20000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------ config

    def write_config(self) -> Path:
        """Write ``etc/glance-api.conf`` for the current port (running-glance.md)."""
        assert self.port is not None
        for sub in ("etc", "images", "staging", "tasks"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        paste = self.venv / "etc" / "glance" / "glance-api-paste.ini"
        if not paste.exists():
            raise GlanceError(f"{paste} is missing: build the venv first "
                              f"(python {Path(__file__).relative_to(REPO)} --setup)")
        # The operator's typed properties (upstream's etc/schema-image.json, which the wheel
        # does not ship): Glance reads it from its config directory into /v2/schemas/image.
        shutil.copyfile(SCHEMA_IMAGE, self.config_dir / "schema-image.json")
        conf = self.config_dir / "glance-api.conf"
        conf.write_text(f"""\
[DEFAULT]
worker_self_reference_url = http://127.0.0.1:{self.port}
enabled_backends = fs:file
debug = false
image_property_quota = {self.property_quota}

[database]
connection = sqlite:///{self.database}

[paste_deploy]
config_file = {paste}

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = {self.workdir / "images"}

[os_glance_staging_store]
filesystem_store_datadir = {self.workdir / "staging"}

[os_glance_tasks_store]
filesystem_store_datadir = {self.workdir / "tasks"}

[oslo_policy]
# without these two, the unauthenticated context has no project and GET /v2/images is 403
enforce_new_defaults = false
enforce_scope = false

[image_format]
# the IMS disk formats are not in Glance's default list
disk_formats = {DISK_FORMATS}
""")
        return conf

    def db_sync(self) -> None:
        # The operator's typed properties (upstream's etc/schema-image.json, which the wheel
        # does not ship): Glance reads it from its config directory into /v2/schemas/image.
        shutil.copyfile(SCHEMA_IMAGE, self.config_dir / "schema-image.json")
        conf = self.config_dir / "glance-api.conf"
        _run([str(self.venv / "bin" / "glance-manage"), "--config-file", str(conf), "db_sync"],
             cwd=self.workdir)

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start gunicorn (creating config and schema first if needed); return the URL."""
        if self.running():
            return self.url
        fixed = self.port is not None
        for _attempt in range(3):
            if self.port is None:
                self.port = free_port()
            self.write_config()
            if not self.database.exists():
                self.db_sync()
            try:
                self._spawn(timeout)
                return self.url
            except GlanceError:
                # a port taken between free_port() and gunicorn's bind: pick another one
                if fixed or "Address already in use" not in self.log_text():
                    raise
                self.port = None
        raise GlanceError("could not find a free port for Glance")

    def _spawn(self, timeout: float) -> None:
        assert self.port is not None
        if _port_in_use(self.port):
            raise GlanceError(f"port {self.port} is already in use; cannot start Glance there")
        self.pid_path.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "VIRTUAL_ENV"))}
        env["OS_GLANCE_CONFIG_DIR"] = str(self.config_dir)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap()
        self._log_file.write(f"\n===== start on port {self.port} at {time.ctime()}\n".encode())
        self._log_file.flush()
        cmd = [str(self.venv / "bin" / "gunicorn"), "-b", f"127.0.0.1:{self.port}",
               "-w", str(self.workers), "--threads", str(self.threads),
               "--graceful-timeout", "5", "--timeout", "120",
               "--pid", str(self.pid_path), "glance.wsgi.api:application"]
        # Its own session, hence its own process group: kill() reaches the workers too.
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reap()
                raise GlanceError(f"Glance exited with {self.proc.returncode} while starting; "
                                  f"log {self.log_path}:\n{self.log_text()}")
            if self._answers():
                return
            time.sleep(0.2)
        self.kill()
        raise GlanceError(f"Glance did not answer GET / within {timeout:.0f} s; log "
                          f"{self.log_path}:\n{self.log_text()}")

    def _answers(self) -> bool:
        """True once GET / gets any HTTP answer (Glance answers 300 with its versions)."""
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except (OSError, urllib.error.URLError):
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the master (it stops its workers); SIGKILL the group if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self._kill_group()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the master and its workers at once, as a crash would."""
        if self.proc is None:
            return
        self._kill_group()
        self._reap()

    def restart(self, timeout: float = START_TIMEOUT) -> str:
        """Stop (if running) and start again on the same port with the same database."""
        self.stop()
        return self.start(timeout)

    def _kill_group(self) -> None:
        assert self.proc is not None
        # The group id is the master's pid (start_new_session); it only holds our processes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_TIMEOUT)
        # Wait for the workers too: they may outlive the master for a moment.
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and _group_alive(self.proc.pid):
            time.sleep(0.05)

    def _reap(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> GlanceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process of the group exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..."; comm may hold spaces, so split after the ")"
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# --------------------------------------------------------------------------- script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true",
                        help="only build (or reuse) the Glance venv, then exit")
    parser.add_argument("--venv", type=Path, default=VENV, help=f"default: {VENV}")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    parser.add_argument("--port", type=int, help="default: a free port")
    args = parser.parse_args(argv)
    try:
        venv = ensure_venv(args.venv)
        if args.setup:
            print(f"glance venv ready: {venv}")
            return 0
        import tempfile

        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="glance-"))
        server = GlanceServer(workdir, port=args.port, venv=venv)
        server.start()
    except GlanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"glance listening on {server.url} (work dir {workdir}); Ctrl-C stops it", flush=True)
    try:
        while server.running():
            time.sleep(0.5)
        print(f"glance exited:\n{server.log_text()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
