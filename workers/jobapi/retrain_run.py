"""retrain's job-side API: parameters, inputs, live metrics and models from inside the
training code.

    import retrain_run as run
    params = run.params()                  # resolved parameters, typed as registered
    run.connect(config)                    # a module, object or dict: overrides written in
    data = run.input("data")               # local path of a materialized input version
    run.log_metric("loss", 0.31, step=120) # a series point, seen live (`retrain metrics -f`)
    run.log_model("out/model.pkl", name="occupancy", metadata={"framework": "sklearn"})
    run.log_artifact("plots/roc.png")

Inside a retrain job the worker puts the folder holding this one file on PYTHONPATH: nothing
is installed into the job's pinned environment, and this module imports the standard library
only. It talks to its worker through a file the worker owns (`RETRAIN_RUN_CHANNEL`, one JSON
object a line, appended), never to Redis or the store: the job holds no credentials.

Outside a retrain job the same calls work on a laptop: parameters are the defaults `connect`
saw (or `RETRAIN_PARAMS_FILE`), inputs come from `RETRAIN_INPUT_<NAME>` or a `default`, and
metrics, models and artifacts go to a local folder (`RETRAIN_LOCAL_DIR`, else
`./retrain-local`), with each series' last value printed when the script exits.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import shutil
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

__all__ = [
    "connect",
    "in_job",
    "input",
    "log_artifact",
    "log_metric",
    "log_model",
    "params",
]

CHANNEL_ENV = "RETRAIN_RUN_CHANNEL"
"""The file a job appends its events to; set by the worker, absent outside a job."""
FLUSH_EVERY_S = 0.1
"""Points reach the worker at most this late: a write flushes when the last flush is older,
and a timer flushes what a quiet job left in the buffer."""
SECTION = "General"
"""ClearML's section for connected values: parameter `General/lr` is `config.lr`."""

BATCH = 4096
"""Points written to the channel at once at most."""

_SIMPLE = (bool, int, float, str, type(None))
_IN_JOB = bool(os.environ.get(CHANNEL_ENV))
_lock = threading.Lock()
_state: dict[str, Any] = {}
"""Parameters read and defaults connected."""
_pending: list[str] = []
"""Event lines not written yet."""
_points: dict[str, tuple[list[int], list[float]]] = {}
"""Points not written yet, by series: (steps, values), written as one line per flush."""
_queued = [0]
_steps: dict[str, int] = {}
_local_last: dict[str, tuple[float, int, int]] = {}
_io: dict[str, Any] = {"file": None, "flushed": 0.0, "timer": None}


def in_job() -> bool:
    """Whether this process runs as a retrain job (its worker gave it a channel)."""
    return bool(os.environ.get(CHANNEL_ENV))


# -- parameters ------------------------------------------------------------------------------


def params() -> dict[str, Any]:
    """The run's resolved parameters (JSON-typed as registered). Outside a job: the defaults
    `connect` has seen so far, overlaid with `RETRAIN_PARAMS_FILE` when it is set."""
    return {**_state.setdefault("defaults", {}), **_params_file()}


def _params_file() -> dict[str, Any]:
    if "params" not in _state:
        path = os.environ.get("RETRAIN_PARAMS_FILE")
        loaded: Any = json.loads(Path(path).read_text(encoding="utf-8")) if path else {}
        _state["params"] = dict(loaded) if isinstance(loaded, dict) else {}
    return dict(_state["params"])


def connect(config: Any, name: str | None = None) -> Any:
    """ClearML-style: record `config`'s values as the run's defaults, and write the values the
    run overrides into it. `config` is a dict, a module or any object with attributes; its
    public values of simple JSON types (numbers, strings, booleans, None, lists and dicts of
    them) are its parameters, named `General/lr` (`NAME/lr` when `name` is given), as
    retrain's parameters and ClearML's are: the run's `General/lr` overrides `lr`. Returns
    `config`."""
    values = _simple_items(config)
    overrides = _params_file()
    section = name or SECTION
    recorded: dict[str, Any] = {}
    for key, default in values.items():
        label = f"{section}/{key}"
        recorded[label] = default
        for candidate in (label, key):
            if candidate in overrides:
                value = _like(default, overrides[candidate], candidate)
                if isinstance(config, dict):
                    config[key] = value
                else:
                    setattr(config, key, value)
                break
    _state.setdefault("defaults", {}).update(recorded)
    _emit({"k": "defaults", "values": recorded})
    return config


def _simple_items(config: Any) -> dict[str, Any]:
    items = config.items() if isinstance(config, dict) else vars(config).items()
    found = {}
    for key, value in items:
        if not isinstance(key, str) or key.startswith("_"):
            continue
        if isinstance(value, (types.ModuleType, type)) or callable(value):
            continue
        if _is_simple(value):
            found[key] = value
    return found


def _is_simple(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _SIMPLE):
        return not isinstance(value, float) or math.isfinite(value)
    if depth > 4:
        return False
    if isinstance(value, (list, tuple)):
        return all(_is_simple(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_simple(v, depth + 1) for k, v in value.items())
    return False


def _like(default: Any, value: Any, name: str) -> Any:
    """`value` in `default`'s type where that is unambiguous (a parameter given as text)."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off", ""):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int) and not isinstance(value, bool):
            return int(value) if isinstance(value, str) or float(value) == int(value) else value
        if isinstance(default, float) and not isinstance(value, bool):
            return float(value)
        if isinstance(default, (list, tuple)) and isinstance(value, str):
            parsed = json.loads(value)
            return type(default)(parsed) if isinstance(parsed, list) else value
        if isinstance(default, str) and not isinstance(value, str):
            return value if value is None else str(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"retrain_run.connect: parameter {name} = {value!r} is not a "
            f"{type(default).__name__} like its default {default!r}"
        ) from None
    return value


# -- inputs ----------------------------------------------------------------------------------


def input(name: str, default: str | os.PathLike[str] | None = None) -> Path:
    """The local folder of input `name` (a materialized dataset version). Outside a job:
    `RETRAIN_INPUT_<NAME>` when set, else `default`."""
    variable = "RETRAIN_INPUT_" + re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper()
    found = os.environ.get(variable)
    if found:
        return Path(found)
    if default is not None:
        return Path(default)
    where = "this run has no such input" if in_job() else "not in a retrain job"
    raise LookupError(f"retrain_run.input({name!r}): {where}; set {variable} or pass default=")


# -- metrics ---------------------------------------------------------------------------------


def log_metric(name: str, value: float, step: int | None = None) -> None:
    """Add a point to series `name`. `step` defaults to the series' previous step + 1 (0
    first); NaN and infinities are no points. Cheap (a few microseconds): points are batched
    and reach the worker at most `FLUSH_EVERY_S` later."""
    number = float(value)
    with _lock:
        pending = _points.get(name)
        if pending is None:
            if not isinstance(name, str) or not name:
                raise ValueError("retrain_run.log_metric: name must be a non-empty string")
            pending = _points[name] = ([], [])
        step = _steps.get(name, -1) + 1 if step is None else int(step)
        _steps[name] = step
        if number - number != 0.0:  # NaN or an infinity (JSON has no such numbers)
            return
        pending[0].append(step)
        pending[1].append(number)
        _queued[0] += 1
        if _queued[0] >= BATCH or time.monotonic() - _io["flushed"] >= FLUSH_EVERY_S:
            _drain()
        elif _io["timer"] is None:
            _start_timer()
        if not _IN_JOB:
            count = _local_last.get(name, (0.0, 0, 0))[2] + 1
            _local_last[name] = (number, step, count)


# -- models and artifacts --------------------------------------------------------------------


def log_model(
    path: str | os.PathLike[str],
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Register the file or folder at `path` as a model of this run (`name`: its file name
    without suffix). It is copied into the run's outputs now, so later changes to `path` do not
    change the model; the worker uploads it and the scheduler registers it when the run
    completes. Returns where the copy is."""
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"retrain_run.log_model: {source} does not exist")
    label = name or (source.name if source.is_dir() else source.stem)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", label):
        raise ValueError(f"retrain_run.log_model: name {label!r} must be letters, digits, ._-")
    if metadata is not None:
        json.dumps(metadata)  # must be JSON, said here rather than on the worker
    target = _outputs() / "models" / (label if source.is_dir() else label + source.suffix)
    _copy(source, target)
    relative = target.relative_to(_outputs()).as_posix()
    _emit({"k": "model", "name": label, "path": relative, "metadata": metadata or {}})
    return target


def log_artifact(path: str | os.PathLike[str], name: str | None = None) -> Path:
    """Keep the file or folder at `path` as an artifact of this run (under `artifacts/`,
    as `name` or its own name). Returns where the copy is."""
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"retrain_run.log_artifact: {source} does not exist")
    target = _outputs() / "artifacts" / (name or source.name)
    _copy(source, target)
    return target


def _outputs() -> Path:
    if in_job():
        return Path(os.environ["RETRAIN_OUTPUT_DIR"])
    return _local_dir()


def _local_dir() -> Path:
    return Path(os.environ.get("RETRAIN_LOCAL_DIR") or "retrain-local")


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    if source.is_dir():
        shutil.copytree(source, target, symlinks=False)
    else:
        shutil.copy2(source, target)


# -- the channel -----------------------------------------------------------------------------


def _emit(event: dict[str, Any]) -> None:
    """Send one event now (with the points logged before it)."""
    with _lock:
        _pending.append(json.dumps(event, separators=(",", ":"), default=str) + "\n")
        _drain()


def _drain() -> None:
    """Write and flush the pending lines (under `_lock`)."""
    handle = _io["file"]
    if handle is None:
        handle = _open()
    if _queued[0]:
        # One line for all points since the last flush: {"p": {series: [steps, values]}}.
        batch = {n: p for n, p in _points.items() if p[0]}
        handle.write(json.dumps({"p": batch}, separators=(",", ":")) + "\n")
        for name in batch:
            _points[name] = ([], [])
        _queued[0] = 0
    if _pending:
        handle.write("".join(_pending))
        _pending.clear()
    handle.flush()
    _io["flushed"] = time.monotonic()


def _start_timer() -> None:
    """Make sure what a quiet job left pending is flushed soon (under `_lock`)."""
    timer = threading.Timer(FLUSH_EVERY_S, _timed_flush)
    timer.daemon = True
    _io["timer"] = timer
    timer.start()


def _open() -> Any:
    channel = os.environ.get(CHANNEL_ENV)
    if channel:
        path = Path(channel)
    else:
        path = _local_dir() / "events.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a", encoding="utf-8")
    _io["file"] = handle
    atexit.register(_at_exit)
    return handle


def _timed_flush() -> None:
    with _lock:
        _io["timer"] = None
        if _pending or _queued[0]:
            _drain()


def _at_exit() -> None:
    with _lock:
        _drain()
        if _local_last and not in_job():
            where = _local_dir() / "events.jsonl"
            sys.stderr.write(f"retrain_run: metrics in {where}\n")
            for metric, (value, step, count) in sorted(_local_last.items()):
                sys.stderr.write(f"  {metric} = {value:g} (step {step}, {count} points)\n")
