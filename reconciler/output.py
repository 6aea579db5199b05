"""Write a report or a saved plan to the path a user named, the way a shell's ``>`` would.

A regular file (or a new one) is replaced atomically: the text goes to a temporary file in
the same directory, is flushed to disk and renamed over it, so a reader never sees half a
report and a failed write leaves the old file and no temporary behind. Anything else is
written through and never replaced: ``/dev/null``, a FIFO, a terminal, ``/dev/stdout`` or
``/dev/fd/N`` (written to that descriptor, so ``>> log`` keeps appending). A symbolic link is
followed: the file it points to is written, the link stays.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

#: Names of an already open descriptor (Linux's /proc/self/fd, /dev/fd, /dev/stdout).
_FD_PATH = re.compile(r"/(?:dev/fd|proc/self/fd|proc/\d+/fd)/(\d+)\Z")
_STD_NAMES = {"/dev/stdout": 1, "/dev/stderr": 2}
_MAX_LINKS = 40  # as the kernel's ELOOP


def write_text(path: Path, text: str | Iterable[str]) -> None:
    """Write ``text`` (UTF-8) to ``path``; raises OSError (a directory: IsADirectoryError).
    ``text`` may come in pieces, written as they come (a big report is never held whole)."""
    data = [text.encode("utf-8")] if isinstance(text, str) else (
        piece.encode("utf-8") for piece in text)
    target, fd = _follow(path)
    if fd is not None:
        _write_fd(fd, data)
        return
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "Is a directory", str(path))
    if st is None or stat.S_ISREG(st.st_mode):
        _replace(target, data, None if st is None else stat.S_IMODE(st.st_mode))
    else:  # a device, FIFO or socket: write into it (a FIFO waits for its reader)
        with open(target, "wb") as f:
            f.writelines(data)


def _follow(path: Path) -> tuple[Path, int | None]:
    """The file a chain of symbolic links ends at, or the descriptor it names."""
    current = Path(os.path.abspath(path))
    for _ in range(_MAX_LINKS):
        fd = _descriptor(current)
        if fd is not None:
            return current, fd
        if not current.is_symlink():
            return current, None
        link = Path(os.readlink(current))
        current = Path(os.path.abspath(current.parent / link))
    raise OSError(40, "Too many levels of symbolic links", str(path))


def _descriptor(path: Path) -> int | None:
    text = path.as_posix()
    if text in _STD_NAMES:
        return _STD_NAMES[text]
    match = _FD_PATH.match(text)
    if match is None:
        return None
    if text.startswith("/proc/") and not text.startswith(("/proc/self/", f"/proc/{os.getpid()}/")):
        return None  # another process's descriptor: an ordinary path to open
    return int(match.group(1))


def _write_fd(fd: int, data: Iterable[bytes]) -> None:
    for stream in (sys.stdout, sys.stderr):  # what click wrote so far comes first
        with contextlib.suppress(Exception):
            stream.flush()
    for piece in data:
        view = memoryview(piece)
        while view:
            view = view[os.write(fd, view):]


def _replace(target: Path, data: Iterable[bytes], mode: int | None) -> None:
    # A new file gets 0666 less the umask (as `>` would); a replaced one keeps its mode.
    fd, tmp = _temporary(target)
    try:
        with os.fdopen(fd, "wb") as f:
            f.writelines(data)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _temporary(target: Path) -> tuple[int, Path]:
    """A new file beside ``target`` (so the rename stays on one file system)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                           0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(17, "File exists", str(target))


def check_writable(path: Path) -> None:
    """Fail now, before any work, where ``write_text`` would certainly fail later: the
    path is a directory, or the directory it goes into does not exist."""
    target, fd = _follow(path)
    if fd is not None:
        return
    if target.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(path))
    if not target.exists() and not target.parent.is_dir():
        raise FileNotFoundError(2, f"No such directory {target.parent}", str(path))
