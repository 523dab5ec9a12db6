"""The job a worker runs for a task: `workers.job.run_task(payload)`.

Steps, each named in the error when it fails: checkout -> environment -> inputs -> run ->
outputs. The worker talks only to Redis (reports, logs, the abort flag) and blob storage
(inputs, outputs); the scheduler applies the reports to the store. Heavy imports stay out of
the worker's parent: this module is imported by the forked work horse.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from secrets import token_hex
from typing import TYPE_CHECKING, Any

from orchestrator.queue import keys, reports

if TYPE_CHECKING:
    from redis import Redis

    from orchestrator.settings import Settings
    from orchestrator.storage import BlobStore
    from workers.envs import EnvLease
    from workers.sandbox_exec import Confinement

HEARTBEAT_EVERY_S = 20.0
ABORT_GRACE_S = 30.0  # spec.DEFAULT_ABORT_GRACE_S, for payloads queued before it existed
LOG_STREAM_MAXLEN = 10_000
LOG_STREAM_MAX_BYTES = 16 * 1024 * 1024
"""The most a task's live log holds in Redis; past it the live log stops with a note, and the
whole log is `output.log` in storage. A job's output cannot fill Redis."""
LOG_LINE_MAX_BYTES = 16 * 1024
"""A longer line is cut in the live log (never in `output.log`)."""
LOG_STREAM_TTL_S = 7 * 86400
"""A live log expires this long after its last line, even when its worker dies; `output.log`
in storage stays."""
ERROR_TAIL_LINES = 20
MLFLOW_STORE = "mlruns"
"""The MLflow file store a job gets under its output folder when its task sets no tracking
URI; read (not uploaded as it is) after the run."""
JOB_API_DIR = Path(__file__).resolve().parent / "jobapi"
"""A folder holding only `retrain_run.py` (stdlib only): prepended to every job's PYTHONPATH,
so `import retrain_run` works in any job without installing anything into its environment."""
REPORT_RETRY_MIN_S = 60.0
"""The least time a finished run's report is retried while Redis is unreachable."""


_TASK_ID = re.compile(r"[0-9a-f]{32}")


class StepFailed(Exception):
    """A step before the user's code failed; the task fails with the step named."""

    def __init__(self, step: str, error: BaseException | str) -> None:
        self.step = step
        super().__init__(f"{step} failed: {error}")


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ job entry point. Never raises for a failure of the task itself: every outcome is
    reported (and returned), so RQ's own failure handling is not needed for tasks."""
    from rq import get_current_job

    from orchestrator.queue import signing
    from orchestrator.queue.rqjobs import RefusedJob
    from orchestrator.settings import Settings

    settings = Settings.load()
    refusal = signing.check_payload(settings.worker_secret, payload)
    if refusal:  # nothing of it runs: the job fails in RQ with the reason
        raise RefusedJob(f"refused task {str(payload.get('task_id'))[:64]!r}: {refusal}")
    if not _TASK_ID.fullmatch(str(payload.get("task_id"))):  # it names folders below
        raise RefusedJob(f"refused task id {str(payload.get('task_id'))[:64]!r}: not a task id")
    job = get_current_job()
    redis: Redis = job.connection if job is not None else _redis(settings)
    worker = (job.worker_name if job is not None else None) or socket.gethostname()
    runner = Job(payload, settings, redis, worker)
    if threading.current_thread() is threading.main_thread():
        # The worker stopping for good (a second SIGTERM, or --abort-on-stop) signals the
        # work horse: stop the user's processes gracefully and let the task go back.
        signal.signal(signal.SIGTERM, lambda _signum, _frame: runner.release())
    return runner.run()


def _redis(settings: Settings) -> Redis:
    from orchestrator.queue.connection import client

    return client(settings)


def _executions(cache: Path) -> Path:
    """The folder of this worker's executions (`Job._make_workdir`): `cache/work` for a
    `--job-user` worker's, `cache/work/private` (0700) for jobs run as the worker's user."""
    from workers import sandbox

    work = cache / "work"
    return work if os.environ.get(sandbox.JOB_USER_ENV) else work / "private"


class Job:
    def __init__(
        self, payload: Mapping[str, Any], settings: Settings, redis: Redis, worker: str
    ) -> None:
        self.payload = payload
        self.settings = settings
        self.redis = redis
        self.worker = worker
        self.task_id = str(payload["task_id"])
        self.attempt = int(payload.get("attempt") or 0)
        execution = payload.get("execution")
        self.execution = str(execution) if execution else None
        """Which execution of the attempt this is (`tasks.views.execution_id`): in every report."""
        self.spec: dict[str, Any] = dict(payload["spec"])
        self.cache = settings.resolved_cache_dir
        # One folder per execution: a worker back from the dead never shares (or deletes) the
        # folder of the attempt that replaced it, nor does a replayed copy of this payload
        # (Redis access alone can push one) running beside it on the same host.
        self.workdir = _executions(self.cache) / f"{self.task_id}.{self.attempt}.{token_hex(4)}"
        self.abort = threading.Event()
        self.released = threading.Event()
        """Set when the worker stops before the task ended: no final report; the worker
        sends `released` and the task goes back to its queue."""
        self.superseded = threading.Event()
        """Set when the scheduler gave the task to a newer attempt (see `keys.fence_key`):
        the job stops and reports nothing more."""
        self._stop = threading.Event()
        self._log_file: Any = None
        self._mlflow_external: re.Pattern[str] | None = None
        self._streamed = 0
        """Bytes of log lines sent to the live log so far."""
        self.environment: dict[str, Any] = {}
        self.channel: Any = None
        """The job API's channel (`workers.channel.Channel`) while the user's code runs."""
        self._env_lease: EnvLease | None = None
        self._trees: set[Path] = set()
        """Model folders uploaded as one tar each."""
        # Three beats per TTL: one lost message never makes a healthy job look dead.
        self._beat_every = min(HEARTBEAT_EVERY_S, settings.heartbeat_ttl_s / 3)

    # -- the whole job ---------------------------------------------------------------------

    def release(self) -> None:
        """Stop for the worker's shutdown (the task is not at fault)."""
        self.released.set()
        self.abort.set()

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        if self._fenced():
            return {"status": "superseded", "attempt": self.attempt}
        self._send(reports.started(self.task_id, self.worker, self.attempt))
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        result: dict[str, Any]
        try:
            result = self._steps()
        except StepFailed as exc:
            result = {"status": "failed", "exit_code": None, "error": str(exc), "reason": exc.step}
        finally:
            self._stop.set()
            if self.channel is not None:
                self.channel.stop()
            beat.join(timeout=5)
            if self._log_file is not None:
                self._log_file.close()
            if self._env_lease is not None:
                self._env_lease.release()  # only now may the cache evict the environment
        result["duration_s"] = round(time.monotonic() - started, 3)
        result["environment"] = self.environment
        self._end_log(result)
        if self.released.is_set():
            # The worker reports `released` once this work horse has exited.
            shutil.rmtree(self.workdir, ignore_errors=True)
            return {**result, "status": "released"}
        if self.superseded.is_set():
            shutil.rmtree(self.workdir, ignore_errors=True)
            return {**result, "status": "superseded"}
        self._send_patiently(
            reports.finished(
                self.task_id,
                self.worker,
                str(result["status"]),
                exit_code=result.get("exit_code"),
                error=result.get("error"),
                duration_s=result["duration_s"],
                metrics=result.get("metrics"),
                models=result.get("models") or (),
                artifacts=result.get("artifacts") or (),
                environment=self.environment,
                reason=result.get("reason"),
                attempt=self.attempt,
                series=result.get("series"),
                logged_params=result.get("logged_params"),
            )
        )
        shutil.rmtree(self.workdir, ignore_errors=True)
        return result

    def _steps(self) -> dict[str, Any]:
        from orchestrator import templating
        from workers.runner import run_process

        source = self._step("checkout", self._checkout)
        python = self._step("environment", self._environment)
        inputs = self._step("inputs", self._inputs)
        outputs = self.workdir / "outputs"
        (outputs / "models").mkdir(parents=True, exist_ok=True)
        params = dict(self.payload.get("parameters") or {})
        env = self._env(python, params, inputs, outputs)
        context = {f"params.{k}": v for k, v in params.items()}
        context.update({f"inputs.{k}": str(v) for k, v in inputs.items()})
        args = [
            templating.render(a, context, where=f"args[{i}]")
            for i, a in enumerate(self.spec.get("args") or [])
        ]
        entry = self.spec["entry"]
        argv = (
            [python, entry["script"]] if entry.get("script") else [python, "-m", entry["module"]]
        ) + args
        cwd = source / self.spec.get("working_dir", ".")
        confine = self._sandbox(python, source, inputs, outputs)
        self._log_file = (self.workdir / "output.log").open("w", encoding="utf-8")
        from workers.channel import Channel

        self.channel = Channel(
            Path(env["RETRAIN_RUN_CHANNEL"]),
            self.task_id,
            self.redis,
            lambda note: self._log_line("retrain", note),
        )
        self.channel.start()
        # A process that cannot start (its working folder gone at the frozen commit, an
        # interpreter it may not execute) fails the task like a step, never run_task itself:
        # else no report would end the run and its folder would stay.
        run = self._step(
            "process",
            lambda: run_process(
                argv,
                env=env,
                cwd=cwd,
                timeout_s=float(self.spec["timeout_s"]),
                on_line=self._log_line,
                abort=self.abort,
                grace_s=float(self.spec.get("abort_grace_s", ABORT_GRACE_S)),
                sandbox=confine,
            ),
        )
        self.channel.finish("released" if self.released.is_set() else run.status)
        # output.log stays open while the outputs are read: what is skipped there (a link out
        # of the folder, a sparse file) is said in it; `_outputs` closes it before its upload.
        metrics, models, artifacts = self._step("outputs", lambda: self._outputs(outputs))
        from orchestrator.queue.reports import MAX_SERIES_POINTS

        # metrics.json (the file protocol) wins over a series of the same name: it is what
        # the code chose to report as the run's result.
        metrics = {**self.channel.last_values(), **metrics}
        status = {
            "completed": "completed",
            "failed": "failed",
            "aborted": "aborted",
            "timeout": "failed",
        }[run.status]
        error = None
        if run.status == "timeout":
            error = f"timeout after {self.spec['timeout_s']} s"
        elif run.status == "failed":
            error = f"exit code {run.exit_code}; last lines:\n" + "\n".join(
                run.tail[-ERROR_TAIL_LINES:]
            )
        elif run.status == "aborted":
            error = "aborted"
        return {
            "status": status,
            "exit_code": run.exit_code,
            "error": error,
            "reason": "timeout" if run.status == "timeout" else None,
            "metrics": metrics,
            "models": models,
            "artifacts": artifacts,
            "series": self.channel.report_series(MAX_SERIES_POINTS),
            "logged_params": dict(self.channel.defaults),
        }

    def _step(self, name: str, action: Callable[[], Any]) -> Any:
        if self.released.is_set():
            raise StepFailed(name, "the worker is stopping")
        try:
            return action()
        except StepFailed:
            raise
        except Exception as exc:
            raise StepFailed(name, exc) from exc

    # -- steps -----------------------------------------------------------------------------

    def _checkout(self) -> Path:
        from orchestrator.git import Mirror
        from workers.checkout import checkout

        self._make_workdir()
        return checkout(
            Mirror(self.cache / "git"),
            self.spec["repo"],
            self.spec["commit"],
            self.spec.get("diff"),
            self.workdir / "src",
        )

    def _make_workdir(self) -> None:
        """The execution's folder, new (its name is this execution's own). 0700 unless a
        `--job-user` must reach its outputs: what a job running as the worker's user (root
        above all) makes there with its umask would be readable by any local user.

        `cache/work` is 0711 (a job user passes through it, lists nothing); the executions
        of jobs that run as the worker's user are in `cache/work/private` (0700). A root job
        owns its own folder, a writable mount, so it can chmod it (Landlock does not govern
        chmod) and leave a setuid file there; `private` is outside its mounts, read-only to
        it, and no other worker sharing this cache changes it (a `--job-user` worker makes
        `cache/work` 0711 for its own jobs)."""
        from workers import sandbox

        work = self.cache / "work"
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o711)
        if os.environ.get(sandbox.JOB_USER_ENV):
            self.workdir.mkdir()
        else:
            self.workdir.parent.mkdir(mode=0o700, exist_ok=True)
            self.workdir.parent.chmod(0o700)
            self.workdir.mkdir(mode=0o700)

    def _environment(self) -> str:
        from workers import sandbox
        from workers.envs import EnvCache

        # Wheels only unless the operator allows builds; either way the steps that may run a
        # package's code are confined as a job is, writing only the new environment.
        hidden = sandbox.hidden_for(self.settings.home, self.cache, self.settings.storage_url)
        cache = EnvCache(
            self.cache / "envs",
            max_envs=self.settings.env_cache_max_count,
            max_bytes=self.settings.env_cache_max_bytes,
            allow_builds=sandbox.allow_builds(),
            confine=lambda writable: sandbox.confinement(
                sandbox.build_policy(writable=writable, hidden=hidden)
            ),
        )
        # Held until the job ends (see `run`), so no other job's build evicts it mid-run.
        self._env_lease = cache.acquire(
            list(self.spec.get("requirements") or []), python=self.spec.get("python")
        )
        result = self._env_lease.result
        # Recorded on the task: what the run ran in, whether the cache had it, and how long
        # this job waited for another job's build of it.
        self.environment = {
            "key": result.key,
            "hit": result.hit,
            "tool": result.tool,
            "build_seconds": round(result.build_seconds, 3),
            "waited_s": round(result.waited_seconds, 3),
            "frozen": list(result.frozen),
        }
        return str(result.python)

    def _inputs(self) -> dict[str, Path]:
        from orchestrator.datasets.materialize import materialize
        from orchestrator.storage import open_cache

        found: dict[str, Path] = {}
        for name, ref in (self.payload.get("inputs") or {}).items():
            found[name] = materialize(
                self._blobs(), open_cache(self.settings, self._blobs()), ref["manifest_sha256"]
            )
        return found

    def _outputs(
        self, outputs: Path
    ) -> tuple[dict[str, float], list[dict[str, Any]], list[dict[str, Any]]]:
        """metrics.json becomes the task's metrics; files under models/ are uploaded and
        registered as the task's models; everything else is uploaded as artifacts."""
        files = output_files(outputs, lambda note: self._log_line("retrain", note))
        store = outputs / MLFLOW_STORE
        if self._mlflow_external is None:
            files = [f for f in files if store not in f.parents]
        metrics: dict[str, float] = {}
        metrics_file = outputs / "metrics.json"
        if metrics_file in files:
            data = json.loads(self._read_output(metrics_file) or b"{}")
            metrics = {
                str(k): float(v)
                for k, v in data.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        logged = dict(self.channel.models) if self.channel is not None else {}
        folders = [
            outputs / rel
            for rel in logged
            if (outputs / "models") in (outputs / rel).parents
            and _real_dir(self.workdir, outputs / rel)
            and _inside(outputs / "models", rel.removeprefix("models/"))
        ]
        models = []
        for folder in folders:  # a model that is a folder (log_model of a directory)
            uri, size = self._upload_tree(folder)
            models.append(self._model(outputs, folder, logged, uri, size))
        for path in files:
            if (outputs / "models") in path.parents and not any(f in path.parents for f in folders):
                if len(models) >= reports.MAX_MODELS:
                    self._log_line("retrain", f"skipped model {path.name}: past the "
                                   f"{reports.MAX_MODELS} models a run registers")
                    continue
                uploaded = self._upload(path)
                if uploaded is not None:
                    models.append(self._model(outputs, path, logged, *uploaded))
        artifacts: list[dict[str, Any]] = []
        beyond = 0
        for path in files:
            if path != metrics_file and (outputs / "models") not in path.parents:
                if len(artifacts) >= reports.MAX_ARTIFACTS - 1:  # output.log comes last
                    beyond += 1  # a report carries no more: uploading them only fills storage
                    continue
                uploaded = self._upload(path)
                if uploaded is not None:
                    artifacts.append(
                        {"path": path.relative_to(outputs).as_posix(), "uri": uploaded[0]}
                    )
        if beyond:
            self._log_line(
                "retrain",
                f"skipped {beyond} more output files past the {reports.MAX_ARTIFACTS} a run "
                "records (put them in one archive or folder model instead)",
            )
        if self._mlflow_external is None:
            found_models, found_artifacts = self._mlflow(store)
            models.extend(found_models)
            artifacts.extend(found_artifacts)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        log = self.workdir / "output.log"
        if log.exists():
            uploaded = self._upload(log)
            if uploaded is not None:
                artifacts.append({"path": "output.log", "uri": uploaded[0]})
        return metrics, models, artifacts

    def _mlflow(self, store: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """What the job's MLflow recorded in its own file store: params (as logged), metric
        series, tags and run ids (on the environment), artifacts and logged models."""
        from workers.mlflowstore import SYSTEM_TAG, read_store

        found = read_store(store)
        if not found.runs and not found.models:
            return [], []
        runs = []
        for run in found.runs:
            for key, value in run.params.items():
                self.channel.defaults.setdefault(key, value)
            for key, points in run.metrics.items():
                self.channel.add_series(key, points)
            tags = {k: v[:1024] for k, v in run.tags.items() if not k.startswith(SYSTEM_TAG)}
            runs.append(
                {
                    "run_id": run.run_id,
                    "experiment_id": run.experiment_id,
                    "name": run.name,
                    "tags": dict(list(tags.items())[:100]),
                }
            )
        self.environment["mlflow"] = {"tracking_uri": "local file store", "runs": runs}
        artifacts = []
        several = len(found.runs) > 1
        for run in found.runs:
            for path in run.artifacts:
                assert run.artifact_root is not None
                relative = path.relative_to(run.artifact_root).as_posix()
                name = f"mlflow/{run.run_id}/{relative}" if several else f"mlflow/{relative}"
                uploaded = self._upload(path)
                if uploaded is not None:
                    artifacts.append({"path": name, "uri": uploaded[0]})
        models = [
            {
                "name": model.name,
                "uri": self._upload_tree(model.folder)[0],
                "metadata": {**model.metadata, "format": "tar"},
            }
            for model in found.models
        ]
        return models, artifacts

    def _model(
        self, outputs: Path, path: Path, logged: Mapping[str, Any], uri: str, size: int
    ) -> dict[str, Any]:
        """A model entry: the name and metadata `log_model` gave, else the file's stem."""
        given = logged.get(path.relative_to(outputs).as_posix()) or {}
        metadata = {
            **(given.get("metadata") or {}),
            "file": path.name,
            "size": size,
        }
        if path in self._trees:
            metadata["format"] = "tar"
        return {"name": given.get("name") or path.stem, "uri": uri, "metadata": metadata}

    def _upload_tree(self, folder: Path) -> tuple[str, int]:
        """A folder as one blob: an uncompressed tar of its regular files, in name order,
        with fixed owners and times, so the same folder is the same blob. Each file is read
        as `_upload` reads one (never through a link). Returns the URI and the files' size."""
        import tarfile

        self._trees.add(folder)
        archive = self.workdir / f"{folder.name}.model.tar"
        size = 0
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in output_files(folder, lambda note: self._log_line("retrain", note)):
                handle = self._open_or_say(path)
                if handle is None:
                    continue
                with handle:
                    info = tar.gettarinfo(
                        arcname=path.relative_to(folder).as_posix(), fileobj=handle
                    )
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mtime = 0
                    size += info.size
                    tar.addfile(info, handle)
        try:
            uploaded = self._upload(archive)
            if uploaded is None:
                raise OSError(f"cannot read back {archive.name}")
            return uploaded[0], size
        finally:
            archive.unlink(missing_ok=True)

    # -- helpers ---------------------------------------------------------------------------

    def _env(
        self, python: str, params: Mapping[str, Any], inputs: Mapping[str, Path], outputs: Path
    ) -> dict[str, str]:
        params_file = self.workdir / "params.json"
        params_file.write_text(json.dumps(params, indent=2))
        from workers.jobenv import job_environment, passed_names

        venv_bin = str(Path(python).parent)
        placed = {
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", os.defpath),
            "VIRTUAL_ENV": str(Path(venv_bin).parent),
            "RETRAIN_TASK_ID": self.task_id,
            "RETRAIN_ATTEMPT": str(self.attempt),
            "RETRAIN_PARAMS_FILE": str(params_file),
            "RETRAIN_OUTPUT_DIR": str(outputs),
            # The job API: `import retrain_run`, talking to this worker through a file it owns
            # (outside the output folder, so it is no artifact).
            "RETRAIN_RUN_CHANNEL": str(self.workdir / "run" / "channel.jsonl"),
            "PYTHONPATH": str(JOB_API_DIR),
            "PYTHONUNBUFFERED": "1",
            # A private tmp, removed with the work folder (the sandbox lets the job write it).
            "TMPDIR": str(self.workdir / "tmp"),
            "TMP": str(self.workdir / "tmp"),
            "TEMP": str(self.workdir / "tmp"),
            # The slot's GPUs (set by the agent); a task's env cannot widen them.
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        }
        from workers import sandbox

        if sandbox.mode() != "off":
            # The worker's home is neither the job's to write nor, where it holds credentials,
            # to read: a home of its own, so libraries that keep caches and settings below ~
            # (huggingface, torch, matplotlib) work. Made by `_sandbox`; gone with the folder.
            placed["HOME"] = str(self.workdir / "home")
        for name, value in params.items():
            placed[f"RETRAIN_PARAM_{_env_name(name)}"] = (
                value if isinstance(value, str) else json.dumps(value)
            )
        for name, path in inputs.items():
            placed[f"RETRAIN_INPUT_{_env_name(name)}"] = str(path)
        env = job_environment(os.environ, self.spec.get("env") or {}, placed, passed=passed_names())
        if "MLFLOW_TRACKING_URI" in env:
            # The team's own MLflow (a server): left alone; its run ids are read from the
            # log (MLflow's "View run ... at: URL" line) and recorded with the URI.
            from orchestrator.redact import redact_url

            self._mlflow_external = re.compile(r"/#/experiments/(\w+)/runs/([0-9a-f]{32})")
            self.environment["mlflow"] = {
                "tracking_uri": redact_url(env["MLFLOW_TRACKING_URI"]),
                "runs": [],
            }
        else:
            # A file store of the run's own, read after the run (workers/mlflowstore.py).
            env["MLFLOW_TRACKING_URI"] = (outputs / MLFLOW_STORE).as_uri()
        return env

    def _sandbox(
        self, python: str, source: Path, inputs: Mapping[str, Path], outputs: Path
    ) -> Confinement | None:
        """What confines the job (`workers.sandbox`): it writes its outputs and
        tmp only; reads its checkout, environment, inputs and its repository's mirror (the
        checkout borrows its objects); never the worker's home, caches or storage."""
        from orchestrator.git import Mirror
        from workers import sandbox

        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        # The job API's channel (RETRAIN_RUN_CHANNEL) is written by the job, in a folder of
        # its own; retrain_run.py itself is read from the worker's package.
        channel = self.workdir / "run"
        channel.mkdir(exist_ok=True)
        home = self.workdir / "home"  # its HOME (`_env`)
        home.mkdir(exist_ok=True)
        hidden = sandbox.hidden_for(self.settings.home, self.cache, self.settings.storage_url)
        policy = sandbox.policy_for(
            workdir=self.workdir,
            writable=[outputs, tmp, channel, home],
            readable=[
                JOB_API_DIR,
                *self._local_blobs(),
                source,
                self.workdir / "params.json",
                Mirror(self.cache / "git").path(self.spec["repo"]),
                *inputs.values(),
            ],
            hidden=hidden,
            python=python,
        )
        return sandbox.confinement(policy)

    def _local_blobs(self) -> list[Path]:
        """Local blob storage, read-only: a job is given models and files by their storage
        URI (an evaluation loads the model a trigger names). Never writable, and the rest of
        the home stays hidden."""
        from urllib.parse import urlsplit

        url = self.settings.storage_url
        if not url.startswith("file:"):
            return []
        blobs = Path(urlsplit(url).path) / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        return [blobs]

    def _log_line(self, stream: str, line: str) -> None:
        if self._log_file is not None:
            self._log_file.write(line + "\n")
        if self._mlflow_external is not None and "/runs/" in line:
            found = self._mlflow_external.search(line)
            runs = self.environment["mlflow"]["runs"]
            if found and len(runs) < 100:
                run = {"experiment_id": found.group(1), "run_id": found.group(2)}
                if run not in runs:
                    runs.append(run)
        if self._streamed > LOG_STREAM_MAX_BYTES:
            return
        data = line.encode("utf-8", "replace")
        if len(data) > LOG_LINE_MAX_BYTES:
            cut = data[:LOG_LINE_MAX_BYTES].decode("utf-8", "ignore")
            line = f"{cut} [{len(data) - len(cut.encode())} bytes cut; whole in output.log]"
        self._streamed += min(len(data), LOG_LINE_MAX_BYTES)
        if self._streamed > LOG_STREAM_MAX_BYTES:
            stream = "retrain"
            line = (
                f"live log stopped at {LOG_STREAM_MAX_BYTES // (1024 * 1024)} MiB; the whole "
                "log is the run's output.log (retrain logs TASK, once the run ends)"
            )
        name = keys.logs_stream(self.task_id)
        pipe = self.redis.pipeline(transaction=False)
        entry = {"stream": stream, "line": line}
        pipe.xadd(name, entry, maxlen=LOG_STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
        pipe.expire(name, LOG_STREAM_TTL_S)  # from the first line: a dead worker's log expires
        pipe.execute()

    def _end_log(self, result: Mapping[str, Any]) -> None:
        """Close the live log: an `end` entry (so `retrain logs -f` asks the store now how the
        run ended) and an expiry; the complete log is the uploaded `output.log` artifact."""
        status = "released" if self.released.is_set() else str(result.get("status"))
        stream = keys.logs_stream(self.task_id)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(
                stream,
                {"stream": "end", "line": status},
                maxlen=LOG_STREAM_MAXLEN,
                approximate=True,
            )
            pipe.expire(stream, LOG_STREAM_TTL_S)
            pipe.execute()
        except Exception:  # noqa: S110 - the log in blob storage is the record
            pass

    def _heartbeat(self) -> None:
        """Liveness for the scheduler, and the abort flag for us, checked every second."""
        last = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                if self.redis.exists(keys.abort_key(self.task_id)):
                    self.abort.set()
                if self._fenced():
                    self.superseded.set()
                    self.abort.set()
                    return
                if time.monotonic() - last >= self._beat_every:
                    self._send(reports.heartbeat(self.task_id, self.worker, self.attempt))
                    last = time.monotonic()
            except Exception:  # noqa: S112 - Redis blips: the next beat retries
                continue

    def _send(self, report: Mapping[str, Any]) -> None:
        """Every report goes through the protocol's builders and `send` (never by hand),
        signed with the worker secret."""
        if self.execution is not None:
            report = {**report, "execution": self.execution}
        reports.send(
            self.redis,
            report,
            secret=self.settings.worker_secret,
            heartbeat_ttl_s=self.settings.heartbeat_ttl_s,
        )

    def _send_patiently(self, report: Mapping[str, Any]) -> None:
        """The run's end, sent again each few seconds while Redis is unreachable (a restart, a
        failover), for up to the heartbeat lifetime, with heartbeats meanwhile: a run that
        finished during an outage is recorded as it ended, not as lost. Past that, the
        error: the scheduler has marked the run lost by then."""
        deadline = time.monotonic() + max(REPORT_RETRY_MIN_S, self.settings.heartbeat_ttl_s)
        while True:
            try:
                self._send(report)
                return
            except Exception:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(2.0)
                with contextlib.suppress(Exception):
                    self._send(reports.heartbeat(self.task_id, self.worker, self.attempt))

    def _fenced(self) -> bool:
        """Whether the scheduler has given this task to another attempt (or ended it)."""
        fence: Any = self.redis.get(keys.fence_key(self.task_id))
        if isinstance(fence, bytes):
            fence = fence.decode(errors="replace")
        return fence is not None and fence != str(self.attempt)

    def _blobs(self) -> BlobStore:
        if not hasattr(self, "_blob_store"):
            from orchestrator.storage import open_storage

            self._blob_store = open_storage(self.settings)
        return self._blob_store

    def _open_or_say(self, path: Path) -> Any:
        """`path` below the work folder opened for reading as `open_output` does, or None
        (said in the run's log) when it is a link out of the output folder or no regular
        file (anything may have been put in its place since the listing)."""
        try:
            return os.fdopen(open_output(self.workdir, path, self.workdir / "outputs"), "rb")
        except OSError as exc:
            shown = (
                path.relative_to(self.workdir / "outputs")
                if (self.workdir / "outputs") in path.parents
                else path.name
            )
            why = (
                "a link out of the output folder"
                if exc.errno == errno.ELOOP
                else (exc.strerror or str(exc))
            )
            self._log_line("retrain", f"skipped {shown}: {why}")
            return None

    def _read_output(self, path: Path) -> bytes | None:
        handle = self._open_or_say(path)
        if handle is None:
            return None
        with handle:
            return bytes(handle.read())

    def _upload(self, path: Path) -> tuple[str, int] | None:
        """Upload the file at `path` (below the work folder, never through a link: see
        `open_output`); its URI and size, or None when it was skipped (and said)."""
        import hashlib

        from orchestrator.storage.base import CHUNK, blob_key

        handle = self._open_or_say(path)
        if handle is None:
            return None
        with handle:
            digest = hashlib.sha256()
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
            sha = digest.hexdigest()
            # The storage reads the very file hashed, through its descriptor (which no
            # rename or link can redirect); a change in between fails the upload.
            self._blobs().put_file(sha, _fd_path(handle.fileno()))
            size = os.fstat(handle.fileno()).st_size
        return f"{self.settings.storage_url.rstrip('/')}/{blob_key(sha)}", size


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
SPARSE_FROM_BYTES = 1024 * 1024
"""An output this long or longer with under half of it on disk is a sparse file: skipped."""


def _fd_path(fd: int) -> Path:
    """A path that opens the file `fd` is open on, whatever its name is now."""
    proc = Path(f"/proc/self/fd/{fd}")
    return proc if proc.parent.is_dir() else Path(f"/dev/fd/{fd}")


def open_output(root: Path, path: Path, links_within: Path | None = None) -> int:
    """A read-only descriptor of `path`, a regular file below `root` (a folder the worker
    made), reached without following any link: every folder on the way is opened relative
    to the one before with O_NOFOLLOW, and the file must be a regular one (fstat). A link
    at the end is followed only when it names, lexically, a file below `links_within` that
    is reached the same way (one link, never a chain). OSError otherwise: ELOOP for a link."""
    parts = path.relative_to(root).parts
    if not parts or any(part in (".", "..") for part in parts):
        raise OSError(errno.EINVAL, "not a file below the work folder", str(path))
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _FOLDER, dir_fd=folder)
            os.close(folder)
            folder = inner
        mode = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode) and links_within is not None:
            target = Path(os.path.normpath(path.parent / os.readlink(parts[-1], dir_fd=folder)))
            if links_within in target.parents:
                return open_output(root, target)
        if stat.S_ISLNK(mode):
            raise OSError(errno.ELOOP, "a link", str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        fd = os.open(
            parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder
        )
    finally:
        os.close(folder)
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    if found.st_size >= SPARSE_FROM_BYTES and found.st_blocks * 512 < found.st_size // 2:
        # A hole costs the job nothing and the worker a full read and a full blob.
        os.close(fd)
        raise OSError(
            errno.EFBIG,
            f"a sparse file ({found.st_size} bytes long, {found.st_blocks * 512} on disk)",
            str(path),
        )
    os.set_blocking(fd, True)
    return fd


def _real_dir(root: Path, path: Path) -> bool:
    """Whether `path` is a folder below `root` reached without following any link."""
    try:
        parts = path.relative_to(root).parts
        folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (ValueError, OSError):
        return False
    try:
        for part in parts:
            if part in (".", ".."):
                return False
            inner = os.open(part, _FOLDER, dir_fd=folder)
            os.close(folder)
            folder = inner
    except OSError:
        return False
    finally:
        os.close(folder)
    return True


def output_files(root: Path, say: Callable[[str], None]) -> list[Path]:
    """The regular files below `root`, sorted, found without following any link: the job is
    user code and could point a link at any file of the worker's host. Folders are opened
    relative to their parent with O_NOFOLLOW and listed from their descriptor. A link that
    names (lexically) a regular file below `root` counts as that file; any other link, and
    anything not a regular file or folder (a fifo, a socket), is skipped and said in the log.
    Files are read later with `open_output`, under the same rule."""
    found: list[Path] = []
    links: list[Path] = []
    try:
        top = os.open(root, _FOLDER)
    except OSError:
        return []

    def walk(folder: int, at: Path) -> None:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
        for entry in entries:
            path = at / entry.name
            if entry.is_symlink():
                links.append(path)
            elif entry.is_dir(follow_symlinks=False):
                try:
                    inner = os.open(entry.name, _FOLDER, dir_fd=folder)
                except OSError:
                    say(f"skipped {path.relative_to(root)}: not readable")
                    continue
                try:
                    walk(inner, path)
                finally:
                    os.close(inner)
            elif entry.is_file(follow_symlinks=False):
                found.append(path)
            else:
                say(f"skipped {path.relative_to(root)}: not a regular file")

    try:
        walk(top, root)
    finally:
        os.close(top)
    for link in links:
        try:
            os.close(open_output(root, link, root))
        except (OSError, ValueError):
            say(f"skipped {link.relative_to(root)}: a link out of the output folder")
            continue
        found.append(link)
    return sorted(found)


def _inside(root: Path, relative: str) -> bool:
    """Whether `relative` (a path the job named) stays inside `root`, links resolved."""
    real = root.resolve()
    target = (root / relative).resolve()
    return target == real or real in target.parents


def _env_name(name: str) -> str:
    """`General/dataset_id` -> `GENERAL_DATASET_ID`."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper()
