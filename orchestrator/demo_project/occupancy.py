"""What train.py and evaluate.py share: the data's columns, reading it, and the task's
environment as retrain sets it (RETRAIN_PARAMS_FILE, RETRAIN_INPUT_DATA, ...)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

FEATURES = ("temperature", "humidity", "light", "co2", "humidity_ratio")
LABEL = "occupied"


class Log:
    """Progress lines on stdout (retrain streams them to `retrain logs`), errors on stderr."""

    def __init__(self, name: str) -> None:
        self.name = name

    def say(self, message: str) -> None:
        print(f"[{self.name}] {message}", flush=True)

    def fail(self, message: str) -> NoReturn:
        print(f"[{self.name}] error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def required_env(log: Log, name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        log.fail(f"{name} is not set; retrain sets it when it runs this script as a task")
    return Path(value)


def load_params() -> dict[str, Any]:
    path = os.environ.get("RETRAIN_PARAMS_FILE")
    if not path:
        return {}
    params = json.loads(Path(path).read_text(encoding="utf-8"))
    return params if isinstance(params, dict) else {}


def load_rows(log: Log, folder: Path) -> tuple[list[list[float]], list[int], list[str]]:
    """Features and labels of every CSV under `folder`, and the files read."""
    files = sorted(p for p in folder.rglob("*.csv") if p.is_file())
    if not files:
        log.fail(f"no *.csv files in {folder}")
    features: list[list[float]] = []
    labels: list[int] = []
    for path in files:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in (*FEATURES, LABEL) if c not in (reader.fieldnames or [])]
            if missing:
                log.fail(f"{path.name}: missing column(s) {', '.join(missing)}")
            for row in reader:
                features.append([float(row[c]) for c in FEATURES])
                labels.append(int(row[LABEL]))
    return features, labels, [str(p.relative_to(folder)) for p in files]
