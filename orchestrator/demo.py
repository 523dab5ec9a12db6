"""`python -m orchestrator.demo` (`make demo`): the whole retraining loop, for real.

1. A training project (orchestrator/demo_project: a scikit-learn occupancy classifier with
   pinned requirements) goes into a fresh git repository and is registered as the template
   tasks `dataset_blogpost/training` and `dataset_blogpost/evaluation`.
2. `retrain up` starts the embedded Redis, the scheduler and one local worker, with the
   repository's own triggers.yaml: a Production-tagged version of a dataset in
   `dataset_blogpost` starts a training run; the model it registers starts an evaluation.
3. Synthetic sensor data is versioned as `dataset_blogpost/occupancy` 1.0.0 and tagged
   Production; the trigger fires, the worker checks out the code, builds the environment,
   trains, and the chained evaluation runs.
4. A second labelled batch becomes 1.0.1 (parent 1.0.0), tagged Production: the loop runs
   again, this time in the cached environment.
5. A table of what happened (version, training run, accuracy, model, evaluation, timings),
   then `retrain status`.

Every `retrain` command a user would type is printed with its output. Without
`RETRAIN_HOME` everything happens in a temporary folder, removed at the end unless `--keep`
is given (other `RETRAIN_*` settings are then ignored, so nothing real is touched).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.demo_data import write_batch

PROJECT, NAME = "dataset_blogpost", "occupancy"
ROWS_PER_BATCH = 600
PROJECT_FILES = Path(__file__).with_name("demo_project")
TRIGGERS = Path(__file__).parents[1] / "triggers.yaml"
WAIT_S = 240.0
"""How long one run may take before the demo gives up (a cold environment build included)."""


class StepFailed(Exception):
    """A command exited non-zero, or a run did not end `completed`."""


@dataclass
class Round:
    """One dataset version and the runs it started."""

    version: str
    version_id: str
    tagged_at: float
    training: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    model: str = "-"
    curve: str = "-"
    """The training's live series `val/accuracy` (the job API) as a sparkline."""


class Demo:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.cwd = root / "work"
        self.cwd.mkdir(parents=True, exist_ok=True)
        script = Path(sys.executable).with_name("retrain")
        fallback = [sys.executable, "-c", "from orchestrator.cli import main; main()"]
        self.command = [str(script)] if script.exists() else fallback
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"\n# [{elapsed:5.1f} s] {text}", flush=True)

    def retrain(self, *args: str, echo: bool = True, cwd: Path | None = None) -> str:
        """Run `retrain ARGS`; echo it and its output unless quiet. Returns stdout."""
        if echo:
            print(f"$ {shlex.join(['retrain', *args])}", flush=True)
        done = subprocess.run(
            [*self.command, *args],
            cwd=cwd or self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if echo:
            for stream in (done.stdout, done.stderr):
                if stream.strip():
                    print(stream.rstrip(), flush=True)
        if done.returncode != 0:
            if not echo:
                print(done.stderr.rstrip(), file=sys.stderr)
            raise StepFailed(f"`retrain {shlex.join(args)}` exited {done.returncode}")
        return done.stdout.strip()

    def json(self, *args: str) -> Any:
        return json.loads(self.retrain(*args, "--json", echo=False))


def make_repository(demo: Demo) -> Path:
    """The demo project in a git repository of its own, as a user's project would be."""
    repo = demo.root / "occupancy-project"
    shutil.copytree(PROJECT_FILES, repo, ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        **demo.env,
        "GIT_AUTHOR_NAME": "demo",
        "GIT_AUTHOR_EMAIL": "demo@retrain.invalid",
        "GIT_COMMITTER_NAME": "demo",
        "GIT_COMMITTER_EMAIL": "demo@retrain.invalid",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "occupancy"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    return repo


def start_up(demo: Demo) -> subprocess.Popen[bytes]:
    """`retrain up` in the background (its log in up.log), once its daemons report healthy."""
    log = (demo.root / "up.log").open("wb")
    argv = [*demo.command, "up", "--triggers", str(demo.cwd / "triggers.yaml"), "--gpus", "all"]
    if os.geteuid() == 0 and not os.environ.get("RETRAIN_JOB_USER"):
        # Run as root (a container, a fresh VM): its jobs, this demo's own, run as root too,
        # which `up` does only when told; a shared machine's workers name --job-user.
        argv.append("--allow-root")
    print(f"$ {shlex.join(['retrain', *argv[len(demo.command) :]])} &   # log: {log.name}")
    proc = subprocess.Popen(argv, cwd=demo.cwd, env=demo.env, stdout=log, stderr=log)
    log.close()
    try:
        _wait_healthy(demo, proc, log.name)
    except BaseException:
        stop_up(demo, proc)  # given up on, or interrupted: `up` must not outlive the demo
        raise
    return proc


def _wait_healthy(demo: Demo, proc: subprocess.Popen[bytes], log: str) -> None:
    deadline = time.monotonic() + 60
    for role in ("scheduler", "worker"):
        while True:
            if proc.poll() is not None:
                print((demo.root / "up.log").read_text(), file=sys.stderr)
                raise StepFailed(f"retrain up exited with code {proc.returncode}")
            probe = subprocess.run(
                [*demo.command, "health", role], env=demo.env, capture_output=True, check=False
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise StepFailed(f"retrain up: no healthy {role} after 60 s; see {log}")
            time.sleep(0.2)


def stop_up(demo: Demo, proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, a second one (running jobs go back to their queue), then SIGKILL: `up`'s
    children end with it (their lifeline), so the demo never leaves anything running."""
    for signum in (signal.SIGINT, signal.SIGINT, signal.SIGKILL):
        if proc.poll() is not None:
            return
        proc.send_signal(signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)


def wait_for_run(
    demo: Demo, name: str, version_id: str, seen: set[str], what: str
) -> dict[str, Any]:
    """The run of template `name` a trigger started for `version_id`, once it has ended."""
    deadline = time.monotonic() + WAIT_S
    run_id: str | None = None
    status = ""
    while time.monotonic() < deadline:
        if run_id is None:
            for row in demo.json("task", "list", "--project", PROJECT, "--tag", "auto"):
                if row["name"] != name or row["id"] in seen:
                    continue
                shown = demo.json("task", "show", row["id"])
                if shown["parameters"].get("General/dataset_id") == version_id:
                    run_id = row["id"]
                    seen.add(run_id)
                    print(f"  {what}: trigger {shown['trigger']} started run {run_id}")
                    break
        if run_id is not None:
            shown = demo.json("task", "show", run_id)
            if shown["status"] != status:
                status = shown["status"]
                print(f"  {what}: {status}", flush=True)
            if status in ("completed", "failed", "aborted"):
                if status != "completed":
                    demo.retrain("task", "show", run_id)
                    demo.retrain("logs", run_id, "--tail", "30")
                    raise StepFailed(f"{what} run {run_id} ended {status}")
                return dict(shown)
        time.sleep(0.3)
    raise StepFailed(f"{what} for {version_id}: not finished after {WAIT_S:.0f} s")


def version(demo: Demo, data: Path, number: int, parent: str | None) -> Round:
    write_batch(data, rows=ROWS_PER_BATCH, seed=number, name=f"batch_{number:03d}")
    create = ["dataset", "create", "--project", PROJECT, "--name", NAME]
    if parent is None:
        version_id = demo.retrain(*create, "--description", "labelled batch 1")
        demo.retrain("dataset", "add", "--files", "data")
    else:
        version_id = demo.retrain(
            *create, "--parents", parent, "--description", f"labelled batches 1-{number}"
        )
        demo.retrain("dataset", "sync", "--folder", "data")
    demo.retrain("dataset", "close")
    tagged_at = time.time()
    demo.retrain("dataset", "tag", version_id, "Production")
    shown = demo.json("dataset", "show", version_id)
    return Round(shown["version"]["version"], version_id, tagged_at)


def follow(demo: Demo, current: Round, seen: set[str]) -> None:
    current.training = wait_for_run(demo, "training", current.version_id, seen, "training")
    for model in demo.json("model", "list", "--project", PROJECT):
        if model["task_id"] == current.training["id"]:
            current.model = f"{model['name']} {model['id'][:8]}"
    series = demo.json("metrics", current.training["id"])["series"].get("val/accuracy")
    if series:
        from orchestrator.cli.metrics import sparkline

        points = [p[1] for p in series["points"]]
        current.curve = f"{sparkline(points, 12)} {series['min']:.3f}..{series['max']:.3f}"
    current.evaluation = wait_for_run(demo, "evaluation", current.version_id, seen, "evaluation")


def run(demo: Demo) -> list[Round]:
    demo.say("a training project in a git repository of its own (from orchestrator/demo_project)")
    repo = make_repository(demo)
    print(f"  {repo}: {', '.join(sorted(p.name for p in repo.iterdir() if p.is_file()))}")

    demo.say("register it as two template tasks (the worker will check out this commit)")
    demo.retrain("task", "create", "-f", str(repo / "task.yaml"), cwd=repo)
    demo.retrain("task", "create", "-f", str(repo / "evaluate.yaml"), cwd=repo)

    demo.say("the repository's triggers.yaml: retrain on Production data, evaluate new models")
    shutil.copy(TRIGGERS, demo.cwd / "triggers.yaml")
    demo.retrain("triggers", "check", "triggers.yaml")

    demo.say("start everything on this machine: embedded Redis, scheduler, one worker")
    up = start_up(demo)
    rounds: list[Round] = []
    seen: set[str] = set()
    try:
        data = demo.cwd / "data"
        demo.say("batch 1 of labelled sensor data becomes dataset version 1.0.0, tagged Production")
        rounds.append(version(demo, data, 1, None))
        demo.say("the trigger fires; the worker builds the environment (cold), trains, evaluates")
        follow(demo, rounds[-1], seen)
        assert rounds[-1].training is not None
        demo.retrain("logs", rounds[-1].training["id"], "--tail", "6")
        demo.retrain("metrics", rounds[-1].training["id"])

        demo.say("a second labelled batch: version 1.0.1 (parent 1.0.0), tagged Production")
        rounds.append(version(demo, data, 2, rounds[0].version_id))
        demo.say("the loop runs again, in the cached environment this time")
        follow(demo, rounds[-1], seen)

        demo.say("what happened")
        print_table(rounds)
        demo.say("and what `retrain status` shows (try `retrain status --watch` while it runs)")
        demo.retrain("status")
    finally:
        stop_up(demo, up)
    return rounds


def print_table(rounds: Sequence[Round]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in (
        "dataset version",
        "training run",
        "accuracy",
        "model",
        "environment",
        "tag -> start",
        "training",
        "evaluation run",
        "eval accuracy",
        "accuracy as trees grew (live)",
    ):
        table.add_column(column)
    for r in rounds:
        train, evaluation = r.training or {}, r.evaluation or {}
        environment = train.get("environment") or {}
        env_text = (
            "cache hit"
            if environment.get("hit")
            else f"built in {environment.get('build_seconds', 0):.1f} s"
        )
        started = _timestamp(train.get("started_at"))
        table.add_row(
            f"{NAME} {r.version}",
            str(train.get("id", "-"))[:12],
            _metric(train, "accuracy"),
            r.model,
            env_text,
            f"{started - r.tagged_at:.1f} s" if started else "-",
            f"{train.get('duration_s') or 0:.1f} s",
            str(evaluation.get("id", "-"))[:12],
            _metric(evaluation, "eval_accuracy"),
            r.curve,
        )
    Console(soft_wrap=True, width=200).print(table)


def _metric(run: dict[str, Any], name: str) -> str:
    value = (run.get("metrics") or {}).get(name)
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(str(value)).timestamp()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    user_home = os.environ.get("RETRAIN_HOME")
    root = Path(tempfile.mkdtemp(prefix="retrain-demo-"))
    env = {k: v for k, v in os.environ.items() if user_home or not k.startswith("RETRAIN_")}
    env["RETRAIN_HOME"] = user_home or str(root / "home")
    print(f"# RETRAIN_HOME={env['RETRAIN_HOME']}" + ("" if user_home else " (temporary)"))
    demo = Demo(root, env)
    code = 0
    # SIGTERM (a CI runner, `timeout`) ends the demo through its `finally`s, like Ctrl-C:
    # `retrain up` is stopped and the temporary folder removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        run(demo)
        demo.say("done")
    except (StepFailed, subprocess.CalledProcessError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        log = root / "up.log"
        if log.exists():
            print(f"--- {log} (last lines) ---", file=sys.stderr)
            print("\n".join(log.read_text().splitlines()[-40:]), file=sys.stderr)
        code = 1
    finally:
        if args.keep:
            print(f"\n# kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            print(f"\n# removed {root} (run with --keep to look around)")
    return code


if __name__ == "__main__":
    sys.exit(main())
