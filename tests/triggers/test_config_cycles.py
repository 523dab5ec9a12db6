"""Cycle detection in triggers.yaml: linear in the triggers (strongly connected components),
each loop reported once, `allow_cycles` honoured per loop. Pure: no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.triggers.config import load_config
from orchestrator.yamlfile import FileError


def chain(count: int, *, glob: bool, allowed: tuple[int, ...] = ()) -> str:
    """`count` task triggers in one project. With `glob`, every one watches all tasks of the
    project (every trigger feeds every other: a dense graph); otherwise trigger i watches the
    runs of trigger i-1 and the last closes the ring."""
    lines = ["version: 1", "triggers:"]
    for i in range(count):
        watched = "*" if glob else f"step-{(i - 1) % count}"
        lines += [
            f"  - name: t{i}",
            f"    on: {{task: {{project: loop, name: '{watched}'}}}}",
            f"    run: {{template: loop/step-{i}}}",
        ]
        if i in allowed:
            lines.append("    allow_cycles: true")
    return "\n".join(lines) + "\n"


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "triggers.yaml"
    path.write_text(text)
    with pytest.raises(FileError) as caught:
        load_config(path)
    return caught.value.problems


def test_a_dense_loop_of_many_task_triggers_is_reported_once(tmp_path: Path) -> None:
    # 40 triggers that all feed each other: walking every simple path never ends.
    [problem] = problems(tmp_path, chain(40, glob=True))
    assert problem.startswith(f"{tmp_path / 'triggers.yaml'}:4:5: triggers[0].on: ")
    assert "runs of this trigger can fire it again (t0 -> t0)" in problem
    assert "40 triggers feed each other" in problem


def test_a_ring_names_its_whole_loop(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, chain(5, glob=False))
    assert "(t0 -> t1 -> t2 -> t3 -> t4 -> t0)" in problem


def test_allow_cycles_allows_the_loops_through_that_trigger_only(tmp_path: Path) -> None:
    path = tmp_path / "triggers.yaml"
    path.write_text(chain(5, glob=False, allowed=(2,)))
    assert len(load_config(path).triggers) == 5
    # A second loop, t0 <-> t5, which does not pass through the allowed t2.
    text = chain(5, glob=False, allowed=(2,)) + """\
  - name: t5
    on: {task: {project: loop, name: step-0}}
    run: {template: loop/step-4}
"""
    [problem] = problems(tmp_path, text)
    assert "triggers[0].on" in problem and "t0 -> t1" not in problem
    assert "t5" in problem


def test_separate_loops_are_each_reported(tmp_path: Path) -> None:
    two = chain(3, glob=False) + chain(3, glob=False).split("triggers:\n", 1)[1].replace(
        "name: t", "name: u").replace("loop", "other")
    found = problems(tmp_path, two)
    assert len(found) == 2
    assert "triggers[0].on" in found[0] and "triggers[3].on" in found[1]
