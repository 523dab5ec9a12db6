"""Pure logic of tasks, with no server: templating, typed overrides, pins, YAML positions."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import UserError
from orchestrator.tasks.params import apply_overrides, coerce
from orchestrator.tasks.requirements import parse_text
from orchestrator.tasks.spec import parse_duration
from orchestrator.templating import TemplateError, placeholders, render, render_value
from orchestrator.yamlfile import FileError, loads


def test_placeholders_work_inside_any_string_and_escape() -> None:
    context = {"dataset.id": "abc", "dataset.version": "1.0.1", "params.A/b": 3}
    assert render("retrain on ${dataset.id} v${dataset.version}", context) == (
        "retrain on abc v1.0.1")
    assert render("cost $${dataset.id} and ${params.A/b}", context) == "cost ${dataset.id} and 3"
    assert render_value("${params.A/b}", context, where="x") == 3  # a whole value keeps its type
    assert render_value(["--n", "${params.A/b}"], context, where="x") == ["--n", 3]
    assert placeholders("a $${skip} ${ one } ${two}") == ["one", "two"]
    with pytest.raises(TemplateError, match=r"unknown variable \$\{dataset\.name\}"):
        render("${dataset.name}", context, where="overrides.General/x")


@pytest.mark.parametrize(
    ("current", "raw", "expected"),
    [(10, "3", 3), (0.1, "1", 1.0), (True, "no", False), ("x", "007", "007"),
     ([1], "[2, 3]", [2, 3]), ({"a": 1}, '{"b": 2}', {"b": 2}), (None, "4", 4)],
)
def test_overrides_take_the_template_type(current: object, raw: str, expected: object) -> None:
    assert coerce(current, raw, "S/n") == expected
    assert type(coerce(current, raw, "S/n")) is type(expected)


def test_unknown_parameter_needs_permission() -> None:
    with pytest.raises(UserError, match="has no such parameter"):
        apply_overrides({"A/x": 1}, {"A/y": "2"}, allow_new=False)
    assert apply_overrides({"A/x": 1}, {"A/y": "2"}, allow_new=True) == {"A/x": 1, "A/y": 2}


def test_requirements_must_be_pinned() -> None:
    text = ("# comment\nnumpy==1.26.4\nrequests[socks]==2.32.3 ; python_version >= '3.9'\n"
            "torch==2.3.0 \\\n    --hash=sha256:abc\n")
    assert parse_text(text, "req.txt") == [
        "numpy==1.26.4", 'requests[socks]==2.32.3; python_version >= "3.9"',
        "torch==2.3.0 --hash=sha256:abc"]
    for bad, line in (("numpy\n", 1), ("ok==1\nnumpy>=1.0\n", 2), ("-r other.txt\n", 1),
                      ("numpy==1.*\n", 1), ("-e .\n", 1)):
        with pytest.raises(UserError, match=rf"req.txt:{line}:"):
            parse_text(bad, "req.txt")


def test_durations() -> None:
    assert [parse_duration(v) for v in ("90s", "30m", "12h", "2d", 45, "1.5h")] == [
        90, 1800, 43200, 172800, 45, 5400]
    for bad in ("soon", "0s", "-1"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_yaml_positions_and_yaml12_booleans() -> None:
    doc = loads("version: 1\ntriggers:\n  - name: a\n    on: {dataset: {tags: [x]}}\n"
                "    enabled: yes\n", Path("t.yaml"))
    trigger = doc.data["triggers"][0]
    assert "on" in trigger and trigger["enabled"] == "yes"  # not True, as in YAML 1.1
    assert doc.where(("triggers", 0, "on", "dataset", "tags")) == "t.yaml:4:20"
    assert doc.where(("triggers", 0, "missing")) == "t.yaml:3:5"
    with pytest.raises(FileError, match=r"t.yaml:2:4: invalid YAML: mapping values"):
        loads("a: 1\nb: : x\n", Path("t.yaml"))
