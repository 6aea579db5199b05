"""`make demo` from a fresh copy of the checkout, as a newcomer runs it: it works, installs the
program without the test toolchain, and prints no packaging deprecation warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def checkout_copy(dest: Path) -> Path:
    """The files git tracks (plus uncommitted edits to them): what a fresh clone holds."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_make_demo_installs_only_the_program_and_warns_of_nothing(tmp_path: Path) -> None:
    repo = checkout_copy(tmp_path / "clone")
    done = subprocess.run(["make", "demo", f"PYTHON={sys.executable}"], cwd=repo,
                          capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "demo done" in output
    assert (repo / "demo-report.html").is_file()
    lowered = output.lower()
    assert "deprecat" not in lowered and "buildbackendwarning" not in lowered, output
    installed = subprocess.run([str(repo / ".venv/bin/python"), "-m", "pip", "list",
                                "--format", "freeze"], capture_output=True, text=True,
                               check=True).stdout.lower()
    assert "reconcile==" in installed
    for tool in ("pytest", "mypy", "ruff", "import-linter", "huaweicloudsdkcore"):
        assert f"{tool}==" not in installed, f"make demo installed {tool}"
