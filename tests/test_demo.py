"""`python -m orchestrator.demo`, the newcomer's first command, runs end to end for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import CLI


def test_demo_versions_tags_and_fetches(retrain_home: Path, cli: CLI) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.demo"],
        env=dict(os.environ),  # RETRAIN_HOME is this test's home, so the demo keeps it
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output

    lineage = re.search(
        r"lineage:\n  dataset_blogpost/occupancy 1\.0\.1  (\w+)\n"
        r"    dataset_blogpost/occupancy 1\.0\.0  (\w+)\n",
        output,
    )
    assert lineage, output
    child, parent = lineage.groups()
    assert f"$ retrain dataset tag {child} Production" in output
    assert f"$ retrain dataset tag {parent} Production" in output
    assert "1 added, 1 modified, 0 removed, 1 unchanged" in output  # the sync of batch 2

    # What the demo printed is what the store holds.
    shown = cli.json("dataset", "show", child)
    assert isinstance(shown, dict)
    assert shown["version"]["parents"] == [parent]
    assert shown["version"]["tags"] == ["Production"]
    assert shown["added"] == ["batch_002.csv"] and shown["modified"] == ["stats.json"]

    cached = re.search(r"^cached copy [^:]*: (.+)$", output, re.MULTILINE)
    assert cached, output
    path = Path(cached.group(1))
    assert path.is_dir() and path.is_relative_to(retrain_home)
    assert sorted(p.name for p in path.iterdir()) == [
        "batch_001.csv",
        "batch_002.csv",
        "stats.json",
    ]
    header = (path / "batch_002.csv").read_text().splitlines()[0]
    assert header == "timestamp,temperature,humidity,light,co2,humidity_ratio,occupied"
