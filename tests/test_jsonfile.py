"""``.json`` catalog files are strict JSON, located FILE:LINE:COL, checked like YAML files.

The syntax cases run through ``validate`` (the user's view); the field-level cases compare a
JSON file with the YAML file of the same layout: the same problems at the same lines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from reconciler import jsonfile
from reconciler.catalog import load_catalog
from reconciler.errors import CatalogError
from reconciler.nodes import LineDict, LineList, RawScalar
from reconciler.profiles import IMS

OK_OS = "Ubuntu 18.04 server 64bit"

# text, where the error must point (line:column), a piece of the message
SYNTAX: dict[str, tuple[str, str, str]] = {
    "trailing_comma_in_object": ('{"images": [{"name": "a", }]}', "1:25", "trailing comma"),
    "trailing_comma_in_array": ('{"images": [\n  {"name": "a"},\n]}', "2:16", "trailing comma"),
    "line_comment": ('{"images": [] // none yet\n}', "1:15", "comments are not allowed"),
    "block_comment": ('/* catalog */ {"images": []}', "1:1", "comments are not allowed"),
    "hash_comment": ('{\n# images\n"images": []}', "2:1", "comments are not allowed"),
    "single_quotes": ("{'images': []}", "1:2", "double quotes"),
    "unquoted_key_yaml_style": ('{images: []}', "1:2", "double quotes"),
    "nan": ('{"images": [{"name": "a", "min_disk": NaN}]}', "1:39", "NaN is not a JSON value"),
    "infinity": ('{"images": [{"name": "a",\n "min_ram": -Infinity}]}', "2:13",
                 "-Infinity is not a JSON value"),
    "missing_comma": ('{"images": [\n  {"name": "a"}\n  {"name": "b"}\n]}', "3:3",
                      "Expecting ',' delimiter"),
    "extra_data": ('{"images": []}\n{"images": []}', "2:1", "unexpected text after the end"),
    "unterminated_string": ('{"images": [{"name": "a}]}', "1:22", "Unterminated string"),
    "control_character_in_string": ('{"images": [{"name": "a\tb"}]}', "1:24",
                                    "Invalid control character"),
    "yaml_document": ("images:\n  - name: a\n", "1:1", "Expecting value"),
    "empty_file": ("", "1:1", "Expecting value"),
}


@pytest.mark.parametrize(("text", "where", "hint"), SYNTAX.values(), ids=SYNTAX.keys())
def test_malformed_json_is_refused_at_its_line_and_column(
        text: str, where: str, hint: str, write_catalog: Callable[..., Path],
        run_cli: Callable[..., Result]) -> None:
    root = write_catalog({"a.json": text})
    result = run_cli(["validate", "--catalog", root])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"{root.as_posix()}/a.json:{where}: is not valid JSON: " in result.stderr, \
        result.stderr
    assert hint in result.stderr


def test_yaml_reads_what_the_json_reader_refuses() -> None:
    # Each of these is accepted by a YAML parser, which is how .json files used to be read.
    import yaml
    for text, _, _ in (SYNTAX["trailing_comma_in_object"], SYNTAX["unquoted_key_yaml_style"],
                       SYNTAX["single_quotes"]):
        yaml.safe_load(text)
        with pytest.raises(jsonfile.JsonSyntaxError):
            jsonfile.load(text)


def test_duplicate_key_is_refused_at_the_second_one(
        write_catalog: Callable[..., Path], run_cli: Callable[..., Result]) -> None:
    text = '{"images": [\n  {"name": "a",\n   "min_disk": 40,\n   "min_disk": 50}\n]}'
    root = write_catalog({"a.json": text})
    result = run_cli(["validate", "--catalog", root])
    assert result.exit_code == 1
    assert (f"{root.as_posix()}/a.json:4: a.min_disk (images[0]): is given twice in the same "
            "mapping") in result.stderr


@pytest.mark.parametrize(("text", "line", "path"), [
    ('{"images": [{"name": "a", "properties": {"k": "1",\n"k": "2"}}]}', 2,
     "images[0].properties.k"),
    ('{"images": [],\n "images": []}', 2, "images"),
], ids=["property", "top-level"])
def test_duplicate_property_and_top_level_keys_are_refused(
        text: str, line: int, path: str, write_catalog: Callable[..., Path]) -> None:
    root = write_catalog({"a.json": text})
    with pytest.raises(CatalogError) as info:
        load_catalog(root, IMS)
    assert [(p.line, p.path) for p in info.value.problems] == [(line, path)]
    assert "given twice" in info.value.problems[0].message


def test_nodes_carry_the_line_of_every_key_and_item() -> None:
    data = jsonfile.load('{\n "a": 1,\n "b": [\n  "x",\n\n  "y"\n ],\n "c"\n :\n 2.50\n}')
    assert isinstance(data, LineDict)
    assert data.line == 1
    assert data.key_lines == {"a": 2, "b": 3, "c": 8}
    assert isinstance(data["b"], LineList)
    assert data["b"].lines == [4, 6]
    assert isinstance(data["c"], RawScalar) and data["c"].text == "2.50"


def test_null_is_an_empty_value_not_text() -> None:
    data = jsonfile.load('{"a": null, "b": [null]}')
    assert isinstance(data["a"], RawScalar) and data["a"].kind == "null"
    assert isinstance(data["b"][0], RawScalar) and data["b"][0].kind == "null"


def test_deeply_nested_json_is_a_clean_error() -> None:
    with pytest.raises(jsonfile.JsonSyntaxError) as info:
        jsonfile.load("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in info.value.message


# The same catalog, laid out line for line, as YAML and as JSON.
YAML_TWIN = """\
images:
  - name: 1.10
    min_disk: 0
    tags: [ok, 5]
    properties: {k: 1}
    visibility: public
  - name: fine
    os_version: {os}
    min_disk: 40
    min_rma: 1
"""
JSON_TWIN = """\
{"images": [
  {"name": 1.10,
    "min_disk": 0,
    "tags": ["ok", 5],
    "properties": {"k": 1},
    "visibility": "public"},
  {"name": "fine",
    "os_version": "{os}",
    "min_disk": 40,
    "min_rma": 1}
]}
"""


def _problems(root: Path) -> list[tuple[int | None, str, str]]:
    with pytest.raises(CatalogError) as info:
        load_catalog(root, IMS)
    return [(p.line, p.path, re.sub(r"\b(YAML|JSON)\b", "X", p.message))
            for p in info.value.problems]


def test_json_and_yaml_files_get_the_same_field_level_problems(
        write_catalog: Callable[..., Path]) -> None:
    from_yaml = _problems(write_catalog({"a.yaml": YAML_TWIN.replace("{os}", OK_OS)}, "y"))
    from_json = _problems(write_catalog({"a.json": JSON_TWIN.replace("{os}", OK_OS)}, "j"))
    assert len(from_yaml) == 6
    assert from_json == from_yaml


def test_field_messages_name_the_json_reader(write_catalog: Callable[..., Path]) -> None:
    root = write_catalog({"a.json": '{"images": [{"name": 1.10}]}'})
    with pytest.raises(CatalogError) as info:
        load_catalog(root, IMS)
    message = info.value.problems[0].message
    assert message.startswith("must be text, but JSON read it as a number (1.10)")
    assert "YAML" not in message


def test_valid_json_catalog_equals_its_yaml_twin(write_catalog: Callable[..., Path]) -> None:
    doc = {"defaults": {"min_disk": 40, "tags": ["base"]},
           "images": [{"name": "a", "os_version": OK_OS, "tags": ["x"],
                       "properties": {"hw_firmware_type": "uefi"}, "protected": True}]}
    from_json = load_catalog(write_catalog({"a.json": json.dumps(doc, indent=2)}, "j"), IMS)
    from_yaml = load_catalog(write_catalog({"a.yaml": doc}, "y"), IMS)
    assert [s.body() for s in from_json.images] == [s.body() for s in from_yaml.images]


def test_null_tag_gets_no_advice_to_quote_it(write_catalog: Callable[..., Path]) -> None:
    root = write_catalog({"a.json": '{"images": [{"name": "a", "tags": [null]}]}'})
    with pytest.raises(CatalogError) as info:
        load_catalog(root, IMS)
    assert info.value.problems[0].message == "must be text, but it is empty or null (null)"
