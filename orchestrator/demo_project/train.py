"""Train a room-occupancy classifier on the dataset version retrain hands this job.

Run by a retrain worker, it reads:

- `RETRAIN_INPUT_DATA`: the folder of the input `data` (every `*.csv` in it, subfolders too,
  with the columns temperature, humidity, light, co2, humidity_ratio, occupied);
- `RETRAIN_PARAMS_FILE`: the task's parameters as JSON (`General/n_estimators`,
  `General/max_depth`, `General/seed`; `General/dataset_id` is only reported);

and writes under `RETRAIN_OUTPUT_DIR`: `metrics.json` (accuracy and F1 on a stratified 25 %
hold-out, rows used), `models/occupancy.joblib` (the fitted scikit-learn model) and
`report.txt` (the classification report), which retrain records as metrics, a registered
model and an artifact.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import joblib  # type: ignore[import-not-found, import-untyped, unused-ignore]
from sklearn.ensemble import RandomForestClassifier  # type: ignore[import-not-found, import-untyped, unused-ignore]
from sklearn.metrics import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
    accuracy_score,
    classification_report,
    f1_score,
)
from sklearn.model_selection import train_test_split  # type: ignore[import-not-found, import-untyped, unused-ignore]

FEATURES = ("temperature", "humidity", "light", "co2", "humidity_ratio")
LABEL = "occupied"
HOLD_OUT = 0.25
MODEL_FILE = "occupancy.joblib"


def say(message: str) -> None:
    print(f"[train] {message}", flush=True)


def fail(message: str) -> NoReturn:
    print(f"[train] error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def required_env(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        fail(f"{name} is not set; retrain sets it when it runs this script as a task")
    return Path(value)


def load_params() -> dict[str, Any]:
    path = os.environ.get("RETRAIN_PARAMS_FILE")
    if not path:
        return {}
    params = json.loads(Path(path).read_text(encoding="utf-8"))
    return params if isinstance(params, dict) else {}


def load_rows(folder: Path) -> tuple[list[list[float]], list[int], list[str]]:
    """Features and labels of every CSV under `folder`, and the files read."""
    files = sorted(p for p in folder.rglob("*.csv") if p.is_file())
    if not files:
        fail(f"no *.csv files in {folder}")
    features: list[list[float]] = []
    labels: list[int] = []
    for path in files:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in (*FEATURES, LABEL) if c not in (reader.fieldnames or [])]
            if missing:
                fail(f"{path.name}: missing column(s) {', '.join(missing)}")
            for row in reader:
                features.append([float(row[c]) for c in FEATURES])
                labels.append(int(row[LABEL]))
    return features, labels, [str(p.relative_to(folder)) for p in files]


def main() -> None:
    started = time.perf_counter()
    data = required_env("RETRAIN_INPUT_DATA")
    outputs = required_env("RETRAIN_OUTPUT_DIR")
    params = load_params()
    n_estimators = int(params.get("General/n_estimators", 100))
    max_depth = int(params.get("General/max_depth", 8))
    seed = int(params.get("General/seed", 0))
    dataset = params.get("General/dataset_id") or "(not given)"
    say(f"task {os.environ.get('RETRAIN_TASK_ID', '(local run)')}, dataset {dataset}")

    features, labels, files = load_rows(data)
    occupied = sum(labels)
    say(f"read {len(labels)} rows from {len(files)} file(s): {', '.join(files)}")
    say(f"occupied in {occupied} rows ({occupied / len(labels):.0%})")
    if min(occupied, len(labels) - occupied) < 2:
        fail("the data needs at least two rows of each class (occupied 0 and 1) to train")
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=HOLD_OUT, stratify=labels, random_state=seed
    )
    say(f"training on {len(y_train)} rows, holding out {len(y_test)} (stratified, seed {seed})")

    model = RandomForestClassifier(
        n_estimators=n_estimators, max_depth=max_depth, random_state=seed
    )
    fit_started = time.perf_counter()
    model.fit(x_train, y_train)
    say(
        f"fitted a random forest of {n_estimators} trees (max depth {max_depth}) "
        f"in {time.perf_counter() - fit_started:.2f} s"
    )

    predicted = model.predict(x_test)
    accuracy = float(accuracy_score(y_test, predicted))
    f1 = float(f1_score(y_test, predicted))
    say(f"hold-out accuracy {accuracy:.4f}, F1 {f1:.4f}")

    (outputs / "models").mkdir(parents=True, exist_ok=True)
    metrics = {"accuracy": round(accuracy, 6), "f1": round(f1, 6), "rows": len(labels)}
    (outputs / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    joblib.dump(model, outputs / "models" / MODEL_FILE, compress=3)
    report = classification_report(y_test, predicted, target_names=["empty", "occupied"], digits=4)
    (outputs / "report.txt").write_text(
        f"dataset {dataset}; {len(labels)} rows from {', '.join(files)}\n"
        f"random forest: {n_estimators} trees, max depth {max_depth}, seed {seed}\n"
        f"hold-out: {len(y_test)} rows (stratified {HOLD_OUT:.0%})\n\n{report}",
        encoding="utf-8",
    )
    say(f"wrote metrics.json, models/{MODEL_FILE} and report.txt to {outputs}")
    say(f"done in {time.perf_counter() - started:.2f} s (after imports)")


if __name__ == "__main__":
    main()
