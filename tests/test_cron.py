"""What cron sees: a one-line summary on stderr when the report goes to a file, and JSON log
lines for the run's start and end and each create, adoption and failure, stamped in UTC."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from apply_helpers import UNKNOWN_OS_VERSION, SandboxFactory, write_images
from click.testing import Result

TOKEN = {"OS_AUTH_TOKEN": "t0k"}


def test_apply_to_a_file_says_in_one_line_what_happened(
        tmp_path: Path, sandbox: SandboxFactory, run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", ["img-000", "img-001"])
    sb = sandbox(token="t0k")
    result = run_cli(["apply", "--yes", "--endpoint", sb.url, "--format", "html", "-o",
                      "report.html"], env=TOKEN)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == ("Plan: 2 to create, 0 unchanged, 0 drifted, 0 orphaned, 0 blocked."
                             " Apply: 2 created, 0 adopted, 0 failed, 0 skipped."
                             " Report written to report.html.\n")


def test_json_logs_have_the_runs_events_in_utc(
        tmp_path: Path, sandbox: SandboxFactory, run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", ["img-000", "img-001", "img-002"],
                 overrides={"img-002": {"os_version": UNKNOWN_OS_VERSION}})
    sb = sandbox(token="t0k")
    result = run_cli(["apply", "--yes", "--endpoint", sb.url, "--log-format", "json",
                      "-o", "report.txt"], env=TOKEN)
    assert result.exit_code == 1  # img-002 is refused by the sandbox
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    events = [(d["event"], d.get("image")) for d in lines]
    assert events[0] == ("run_start", None)
    assert ("created", "img-000") in events and ("created", "img-001") in events
    assert ("failed", "img-002") in events
    end = next(d for d in lines if d["event"] == "run_end")
    assert end["counts"] == {"created": 2, "adopted": 0, "updated": 0, "failed": 1,
                             "skipped": 0}
    assert end["outcome"] == "partial"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", d["ts"]) for d in lines)
    assert all(d["run_id"] == lines[0]["run_id"] for d in lines if "run_id" in d)
