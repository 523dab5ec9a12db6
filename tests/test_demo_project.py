"""The demo's training project (orchestrator/demo_project) and its synthetic data.

No network and no scikit-learn here: the generator is checked on its own, the task files as
`retrain task create -f` reads them (and registered for real from a local git repository),
and the scripts only statically (they import nothing unpinned).
"""

from __future__ import annotations

import ast
import csv
import math
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import demo_data
from orchestrator.tasks.requirements import parse_text
from orchestrator.tasks.spec import TaskDefinition
from orchestrator.yamlfile import load
from tests.conftest import CLI

PROJECT = Path(__file__).resolve().parents[1] / "orchestrator" / "demo_project"
FEATURES = ("temperature", "humidity", "light", "co2", "humidity_ratio")
PINNED = {"scikit-learn", "numpy", "scipy", "joblib", "threadpoolctl"}
IMPORT_NAMES = {"sklearn": "scikit-learn", "numpy": "numpy", "scipy": "scipy", "joblib": "joblib"}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


# -- the generator -----------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    a = demo_data.write_batch(tmp_path / "a", rows=300, seed=7, name="batch_001")
    b = demo_data.write_batch(tmp_path / "b", rows=300, seed=7, name="batch_001.csv")
    c = demo_data.write_batch(tmp_path / "c", rows=300, seed=8, name="batch_001")
    assert a == tmp_path / "a" / "batch_001.csv" and b.name == "batch_001.csv"
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    # Fixed, not merely self-consistent: the same rows on every platform and Python version
    # (`random.Random(seed)` is stable), so a change to the generator shows up here.
    assert a.read_text().splitlines()[:3] == [
        ",".join(demo_data.COLUMNS),
        "21.75,28.83,604.0,750.9,0.004631,1",
        "22.08,29.39,1263.9,1725.9,0.004819,1",
    ]


def test_columns_ranges_and_derived_humidity_ratio(tmp_path: Path) -> None:
    path = demo_data.write_batch(tmp_path, rows=500, seed=1, name="batch")
    header, rows = read_csv(path)
    assert tuple(header) == demo_data.COLUMNS
    assert header == [*FEATURES, "occupied"]
    assert len(rows) == 500
    bounds = {"temperature": (19, 24), "humidity": (16, 40), "light": (0, 1600), "co2": (400, 2000)}
    for column, (low, high) in bounds.items():
        values = [float(r[column]) for r in rows]
        assert low <= min(values) and max(values) <= high, column
        assert max(values) - min(values) > (high - low) / 3, f"{column} barely varies"
    for r in rows:
        assert r["occupied"] in ("0", "1")
        expected = demo_data.humidity_ratio(float(r["temperature"]), float(r["humidity"]))
        assert math.isclose(float(r["humidity_ratio"]), expected, abs_tol=1e-6)
        assert 0.001 < expected < 0.01


@pytest.mark.parametrize("seed", [1, 2, 3, 7, 42])
def test_classes_balanced_and_learnable_but_not_trivial(seed: int) -> None:
    readings = demo_data.readings(rows=800, seed=seed)
    labels = [r.occupied for r in readings]
    assert 0.35 <= sum(labels) / len(labels) <= 0.65
    # A nearest-centroid classifier (standardized features, 600 rows to fit, 200 to test):
    # the signal is there, and the noise keeps it from being perfect.
    rows = [[float(getattr(r, f)) for f in FEATURES] for r in readings]
    columns = list(zip(*rows[:600], strict=True))
    means = [statistics.fmean(c) for c in columns]
    spreads = [statistics.pstdev(c) for c in columns]
    scaled = [[(v - m) / s for v, m, s in zip(row, means, spreads, strict=True)] for row in rows]
    fit = list(zip(scaled[:600], labels[:600], strict=True))
    test = list(zip(scaled[600:], labels[600:], strict=True))
    centroids = [
        [statistics.fmean(c) for c in zip(*(x for x, y in fit if y == k), strict=True)]
        for k in (0, 1)
    ]
    right = sum(min((0, 1), key=lambda k: math.dist(x, centroids[k])) == y for x, y in test)
    accuracy = right / len(test)
    assert 0.8 <= accuracy < 0.99


def test_write_batch_creates_the_folder_and_refuses_odd_names(tmp_path: Path) -> None:
    path = demo_data.write_batch(tmp_path / "new" / "data", rows=3, seed=0, name="b2")
    assert path.read_text().count("\n") == 4
    for name in ("../escape", "sub/dir", "", ".csv"):
        with pytest.raises(ValueError, match="plain file name"):
            demo_data.write_batch(tmp_path, rows=3, seed=0, name=name)
    with pytest.raises(ValueError, match="at least 1"):
        demo_data.write_batch(tmp_path, rows=0, seed=0, name="empty")


# -- the project's files -----------------------------------------------------------------------


def test_requirements_are_exact_pins_of_sklearn_and_all_it_needs() -> None:
    text = (PROJECT / "requirements.txt").read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[a-z0-9-]+==\d+(\.\d+)+", line) for line in lines), lines
    assert {line.split("==")[0] for line in lines} == PINNED
    assert parse_text(text, "requirements.txt") == lines  # what task create will accept


def test_task_files_validate_as_task_create_reads_them() -> None:
    training = load(PROJECT / "task.yaml").validate(TaskDefinition)
    evaluation = load(PROJECT / "evaluate.yaml").validate(TaskDefinition)
    assert (training.project, training.name, training.type) == (
        "dataset_blogpost",
        "training",
        "training",
    )
    assert (evaluation.project, evaluation.name, evaluation.type) == (
        "dataset_blogpost",
        "evaluation",
        "evaluation",
    )
    assert training.script == "train.py" and evaluation.script == "evaluate.py"
    assert training.params["General/dataset_id"] == ""
    assert set(evaluation.params) == {"General/model_uri", "General/dataset_id"}
    for task in (training, evaluation):
        assert task.inputs == {"data": "${params.General/dataset_id}"}
        assert task.requirements == "requirements.txt"  # one environment for both
        assert (task.queue, task.timeout, task.gpus) == ("default", 600, 0)
        assert (PROJECT / str(task.script)).is_file()


def test_scripts_import_only_the_stdlib_and_pinned_packages() -> None:
    # The project's own modules, and retrain's job API, which every worker provides.
    local = {p.stem for p in PROJECT.glob("*.py")} | {"retrain_run"}
    assert {"train", "evaluate", "occupancy"} <= local
    for script in sorted(p.name for p in PROJECT.glob("*.py")):
        tree = ast.parse((PROJECT / script).read_text(), script)
        names = {
            alias.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import)
            for alias in n.names
        } | {
            n.module.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
        }
        third_party = {
            n for n in names if n not in sys.stdlib_module_names and n not in {"__future__", *local}
        }
        assert third_party <= set(IMPORT_NAMES), (script, third_party)
        assert {IMPORT_NAMES[n] for n in third_party} <= PINNED


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_both_templates_register_from_a_git_copy_of_the_project(tmp_path: Path, cli: CLI) -> None:
    repo = tmp_path / "occupancy"
    shutil.copytree(PROJECT, repo, ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "occupancy project")
    pins = [
        line for line in (PROJECT / "requirements.txt").read_text().splitlines() if "==" in line
    ]

    training = cli.json("task", "create", "-f", str(repo / "task.yaml"))
    evaluation = cli.json("task", "create", "-f", str(repo / "evaluate.yaml"))
    assert isinstance(training, dict) and isinstance(evaluation, dict)
    for task, script in ((training, "train.py"), (evaluation, "evaluate.py")):
        spec = task["spec"]
        assert spec["repo"] == str(repo.resolve())
        assert spec["entry"]["script"] == script
        assert spec["requirements"] == pins
        assert spec["timeout_s"] == 600
        assert task["status"] == "draft"
