"""The report protocol: what workers tell the scheduler, on a Redis stream.

Workers never touch the database; they build reports here, send them with `send`, and the
scheduler (`orchestrator.scheduler.ingest`) parses them with `parse` and applies them to the
store. This module is the whole protocol, and it imports nothing of the store: every worker
process loads it.

A report is one JSON object in the stream field `data` (never pickle)::

    {"kind": "started" | "heartbeat" | "finished" | "released", "task_id": ...,
     "worker": ..., "time": "2024-05-01T12:00:00+00:00", ...}

`released` comes from a worker that stopped the task before it ended (the worker was told to
stop with `--abort-on-stop`, or stopped twice): the task goes back to its queue, `reason`
says why.

A finished report adds `status` (completed, failed or aborted), `exit_code`, `error` (a
summary, maybe with the last log lines), `duration_s`, `metrics` (name -> number), `models`
([{"name", "uri", "metadata"}]), `artifacts` ([{"path", "uri"}]), `environment` (what the run
ran in) and optionally `reason` ("timeout", "worker lost", ...), `series` (name ->
{"count", "last", "step", "min", "max", "points": [[step, value], ...]}: each metric series the
job logged, its summary exact and its points cut to the limit) and `logged_params` (name ->
value: the defaults the job's `connect` saw). The `clean_*` functions are
how the receiving side reads these fields: whatever a worker sent, they return well-formed
values or nothing.

Liveness lives in Redis alone: `started` and `heartbeat` reports also set the task's
heartbeat key with a TTL. A running task whose key has expired has lost its worker.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.queue import signing
from orchestrator.queue.keys import HEARTBEAT_TTL_S, REPORTS_STREAM, heartbeat_key
from orchestrator.tasks.states import FINISHED as FINAL_STATUSES

if TYPE_CHECKING:
    from redis import Redis

KINDS = ("started", "heartbeat", "finished", "released")
FIELD = "data"
SIG_FIELD = "sig"
"""The entry's HMAC of `data` under the worker secret (`signing`)."""

# Limits: what a report may carry. A real worker never exceeds them (the builders cut what
# would); a report past them was not made by one, and is refused (dead-lettered).
MAX_REPORT_BYTES = 1024 * 1024
MAX_METRICS = 1000
MAX_MODELS = 100
MAX_ARTIFACTS = 1000
MAX_SERIES = 1000
MAX_SERIES_POINTS = 20_000
"""Points all series of a report carry together (the worker downsamples to fit; a series'
count, last, min and max stay exact)."""
MAX_LOGGED_PARAMS = 1000
MAX_ERROR_CHARS = 16 * 1024
MAX_PARAM_VALUE_BYTES = 4 * 1024
"""A logged parameter's value, JSON-encoded; a longer one is kept as a cut string."""
MAX_MODEL_METADATA_BYTES = 64 * 1024
"""One model's metadata, JSON-encoded; larger metadata is left out (the model is kept)."""
REPORT_HEADROOM_BYTES = 4 * 1024
"""Kept free under MAX_REPORT_BYTES by the builder: `send` adds a time, and the notes of
what was left out go into `error` after the parts are measured."""
MAX_TEXT_CHARS = 1024
"""Names, URIs, paths, the worker's name, a reason."""
MAX_DURATION_S = 1e9
EXIT_CODES = range(-(2**31), 2**31)


class BadReport(ValueError):
    """A report that can never be applied (malformed, unknown task, impossible change): it
    is logged and acknowledged so it does not block the stream."""


# -- building and sending (workers) --------------------------------------------------------


def now_iso() -> str:
    """The time a report carries: UTC, ISO 8601."""
    return dt.datetime.now(dt.timezone.utc).isoformat()


def started(task_id: str, worker: str, attempt: int = 0) -> dict[str, Any]:
    """The worker began the task's attempt `attempt` (the payload's): this binds the attempt
    to the worker."""
    return {
        "kind": "started",
        "task_id": task_id,
        "attempt": attempt,
        "worker": worker,
        "time": now_iso(),
    }


def heartbeat(task_id: str, worker: str, attempt: int = 0) -> dict[str, Any]:
    """The task's worker is alive (refreshes the heartbeat key when sent)."""
    return {
        "kind": "heartbeat",
        "task_id": task_id,
        "attempt": attempt,
        "worker": worker,
        "time": now_iso(),
    }


def released(task_id: str, worker: str, reason: str, attempt: int = 0) -> dict[str, Any]:
    """The worker stopped the task before it ended; it goes back to its queue."""
    return {
        "kind": "released",
        "task_id": task_id,
        "attempt": attempt,
        "worker": worker,
        "time": now_iso(),
        "reason": reason,
    }


def finished(
    task_id: str,
    worker: str,
    status: str,
    *,
    exit_code: int | None = None,
    error: str | None = None,
    duration_s: float | None = None,
    metrics: Mapping[str, float] | None = None,
    models: Sequence[Mapping[str, Any]] = (),
    artifacts: Sequence[Mapping[str, Any]] = (),
    environment: Mapping[str, Any] | None = None,
    reason: str | None = None,
    attempt: int = 0,
    series: Mapping[str, Mapping[str, Any]] | None = None,
    logged_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The task ended on its worker, with everything the run produced (cut to the limits,
    with a note in `error` saying what was left out)."""
    cut = []
    metric_items = sorted((metrics or {}).items())
    if len(metric_items) > MAX_METRICS:
        cut.append(f"{len(metric_items) - MAX_METRICS} metrics")
        metrics = dict(metric_items[:MAX_METRICS])
    if len(models) > MAX_MODELS:
        cut.append(f"{len(models) - MAX_MODELS} models")
        models = list(models)[:MAX_MODELS]
    if len(artifacts) > MAX_ARTIFACTS:
        cut.append(f"{len(artifacts) - MAX_ARTIFACTS} artifacts")
        artifacts = list(artifacts)[:MAX_ARTIFACTS]
    series_items = sorted((series or {}).items())
    if len(series_items) > MAX_SERIES:
        cut.append(f"{len(series_items) - MAX_SERIES} metric series")
        series_items = series_items[:MAX_SERIES]
    param_items = sorted((logged_params or {}).items())
    if len(param_items) > MAX_LOGGED_PARAMS:
        cut.append(f"{len(param_items) - MAX_LOGGED_PARAMS} logged parameters")
        param_items = param_items[:MAX_LOGGED_PARAMS]
    cut_values = 0
    for i, (name, value) in enumerate(param_items):
        size = _encoded_size(value)
        if size > MAX_PARAM_VALUE_BYTES:
            cut_values += 1
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            param_items[i] = (name, text[: MAX_PARAM_VALUE_BYTES // 8] + f" [... {size} bytes cut]")
    if cut_values:
        cut.append(f"{cut_values} logged parameter values over {MAX_PARAM_VALUE_BYTES} bytes")
    model_list: list[dict[str, Any]] = [dict(m) for m in models]
    cut_metadata = 0
    for model in model_list:
        if _encoded_size(model.get("metadata")) > MAX_MODEL_METADATA_BYTES:
            cut_metadata += 1
            model["metadata"] = {}
    if cut_metadata:
        cut.append(f"metadata of {cut_metadata} models over {MAX_MODEL_METADATA_BYTES} bytes")
    report: dict[str, Any] = {
        "kind": "finished",
        "task_id": task_id,
        "attempt": attempt,
        "worker": worker,
        "time": now_iso(),
        "status": status,
        "exit_code": exit_code,
        "error": error,
        "duration_s": duration_s,
        "metrics": dict(metrics or {}),
        "models": model_list,
        "artifacts": [dict(a) for a in artifacts],
    }
    if environment:
        report["environment"] = dict(environment)
    if series_items:
        report["series"] = {name: dict(s) for name, s in series_items}
    if param_items:
        report["logged_params"] = dict(param_items)
    if reason:
        report["reason"] = reason
    cut.extend(_fit(report, MAX_REPORT_BYTES - REPORT_HEADROOM_BYTES - _encoded_size(error)))
    if cut:
        note = f"left out past the report's limits: {', '.join(cut)}"
        error = f"{error}; {note}" if error else note
    if error and len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 40] + f" [... {len(error) - MAX_ERROR_CHARS + 40} cut]"
    report["error"] = error
    return report


def _encoded_size(value: Any) -> int:
    """Bytes of `value` as `send` encodes it (ASCII JSON: characters are bytes)."""
    return len(json.dumps(value, default=str, separators=(",", ":")))


def _fit(report: dict[str, Any], limit: int) -> list[str]:
    """Drop the report's largest optional parts (logged parameters, series points, models'
    metadata, environment, artifacts) until it encodes within `limit` bytes; what was
    dropped. The status, exit code, metrics and models themselves always stay: losing them
    to the ingest's byte limit would lose how the run ended. Each part dropped is gone
    from the sizes, so this ends."""

    def parts() -> dict[str, int]:
        sizes = {
            "logged parameters": _encoded_size(report.get("logged_params") or {}),
            "series points": _encoded_size(
                [s["points"] for s in report.get("series", {}).values()
                 if isinstance(s, dict) and s.get("points")]
            ),
            "models' metadata": _encoded_size(
                [m["metadata"] for m in report["models"] if m.get("metadata")]
            ),
            "environment": _encoded_size(report.get("environment") or {}),
            "artifacts": _encoded_size(report["artifacts"]),
        }
        return {k: v for k, v in sizes.items() if v > 2}  # "[]", "{}": nothing to drop

    dropped: list[str] = []
    while _encoded_size(report) > limit:
        sizes = parts()
        if not sizes:
            break
        largest = max(sizes, key=lambda k: sizes[k])
        dropped.append(f"all {largest}")
        if largest == "logged parameters":
            del report["logged_params"]
        elif largest == "series points":
            for s in report.get("series", {}).values():
                if isinstance(s, dict):
                    s.pop("points", None)
        elif largest == "models' metadata":
            for m in report["models"]:
                m["metadata"] = {}
        elif largest == "environment":
            del report["environment"]
        else:
            report["artifacts"] = []
    return dropped


def send(
    redis: Redis,
    report: Mapping[str, Any],
    *,
    secret: str | None = None,
    heartbeat_ttl_s: int = HEARTBEAT_TTL_S,
) -> None:
    """Add a report to the stream; `started` and `heartbeat` also refresh the task's
    heartbeat key (the liveness signal), in the same round trip. A heartbeat is that key
    alone: it changes no state, so it never queues behind (or ahead of) the reports that do.
    The stream is never capped here: the scheduler trims what it has acknowledged."""
    kind = report.get("kind")
    task_id = report.get("task_id")
    if kind not in KINDS:
        raise ValueError(f"report kind {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("a report needs a task_id")
    body = {"time": now_iso(), **report}
    data = json.dumps(body, default=str, separators=(",", ":"))
    pipe = redis.pipeline(transaction=True)
    if kind in ("started", "heartbeat"):
        pipe.set(heartbeat_key(task_id), str(body.get("worker") or ""), ex=heartbeat_ttl_s)
    if kind != "heartbeat":
        fields = {FIELD: data}
        if secret:
            fields[SIG_FIELD] = signing.sign(secret, data.encode())
        pipe.xadd(REPORTS_STREAM, fields)  # type: ignore[arg-type]
    pipe.execute()


# -- parsing and validating (the scheduler) ------------------------------------------------


def parse(fields: Mapping[Any, Any] | None, secret: str | None = None) -> dict[str, Any]:
    """The report in a stream entry's fields; `BadReport` when it is not a valid one. With a
    `secret` (the worker secret), only a report signed with it is valid."""
    if not fields:
        raise BadReport("empty entry (trimmed from the stream?)")
    raw = fields.get(FIELD, fields.get(FIELD.encode()))
    if raw is None:
        raise BadReport(f"no {FIELD!r} field")
    if len(raw) > MAX_REPORT_BYTES:
        raise BadReport(f"{len(raw)} bytes, more than the {MAX_REPORT_BYTES} a report may have")
    if not secret and fields.get(SIG_FIELD, fields.get(SIG_FIELD.encode())) is not None:
        # Signed and unsigned never mix: the worker has a secret, so this scheduler should.
        raise BadReport(
            "signed, but this scheduler has no worker secret to check it (set "
            "RETRAIN_WORKER_SECRET on the scheduler)"
        )
    if secret:
        sig = fields.get(SIG_FIELD, fields.get(SIG_FIELD.encode()))
        sig = sig.decode(errors="replace") if isinstance(sig, bytes) else sig
        data = raw if isinstance(raw, bytes) else str(raw).encode()
        if sig is None:
            raise BadReport("not signed (made without the worker secret)")
        if not signing.verify(secret, data, sig):
            raise BadReport("bad signature (made without the worker secret)")
    try:
        report = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadReport(f"not JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise BadReport("JSON nested too deeply") from None
    if not isinstance(report, dict):
        raise BadReport("not a JSON object")
    report = dict(_without_nul(report))
    if report.get("kind") not in KINDS:
        raise BadReport(f"kind {report.get('kind')!r} is not one of {', '.join(KINDS)}")
    if not isinstance(report.get("task_id"), str) or not report["task_id"]:
        raise BadReport("no task_id")
    if report["kind"] == "finished" and report.get("status") not in FINAL_STATUSES:
        raise BadReport(
            f"finished report for {report['task_id']}: status {report.get('status')!r} is not final"
        )
    _check_limits(report)
    return report


def _without_nul(value: Any) -> Any:
    """`value` with every NUL character shown as U+FFFD: PostgreSQL refuses NUL in text and
    JSON, and a job that printed one (its error tail, a metric's name) must not lose its run."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _check_limits(report: Mapping[str, Any]) -> None:
    """Refuse what no real worker sends: over-long text, too many entries, numbers out of
    range (a 30-digit exit code would overflow the database's integer)."""
    task = report["task_id"]

    def refuse(what: str) -> BadReport:
        return BadReport(f"{report['kind']} report for {str(task)[:64]}: {what}")

    for field in ("task_id", "worker", "reason", "status", "time", "execution"):
        value = report.get(field)
        if value is not None and len(str(value)) > MAX_TEXT_CHARS:
            raise refuse(f"{field} is longer than {MAX_TEXT_CHARS} characters")
    error = report.get("error")
    if error is not None and len(str(error)) > MAX_ERROR_CHARS:
        raise refuse(f"error is longer than {MAX_ERROR_CHARS} characters")
    attempt = report.get("attempt", 0)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 0 <= attempt < 1000:
        raise refuse("attempt is not a small non-negative integer")
    exit_code = report.get("exit_code")
    if (
        isinstance(exit_code, int)
        and not isinstance(exit_code, bool)
        and (exit_code not in EXIT_CODES)
    ):
        raise refuse(f"exit_code {str(exit_code)[:40]} is out of range")
    duration = report.get("duration_s")
    if (
        isinstance(duration, (int, float))
        and not isinstance(duration, bool)
        and (not math.isfinite(duration) or abs(duration) > MAX_DURATION_S)
    ):
        raise refuse("duration_s is out of range")
    for field, limit in (
        ("metrics", MAX_METRICS),
        ("models", MAX_MODELS),
        ("artifacts", MAX_ARTIFACTS),
    ):
        value = report.get(field)
        if isinstance(value, (dict, list)) and len(value) > limit:
            raise refuse(f"{len(value)} {field}, more than the {limit} a report may carry")
    series = report.get("series")
    if series is not None:
        if not isinstance(series, dict) or len(series) > MAX_SERIES:
            raise refuse(f"series is not an object of at most {MAX_SERIES} series")
        points = sum(
            len(s.get("points") or []) if isinstance(s, dict) else 0 for s in series.values()
        )
        if points > MAX_SERIES_POINTS:
            raise refuse(f"{points} series points, more than the {MAX_SERIES_POINTS} allowed")
    logged = report.get("logged_params")
    if logged is not None and (not isinstance(logged, dict) or len(logged) > MAX_LOGGED_PARAMS):
        raise refuse(f"logged_params is not an object of at most {MAX_LOGGED_PARAMS} entries")


def numeric_metrics(metrics: Any) -> dict[str, float | int]:
    """The finite numbers among reported metrics (what triggers compare); others dropped."""
    if not isinstance(metrics, dict):
        return {}
    kept: dict[str, float | int] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, int) and abs(value) > 2**53:
            value = float(value)  # JSON and the databases keep integers only this exact
        kept[str(name)[:MAX_TEXT_CHARS]] = value
    return kept


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and abs(value) < 1e300 else None


def clean_series(value: Any) -> dict[str, dict[str, Any]]:
    """The well-formed series among reported ones: a name of at most `MAX_TEXT_CHARS`, a
    positive count, finite last/min/max, and the finite [step, value] points (in step order)."""
    if not isinstance(value, dict):
        return {}
    kept: dict[str, dict[str, Any]] = {}
    for name, series in value.items():
        if not isinstance(series, dict) or not str(name) or len(str(name)) > MAX_TEXT_CHARS:
            continue
        count = series.get("count")
        last, low, high = (_number(series.get(k)) for k in ("last", "min", "max"))
        step = _number(series.get("step"))
        if isinstance(count, bool) or not isinstance(count, int) or count < 1 or count > 2**53:
            continue
        if last is None or low is None or high is None:
            continue
        points = []
        for point in series.get("points") or []:
            if isinstance(point, list) and len(point) == 2:
                s, v = _number(point[0]), _number(point[1])
                if s is not None and v is not None:
                    points.append([int(s) if s.is_integer() else s, v])
        kept[str(name)] = {
            "count": count,
            "last": last,
            "step": int(step) if step is not None and step.is_integer() else step,
            "min": low,
            "max": high,
            "points": sorted(points, key=lambda p: p[0]),
        }
    return kept


def clean_logged_params(value: Any) -> dict[str, Any]:
    """Logged parameters whose values are JSON scalars or short JSON (anything else as text)."""
    if not isinstance(value, dict):
        return {}
    kept: dict[str, Any] = {}
    for name, item in value.items():
        if len(str(name)) > MAX_TEXT_CHARS:
            continue
        if isinstance(item, float) and not math.isfinite(item):
            item = str(item)
        text = json.dumps(item, default=str)
        kept[str(name)] = item if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS]
    return kept


def clean_artifacts(value: Any) -> list[dict[str, str]]:
    """The well-formed entries among reported artifacts ({path, uri} strings)."""
    if not isinstance(value, list):
        return []
    return [
        {"path": a["path"], "uri": a["uri"]}
        for a in value
        if isinstance(a, dict) and isinstance(a.get("path"), str) and isinstance(a.get("uri"), str)
    ]


def clean_duration(value: Any) -> float | None:
    """A reported duration in seconds, when it is a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) if value >= 0 else None


def clean_exit_code(value: Any) -> int | None:
    """A reported exit code, when it is an integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def clean_environment(value: Any) -> dict[str, Any] | None:
    """The reported environment (key, hit, tool, build time, frozen pins), when an object."""
    return dict(value) if isinstance(value, dict) and value else None


def error_summary(error: Any, reason: Any) -> str | None:
    """The error a task records: the reported error, led by the reason when it adds one."""
    text = str(error) if error else ""
    why = str(reason) if reason else ""
    if why and why not in text:
        return f"{why}: {text}" if text else why
    return text or None
