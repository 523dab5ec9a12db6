"""Reading MLflow file stores as data: the 3.x layout (logged models under the experiment,
a registered name), written here as MLflow 3 writes it, and links out of the store."""

from __future__ import annotations

import os
from pathlib import Path

from workers.mlflowstore import read_store

RUN = "0123456789abcdef0123456789abcdef"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_an_mlflow3_store_gives_runs_series_and_logged_models(tmp_path: Path) -> None:
    root = tmp_path / "mlruns"
    write(root / "1" / "meta.yaml", "experiment_id: '1'\nname: occ\n")
    run = root / "1" / RUN
    write(run / "meta.yaml", f"run_id: {RUN}\nrun_name: calm-owl\nstatus: 3\n")
    write(run / "params" / "optimizer" / "lr", "0.01")
    write(run / "tags" / "mlflow.user", "root")
    write(run / "tags" / "team", "vision")
    write(run / "metrics" / "loss", "1700000000000 0.5 0\n1700000000001 0.25 1\nbroken\n")
    write(run / "artifacts" / "plots" / "roc.txt", "curve")
    os.symlink("/etc/hostname", run / "artifacts" / "escape")
    model = root / "1" / "models" / "m-0a1b2c"
    write(model / "meta.yaml", f"model_id: m-0a1b2c\nname: clf\nsource_run_id: {RUN}\n")
    write(model / "artifacts" / "MLmodel", "flavors:\n  python_function: {}\n  sklearn: {}\n"
          "mlflow_version: 3.1.0\n")
    write(model / "artifacts" / "model.pkl", "bytes")
    write(root / "models" / "occupancy" / "version-1" / "meta.yaml",
          "name: occupancy\nversion: 1\nsource: models:/m-0a1b2c\n")

    store = read_store(root)
    [found] = store.runs
    assert (found.run_id, found.name) == (RUN, "calm-owl")
    assert found.params == {"optimizer/lr": "0.01"}
    assert found.tags == {"mlflow.user": "root", "team": "vision"}
    assert found.metrics == {"loss": [(0.0, 0.5), (1.0, 0.25)]}
    assert [p.name for p in found.artifacts] == ["roc.txt"]  # the link is not followed
    [logged] = store.models
    assert logged.name == "occupancy" and logged.folder == model / "artifacts"
    assert logged.metadata["framework"] == "sklearn"
    assert logged.metadata["mlflow_model_id"] == "m-0a1b2c"
    assert logged.metadata["mlflow_run_id"] == RUN


def test_no_store_is_nothing(tmp_path: Path) -> None:
    assert read_store(tmp_path / "absent").runs == []
    os.symlink("/", tmp_path / "linked")
    assert read_store(tmp_path / "linked").runs == []
