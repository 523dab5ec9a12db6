"""Reading an MLflow file store after a run, without importing MLflow into the worker.

When a task sets no `MLFLOW_TRACKING_URI`, its worker points MLflow at a file store of its own
under the run's output folder (`outputs/mlruns`), so an MLflow script records its run there
with no code change. After the run this module reads that folder as data (YAML and text,
never unpickled, never imported):

    <root>/<experiment id>/meta.yaml
    <root>/<experiment id>/<run id>/meta.yaml          run_id, run_name, status, artifact_uri
    <root>/<experiment id>/<run id>/params/<key>       the value (keys may contain `/`)
    <root>/<experiment id>/<run id>/metrics/<key>      lines "timestamp value step [...]"
    <root>/<experiment id>/<run id>/tags/<key>
    <root>/<experiment id>/<run id>/artifacts/...      MLflow 2.x models: folders with MLmodel
    <root>/<experiment id>/models/<model id>/          MLflow 3.x logged models: meta.yaml
                                                       (name, source_run_id), artifacts/MLmodel
    <root>/models/<name>/version-<n>/meta.yaml         registered models (name, source)

This is the layout of MLflow's `FileStore` in 2.x and 3.x; anything that does not parse is
skipped. The job wrote these files: paths are never followed out of the store, sizes bounded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MAX_METRIC_LINES = 1_000_000
"""Points read per metric file at most."""
MAX_TEXT_BYTES = 64 * 1024
"""A param or tag value longer than this is cut."""
SYSTEM_TAG = "mlflow."
"""MLflow's own tags (user, source, run name, log-model history): not the run's data."""
_RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class MlflowModel:
    name: str
    folder: Path
    """The model's own folder (holding `MLmodel`)."""
    metadata: dict[str, Any]


@dataclass
class MlflowRun:
    run_id: str
    experiment_id: str
    name: str = ""
    status: str = ""
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Series name -> [(step, value)] in the order logged."""
    artifacts: list[Path] = field(default_factory=list)
    """Files under the run's artifact folder that belong to no model."""
    artifact_root: Path | None = None


@dataclass
class MlflowStore:
    runs: list[MlflowRun] = field(default_factory=list)
    models: list[MlflowModel] = field(default_factory=list)


def read_store(root: Path) -> MlflowStore:
    """Everything the file store at `root` recorded (empty when there is none)."""
    found = MlflowStore()
    if not root.is_dir() or root.is_symlink():
        return found
    real_root = root.resolve()
    registered = _registered_names(root, real_root)
    for experiment in sorted(_dirs(root, real_root)):
        if experiment.name in (".trash", "models") or not (experiment / "meta.yaml").is_file():
            continue
        for run_dir in sorted(_dirs(experiment, real_root)):
            if _RUN_ID.fullmatch(run_dir.name) and (run_dir / "meta.yaml").is_file():
                run = _read_run(run_dir, experiment.name, real_root)
                found.runs.append(run)
                found.models.extend(_run_models(run, registered, real_root))
        for model_dir in sorted(_dirs(experiment / "models", real_root)):
            model = _logged_model(model_dir, registered, real_root)
            if model is not None:
                found.models.append(model)
    for run in found.runs:  # a model's files are the model, not also artifacts
        folders = [m.folder for m in found.models]
        run.artifacts = [a for a in run.artifacts if not any(f in a.parents for f in folders)]
    return found


def _read_run(run_dir: Path, experiment_id: str, real_root: Path) -> MlflowRun:
    meta = _yaml(run_dir / "meta.yaml")
    run = MlflowRun(
        run_id=run_dir.name,
        experiment_id=experiment_id,
        name=str(meta.get("run_name") or ""),
        status=str(meta.get("status") or ""),
    )
    run.params = {k: v for k, v in _texts(run_dir / "params", real_root)}
    run.tags = {k: v for k, v in _texts(run_dir / "tags", real_root)}
    for key, path in _files(run_dir / "metrics", real_root):
        points = _metric_points(path)
        if points:
            run.metrics[key] = points
    artifacts = run_dir / "artifacts"
    if artifacts.is_dir():
        run.artifact_root = artifacts
        run.artifacts = [path for _key, path in _files(artifacts, real_root)]
    return run


def _run_models(
    run: MlflowRun, registered: dict[str, str], real_root: Path
) -> Iterator[MlflowModel]:
    """MLflow 2.x: every artifact folder holding an `MLmodel` file is a logged model."""
    if run.artifact_root is None:
        return
    for path in run.artifacts:
        if path.name != "MLmodel":
            continue
        folder = path.parent
        artifact_path = folder.relative_to(run.artifact_root).as_posix()
        mlmodel = _yaml(path)
        name = registered.get(f"{run.run_id}/{artifact_path}") or artifact_path
        yield MlflowModel(
            name=_model_name(name),
            folder=folder,
            metadata=_model_metadata(mlmodel, run.run_id, artifact_path),
        )


def _logged_model(
    model_dir: Path, registered: dict[str, str], real_root: Path
) -> MlflowModel | None:
    """MLflow 3.x: `<experiment>/models/<model id>/` with its meta.yaml and artifacts."""
    meta = _yaml(model_dir / "meta.yaml")
    artifacts = model_dir / "artifacts"
    if not meta or not (artifacts / "MLmodel").is_file() or not _inside(artifacts, real_root):
        return None
    model_id = str(meta.get("model_id") or model_dir.name)
    name = registered.get(model_id) or str(meta.get("name") or model_id)
    run_id = str(meta.get("source_run_id") or "")
    metadata = _model_metadata(_yaml(artifacts / "MLmodel"), run_id, None)
    metadata["mlflow_model_id"] = model_id
    return MlflowModel(name=_model_name(name), folder=artifacts, metadata=metadata)


def _registered_names(root: Path, real_root: Path) -> dict[str, str]:
    """What the file store's registry says: `run id/artifact path` (2.x sources such as
    `.../<run id>/artifacts/model` or `runs:/<run id>/model`) or a 3.x model id -> the
    registered model's name."""
    names: dict[str, str] = {}
    for model in _dirs(root / "models", real_root):
        for version in _dirs(model, real_root):
            meta = _yaml(version / "meta.yaml")
            source, name = str(meta.get("source") or ""), str(meta.get("name") or "")
            if not source or not name:
                continue
            model_id = str(meta.get("model_id") or "")
            if model_id:
                names[model_id] = name
            if (found := re.search(r"models:/(m-[0-9a-f]+)", source)) is not None:
                names[found.group(1)] = name
            run = re.search(r"([0-9a-f]{32})/(?:artifacts/)?(.+?)/?$", source)
            if run is not None:
                names[f"{run.group(1)}/{run.group(2)}"] = name
    return names


def _model_metadata(
    mlmodel: dict[str, Any], run_id: str, artifact_path: str | None
) -> dict[str, Any]:
    flavors = mlmodel.get("flavors")
    metadata: dict[str, Any] = {
        "source": "mlflow",
        "mlflow_run_id": run_id or str(mlmodel.get("run_id") or ""),
        "flavors": sorted(flavors) if isinstance(flavors, dict) else [],
    }
    if artifact_path:
        metadata["artifact_path"] = artifact_path
    for key in ("mlflow_version", "model_uuid", "model_id"):
        if mlmodel.get(key):
            metadata[key] = str(mlmodel[key])
    frameworks = [f for f in metadata["flavors"] if f != "python_function"]
    if frameworks:
        metadata["framework"] = frameworks[0]
    return metadata


def _model_name(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
    return clean[:256]


def _metric_points(path: Path) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    with path.open("rb") as handle:
        for i, line in enumerate(handle):
            if i >= MAX_METRIC_LINES:
                break
            fields = line.split()
            if len(fields) < 2:
                continue
            try:
                value = float(fields[1])
                step = float(fields[2]) if len(fields) > 2 else float(i)
            except ValueError:
                continue
            if math.isfinite(value) and math.isfinite(step):
                points.append((step, value))
    return points


def _texts(folder: Path, real_root: Path) -> Iterator[tuple[str, str]]:
    for key, path in _files(folder, real_root):
        with path.open("rb") as handle:
            yield key, handle.read(MAX_TEXT_BYTES).decode("utf-8", "replace")


def _files(folder: Path, real_root: Path) -> Iterator[tuple[str, Path]]:
    """(`a/b` key, path) for the regular files below `folder`, never through a link."""
    if not folder.is_dir() or folder.is_symlink() or not _inside(folder, real_root):
        return
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        if any(p.is_symlink() for p in path.relative_to(folder).parents if p != Path(".")):
            continue
        yield path.relative_to(folder).as_posix(), path


def _dirs(folder: Path, real_root: Path) -> list[Path]:
    if not folder.is_dir() or folder.is_symlink() or not _inside(folder, real_root):
        return []
    return [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]


def _inside(path: Path, real_root: Path) -> bool:
    resolved = path.resolve()
    return resolved == real_root or real_root in resolved.parents


def _yaml(path: Path) -> dict[str, Any]:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1024 * 1024:
            return {}
        data = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
