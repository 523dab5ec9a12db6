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

import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import joblib  # type: ignore[import-not-found, import-untyped, unused-ignore]
from occupancy import Log, load_params, load_rows, required_env  # this project's module
from sklearn.metrics import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
    accuracy_score,
    classification_report,
    f1_score,
)

log = Log("evaluate")


def model_path(uri: str) -> Path:
    """The local file a `file://` URI or a plain path names; anything else is refused."""
    if not uri:
        log.fail("parameter General/model_uri is empty; give the model's file:// URI or path")
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            log.fail(f"General/model_uri {uri!r}: a file:// URI on another host cannot be read")
        path = Path(url2pathname(parts.path))  # decodes %20 and the like
    elif parts.scheme and len(parts.scheme) > 1:  # one letter: a Windows drive, C:\...
        log.fail(
            f"General/model_uri {uri!r}: {parts.scheme}:// models are not supported by this "
            "script; give a file:// URI or a local path (e.g. use local storage for the demo)"
        )
    else:
        path = Path(uri).expanduser()
    if not path.is_file():
        log.fail(f"General/model_uri {uri!r}: no such file {path}")
    return path


def main() -> None:
    started = time.perf_counter()
    params = load_params()
    uri = str(params.get("General/model_uri") or "")
    path = model_path(uri)
    data = required_env(log, "RETRAIN_INPUT_DATA")
    outputs = required_env(log, "RETRAIN_OUTPUT_DIR")
    dataset = params.get("General/dataset_id") or "(not given)"
    log.say(f"task {os.environ.get('RETRAIN_TASK_ID', '(local run)')}, dataset {dataset}")
    log.say(f"model {uri}")

    model = joblib.load(path)
    log.say(f"loaded {type(model).__name__} ({path.stat().st_size / 1024:.0f} KiB)")
    features, labels, files = load_rows(log, data)
    log.say(f"read {len(labels)} rows from {len(files)} file(s): {', '.join(files)}")

    predicted = model.predict(features)
    accuracy = float(accuracy_score(labels, predicted))
    f1 = float(f1_score(labels, predicted))
    log.say(f"accuracy {accuracy:.4f}, F1 {f1:.4f} on {len(labels)} rows")

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
    log.say(f"wrote metrics.json and evaluation.txt to {outputs}")
    log.say(f"done in {time.perf_counter() - started:.2f} s (after imports)")


if __name__ == "__main__":
    main()
