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

While the forest grows (ten trees at a time) it logs the hold-out accuracy through retrain's
job API (`retrain_run`, importable in every retrain job): a live series, `retrain metrics ID
-f` follows it while the job runs.
"""

from __future__ import annotations

import json
import os
import time

import joblib  # type: ignore[import-not-found, import-untyped, unused-ignore]
import retrain_run as run  # type: ignore[import-not-found, unused-ignore]  # the job API
from occupancy import Log, load_params, load_rows, required_env  # this project's module
from sklearn.ensemble import RandomForestClassifier  # type: ignore[import-not-found, import-untyped, unused-ignore]
from sklearn.metrics import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
    accuracy_score,
    classification_report,
    f1_score,
)
from sklearn.model_selection import train_test_split  # type: ignore[import-not-found, import-untyped, unused-ignore]

log = Log("train")
HOLD_OUT = 0.25
MODEL_FILE = "occupancy.joblib"
GROW_BY = 10


def main() -> None:
    started = time.perf_counter()
    data = required_env(log, "RETRAIN_INPUT_DATA")
    outputs = required_env(log, "RETRAIN_OUTPUT_DIR")
    params = load_params()
    n_estimators = int(params.get("General/n_estimators", 100))
    max_depth = int(params.get("General/max_depth", 8))
    seed = int(params.get("General/seed", 0))
    dataset = params.get("General/dataset_id") or "(not given)"
    log.say(f"task {os.environ.get('RETRAIN_TASK_ID', '(local run)')}, dataset {dataset}")

    features, labels, files = load_rows(log, data)
    occupied = sum(labels)
    log.say(f"read {len(labels)} rows from {len(files)} file(s): {', '.join(files)}")
    log.say(f"occupied in {occupied} rows ({occupied / len(labels):.0%})")
    if min(occupied, len(labels) - occupied) < 2:
        log.fail("the data needs at least two rows of each class (occupied 0 and 1) to train")
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=HOLD_OUT, stratify=labels, random_state=seed
    )
    log.say(f"training on {len(y_train)} rows, holding out {len(y_test)} (stratified, seed {seed})")

    # Grown ten trees at a time (warm start: the same forest as one fit of n_estimators), the
    # hold-out accuracy logged after each step: a live series of the run.
    model = RandomForestClassifier(
        n_estimators=0, max_depth=max_depth, random_state=seed, warm_start=True
    )
    fit_started = time.perf_counter()
    for trees in range(min(GROW_BY, n_estimators), n_estimators + GROW_BY, GROW_BY):
        model.set_params(n_estimators=min(trees, n_estimators))
        model.fit(x_train, y_train)
        run.log_metric("val/accuracy", float(model.score(x_test, y_test)), step=model.n_estimators)
        if model.n_estimators >= n_estimators:
            break
    log.say(
        f"fitted a random forest of {n_estimators} trees (max depth {max_depth}) "
        f"in {time.perf_counter() - fit_started:.2f} s"
    )

    predicted = model.predict(x_test)
    accuracy = float(accuracy_score(y_test, predicted))
    f1 = float(f1_score(y_test, predicted))
    log.say(f"hold-out accuracy {accuracy:.4f}, F1 {f1:.4f}")

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
    log.say(f"wrote metrics.json, models/{MODEL_FILE} and report.txt to {outputs}")
    log.say(f"done in {time.perf_counter() - started:.2f} s (after imports)")


if __name__ == "__main__":
    main()
