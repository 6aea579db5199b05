"""Catalog loading through the CLI: every malformed input exits 1 with FILE:LINE: FIELD: message.

The malformed cases are one table, run through both ``plan`` (against an existing state file
whose bytes must not change) and ``validate``. Each case names the file and line the message
must point at, the field path, and a piece of the message that tells the user what to do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import Result

from reconciler.catalog import load_catalog
from reconciler.errors import CatalogError
from reconciler.profiles import GLANCE, IMS

OK_OS = "Ubuntu 18.04 server 64bit"


@dataclass(frozen=True)
class Bad:
    """One malformed catalog: files to write and where the error must point."""

    files: dict[str, Any]
    where: str  # "a.yaml:7" (relative to the catalog dir)
    path: str  # field path, e.g. "images[0].tags[1]"
    hint: str  # a piece of the message
    also: tuple[str, ...] = field(default=())  # more pieces that must appear


def one(text: str) -> dict[str, Any]:
    return {"a.yaml": text}


def image(*lines: str, name: str = "a") -> dict[str, Any]:
    """images: [ {name: NAME, ...lines} ] in a.yaml; the first extra line is line 3."""
    body = "".join(f"    {line}\n" for line in lines)
    return one(f"images:\n  - name: {name}\n{body}")


BAD: dict[str, Bad] = {
    "unknown_field_with_did_you_mean": Bad(
        image("min_disk: 40", "min_dsk: 40"), "a.yaml:4", "images[0].min_dsk",
        "did you mean min_disk?"),
    "unknown_top_level_key": Bad(
        one("images: []\nimagse: []\n"), "a.yaml:2", "imagse", "did you mean images?"),
    "unknown_field_in_defaults": Bad(
        one("defaults:\n  min_rma: 1\nimages:\n  - name: a\n"), "a.yaml:2", "defaults.min_rma",
        "did you mean min_ram?"),
    "name_read_as_float": Bad(
        one("images:\n  - name: 1.10\n"), "a.yaml:2", "images[0].name", 'quote it',
        ('"1.10"',)),
    "name_read_as_bool_no": Bad(
        one("images:\n  - name: no\n"), "a.yaml:2", "images[0].name", '"no"'),
    "name_read_as_date": Bad(
        one("images:\n  - name: 2024-01-02\n"), "a.yaml:2", "images[0].name", '"2024-01-02"'),
    "protected_on": Bad(
        image("protected: on"), "a.yaml:3", "images[0].protected", "write true or false"),
    "protected_quoted_yes": Bad(
        image('protected: "yes"'), "a.yaml:3", "images[0].protected",
        "must be true or false"),
    "os_version_tilde": Bad(
        image("os_version: ~"), "a.yaml:3", "images[0].os_version", "empty or null"),
    "os_version_empty_value": Bad(
        image("min_disk: 4", "os_version:"), "a.yaml:4", "images[0].os_version",
        "empty or null"),
    "tag_is_a_number": Bad(
        image("tags:", "  - base", "  - 7"), "a.yaml:5", "images[0].tags[1]", 'quote it: "7"'),
    "tag_is_empty": Bad(
        image("tags:", "  - base", "  - ''"), "a.yaml:5", "images[0].tags[1]",
        "must not be empty"),
    "tags_not_a_list": Bad(
        image("tags: base"), "a.yaml:3", "images[0].tags", "must be a list"),
    "properties_not_a_mapping": Bad(
        image("properties: [a, b]"), "a.yaml:3", "images[0].properties", "must be a mapping"),
    "property_value_int": Bad(
        image("properties:", "  cpu_count: 4"), "a.yaml:4", "images[0].properties.cpu_count",
        "must be text"),
    "property_value_bool": Bad(
        image("properties:", "  secure_boot: true"), "a.yaml:4",
        "images[0].properties.secure_boot", "must be text"),
    **{
        f"reserved_property_{key.strip('_')}": Bad(
            image("properties:", f"  {key}: x"), "a.yaml:4", f"images[0].properties.{key}",
            hint)
        for key, hint in [
            ("status", "reserved"), ("id", "reserved"), ("owner", "reserved"),
            ("self", "reserved"), ("os_glance_x", "os_glance"),
            ("__os_type", "computed by the server"), ("reconcile_marker", "reserved"),
        ]
    },
    "base_field_as_property": Bad(
        image("properties:", "  min_disk: '40'"), "a.yaml:4",
        "images[0].properties.min_disk", "write it as `min_disk:`"),
    "duplicate_key_in_image": Bad(
        image("min_disk: 40", "min_disk: 50"), "a.yaml:4", "images[0].min_disk",
        "given twice"),
    "duplicate_key_in_properties": Bad(
        image("properties:", "  k: v", "  k: w"), "a.yaml:5", "images[0].properties.k",
        "given twice"),
    "duplicate_name_across_files": Bad(
        {"a.yaml": "images:\n  - name: same\n",
         "b.yaml": "# second file\nimages:\n  - name: other\n  - name: same\n"},
        "b.yaml:4", "images[1].name", "duplicate image name 'same'",
        ("first defined at {root}/a.yaml:2",)),
    "min_disk_zero_under_ims": Bad(
        image("min_disk: 0"), "a.yaml:3", "images[0].min_disk", "1 to 1024"),
    "min_disk_2000_under_ims": Bad(
        image("min_disk: 2000"), "a.yaml:3", "images[0].min_disk", "1 to 1024"),
    "min_disk_fraction": Bad(
        image("min_disk: 4.5"), "a.yaml:3", "images[0].min_disk", "whole number"),
    "min_ram_negative": Bad(
        image("min_ram: -1"), "a.yaml:3", "images[0].min_ram", "is -1"),
    "min_ram_string": Bad(
        image("min_ram: '1024'"), "a.yaml:3", "images[0].min_ram", "whole number"),
    "visibility_public_under_ims": Bad(
        image("visibility: public"), "a.yaml:3", "images[0].visibility", "private"),
    "disk_format_bogus": Bad(
        image("disk_format: bogus"), "a.yaml:3", "images[0].disk_format", "zvhd2"),
    "container_format_ovf_under_ims": Bad(
        image("container_format: ovf"), "a.yaml:3", "images[0].container_format", "bare"),
    "name_longer_than_255": Bad(
        one(f"images:\n  - name: {'n' * 256}\n"), "a.yaml:2", "images[0].name",
        "at most 255"),
    "name_empty_string": Bad(
        one("images:\n  - name: ''\n"), "a.yaml:2", "images[0].name", "must not be empty"),
    "emoji_in_name": Bad(
        one("images:\n  - name: \"ubuntu-\U0001F680\"\n"), "a.yaml:2", "images[0].name",
        "4-byte"),
    "four_byte_character_in_property": Bad(
        image("properties:", "  note: \"\U0001D11E clef\""), "a.yaml:4",
        "images[0].properties.note", "4-byte"),
    "os_version_and_alias_both_given": Bad(
        image(f"os_version: {OK_OS}", f"__os_version: {OK_OS}"), "a.yaml:4",
        "images[0].__os_version", "same field"),
    "image_without_name": Bad(
        one("images:\n  - name: a\n  - min_disk: 4\n    min_ram: 0\n"), "a.yaml:3",
        "images[1].name", "is required"),
    "image_is_a_string": Bad(
        one("images:\n  - name: a\n  - just-a-name\n"), "a.yaml:3", "images[1]",
        "must be a mapping"),
    "images_not_a_list": Bad(
        one("# header\nimages:\n  name: a\n"), "a.yaml:2", "images", "must be a list"),
    "defaults_not_a_mapping": Bad(
        one("defaults: [1]\nimages:\n  - name: a\n"), "a.yaml:1", "defaults",
        "must be a mapping"),
    "json_file_value_out_of_range": Bad(
        {"a.json": '{"images": [\n  {"name": "a",\n   "min_disk": 0}\n]}\n'}, "a.json:3",
        "images[0].min_disk", "1 to 1024"),
}

# Whole-file problems: located at a file (and line where there is one), with no field path.
BAD_FILE: dict[str, Bad] = {
    "images_missing": Bad(
        one("defaults:\n  min_ram: 0\n"), "a.yaml:1", "images", "is missing"),
    "file_is_a_list": Bad(one("- name: a\n- name: b\n"), "a.yaml:1", "", "must be a mapping"),
    "file_is_empty": Bad(one(""), "a.yaml:1", "", "is empty"),
    "file_is_only_a_comment": Bad(one("# nothing yet\n"), "a.yaml:1", "", "is empty"),
    "yaml_syntax_error": Bad(
        image("min_disk: 4", "min_ram: 0", "tags: [a, b]", "   oops: x"), "a.yaml:6", "",
        "not valid YAML"),
    "yaml_tab_indent": Bad(one("images:\n  - name: a\n\tmin_disk: 4\n"), "a.yaml:3", "",
                           "not valid YAML"),
    "invalid_utf8": Bad(
        {"a.yaml": b"images:\n  - name: a\n    tags: [caf\xe9]\n"}, "a.yaml:3", "",
        "not valid UTF-8"),
}


def expected_location(root: Path, case: Bad) -> str:
    head = f"{root.as_posix()}/{case.where}:"
    return f"{head} {shown(case.path, case.files[case.where.split(':')[0]])}:" \
        if case.path else head


def shown(path: str, content: str | bytes) -> str:
    """A field path as messages show it: with the image's name, when it has a text name."""
    index, _, rest = path.partition(".")
    match = re.fullmatch(r"images\[(\d+)\]", index)
    if not match or rest == "name":
        return path
    try:
        doc = yaml.safe_load(content)
        name = doc["images"][int(match.group(1))].get("name")
    except (yaml.YAMLError, KeyError, IndexError, TypeError, AttributeError):
        return path
    return f"{name}.{rest} ({index})" if isinstance(name, str) and name else path


def assert_clean_failure(result: Result) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: catalog is invalid"), result.stderr


def assert_points_at(result: Result, root: Path, case: Bad) -> None:
    assert expected_location(root, case) in result.stderr, result.stderr
    assert case.hint in result.stderr
    for piece in case.also:
        assert piece.format(root=root.as_posix()) in result.stderr


ALL_BAD = {**BAD, **BAD_FILE}

Rejected = Callable[..., tuple[Path, Result]]


@pytest.fixture
def state_file(tmp_path: Path, make_state: Callable[..., Path]) -> Path:
    return make_state(tmp_path / "state.db")


@pytest.fixture
def rejected(write_catalog: Callable[..., Path], run_cli: Callable[..., Result]) -> Rejected:
    """rejected(files, *flags) -> (catalog dir, result): writes the catalog, runs ``validate``
    on it and asserts that it failed cleanly."""

    def validate(files: dict[str, Any], *flags: str) -> tuple[Path, Result]:
        root = write_catalog(files)
        result = run_cli(["validate", "--catalog", root, *flags])
        assert_clean_failure(result)
        return root, result

    return validate


@pytest.mark.parametrize("case", ALL_BAD.values(), ids=ALL_BAD.keys())
def test_plan_rejects_malformed_catalog_and_leaves_state_untouched(
        case: Bad, write_catalog: Callable[..., Path], run_cli: Callable[..., Result],
        state_file: Path, file_sha256: Callable[[Path], str]) -> None:
    root = write_catalog(case.files)
    before = file_sha256(state_file)
    result = run_cli(["plan", "--catalog", root, "--state", state_file])
    assert_clean_failure(result)
    assert_points_at(result, root, case)
    assert result.stdout == ""
    assert file_sha256(state_file) == before


@pytest.mark.parametrize("case", ALL_BAD.values(), ids=ALL_BAD.keys())
def test_validate_rejects_malformed_catalog(case: Bad, rejected: Rejected) -> None:
    root, result = rejected(case.files)
    assert_points_at(result, root, case)


def test_table_has_at_least_thirty_malformed_cases() -> None:
    assert len(ALL_BAD) >= 30


def test_every_problem_of_every_file_is_reported_at_once(rejected: Rejected) -> None:
    root, result = rejected({
        "a.yaml": "images:\n  - name: a\n    min_disk: 0\n  - name: b\n    min_ram: -5\n",
        "b.yaml": "images:\n  - name: c\n    visibility: public\n",
    })
    assert "(3 problems)" in result.stderr
    for where in ("a.yaml:3: a.min_disk (images[0]):", "a.yaml:5: b.min_ram (images[1]):",
                  "b.yaml:3: c.visibility (images[0]):"):
        assert f"{root.as_posix()}/{where}" in result.stderr


def test_plan_with_malformed_catalog_does_not_create_state_file(
        tmp_path: Path, write_catalog: Callable[..., Path],
        run_cli: Callable[..., Result]) -> None:
    root = write_catalog(image("min_disk: 0"))
    result = run_cli(["plan", "--catalog", root, "--state", tmp_path / "new.db"])
    assert result.exit_code == 1
    assert not (tmp_path / "new.db").exists()


# --- the catalog directory itself --------------------------------------------------------

def run_both(run_cli: Callable[..., Result], catalog: Path, state: Path) -> list[Result]:
    return [run_cli(["validate", "--catalog", catalog]),
            run_cli(["plan", "--catalog", catalog, "--state", state])]


def test_missing_catalog_directory_is_an_error(
        tmp_path: Path, run_cli: Callable[..., Result], state_file: Path) -> None:
    missing = tmp_path / "no-such-dir"
    for result in run_both(run_cli, missing, state_file):
        assert_clean_failure(result)
        assert f"{missing}: catalog directory does not exist" in result.stderr


def test_empty_catalog_directory_is_an_error(
        tmp_path: Path, run_cli: Callable[..., Result], state_file: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("not a catalog file\n")
    for result in run_both(run_cli, empty, state_file):
        assert_clean_failure(result)
        assert f"{empty}: holds no *.yaml" in result.stderr


def test_catalog_given_a_file_instead_of_a_directory_is_an_error(
        write_catalog: Callable[..., Path], run_cli: Callable[..., Result],
        state_file: Path) -> None:
    root = write_catalog(one("images:\n  - name: a\n"))
    for result in run_both(run_cli, root / "a.yaml", state_file):
        assert_clean_failure(result)
        assert f"{root / 'a.yaml'}: is not a directory" in result.stderr


def test_unreadable_catalog_file_is_an_error_naming_the_file(
        write_catalog: Callable[..., Path], run_cli: Callable[..., Result],
        state_file: Path) -> None:
    root = write_catalog(one("images:\n  - name: a\n    min_disk: 4\n"))
    target = root / "b.yaml"
    if os.geteuid() == 0:
        # root reads through chmod 000; a dangling symlink fails the read the same way.
        target.symlink_to(root / "gone.yaml")
    else:
        target.write_text("images: []\n")
        target.chmod(0)
    try:
        for result in run_both(run_cli, root, state_file):
            assert_clean_failure(result)
            assert f"{target.as_posix()}: cannot read file" in result.stderr
    finally:
        if not target.is_symlink():
            target.chmod(0o644)


# --- lint warnings and --strict -----------------------------------------------------------

# (files, the field as messages show it, the field's line: warnings point at it)
LINT = {
    "name_with_bang": (image(f"os_version: {OK_OS}", "min_disk: 4", name="hello!"),
                       "images[0].name", 2),
    "more_than_20_tags": (
        image(f"os_version: {OK_OS}", "min_disk: 4",
              "tags: [" + ", ".join(f"t{i}" for i in range(21)) + "]"),
        "a.tags (images[0])", 5),
    "unknown_os_version": (image("os_version: Plan9 4th edition", "min_disk: 4"),
                           "a.os_version (images[0])", 3),
}


@pytest.mark.parametrize(("files", "path", "line"), LINT.values(), ids=LINT.keys())
def test_lint_finding_is_a_warning_without_strict(
        files: dict[str, Any], path: str, line: int, write_catalog: Callable[..., Path],
        run_cli: Callable[..., Result]) -> None:
    root = write_catalog(files)
    result = run_cli(["validate", "--catalog", root])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"warning: {root.as_posix()}/a.yaml:{line}: {path}: ")
    assert "is valid: 1 image" in result.stdout


@pytest.mark.parametrize(("files", "path", "line"), LINT.values(), ids=LINT.keys())
def test_strict_turns_lint_finding_into_error(
        files: dict[str, Any], path: str, line: int, rejected: Rejected) -> None:
    root, result = rejected(files, "--strict")
    assert f"{root.as_posix()}/a.yaml:{line}: {path}:" in result.stderr
    assert "(--strict)" in result.stderr


def test_strict_plan_refuses_lint_finding(
        write_catalog: Callable[..., Path], run_cli: Callable[..., Result],
        state_file: Path) -> None:
    root = write_catalog(LINT["unknown_os_version"][0])
    result = run_cli(["plan", "--catalog", root, "--state", state_file, "--strict"])
    assert_clean_failure(result)
    assert "a.os_version (images[0]):" in result.stderr


# --- edge cases found while writing these tests ---------------------------------------

def test_unhashable_key_is_not_reported_as_a_duplicate(rejected: Rejected) -> None:
    root, result = rejected(one("images:\n  - name: a\n    ? [x]\n    : y\n"))
    assert f"{root.as_posix()}/a.yaml:3: a (images[0])" in result.stderr
    assert "given twice" not in result.stderr


def test_aliased_image_is_located_at_the_alias(rejected: Rejected) -> None:
    root, result = rejected(one("images:\n  - &x\n    name: a\n  - *x\n"))
    assert f"{root.as_posix()}/a.yaml:4: images[1].name: duplicate" in result.stderr


@pytest.mark.parametrize("text", ["010", "1:30"], ids=["octal", "sexagesimal"])
def test_yaml_11_integer_surprises_are_errors(text: str, rejected: Rejected) -> None:
    root, result = rejected(image(f"min_disk: {text}"))
    assert f"{root.as_posix()}/a.yaml:3: a.min_disk (images[0]):" in result.stderr


@pytest.mark.parametrize(("lines", "path", "source"), [
    (("tags: [0755]",), "a.tags[0] (images[0])", "0755"),
    (("properties:", "  mode: 0755"), "a.properties.mode (images[0])", "0755"),
], ids=["tag", "property"])
def test_quote_hint_repeats_what_the_user_wrote(
        lines: tuple[str, ...], path: str, source: str, rejected: Rejected) -> None:
    _, result = rejected(image(*lines))
    assert path in result.stderr
    assert f'"{source}"' in result.stderr


@pytest.mark.parametrize(("lines", "path"), [
    (("tags: [" + ", ".join(f"t{i}" for i in range(129)) + "]",), "a.tags (images[0])"),
    (("properties:", *(f"  k{i}: v" for i in range(129))), "a.properties (images[0])"),
], ids=["129_tags", "129_properties"])
def test_more_than_128_tags_or_properties_is_an_error(
        lines: tuple[str, ...], path: str, rejected: Rejected) -> None:
    root, result = rejected(image(*lines))
    assert f"{root.as_posix()}/a.yaml:3: {path}:" in result.stderr


# --- what valid catalogs load to ----------------------------------------------------------

def test_defaults_merge_tags_united_properties_merged_scalars_overridden(
        write_catalog: Callable[..., Path]) -> None:
    root = write_catalog(one(
        "defaults:\n"
        "  min_disk: 40\n"
        "  min_ram: 1024\n"
        "  tags: [managed, base]\n"
        "  properties:\n"
        "    hw_firmware_type: bios\n"
        "    team: platform\n"
        "images:\n"
        "  - name: a\n"
        "    min_disk: 60\n"
        "    tags: [base, docker]\n"
        "    properties:\n"
        "      hw_firmware_type: uefi\n"
        "      docker_version: '24.0'\n"
    ))
    spec = load_catalog(root, IMS).images[0]
    assert spec.min_disk == 60
    assert spec.min_ram == 1024
    assert spec.tags == ("managed", "base", "docker")
    assert spec.properties == {"hw_firmware_type": "uefi", "team": "platform",
                               "docker_version": "24.0"}


def test_ims_profile_fills_its_defaults(write_catalog: Callable[..., Path]) -> None:
    spec = load_catalog(write_catalog(one("images:\n  - name: a\n")), IMS).images[0]
    assert (spec.visibility, spec.protected, spec.container_format, spec.disk_format,
            spec.min_ram) == ("private", False, "bare", "vhd", 0)


def test_os_version_alias_is_accepted(write_catalog: Callable[..., Path]) -> None:
    root = write_catalog(image(f"__os_version: {OK_OS}", "min_disk: 4"))
    spec = load_catalog(root, IMS).images[0]
    assert spec.os_version == OK_OS
    assert spec.body()["__os_version"] == OK_OS


def test_json_catalog_file_is_loaded(write_catalog: Callable[..., Path]) -> None:
    root = write_catalog({"a.json": {"defaults": {"min_disk": 40},
                                     "images": [{"name": "from-json", "os_version": OK_OS}]}})
    catalog = load_catalog(root, IMS)
    assert [s.name for s in catalog.images] == ["from-json"]
    assert catalog.images[0].min_disk == 40
    assert catalog.images[0].file.endswith("a.json")


def test_quoted_number_like_name_is_text(write_catalog: Callable[..., Path]) -> None:
    root = write_catalog(one('images:\n  - name: "1.10"\n  - name: \'no\'\n'))
    assert [s.name for s in load_catalog(root, IMS).images] == ["1.10", "no"]


def test_glance_profile_accepts_shared_visibility_and_min_disk_zero(
        write_catalog: Callable[..., Path]) -> None:
    root = write_catalog(image("visibility: shared", "min_disk: 0", "container_format: ovf"))
    spec = load_catalog(root, GLANCE).images[0]
    assert (spec.visibility, spec.min_disk, spec.container_format) == ("shared", 0, "ovf")


def test_glance_profile_refuses_public_visibility_which_needs_an_admin(
        write_catalog: Callable[..., Path]) -> None:
    root = write_catalog(image("visibility: public"))
    with pytest.raises(CatalogError, match="admin"):
        load_catalog(root, GLANCE)


def test_images_are_sorted_by_name_and_remember_file_and_line(
        write_catalog: Callable[..., Path]) -> None:
    root = write_catalog({"b.yaml": "images:\n  - name: zeta\n  - name: alpha\n",
                          "a/c.yml": "# c\nimages:\n  - name: mid\n"})
    catalog = load_catalog(root, IMS)
    assert [(s.name, Path(s.file).name, s.line) for s in catalog.images] == [
        ("alpha", "b.yaml", 3), ("mid", "c.yml", 3), ("zeta", "b.yaml", 2)]


def test_other_suffixes_and_hidden_files_are_ignored(write_catalog: Callable[..., Path]) -> None:
    root = write_catalog({"a.yaml": "images:\n  - name: a\n", "notes.txt": "images: [",
                          ".draft.yaml": "images: [", "b.yml": "images:\n  - name: b\n"})
    catalog = load_catalog(root, IMS)
    assert [Path(f).name for f in catalog.files] == ["a.yaml", "b.yml"]


def test_crlf_and_bom_keep_line_numbers(write_catalog: Callable[..., Path]) -> None:
    root = write_catalog({"a.yaml": "\ufeffimages:\r\n  - name: a\r\n  - name: b\r\n"})
    assert [s.line for s in load_catalog(root, IMS).images] == [2, 3]


def test_load_catalog_raises_catalog_error_with_problems(
        write_catalog: Callable[..., Path]) -> None:
    root = write_catalog(image("min_disk: 0", "min_ram: -1"))
    with pytest.raises(CatalogError) as excinfo:
        load_catalog(root, IMS)
    assert [(p.line, p.path) for p in excinfo.value.problems] == [
        (3, "images[0].min_disk"), (4, "images[0].min_ram")]


@pytest.mark.parametrize("version", [
    "Ubuntu 22.04 server 64bit", "Ubuntu 20.04 server 64bit", "openEuler 22.03 64bit",
    "EulerOS 2.10 64bit", "Debian GNU/Linux 12.0.0 64bit", "Windows Server 2022 Standard 64bit",
])
def test_current_ims_os_versions_pass_strict(
        version: str, write_catalog: Callable[..., Path], run_cli: Callable[..., Result]) -> None:
    root = write_catalog({"a.yaml": {"images": [{"name": "a", "os_version": version,
                                                 "min_disk": 40}]}})
    result = run_cli(["validate", "--catalog", root, "--strict"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
