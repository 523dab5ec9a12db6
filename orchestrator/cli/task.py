"""`retrain task ...`: register templates, clone them with overrides, queue runs."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli import output
from orchestrator.cli.context import runtime
from orchestrator.errors import UserError

app = typer.Typer(
    suggest_commands=False,
    help="Register template tasks, clone them with overrides, queue runs.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Params = Annotated[
    list[str],
    typer.Option(
        "--param", help="SECTION/NAME=VALUE (several allowed), e.g. General/dataset_id=ID."
    ),
]
Inputs = Annotated[
    list[str],
    typer.Option("--input", help="NAME=DATASET_VERSION_ID or NAME=${params.SECTION/NAME}."),
]
Tags = Annotated[list[str], typer.Option("--tags", help="Tags (several allowed).")]
Queue = Annotated[str | None, typer.Option("--queue", help="Queue name, e.g. gpu.")]
AbortGrace = Annotated[
    str,
    typer.Option("--abort-grace", help="SIGTERM to SIGKILL on abort or timeout, e.g. 30s, 2m."),
]
Retries = Annotated[
    int,
    typer.Option("--retries", min=0, max=10, help="Re-queue this often if the worker is lost."),
]
PriorityOpt = Annotated[
    str | None,
    typer.Option("--priority", help="high, normal or low (high runs before normal before low)."),
]
AllowNew = Annotated[
    bool,
    typer.Option(
        "--allow-new-params", help="Allow overriding parameters the template does not have."
    ),
]


EnvNotSecret = Annotated[
    list[str],
    typer.Option(
        "--env-not-secret",
        metavar="NAME",
        help="An --env NAME that looks like a credential's but is not (repeatable).",
    ),
]


def _definition(options: Mapping[str, Any]) -> Any:
    """A `TaskDefinition` from a command's options (its parameters, by name): `create` and
    `capture` take the same ones."""
    from pydantic import ValidationError

    from orchestrator.tasks.params import parse_inputs, parse_params, split_assignment
    from orchestrator.tasks.spec import DEFAULT_QUEUE, TaskDefinition

    missing = [flag for flag in ("--project", "--name", "--repo") if not options[flag[2:]]]
    if missing:
        raise UserError(f"{', '.join(missing)}: required (or give the task as -f task.yaml)")
    plain = (
        "project",
        "name",
        "repo",
        "branch",
        "commit",
        "working_dir",
        "script",
        "module",
        "requirements",
        "resolve",
        "python",
        "gpus",
        "timeout",
        "abort_grace",
        "retries",
        "tags",
        "comment",
    )
    values: dict[str, Any] = {key: options[key] for key in plain}
    values.update(
        {
            "args": [word for text in options["args"] for word in shlex.split(text)],
            "env": dict(split_assignment(e, "--env") for e in options["env"]),
            "env_not_secret": list(options["env_not_secret"]),
            "params": parse_params(options["params"]),
            "inputs": parse_inputs(options["inputs"]),
            "queue": options["queue"] or DEFAULT_QUEUE,
            "type": options["task_type"],
        }
    )
    try:
        return TaskDefinition.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "--" + "-".join(str(p) for p in first["loc"][:1]).replace("_", "-")
        message = str(first["msg"]).removeprefix("Value error, ")
        raise UserError(f"{field}: {message}") from None


def _from_file(path: Path) -> Any:
    from orchestrator.tasks.spec import TaskDefinition
    from orchestrator.yamlfile import load

    document = load(path)
    return document.validate(TaskDefinition)


@app.command()
def create(
    file: Annotated[
        Path | None, typer.Option("-f", "--file", help="Read the task from a task.yaml.")
    ] = None,
    project: Annotated[str | None, typer.Option("--project")] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    repo: Annotated[str | None, typer.Option("--repo", help="Git URL or local path.")] = None,
    branch: Annotated[str | None, typer.Option("--branch")] = None,
    commit: Annotated[str | None, typer.Option("--commit")] = None,
    working_dir: Annotated[str, typer.Option("--working-dir")] = ".",
    script: Annotated[str | None, typer.Option("--script", help="Path in the repo.")] = None,
    module: Annotated[str | None, typer.Option("--module", help="Run as python -m.")] = None,
    args: Annotated[
        list[str],
        typer.Option("--args", help="Arguments, split like a shell would (no shell runs)."),
    ] = [],  # noqa: B006
    env: Annotated[list[str], typer.Option("--env", help="NAME=VALUE (no secrets).")] = [],  # noqa: B006
    env_not_secret: EnvNotSecret = [],  # noqa: B006
    requirements: Annotated[
        str | None, typer.Option("--requirements", help="Pinned requirements file.")
    ] = None,
    resolve: Annotated[
        bool, typer.Option("--resolve", help="Pin a loose requirements file with uv.")
    ] = False,
    python: Annotated[str | None, typer.Option("--python", help="e.g. 3.11")] = None,
    params: Params = [],  # noqa: B006
    inputs: Inputs = [],  # noqa: B006
    queue: Queue = None,
    gpus: Annotated[int, typer.Option("--gpus", min=0)] = 0,
    timeout: Annotated[str, typer.Option("--timeout", help="e.g. 12h, 30m.")] = "24h",
    abort_grace: AbortGrace = "30s",
    retries: Retries = 0,
    task_type: Annotated[str, typer.Option("--type")] = "training",
    tags: Tags = [],  # noqa: B006
    comment: Annotated[str, typer.Option("--comment")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Register a task (a template to clone); prints its id."""
    options = dict(locals())  # the parameters, by name, for _definition
    tasks = runtime().tasks
    if file is not None:
        if project or name or repo or script or module or params or inputs:
            raise UserError("-f: the file is the whole task; give either -f or options")
        definition = _from_file(file)
        try:
            info = tasks.create(definition, base_dir=file.absolute().parent)
        except UserError as exc:
            raise UserError(f"{file}: {exc}") from None
    else:
        definition = _definition(options)
        info = tasks.create(definition)
    _print_task(info, as_json, f"registered {info.label} ({info.status})")


@app.command()
def capture(
    directory: Annotated[Path, typer.Argument(help="A git checkout.")] = Path("."),
    project: Annotated[str | None, typer.Option("--project")] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    working_dir: Annotated[str, typer.Option("--working-dir")] = ".",
    script: Annotated[str | None, typer.Option("--script")] = None,
    module: Annotated[str | None, typer.Option("--module")] = None,
    args: Annotated[list[str], typer.Option("--args")] = [],  # noqa: B006
    env: Annotated[list[str], typer.Option("--env")] = [],  # noqa: B006
    env_not_secret: EnvNotSecret = [],  # noqa: B006
    requirements: Annotated[
        str | None, typer.Option("--requirements", help="Default: DIR/requirements.txt if present.")
    ] = None,
    resolve: Annotated[bool, typer.Option("--resolve")] = False,
    python: Annotated[str | None, typer.Option("--python")] = None,
    params: Params = [],  # noqa: B006
    inputs: Inputs = [],  # noqa: B006
    queue: Queue = None,
    gpus: Annotated[int, typer.Option("--gpus", min=0)] = 0,
    timeout: Annotated[str, typer.Option("--timeout")] = "24h",
    abort_grace: AbortGrace = "30s",
    retries: Retries = 0,
    task_type: Annotated[str, typer.Option("--type")] = "training",
    tags: Tags = [],  # noqa: B006
    comment: Annotated[str, typer.Option("--comment")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Register a task from a local checkout: remote URL (or path), HEAD, uncommitted diff
    and pinned requirements."""
    options = dict(locals())  # the parameters, by name, for _definition
    definition = _definition({**options, "repo": str(directory), "branch": None, "commit": None})
    info = runtime().tasks.capture(directory, definition)
    spec = info.spec
    diff = f", diff of {len(spec['diff'])} bytes" if spec.get("diff") else ", clean tree"
    _print_task(
        info,
        as_json,
        f"captured {info.label}: {spec['repo']} @ "
        f"{spec['commit'][:12]}{diff}, {len(spec['requirements'])} pinned requirement(s)",
    )


@app.command()
def clone(
    ref: Annotated[
        str,
        typer.Argument(help="Template: project/name, project/name@tag or an id (a run's too)."),
    ],
    name: Annotated[str | None, typer.Option("--name")] = None,
    params: Params = [],  # noqa: B006
    inputs: Inputs = [],  # noqa: B006
    queue: Queue = None,
    tags: Tags = [],  # noqa: B006
    allow_new_params: AllowNew = False,
    as_json: JsonFlag = False,
) -> None:
    """Copy a template (or a run, by id) into a new draft run with overrides; prints its id."""
    info = runtime().tasks.clone(
        ref, **_clone_options(name, params, inputs, tags, allow_new_params), queue=_queue(queue)
    )
    _print_task(info, as_json, f"cloned {ref} into draft {info.id}")


@app.command()
def enqueue(
    task_id: Annotated[str, typer.Argument(help="Task id (a draft).")],
    queue: Queue = None,
    priority: PriorityOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Queue a draft: resolve its branch and inputs, then send its job to Redis."""
    info, sent = runtime().tasks.enqueue(
        task_id, queue=_queue(queue), priority=_priority(priority)
    )
    _print_queued(info.model_dump(mode="json"), sent, as_json)


@app.command()
def run(
    ref: Annotated[
        str,
        typer.Argument(help="Template: project/name, project/name@tag or an id (a run's too)."),
    ],
    name: Annotated[str | None, typer.Option("--name")] = None,
    params: Params = [],  # noqa: B006
    inputs: Inputs = [],  # noqa: B006
    queue: Queue = None,
    priority: PriorityOpt = None,
    tags: Tags = [],  # noqa: B006
    allow_new_params: AllowNew = False,
    as_json: JsonFlag = False,
) -> None:
    """Clone a template with overrides and queue the clone (a run's id: re-run it exactly);
    prints the new id."""
    options = {
        **_clone_options(name, params, inputs, tags, allow_new_params),
        "queue": _queue(queue),
    }
    queued = _lean_run(ref, options, _priority(priority))
    if queued is None:  # only the full store can do it (a fresh database, say)
        info, sent = runtime().tasks.run(ref, priority=_priority(priority), **options)
        queued = info.model_dump(mode="json"), sent
    _print_queued(*queued, as_json)


def _lean_run(
    ref: str, options: dict[str, Any], priority: str | None
) -> tuple[dict[str, Any], bool] | None:
    """`task run` on the bare database driver (tasks/runs.py: the ORM path's clone, input and
    payload code) and the job pushed with the plain Redis client (queue/plainjob.py); None
    when only the full store can do it, nothing written then."""
    from orchestrator.cli.lean import lean_write
    from orchestrator.tasks import runs
    from orchestrator.tasks.overrides import CloneOptions

    clone = CloneOptions(**options)

    def queue_run(commit: str | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
        return lean_write(
            lambda conn: (runs.run(conn, ref, clone, priority=priority, commit=commit), True)
        )

    try:
        done = queue_run(None)
    except runs.NeedsCommit as needed:
        # The branch is asked of the repository outside the transaction, as the ORM path does.
        from orchestrator.git import Mirror
        from orchestrator.tasks.jobs import commit_for

        mirror = Mirror(runtime().settings.resolved_cache_dir / "git")
        done = queue_run(commit_for(mirror, needed.spec))
    if done is None:
        return None
    info, job = done
    return info, _push(info, job)


def _push(info: dict[str, Any], job: dict[str, Any]) -> bool:
    """Send a committed run's job to Redis (`dispatch.push`, over the plain client when the
    URL allows); False when Redis is unreachable (reconcile sends it later)."""
    from orchestrator.errors import ServiceUnavailable
    from orchestrator.queue import plainjob
    from orchestrator.queue.connection import embedded_url
    from orchestrator.queue.plain import PlainRedis, ReplyError

    settings = runtime().settings
    where = {
        "queue": info["queue"],
        "priority": info["priority"],
        "timeout_s": int(info["spec"]["timeout_s"]),
    }
    try:
        url = settings.redis_url or embedded_url(settings, start=True)
        client = PlainRedis.of(url) if url else None
        if client is None:  # TLS or options: redis-py and RQ serve it
            runtime().queues.enqueue(info["id"], job, **where)
            return True
        rq_queue, fields = plainjob.job_hash(
            info["id"], job, secret=settings.worker_secret, **where
        )
        try:
            replies = client.execute(plainjob.enqueue_commands(info["id"], rq_queue, fields))
        finally:
            client.close()
    except (ServiceUnavailable, OSError):
        return False
    return not any(isinstance(r, ReplyError) for r in replies)


@app.command()
def abort(
    task_id: Annotated[str, typer.Argument(help="Task id.")],
    as_json: JsonFlag = False,
) -> None:
    """Abort a task: mark it aborted and remove its job from the queue."""
    info = runtime().tasks.abort(task_id)
    _print_task(info, as_json, f"aborted {info.label} {info.id}")


@app.command("list")
def list_tasks(
    project: Annotated[str | None, typer.Option("--project", help="Project glob.")] = None,
    status: Annotated[str | None, typer.Option("--status")] = None,
    tag: Annotated[str | None, typer.Option("--tag")] = None,
    templates: Annotated[
        bool, typer.Option("--templates", help="List template revisions instead of runs.")
    ] = False,
    runs: Annotated[bool, typer.Option("--runs", help="List runs (the default).")] = False,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            metavar="VERSION_ID",
            help="Runs that took this dataset version as an input or were fired by it.",
        ),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option("--template", metavar="REF", help="Runs cloned from this template."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=output.MAX_LIMIT)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Runs (or, with --templates, template revisions), newest first (--json: with
    parameters, inputs and the trigger's entity)."""
    if templates and runs:
        raise UserError("--templates, --runs: give one of them")
    kind = "template" if templates else "run"
    options: dict[str, Any] = {
        "project": project,
        "status": status,
        "tag": tag,
        "kind": kind,
        "dataset": dataset,
        "parent": runtime().tasks.template(template).id if template else None,
        "limit": limit,
    }
    found = _list(options)
    if as_json:
        output.print_json(found)
        return
    if templates:
        output.table(
            None,
            ["id", "project", "name", "revision", "type", "queue", "tags", "created"],
            [
                (
                    t["id"],
                    t["project"],
                    t["name"],
                    t["revision"],
                    t["type"],
                    t["queue"],
                    t["tags"],
                    t["created_at"],
                )
                for t in found
            ],
        )
    else:
        output.table(
            None,
            ["id", "project", "name", "type", "status", "queue", "tags", "template", "created"],
            [
                (
                    t["id"],
                    t["project"],
                    t["name"],
                    t["type"],
                    t["status"],
                    t["queue"],
                    t["tags"],
                    t["template"][:8] if t["template"] else None,
                    t["created_at"],
                )
                for t in found
            ],
        )
    if not found:
        output.note(f"no {kind} matches")


def _list(options: dict[str, Any]) -> list[dict[str, Any]]:
    """The listing (tasks/listing.py), straight from the database driver when it can serve
    the database (no SQLAlchemy, no pydantic import)."""
    from orchestrator.cli.lean import lean_read
    from orchestrator.tasks.listing import list_tasks
    from orchestrator.tasks.states import STATUSES

    if options["status"] and options["status"] not in STATUSES:
        return runtime().tasks.list(**options)  # which reports the bad value
    return lean_read(lambda conn: list_tasks(conn, **options))


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="Task id, or a template reference.")],
    as_json: JsonFlag = False,
) -> None:
    """A task's spec, resolved parameters, inputs and lineage (template, parent, trigger,
    event, models), metric series; for a template, also its revisions and latest runs."""
    from orchestrator.cli.lean import lean_read
    from orchestrator.tasks import records

    # The SQL of tasks/records.py on the bare driver; the full store's views otherwise.
    shown = lean_read(lambda conn: records.show(conn, ref), full=lambda: _full_show(ref))
    if as_json:
        output.print_json(shown)
        return
    _print_show(shown)


def _full_show(ref: str) -> dict[str, Any]:
    """What `records.show` returns, through the full store (which migrates or explains)."""
    from orchestrator.tasks.lineage import run_lineage

    rt = runtime()
    tasks = rt.tasks
    info = tasks.lookup(ref)
    overview = tasks.overview(info) if info.kind == "template" else None
    traced = run_lineage(rt.store, info.id)
    series = tasks.series(info.id) if info.status != "draft" else {}
    shown = {**info.model_dump(mode="json"), **traced.model_dump(mode="json")}
    shown["series"] = {
        name: {k: v for k, v in s.items() if k != "points"} for name, s in series.items()
    }
    if overview is not None:
        shown.update(overview)
    return shown


def _print_show(info: dict[str, Any]) -> None:
    """`task show` for people, from the record `--json` prints."""
    from orchestrator.tasks.records import event_label

    cause = info["cause"]
    spec = info["spec"]
    entry = spec["entry"].get("script") or f"-m {spec['entry'].get('module')}"
    rows: list[tuple[str, Any]] = [
        ("id", info["id"]),
        ("task", f"{info['project']}/{info['name']}"),
        ("type", info["type"]),
        ("status", info["status"]),
        ("tags", info["tags"]),
        ("kind", f"template, revision {info['revision']}" if info["kind"] == "template" else "run"),
        ("template", info["template"]),
        ("parent", info["parent"] if info["parent"] != info["template"] else None),
        ("trigger", f"{info['trigger']} ({event_label(cause)})" if cause else info["trigger"]),
        ("queue", f"{info['queue']} ({info['priority']})"),
        ("repo", spec["repo"]),
        ("branch", spec.get("branch")),
        ("commit", spec.get("commit")),
        ("working dir", spec["working_dir"]),
        ("entry point", entry),
        ("args", " ".join(shlex.quote(a) for a in spec["args"]) or None),
        ("env", [f"{k}={v}" for k, v in spec["env"].items()]),
        ("diff", f"{len(spec['diff'])} bytes" if spec.get("diff") else None),
        ("python", spec.get("python")),
        ("gpus", spec["gpus"]),
        ("timeout", f"{spec['timeout_s']} s (abort grace {spec.get('abort_grace_s', 30)} s)"),
        (
            "retries",
            f"{info['attempt']} of {spec.get('retries', 0)} used" if spec.get("retries") else None,
        ),
        ("created", info["created_at"]),
        ("queued", info["queued_at"]),
        ("started", info["started_at"]),
        ("finished", info["finished_at"]),
        ("worker", info["worker"]),
        ("duration", f"{info['duration_s']:.1f} s" if info["duration_s"] is not None else None),
        ("exit code", info["exit_code"]),
        ("error", info["error"]),
        ("environment", _environment_line(info["environment"])),
    ]
    output.table(None, ["field", "value"], rows)
    for title, mapping in (
        ("parameters", info["parameters"]),
        ("inputs", info["inputs"]),
        ("resolved inputs", info["resolved_inputs"]),
        ("metrics", info["metrics"]),
    ):
        if mapping:
            output.out.print(f"\n{title}:")
            for key, value in sorted(mapping.items()):
                output.out.print(
                    f"  {output.one_line(key)} = {output.one_line(value)}", markup=False
                )
    if info["absorbed_events"]:
        output.out.print("\nabsorbed events (coalesced into this run, oldest first):")
        for absorbed in info["absorbed_events"]:
            output.out.print(f"  {event_label(absorbed)}", markup=False)
    if info["models"]:
        output.out.print("\nmodels registered:")
        for model in info["models"]:
            output.out.print(
                f"  {model['id']}  {model['project']}/{model['name']}  "
                f"{output.one_line(model['uri'])}",
                markup=False,
            )
    if info["logged_params"]:
        output.out.print("\nparameters as logged:")
        for key, value in sorted(info["logged_params"].items()):
            output.out.print(
                f"  {output.one_line(key)} = {output.one_line(value)}", markup=False
            )
    if info["series"]:
        output.out.print("\nseries (retrain metrics ID for sparklines):")
        for name, s in info["series"].items():
            output.out.print(
                f"  {output.one_line(name)}: last {s['last']:.6g} at step {s['step']}, "
                f"min {s['min']:.6g}, max {s['max']:.6g}, {s['count']} points",
                markup=False,
            )
    if info["artifacts"]:
        output.out.print("\nartifacts:")
        for artifact in info["artifacts"]:
            output.out.print(
                f"  {output.one_line(artifact['path'])}  {output.one_line(artifact['uri'])}",
                markup=False,
            )
    if spec["requirements"]:
        output.out.print("\nrequirements:")
        for line in spec["requirements"]:
            output.out.print(f"  {line}", markup=False)
    if info["kind"] == "template":
        _print_overview(info)


def _print_overview(overview: dict[str, Any]) -> None:
    """A template's revisions and its latest runs, under `task show TEMPLATE`."""
    output.out.print("")
    output.table(
        "revisions",
        ["revision", "id", "tags", "created"],
        [(r["revision"], r["id"], r["tags"], r["created_at"]) for r in overview["revisions"]],
    )
    if not overview["runs"]:
        output.note("no run yet")
        return
    output.out.print("")
    columns = ("id", "template_revision", "status", "queue", "trigger", "created_at")
    output.table(
        "latest runs",
        ["id", "revision", "status", "queue", "trigger", "created"],
        [tuple(r[c] for c in columns) for r in overview["runs"]],
    )


@app.command()
def compare(
    tasks: Annotated[list[str], typer.Argument(help="Two or more task ids.")],
    as_json: JsonFlag = False,
) -> None:
    """Runs side by side: parameters and metrics, differences marked with *."""
    from orchestrator.cli.metrics import compare as run_compare

    run_compare(tasks, as_json)


def _environment_line(environment: dict[str, Any]) -> str | None:
    if not environment.get("key"):
        return None
    how = (
        "cache hit"
        if environment.get("hit")
        else (
            f"built in {environment.get('build_seconds', 0):.1f} s with {environment.get('tool')}"
        )
    )
    if environment.get("waited_s"):
        how += f", after waiting {environment['waited_s']:.1f} s for another job's build"
    return (
        f"{str(environment['key'])[:16]} ({how}, {len(environment.get('frozen') or [])} packages)"
    )


def _clone_options(
    name: str | None, params: list[str], inputs: list[str], tags: list[str], allow_new_params: bool
) -> dict[str, Any]:
    from orchestrator.datasets.validate import check_name
    from orchestrator.tasks.params import parse_inputs, split_assignment

    if name is not None:
        check_name(name)  # `--name ''` too: the clone would silently keep the source's name
    return {
        "name": name,
        "params": dict(split_assignment(p, "--param") for p in params),
        "inputs": parse_inputs(inputs),
        "tags": tags,
        "allow_new_params": allow_new_params,
    }


def _queue(value: str | None) -> str | None:
    """`--queue` as given: `--queue ''` is a mistake (refused, exit 2), not "no --queue"."""
    from orchestrator.tasks.names import check_queue

    if value is None:
        return None
    try:
        return check_queue(value)
    except ValueError as exc:
        raise UserError(f"--queue: {exc}") from None


def _priority(value: str | None) -> Any:
    if value not in (None, "high", "normal", "low"):
        raise UserError(f"--priority: {value!r} is not high, normal or low")
    return value


def _print_task(info: Any, as_json: bool, message: str) -> None:
    if as_json:
        output.print_json(info)
    else:
        print(info.id)
        output.note(message)


def _print_queued(info: dict[str, Any], sent: bool, as_json: bool) -> None:
    """A queued run (its `TaskInfo` as JSON), and whether Redis has its job."""
    if as_json:
        output.print_json({**info, "in_redis": sent})
        return
    print(info["id"])
    label = f"{info['project']}/{info['name']}"
    if sent:
        output.note(
            f"queued {label} {info['id']} on {info['queue']} ({info['priority']}) at "
            f"{info['spec']['commit'][:12]}"
        )
    else:
        output.note(
            f"warning: {label} {info['id']} is queued in the store but Redis is "
            "unreachable; it reaches Redis on the next `retrain queue reconcile` "
            "(the scheduler runs it every 30 s)"
        )
