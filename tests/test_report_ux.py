"""What reports tell a reader: what they were made from (offline or refreshed, which state,
which catalog and plan), readable diffs (tags added/removed, labelled sides, colours, ```diff
blocks, creates with their attributes) and no noise (unchanged hidden in text, "No changes.",
results instead of the plan again, one line per shared failure, skipped counted)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from apply_helpers import SandboxFactory, replace_image, write_images
from click.testing import Result
from test_reports import scenario  # noqa: F401  (a fixture)

from reconciler.models import Change, FieldDiff, ImageSpec, Outcome, RunReport
from reconciler.report import render

TOKEN = {"OS_AUTH_TOKEN": "t0k"}


def plan(run_cli: Callable[..., Result], *args: str) -> Result:
    result = run_cli(["plan", "--catalog", "catalog", "--state", "state.db", *args])
    assert result.exit_code == 0, result.output
    return result


# --- 6: reports say what they are ------------------------------------------------------------

@pytest.mark.usefixtures("scenario")
def test_every_offline_report_says_it_did_not_read_the_cloud_and_names_state_and_digest(
        run_cli: Callable[..., Result]) -> None:
    doc = json.loads(plan(run_cli, "--format", "json").stdout)
    assert (doc["refreshed"], doc["state"], doc["plan_id"]) == (False, "state.db", None)
    for fmt in ("text", "markdown", "html"):
        out = plan(run_cli, "--format", fmt).stdout
        assert "offline: state state.db only, the cloud was not read" in out, fmt
        assert f"catalog digest {doc['catalog_digest'][:12]}" in out, fmt


def test_refreshed_report_says_so(tmp_path: Path, sandbox: SandboxFactory,
                                  run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", ["img-000"])
    sb = sandbox(token="t0k")
    result = run_cli(["plan", "--refresh", "--endpoint", sb.url, "--format", "json"], env=TOKEN)
    assert json.loads(result.stdout)["refreshed"] is True
    text = run_cli(["plan", "--refresh", "--endpoint", sb.url], env=TOKEN).stdout
    assert "refreshed: state reconcile-state.db and the cloud" in text


@pytest.mark.usefixtures("scenario")
def test_saved_plan_report_carries_the_plan_id(
        tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    doc = json.loads(plan(run_cli, "--out", "plan.json", "--format", "json").stdout)
    saved = json.loads((tmp_path / "plan.json").read_text(encoding="utf-8"))
    assert doc["plan_id"] == saved["plan_id"]
    md = plan(run_cli, "--out", "plan2.json", "--format", "markdown").stdout
    assert "To apply exactly this plan, once: `reconcile apply PLANFILE`" in md


@pytest.mark.usefixtures("scenario")
def test_markdown_ends_with_how_to_apply(run_cli: Callable[..., Result]) -> None:
    md = plan(run_cli, "--format", "markdown").stdout
    assert "To apply: `reconcile apply` reads the cloud, shows this plan and asks" in md
    assert md.index("To apply") > md.index("Unchanged (1)")


@pytest.mark.usefixtures("scenario")
def test_state_in_a_missing_directory_is_an_error_not_an_empty_state(
        run_cli: Callable[..., Result]) -> None:
    result = run_cli(["plan", "--state", "no-such-dir/state.db"])
    assert result.exit_code == 1
    assert "directory no-such-dir does not exist; check --state" in result.stderr
    assert "to create" not in result.stdout


# --- 7: readable diffs -----------------------------------------------------------------------

@pytest.mark.usefixtures("scenario")
def test_text_diff_shows_tags_added_and_removed_and_labels_the_sides(
        run_cli: Callable[..., Result]) -> None:
    out = plan(run_cli).stdout
    block = out[out.index("bravo-drift"):out.index("zulu-orphan")]
    assert "recorded → catalog:" in block
    assert '+ tags: "docker"' in block  # the tag added, not the two whole lists
    assert '"managed-by-reconcile"' not in block
    assert "~ min_disk: 40 → 60" in block
    assert '+ docker_version: "24.0"' in block


def drift_report(reason: str = "changed_remotely") -> RunReport:
    change = Change(name="img", action="drift", reason=reason, image_id="id-1",
                    diff=(FieldDiff(field="tags", before=["a", "b"], after=["b", "c"]),
                          FieldDiff(field="min_disk", before=40, after=60),
                          FieldDiff(field="hw_x", before="1", after=None)))
    return RunReport(mode="plan", generated_at="2024-01-01T00:00:00Z", tool_version="0",
                     catalog="catalog", target="t", profile="ims", catalog_digest="0" * 64,
                     summary={"create": 0, "adopt": 0, "unchanged": 0, "drift": 1,
                              "orphan": 0, "blocked": 0}, changes=(change,))


def test_terminal_colours_added_removed_and_changed_apart() -> None:
    out = render(drift_report(), "text", color=True)
    assert "recorded → cloud:" in out
    assert '\x1b[32m+ tags: "c"\x1b[0m' in out
    assert '\x1b[31m- tags: "a"\x1b[0m' in out
    assert "\x1b[33m~ min_disk: 40 → 60\x1b[0m" in out
    assert '\x1b[31m- hw_x: "1"\x1b[0m' in out


def test_html_diff_lines_carry_their_kind_and_side() -> None:
    out = render(drift_report(), "html")
    assert '<div class="side">recorded → cloud</div>' in out
    assert re.search(r'<li class="added"><code>tags</code>: <code>&#34;c&#34;</code>', out)
    assert re.search(r'<li class="removed"><code>tags</code>: <code>&#34;a&#34;</code>', out)
    assert '<li class="changed"><code>min_disk</code>' in out
    assert ".diff .added { color: #1a7f37; }" in out


@pytest.mark.usefixtures("scenario")
def test_markdown_diff_is_a_diff_block(run_cli: Callable[..., Result]) -> None:
    md = plan(run_cli, "--format", "markdown").stdout
    assert ("  ```diff\n  # recorded → catalog\n  + docker_version: \"24.0\"\n"
            "  - min_disk: 40\n  + min_disk: 60\n  + tags: \"docker\"\n  ```") in md


def test_markdown_diff_fence_outlasts_backticks_in_values() -> None:
    report = drift_report().model_copy(update={"changes": (Change(
        name="img", action="drift", reason="catalog_changed",
        diff=(FieldDiff(field="note", before="a", after="```\n</details>"),)),)})
    md = render(report, "markdown")
    assert "  ````diff\n" in md and "\n  ````\n" in md


@pytest.mark.usefixtures("scenario")
def test_markdown_lists_creates_with_their_attributes(run_cli: Callable[..., Result]) -> None:
    md = plan(run_cli, "--format", "markdown").stdout
    assert "<details open><summary>To create (2)</summary>" in md
    assert ("| `delta-new` | os Debian GNU/Linux 10.0.0 64bit; disk_format zvhd2; min_disk 40; "
            "min_ram 0; visibility private; tags managed-by-reconcile; properties "
            "hw_firmware_type=uefi | catalog/a.yaml:21 |") in md


# --- 8: less noise ---------------------------------------------------------------------------

@pytest.mark.usefixtures("scenario")
def test_text_hides_unchanged_unless_asked(run_cli: Callable[..., Result]) -> None:
    out = plan(run_cli).stdout
    assert "alpha-unchanged" not in out
    assert "(1 unchanged not listed; --show-unchanged lists them)" in out
    assert "1 unchanged" in out.splitlines()[-1]
    shown = plan(run_cli, "--show-unchanged").stdout
    assert "= unchanged alpha-unchanged" in shown
    assert "not listed" not in shown


def test_no_changes_line(tmp_path: Path, sandbox: SandboxFactory,
                         run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", ["img-000", "img-001"])
    sb = sandbox(token="t0k")
    before = run_cli(["plan"]).stdout
    assert "No changes" not in before
    assert run_cli(["apply", "--yes", "--endpoint", sb.url], env=TOKEN).exit_code == 0
    after = run_cli(["plan", "--refresh", "--endpoint", sb.url], env=TOKEN).stdout
    assert "No changes: the catalog matches the state file and the cloud." in after


def test_apply_text_shows_aligned_results_not_the_plan_again(
        tmp_path: Path, sandbox: SandboxFactory, run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", ["a", "a-much-longer-name", "mid-name"])
    sb = sandbox(token="t0k")
    result = run_cli(["apply", "--yes", "--endpoint", sb.url], env=TOKEN)
    assert result.exit_code == 0, result.output
    assert "+ create" not in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("  created ")]
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")
    ids = {m.start() for m in map(uuid.search, lines) if m}
    assert len(lines) == 3 and len(ids) == 1, "the ids of the result lines do not line up"
    assert result.stdout.rstrip().splitlines()[-1].startswith(
        "Apply: 3 created, 0 adopted, 0 failed, 0 skipped.")


def test_a_failure_shared_by_many_images_is_one_line() -> None:
    from reconciler.models import ErrorInfo

    error = ErrorInfo(message="The request you have made requires authentication.", status=401)
    outcomes = tuple(Outcome(name=f"img-{i:02d}", result="failed", error=error, attempts=1)
                     for i in range(12))
    report = drift_report().model_copy(update={
        "mode": "apply", "changes": (), "outcomes": outcomes,
        "summary": {**drift_report().summary, "failed": 12, "skipped": 3, "created": 0,
                    "adopted": 0}})
    out = render(report, "text")
    assert out.count("requires authentication") == 1
    assert "failed   12 images  The request you have made requires authentication.  [HTTP 401]" \
        in out
    assert "img-00, img-01" in out and "(4 more)" in out
    assert "skipped  3 images not attempted" in out
    assert "0 failed" not in out and "12 failed, 3 skipped." in out


def test_out_of_band_change_is_labelled_recorded_to_cloud(
        tmp_path: Path, sandbox: SandboxFactory, run_cli: Callable[..., Result]) -> None:
    write_images(tmp_path / "catalog", ["img-000"])
    sb = sandbox(token="t0k")
    assert run_cli(["apply", "--yes", "--endpoint", sb.url], env=TOKEN).exit_code == 0
    replace_image(sb, sb.images()[0]["id"], min_disk=80)
    out = run_cli(["plan", "--refresh", "--endpoint", sb.url, "--drift", "report"],
                  env=TOKEN).stdout
    assert "recorded → cloud:" in out and "~ min_disk: 40 → 80" in out
    # under drift: update the same change is what the PATCH would undo, cloud → catalog
    out = run_cli(["plan", "--refresh", "--endpoint", sb.url], env=TOKEN).stdout
    assert "cloud → catalog:" in out and "~ min_disk: 80 → 40" in out


def test_spec_attributes_skip_unset_fields() -> None:
    from reconciler.report import create_attributes

    change = Change(name="x", action="create", reason="not_recorded",
                    spec=ImageSpec(name="x", disk_format="qcow2", tags=("a", "b")))
    assert create_attributes(change) == "disk_format qcow2; tags a, b"
