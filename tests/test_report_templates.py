"""``--templates`` files are input (a pull request's reconcile.toml can name them): they run
in Jinja2's sandbox, so they can format the report but never run code or reach Python's
internals, and whatever goes wrong in one is one clean error naming the file and line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from apply_helpers import RECONCILE, subprocess_env, write_images


@pytest.fixture
def world(tmp_path: Path) -> Path:
    write_images(tmp_path / "catalog", ["alpha"])
    (tmp_path / "tpl").mkdir()
    return tmp_path


def plan_with(world: Path, template: str, *, via_config: bool = False,
              fmt: str = "text") -> subprocess.CompletedProcess[str]:
    name = {"text": "report.txt.j2", "markdown": "report.md.j2", "html": "report.html.j2"}[fmt]
    (world / "tpl" / name).write_text(template, encoding="utf-8")
    args = [str(RECONCILE), "plan", "--format", fmt]
    if via_config:
        (world / "reconcile.toml").write_text('templates = "tpl"\n')
    else:
        args += ["--templates", "tpl"]
    return subprocess.run(args, cwd=world, env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("via_config", [False, True], ids=["--templates", "reconcile.toml"])
@pytest.mark.parametrize("expression", [
    "cycler.__init__.__globals__.os.popen('touch PWNED').read()",
    "joiner.__init__.__globals__['os'].system('touch PWNED')",
    "r.__class__.__mro__[-1].__subclasses__()",
    "lipsum.__globals__['os'].popen('touch PWNED')",
    "paint.__globals__",
], ids=["cycler", "joiner", "mro", "lipsum", "function-globals"])
def test_a_template_cannot_run_code(world: Path, expression: str, via_config: bool) -> None:
    result = plan_with(world, "before {{ " + expression + " }} after\n", via_config=via_config)
    assert result.returncode == 1
    assert result.stderr.startswith("error: report template ")
    assert "is unsafe" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not (world / "PWNED").exists()


def test_a_template_cannot_change_the_report(world: Path) -> None:
    result = plan_with(world, "{{ r.changes.__len__ }}{{ s.update({'create': 0}) }}\n")
    assert result.returncode == 1
    assert "is unsafe" in result.stderr


@pytest.mark.parametrize(("expression", "message"), [
    ("'x' * 10**12", "too large"),
    ("2 ** 100000000", "too large"),
    ("range(10**9) | list", "Range too big"),
    ("1 / 0", "ZeroDivisionError"),
    ("r.changes[99]", "has no element 99"),
], ids=["huge-string", "huge-power", "huge-range", "division", "index"])
def test_a_failing_expression_is_one_clean_error_with_its_line(world: Path, expression: str,
                                                               message: str) -> None:
    result = plan_with(world, "line one\n{{ " + expression + " }}\n")
    assert result.returncode == 1
    assert result.stderr.startswith("error: report template ")
    assert "report.txt.j2:2:" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_sandboxed_templates_still_render_everything_a_report_needs(world: Path) -> None:
    result = plan_with(world, (
        "{% for c in r.changes %}{{ paint(c.name, c.action) }} {{ '%-8s'|format(c.action) }}"
        "|{{ c.spec.body() | pretty_json | length > 0 }}{% endfor %} {{ plan_line }}\n"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("alpha create  |True Plan: 1 to create")


def test_html_override_keeps_autoescape_and_strict_undefined(world: Path) -> None:
    result = plan_with(world, "<p>{{ '<b>' }}</p>\n", fmt="html")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "<p>&lt;b&gt;</p>\n"
    result = plan_with(world, "{{ r.no_such_field }}\n", fmt="html")
    assert result.returncode == 1
    assert "no_such_field" in result.stderr
