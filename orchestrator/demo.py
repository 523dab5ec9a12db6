"""`python -m orchestrator.demo`: a first look at retrain, driving the real `retrain` command.

It makes synthetic room-occupancy sensor data in two labelled batches, versions it as
`dataset_blogpost/occupancy` 1.0.0 (batch 1) and 1.0.1 (batches 1-2, child of 1.0.0; on a
store that has them already, the next patch numbers), tags both `Production`, then searches,
shows the lineage and fetches the tagged data. Each command is printed as a user would type
it, followed by its output.

Without `RETRAIN_HOME` everything happens in a temporary folder, removed at the end unless
`--keep` is given (other `RETRAIN_*` settings are then ignored, so nothing real is touched).
With `RETRAIN_HOME` set, the demo uses those settings and leaves the home in place.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROJECT, NAME = "dataset_blogpost", "occupancy"
COLUMNS = ("timestamp", "temperature", "humidity", "light", "co2", "humidity_ratio", "occupied")
ROWS_PER_BATCH = 288  # two days, one reading every ten minutes
START = dt.datetime(2024, 3, 4, 0, 0)
CREATE = ("dataset", "create", "--project", PROJECT, "--name", NAME)


class StepFailed(Exception):
    """A `retrain` command exited non-zero."""


def sensor_rows(rng: random.Random, start: dt.datetime) -> list[tuple[object, ...]]:
    """Readings of one room: warmer, brighter and higher in CO2 while people are in it."""
    rows: list[tuple[object, ...]] = []
    co2 = 450.0
    for i in range(ROWS_PER_BATCH):
        when = start + dt.timedelta(minutes=10 * i)
        working = when.weekday() < 5 and 8 <= when.hour < 18
        occupied = working and rng.random() < 0.85
        temperature = 20.5 + (1.2 if occupied else 0.0) + rng.gauss(0, 0.3)
        humidity = 27.0 + rng.gauss(0, 1.5)
        light = rng.uniform(400, 600) if occupied else rng.uniform(0, 15)
        co2 = max(420.0, co2 + (rng.uniform(10, 40) if occupied else -rng.uniform(5, 30)))
        vapour = humidity / 100 * 6.112 * math.exp(17.62 * temperature / (243.12 + temperature))
        ratio = 0.622 * vapour / (1013.25 - vapour)
        text = [f"{v:.2f}" for v in (temperature, humidity, light, co2)]
        rows.append((when.isoformat(sep=" "), *text, f"{ratio:.6f}", int(occupied)))
    return rows


def write_batch(folder: Path, number: int, rows: list[tuple[object, ...]]) -> None:
    """Write `batch_00N.csv` and refresh `stats.json` (row and label counts per batch)."""
    with (folder / f"batch_{number:03d}.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    stats_file = folder / "stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    occupied = sum(1 for row in rows if row[-1])
    stats[f"batch_{number:03d}.csv"] = {"rows": len(rows), "occupied": occupied}
    stats_file.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")


class Demo:
    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        script = Path(sys.executable).with_name("retrain")
        fallback = [sys.executable, "-c", "from orchestrator.cli import main; main()"]
        self.command = [str(script)] if script.exists() else fallback

    def say(self, text: str) -> None:
        print(f"\n# {text}", flush=True)

    def retrain(self, *args: str) -> str:
        """Run `retrain ARGS` in the demo folder, echo it and its output; return stdout."""
        print(f"$ {shlex.join(['retrain', *args])}", flush=True)
        done = subprocess.run(
            [*self.command, *args], cwd=self.cwd, env=self.env, capture_output=True, text=True
        )
        for stream in (done.stdout, done.stderr):
            if stream.strip():
                print(stream.rstrip(), flush=True)
        if done.returncode != 0:
            raise StepFailed(f"`retrain {shlex.join(args)}` exited {done.returncode}")
        return done.stdout.strip()


def run(demo: Demo, seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 (synthetic data, not secrets)
    batch1 = sensor_rows(rng, START)
    batch2 = sensor_rows(rng, START + dt.timedelta(minutes=10 * ROWS_PER_BATCH))
    (data := demo.cwd / "data").mkdir()
    write_batch(data, 1, batch1)

    demo.say(f"batch 1 is in {data}; version it (no --version: 1.0.0, or the next patch)")
    first = demo.retrain(*CREATE, "--description", "labelled batch 1")
    demo.retrain("dataset", "add", "--files", "data/batch_001.csv", "data/stats.json")
    demo.retrain("dataset", "close")
    demo.retrain("dataset", "tag", first, "Production")

    write_batch(data, 2, batch2)
    demo.say("a second batch lands; a child version takes its parent's files, then syncs")
    child = demo.retrain(*CREATE, "--parents", first, "--description", "labelled batches 1-2")
    demo.retrain("dataset", "sync", "--folder", "data")
    demo.retrain("dataset", "close")
    demo.retrain("dataset", "tag", child, "Production")

    demo.say("what exists, where the new version came from, and what it changed")
    demo.retrain("dataset", "search", "--project", PROJECT)
    demo.retrain("dataset", "show", child)

    demo.say("a training job asks for the newest Production data and gets a local path")
    path = Path(
        demo.retrain("dataset", "get", "--project", PROJECT, "--name", NAME, "--tags", "Production")
    )
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    print(f"\ncached copy (read-only, shared on this machine): {path}")
    print(f"files: {', '.join(files)}")
    print("\nNext: a trigger on the Production tag will start training by itself (coming).")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic data")
    args = parser.parse_args(argv)
    user_home = os.environ.get("RETRAIN_HOME")
    root = Path(tempfile.mkdtemp(prefix="retrain-demo-"))
    env = {k: v for k, v in os.environ.items() if user_home or not k.startswith("RETRAIN_")}
    env["RETRAIN_HOME"] = user_home or str(root / "home")
    print(f"# RETRAIN_HOME={env['RETRAIN_HOME']}" + ("" if user_home else " (temporary)"))
    (root / "work").mkdir()
    try:
        run(Demo(root / "work", env), args.seed)
    except StepFailed as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"\n# kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            print(f"\n# removed {root} (run with --keep to look around)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
