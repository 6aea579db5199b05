"""The project's documents stay true to the code that cites them and to the package layout.

Comments justify rules by citing ``docs/NAME.md §N``; a citation whose section does not exist
(renumbered, deleted, mistyped) fails here, and so does a citation in an old form that names no
file under docs/. A bare ``§N`` belongs to the nearest ``docs/NAME.md`` named before it in the
same paragraph (lines up to a blank one); in a document of docs/ it may also mean that document.
"""

from __future__ import annotations

import re
import sqlite3
import tomllib
from pathlib import Path

import pytest

from reconciler.state import SCHEMA_VERSION, open_for_write

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_DOC = re.compile(r"docs/([\w-]+\.md)")
_SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
_EXTERNAL = re.compile(r"RFC \d+ §[\d.]+")  # other documents' sections, not ours
_HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
# Names of the design documents before they lived in docs/.
_OLD_FORMS = re.compile(r"\bARCHITECTURE\b|(?<![\w/.-])api-contract(?!\.md)")


def _cited_files() -> list[Path]:
    patterns = ["reconciler/**/*.py", "tests/**/*.py", "bench/**/*.py", "templates/*",
                "docs/*.md", "README.md", "Makefile", "pyproject.toml", ".ci/run"]
    found = {p for pattern in patterns for p in ROOT.glob(pattern) if p.is_file()}
    return sorted(found - {Path(__file__).resolve()})  # this file's examples are not citations


def _sections(doc: str) -> set[str]:
    return set(_HEADING.findall((DOCS / doc).read_text(encoding="utf-8")))


def citations(path: Path) -> list[tuple[int, str, str | None]]:
    """Each ``§N`` of a file as (line, section, the docs/ file it belongs to, if any)."""
    own = path.name if path.parent == DOCS else None
    out: list[tuple[int, str, str | None]] = []
    current = own
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip(" \t#*/\"'"):
            current = own  # a new paragraph
            continue
        line = _EXTERNAL.sub("", line)
        events = [(m.start(), "doc", m.group(1)) for m in _DOC.finditer(line)]
        events += [(m.start(), "section", m.group(1)) for m in _SECTION.finditer(line)]
        for _, kind, value in sorted(events):
            if kind == "doc":
                current = value
            else:
                out.append((number, value, current))
    return out


def test_every_cited_section_exists() -> None:
    broken = []
    cited = 0
    for path in _cited_files():
        where = path.relative_to(ROOT)
        for number, section, doc in citations(path):
            cited += 1
            if doc is None:
                broken.append(f"{where}:{number}: §{section} names no document; "
                              f"cite it as docs/NAME.md §{section}")
            elif not (DOCS / doc).is_file():
                broken.append(f"{where}:{number}: docs/{doc} does not exist")
            elif section not in _sections(doc):
                broken.append(f"{where}:{number}: docs/{doc} has no section {section}")
    assert not broken, "\n".join(broken)
    assert cited > 50  # the scan really read the citations


def test_every_named_document_exists() -> None:
    missing = [f"{p.relative_to(ROOT)}: docs/{doc}" for p in _cited_files()
               for doc in _DOC.findall(p.read_text(encoding="utf-8"))
               if not (DOCS / doc).is_file()]
    assert not missing, "\n".join(missing)


def test_no_citation_of_documents_outside_the_repository() -> None:
    old = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in _cited_files()
           for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if _OLD_FORMS.search(line)]
    assert not old, "cite docs/architecture.md or docs/api-contract.md instead:\n" + \
        "\n".join(old)


@pytest.mark.parametrize(("text", "expected"), [
    ("see docs/api-contract.md §9.1", [(1, "9.1", "api-contract.md")]),
    ("(docs/architecture.md §6.4, §12)",
     [(1, "6.4", "architecture.md"), (1, "12", "architecture.md")]),
    ("docs/api-contract.md §9:\n- glance (§9.1)\n\nlater §3", [
        (1, "9", "api-contract.md"), (2, "9.1", "api-contract.md"), (4, "3", None)]),
    ("# docs/api-contract.md §10.2\n#\n# §10.1", [
        (1, "10.2", "api-contract.md"), (3, "10.1", None)]),
    ("an HTTP-date (RFC 9110 §10.2.3)", []),
])
def test_citations_are_read_as_written(tmp_path: Path, text: str,
                                       expected: list[tuple[int, str, str | None]]) -> None:
    path = tmp_path / "module.py"
    path.write_text(text, encoding="utf-8")
    assert citations(path) == expected


def test_the_checker_finds_a_missing_section() -> None:
    assert "6.4" in _sections("architecture.md")
    assert "99" not in _sections("api-contract.md")


# --- the layers of docs/architecture.md §2 --------------------------------------------------

def _layer_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    [layers] = [c for c in contracts if c["type"] == "layers"]
    assert layers["containers"] == ["reconciler"] and layers["exhaustive"] is True
    return [m.strip("() ") for layer in layers["layers"] for m in re.split(r"[|:]", layer)]


def test_the_layer_contract_names_every_module_the_architecture_lists() -> None:
    """docs/architecture.md §2 and the import-linter contract list the same modules."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## 2. ", 1)[1].split("\n## ", 1)[0]
    documented = {m.rstrip("/") for m in re.findall(r"^\|[^|]+\| `([\w./]+)` \|", section,
                                                   re.MULTILINE)}
    assert documented == set(_layer_modules())


# --- the state schema of docs/architecture.md §7 ---------------------------------------------

def _section(number: str) -> str:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    return text.split(f"\n## {number}. ", 1)[1].split("\n## ", 1)[0]


def test_the_schema_table_lists_every_table_and_column(tmp_path: Path) -> None:
    """docs/architecture.md §7 against a state file made by this reconcile."""
    documented: dict[str, set[str]] = {}
    for row in re.findall(r"^\| `(\w+)` \|([^|]*)\|([^|]*)\|", _section("7"), re.MULTILINE):
        table, key, columns = row
        outside_parentheses = re.sub(r"\([^)]*\)", "", columns)
        documented[table] = set(re.findall(r"`(\w+)`", key + outside_parentheses))
    path = tmp_path / "state.db"
    open_for_write(path).close()
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        actual = {t: {c[1] for c in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
    finally:
        conn.close()
    assert documented == actual


def test_the_schema_section_names_the_current_version() -> None:
    assert f"(now {SCHEMA_VERSION})" in _section("7")


def test_the_readme_links_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/architecture.md)" in readme and "(docs/api-contract.md)" in readme
