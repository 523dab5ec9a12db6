"""Evaluate a trained occupancy model on a dataset version (the demo's chained task).

Run by a retrain worker, it reads:

- `RETRAIN_PARAMS_FILE`: the task's parameters as JSON; `General/model_uri` is the model to
  evaluate, a `file://` URI (as retrain's model registry records it with local storage) or a
  plain path; `General/dataset_id` is the dataset version, only reported here;
- `RETRAIN_INPUT_DATA`: the folder of that dataset version (every `*.csv` in it, subfolders
  too);

and writes `metrics.json` (`eval_accuracy`, `eval_f1`, `eval_rows`) and `evaluation.txt` (the
classification report) under `RETRAIN_OUTPUT_DIR`.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit
from urllib.request import url2pathname

import joblib  # type: ignore[import-not-found, import-untyped, unused-ignore]
from sklearn.metrics import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
    accuracy_score,
    classification_report,
    f1_score,
)

FEATURES = ("temperature", "humidity", "light", "co2", "humidity_ratio")
LABEL = "occupied"


def say(message: str) -> None:
    print(f"[evaluate] {message}", flush=True)


def fail(message: str) -> NoReturn:
    print(f"[evaluate] error: {message}", file=sys.stderr, flush=True)
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


def model_path(uri: str) -> Path:
    """The local file a `file://` URI or a plain path names; anything else is refused."""
    if not uri:
        fail("parameter General/model_uri is empty; give the model's file:// URI or path")
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            fail(f"General/model_uri {uri!r}: a file:// URI on another host cannot be read")
        path = Path(url2pathname(parts.path))  # decodes %20 and the like
    elif parts.scheme and len(parts.scheme) > 1:  # one letter: a Windows drive, C:\...
        fail(
            f"General/model_uri {uri!r}: {parts.scheme}:// models are not supported by this "
            "script; give a file:// URI or a local path (e.g. use local storage for the demo)"
        )
    else:
        path = Path(uri).expanduser()
    if not path.is_file():
        fail(f"General/model_uri {uri!r}: no such file {path}")
    return path


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
    params = load_params()
    uri = str(params.get("General/model_uri") or "")
    path = model_path(uri)
    data = required_env("RETRAIN_INPUT_DATA")
    outputs = required_env("RETRAIN_OUTPUT_DIR")
    dataset = params.get("General/dataset_id") or "(not given)"
    say(f"task {os.environ.get('RETRAIN_TASK_ID', '(local run)')}, dataset {dataset}")
    say(f"model {uri}")

    model = joblib.load(path)
    say(f"loaded {type(model).__name__} ({path.stat().st_size / 1024:.0f} KiB)")
    features, labels, files = load_rows(data)
    say(f"read {len(labels)} rows from {len(files)} file(s): {', '.join(files)}")

    predicted = model.predict(features)
    accuracy = float(accuracy_score(labels, predicted))
    f1 = float(f1_score(labels, predicted))
    say(f"accuracy {accuracy:.4f}, F1 {f1:.4f} on {len(labels)} rows")

    outputs.mkdir(parents=True, exist_ok=True)
    metrics = {
        "eval_accuracy": round(accuracy, 6),
        "eval_f1": round(f1, 6),
        "eval_rows": len(labels),
    }
    (outputs / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    report = classification_report(labels, predicted, target_names=["empty", "occupied"], digits=4)
    (outputs / "evaluation.txt").write_text(
        f"model {uri}\ndataset {dataset}; {len(labels)} rows from {', '.join(files)}\n\n{report}",
        encoding="utf-8",
    )
    say(f"wrote metrics.json and evaluation.txt to {outputs}")
    say(f"done in {time.perf_counter() - started:.2f} s (after imports)")


if __name__ == "__main__":
    main()
