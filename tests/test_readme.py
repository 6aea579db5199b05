"""The README's tour shows what the program prints: each offline command of the tour is run on
the example catalog and its output compared with the README's, line by line (``...`` in the
README stands for any number of lines)."""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

ROOT = Path(__file__).resolve().parent.parent


def tour_samples() -> list[tuple[list[str], list[str]]]:
    """(argv after `reconcile`, expected output lines) of each tour command that shows output."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    tour = text.split("## A five-minute tour", 1)[1]
    block = re.search(r"```console\n(.*?)```", tour, re.S)
    assert block, "the README's tour has no console block"
    samples: list[tuple[list[str], list[str]]] = []
    for chunk in re.split(r"\n(?=\$ )", block.group(1).strip()):
        command, *output = chunk.rstrip().split("\n")
        argv = shlex.split(command.removeprefix("$ "), comments=True)
        if argv[0] == "reconcile" and output:
            samples.append((argv[1:], [line for line in output if line.strip()]))
    return samples


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` is ``expected`` with each ``...`` standing for zero or more lines."""
    if not expected:
        return not actual
    if expected[0].strip() == "...":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and actual[0].rstrip() == expected[0].rstrip() and \
        matches(expected[1:], actual[1:])


def test_the_tour_has_samples() -> None:
    assert [argv[0] for argv, _ in tour_samples()][:2] == ["validate", "plan"]


@pytest.mark.parametrize(("argv", "expected"), tour_samples(),
                         ids=[" ".join(a) for a, _ in tour_samples()])
def test_readme_tour_output_is_what_the_program_prints(
        argv: list[str], expected: list[str], tmp_path: Path,
        run_cli: Callable[..., Result]) -> None:
    shutil.copytree(ROOT / "catalog", tmp_path / "catalog")
    result = run_cli(argv)
    actual = [line for line in result.output.splitlines() if line.strip()]
    assert matches(expected, actual), "\n".join(["README:", *expected, "program:", *actual])
