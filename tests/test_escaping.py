"""Nothing from a catalog or a server can forge output: terminal lines (``state list``,
``state show``, ``history``, the text report) show control characters as escapes, and the
markdown PR comment keeps its structure whatever a name holds (checked by rendering it with
GitHub's own cmark-gfm)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import cmarkgfm
import pytest
from apply_helpers import RECONCILE, subprocess_env
from click.testing import Result
from cmarkgfm.cmark import Options

from reconciler.escape import md_code, md_text, terminal
from reconciler.models import ImageSpec, Record

Run = Callable[..., Result]
#: A catalog name that tries everything: break out of a code span, close the <details>, start
#: a fake summary line, recolour and clear the terminal, and a bidi override.
FORGING_NAME = "evil`</details>\n\n**Plan: 0 to create**\r\x1b[2J\x1b[31mred\u202e"
#: A server id doing the same to `state list`: a CR/LF and a fake record line, an OSC title.
FORGING_ID = "id-1\x1b]0;pwned\x07\r\nfake-image  id-2  active"
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")


def reconcile(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RECONCILE), *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)


def yaml_quoted(text: str) -> str:
    """A YAML double-quoted scalar holding ``text`` exactly."""
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    for char in sorted({c for c in out if ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f
                        or c == "\u202e"}):
        out = out.replace(char, f"\\u{ord(char):04x}")
    return f'"{out}"'


@pytest.fixture
def forged(tmp_path: Path) -> Path:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "a.yaml").write_text(
        "images:\n"
        f"  - name: {yaml_quoted(FORGING_NAME)}\n"
        "    os_version: Ubuntu 18.04 server 64bit\n"
        "    min_disk: 4\n"
        "  - name: plain\n"
        "    os_version: Ubuntu 18.04 server 64bit\n"
        "    min_disk: 4\n", encoding="utf-8")
    return tmp_path


def test_markdown_comment_keeps_its_structure_whatever_a_name_holds(forged: Path) -> None:
    result = reconcile("plan", "--format", "markdown", cwd=forged)
    assert result.returncode == 0, result.stderr
    html = cmarkgfm.github_flavored_markdown_to_html(result.stdout,
                                                     options=Options.CMARK_OPT_UNSAFE)
    # One real summary line, in bold; the name's fake one is not markup.
    assert re.findall(r"<strong>(.*?)</strong>", html) == [
        "Plan: 2 to create, 0 unchanged, 0 drifted, 0 orphaned, 0 blocked."]
    # The <details> the template opened are the ones closed.
    assert html.count("<details") == html.count("</details>") == 1
    # The whole name is one code span, its control characters visible.
    codes = re.findall(r"<code>(.*?)</code>", html, re.DOTALL)
    assert ("evil`&lt;/details&gt;\\n\\n**Plan: 0 to create**\\r\\x1b[2J\\x1b[31mred\\u202e"
            in codes)
    assert not RAW_CONTROL.search(result.stdout)


def test_text_report_shows_control_characters_as_escapes(forged: Path) -> None:
    result = reconcile("plan", cwd=forged)
    assert result.returncode == 0, result.stderr
    assert not RAW_CONTROL.search(result.stdout)
    lines = result.stdout.splitlines()
    assert [line for line in lines if "Plan:" in line and "to create," in line] == [
        "Plan: 2 to create, 0 unchanged, 0 drifted, 0 orphaned, 0 blocked."]
    assert any("evil`</details>\\n\\n**Plan: 0 to create**\\r\\x1b[2J" in line for line in lines)


@pytest.fixture
def hostile_state(tmp_path: Path, make_state: Callable[..., Path]) -> Path:
    """A state file holding what a hostile server answered: an id and a status with control
    characters and a line break, and a run whose target and error do the same."""
    request = ImageSpec(name="victim", min_disk=4).body()
    response = {**request, "id": FORGING_ID, "status": "active\x1b[8m",
                "self": "/v2/images/x\r\nowner: admin", "created_at": "2024-01-01T00:00:00Z"}
    record = Record.of(name="victim", image_id=FORGING_ID, spec_digest="d" * 64,
                       request=request, response=response, status="active\x1b[8m",
                       created_at="2024-01-01T00:00:00Z\r", updated_at="x", recorded_at="y",
                       run_id="run-1")
    state = make_state(tmp_path / "state.db", [record])
    conn = sqlite3.connect(state)
    with conn:
        conn.execute("INSERT INTO runs (id, mode, target, profile, started_at, outcome, "
                     "created, adopted, failed, summary_json) VALUES ('run-1\x1b[2K', 'apply', "
                     "'http://x\r\n2099-01-01  run-2  success', 'ims', '2024-01-01', 'failed', "
                     "0, 0, 1, '{}')")
    conn.close()
    return state


@pytest.mark.parametrize("command", [["state", "list"], ["state", "show", "victim"],
                                     ["history"]], ids=" ".join)
def test_state_commands_show_server_values_as_escapes(command: list[str], hostile_state: Path,
                                                      tmp_path: Path) -> None:
    result = reconcile(*command, "--state", hostile_state, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not RAW_CONTROL.search(result.stdout)
    assert "fake-image" not in [line.split()[0] for line in result.stdout.splitlines() if line]
    assert "\\r\\n" in result.stdout


def test_state_list_has_one_line_per_record(hostile_state: Path, tmp_path: Path) -> None:
    result = reconcile("state", "list", "--state", hostile_state, cwd=tmp_path)
    assert result.stdout.splitlines() == [
        "victim  id-1\\x1b]0;pwned\\x07\\r\\nfake-image  id-2  active  active\\x1b[8m  "
        "2024-01-01T00:00:00Z\\r  http://127.0.0.1:9999"]


# --- the escaping functions ------------------------------------------------------------------

@pytest.mark.parametrize(("text", "shown"), [
    ("plain ünïcødé 名前", "plain ünïcødé 名前"),
    ("a\x1b[31mb", "a\\x1b[31mb"),
    ("line\r\nnext\tx", "line\\r\\nnext\\tx"),
    ("csi\x9b2J del\x7f", "csi\\x9b2J del\\x7f"),
    ("rtl\u202eexe.txt sep\u2028", "rtl\\u202eexe.txt sep\\u2028"),
    ("bad-byte-\udcff.yaml", "bad-byte-\\xff.yaml"),
])
def test_terminal_makes_control_characters_visible(text: str, shown: str) -> None:
    assert terminal(text) == shown


def test_terminal_can_keep_newlines_of_messages() -> None:
    assert terminal("one\ntwo\r\x1b", newlines=True) == "one\ntwo\\r\\x1b"


@pytest.mark.parametrize("text", [
    "a`b", "``x``", "`", "</details>", "a|b", "**bold**", "<img src=x onerror=alert(1)>",
    "line\nbreak",
])
def test_md_code_is_one_code_span_holding_the_text(text: str) -> None:
    html = cmarkgfm.github_flavored_markdown_to_html(f"x {md_code(text)} y",
                                                     options=Options.CMARK_OPT_UNSAFE)
    inner = terminal(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert html.strip() == f"<p>x <code>{inner}</code> y</p>".replace('"', "&quot;")


def test_md_code_in_a_table_cell_keeps_the_cell() -> None:
    table = f"| a | b |\n|---|---|\n| {md_code('x|y`z', table=True)} | 2 |\n"
    html = cmarkgfm.github_flavored_markdown_to_html(table)
    assert "<td><code>x|y`z</code></td>" in html
    assert "<td>2</td>" in html


@pytest.mark.parametrize("text", [
    "*em* _em_ **strong**", "[link](x) ![img](y)", "<b>html</b> &amp;",
    "# heading", "> quote", "- item", "1. item", "~~strike~~", "@someone", "back\\slash",
    "a | b", "`code`",
])
def test_md_text_renders_as_the_literal_text(text: str) -> None:
    html = cmarkgfm.github_flavored_markdown_to_html(md_text(text),
                                                     options=Options.CMARK_OPT_UNSAFE)
    literal = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert html.strip() == f"<p>{literal}</p>"


def test_md_text_leaves_ordinary_words_alone() -> None:
    assert md_text("os_version Plan9 is not a known IMS OS version (catalog/a.yaml:3)") == \
        "os_version Plan9 is not a known IMS OS version (catalog/a.yaml:3)"


def test_html_report_escapes_the_forging_name_too(forged: Path) -> None:
    result = reconcile("plan", "--format", "html", cwd=forged)
    assert result.returncode == 0, result.stderr
    assert "evil`&lt;/details&gt;\\n\\n**Plan: 0 to create**\\r\\x1b[2J" in result.stdout
    assert result.stdout.count("</details>") == result.stdout.count("<details")
    assert not RAW_CONTROL.search(result.stdout)
