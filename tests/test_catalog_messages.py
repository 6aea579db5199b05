"""Catalog messages a newcomer can act on: where a misplaced property goes, YAML syntax errors
with a caret, the image's name beside images[N], warnings at their field's line, the warning
count, a message for `protected: yes` that does not contradict itself, and machine formats
(`validate --format json`, GitHub annotations)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

IMAGE = """\
images:
  - name: ubuntu-18.04-base
    os_version: Ubuntu 18.04 server 64bit
    min_disk: 40
"""


def validate(run_cli: Callable[..., Result], *args: str) -> Result:
    return run_cli(["validate", *args])


def test_a_property_at_the_image_level_is_told_to_go_under_properties(
        write_catalog: Callable[..., Path], run_cli: Callable[..., Result]) -> None:
    write_catalog({"a.yaml": IMAGE + "    hw_firmware_type: uefi\n"})
    result = validate(run_cli)
    assert result.exit_code == 1
    assert ("catalog/a.yaml:5: ubuntu-18.04-base.hw_firmware_type (images[0]): unknown field; "
            "if it is an extra property, indent it under `properties:`") in result.stderr
    assert "did you mean" not in result.stderr


def test_a_typo_of_a_field_still_gets_the_field(write_catalog: Callable[..., Path],
                                                run_cli: Callable[..., Result]) -> None:
    write_catalog({"a.yaml": IMAGE + "    min_disc: 40\n"})
    assert "unknown field; did you mean min_disk?" in validate(run_cli).stderr


def test_yaml_syntax_error_has_the_column_and_a_caret(write_catalog: Callable[..., Path],
                                                      run_cli: Callable[..., Result]) -> None:
    write_catalog({"a.yaml": "images:\n  - name: [a, b\n    min_disk: 40\n"})
    err = validate(run_cli).stderr
    lines = err.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("catalog/a.yaml:"))
    first = lines[at]
    column = int(first.split(":")[2])
    source, caret = lines[at + 1], lines[at + 2]
    line_no = first.split(":")[1]
    assert source.startswith(f"  {line_no} | ")
    assert caret.index("^") == len(f"  {line_no} | ") + column - 1


def test_json_syntax_error_has_a_caret_too(write_catalog: Callable[..., Path],
                                           run_cli: Callable[..., Result]) -> None:
    write_catalog({"a.json": '{"images": [{"name": "a",}]}\n'})
    err = validate(run_cli).stderr
    assert "catalog/a.json:1:25:" in err
    assert "  1 | {\"images\"" in err and "\n    | " + " " * 24 + "^" in err


def test_warnings_point_at_the_field_line_like_errors_and_are_counted(
        write_catalog: Callable[..., Path], run_cli: Callable[..., Result]) -> None:
    write_catalog({"a.yaml": "images:\n  - name: web\n    min_disk: 40\n"
                             "    os_version: Plan9 4th edition\n"})
    result = validate(run_cli)
    assert result.exit_code == 0
    assert "warning: catalog/a.yaml:4: web.os_version (images[0]): " in result.stderr
    assert result.stdout.strip().endswith("(profile ims), 1 warning")


def test_protected_yes_message_does_not_contradict_itself(
        write_catalog: Callable[..., Path], run_cli: Callable[..., Result]) -> None:
    write_catalog({"a.yaml": IMAGE + "    protected: yes\n"})
    err = validate(run_cli).stderr
    assert ("ubuntu-18.04-base.protected (images[0]): is `yes`, which YAML 1.1 reads as a "
            "boolean and YAML 1.2 as text; write true or false") in err
    assert "must be true or false, but it is" not in err


def test_validate_json_lists_errors_and_warnings(write_catalog: Callable[..., Path],
                                                 run_cli: Callable[..., Result]) -> None:
    write_catalog({"a.yaml": IMAGE.replace("min_disk: 40", "min_disk: 0")})
    result = validate(run_cli, "--format", "json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["valid"] is False
    assert doc["errors"] == [{"file": "catalog/a.yaml", "line": 4, "column": None,
                              "field": "images[0].min_disk", "image": "ubuntu-18.04-base",
                              "message": doc["errors"][0]["message"]}]
    write_catalog({"a.yaml": IMAGE.replace("Ubuntu 18.04 server 64bit", "Plan9")})
    ok = json.loads(validate(run_cli, "--format", "json").stdout)
    assert ok["valid"] is True and ok["images"] == 1 and len(ok["warnings"]) == 1


def test_validate_github_annotations(write_catalog: Callable[..., Path],
                                     run_cli: Callable[..., Result]) -> None:
    write_catalog({"a.yaml": IMAGE.replace("min_disk: 40", "min_disk: 0")})
    result = validate(run_cli, "--format", "github")
    assert result.exit_code == 1
    line = result.stdout.strip()
    assert line.startswith("::error file=catalog/a.yaml,line=4,title=reconcile "
                           "ubuntu-18.04-base.min_disk (images[0])::is 0;")
    write_catalog({"a.yaml": "images:\n  - name: [a\n"})
    syntax = validate(run_cli, "--format", "github").stdout
    assert syntax.startswith("::error file=catalog/a.yaml,line=")
    assert "%0A" not in syntax.split("::", 2)[1]  # the properties stay on one line
