"""Registering a template: from a definition (`task create`, task.yaml) or a local checkout
(`task capture`). Everything that can fail for outside reasons (git, requirements, dataset
references) is checked before the one transaction that writes the task and its event."""

from __future__ import annotations

import contextlib
from pathlib import Path

from sqlalchemy import select

from orchestrator.datasets.validate import check_name, check_project, check_tag
from orchestrator.errors import UserError
from orchestrator.git import Mirror, capture, normalize_repo
from orchestrator.store import Store, rows
from orchestrator.store import events as ev
from orchestrator.store.models import Project, Task, TaskTag, utcnow
from orchestrator.tasks import requirements as reqs
from orchestrator.tasks.inputs import check_input_refs, check_placeholders
from orchestrator.tasks.lifecycle import record_event
from orchestrator.tasks.resolution import TEMPLATE, next_revision
from orchestrator.tasks.spec import EntryPoint, ExecutionSpec, TaskDefinition
from orchestrator.tasks.views import TaskInfo


def register(
    store: Store,
    mirror: Mirror,
    definition: TaskDefinition,
    *,
    base_dir: Path | None = None,
    diff: str | None = None,
) -> TaskInfo:
    """Register a template after checking its code exists: a new revision of project/name
    (the first, or the one after the newest; older revisions stay, by id)."""
    base = base_dir or Path.cwd()
    project = check_project(definition.project)
    name = check_name(definition.name)
    tags = sorted({check_tag(t) for t in definition.tags})
    try:
        spec = ExecutionSpec(
            repo=normalize_repo(definition.repo, base),
            branch=definition.branch,
            commit=definition.commit,
            working_dir=definition.working_dir,
            entry=EntryPoint(script=definition.script, module=definition.module),
            args=definition.args,
            env=definition.env,
            env_not_secret=definition.env_not_secret,
            diff=diff,
            requirements=_requirements(definition, base),
            python=definition.python,
            gpus=definition.gpus,
            timeout_s=int(definition.timeout),
            abort_grace_s=int(definition.abort_grace),
            retries=definition.retries,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise UserError(first_error(exc)) from None
    spec = check_code(mirror, spec)
    check_placeholders(spec.args, spec.env, definition.params, definition.inputs)
    with store.session() as session:
        driver = session.connection().connection.driver_connection
        check_input_refs(driver, definition.inputs, definition.params)
        owner = rows.project(session, project)
        if owner.id is not None:  # one registration of a project's templates at a time
            session.scalars(rows.for_update(session, select(Project).where(Project.id == owner.id)))
        row = Task(
            project=owner,
            name=name,
            kind=TEMPLATE,
            revision=next_revision(session, owner.id, name),
            type=definition.type,
            status="draft",
            comment=definition.comment,
            queue=definition.queue,
            priority="normal",
            created_at=utcnow(),
            spec=spec.model_dump(mode="json"),
            parameters=dict(definition.params),
            inputs=dict(definition.inputs),
            resolved_inputs={},
            metrics={},
        )
        row.tag_rows = [TaskTag(tag=t) for t in tags]
        session.add(row)
        session.flush()
        info = TaskInfo.of(row)
        record_event(session, ev.TASK_CREATED, info)
    return info


def register_checkout(
    store: Store, mirror: Mirror, directory: Path, definition: TaskDefinition
) -> TaskInfo:
    """Register a task from a local checkout: its remote (or path), HEAD, uncommitted
    changes, and its requirements file when none is named."""
    if not directory.is_dir():
        raise UserError(f"{directory} is not a folder")
    captured = capture(directory)
    if definition.requirements is None and (directory / "requirements.txt").exists():
        definition = definition.model_copy(
            update={"requirements": str((directory / "requirements.txt").absolute())}
        )
    definition = definition.model_copy(
        update={"repo": captured.repo, "commit": captured.commit, "branch": None}
    )
    if definition.script:
        # The defaults the script's `retrain_run.connect` calls would record, read
        # statically, become the template's parameters; `--param` values win.
        from orchestrator.tasks.connected import connected_defaults
        from orchestrator.tasks.spec import check_param_name

        work = directory / definition.working_dir
        found = connected_defaults(directory, work / definition.script)
        valid = {}
        for key, value in found.items():
            with contextlib.suppress(ValueError, UserError):
                check_param_name(key)
                valid[key] = list(value) if isinstance(value, tuple) else value
        if valid:
            definition = definition.model_copy(update={"params": {**valid, **definition.params}})
    return register(store, mirror, definition, base_dir=directory, diff=captured.diff)


def _requirements(definition: TaskDefinition, base: Path) -> list[str]:
    value = definition.requirements
    if value is None:
        return []
    if isinstance(value, list):
        return reqs.parse_text("\n".join(value), "requirements")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if definition.resolve:
        return reqs.resolve(path, definition.python)
    return reqs.read_file(path)


def check_code(mirror: Mirror, spec: ExecutionSpec) -> ExecutionSpec:
    """The branch or commit exists and the entry point is there at that commit. A given
    commit is recorded in full; a branch stays a branch until the task is queued."""
    path = mirror.ensure(spec.repo, spec.commit)
    ref = spec.commit or spec.branch or "HEAD"
    try:
        commit = mirror.resolve(path, ref)
    except UserError:
        what = "--commit" if spec.commit else "--branch" if spec.branch else "HEAD"
        raise UserError(f"{what}: {ref!r} does not exist in {spec.repo}") from None
    entry = entry_paths(spec)
    written, deleted = diff_paths(spec.diff or "")
    # An entry point the captured diff writes (an untracked script, say) is there when the
    # worker applies the diff; one the diff deletes is not.
    if not any(
        p in written or (p not in deleted and mirror.has_path(path, commit, p)) for p in entry
    ):
        raise UserError(
            f"{spec.entry.describe()} is not in {spec.repo} at {commit[:12]} "
            f"(looked for {' or '.join(entry)})"
        )
    if spec.commit:
        return spec.model_copy(update={"commit": commit})
    return spec


def diff_paths(diff: str) -> tuple[set[str], set[str]]:
    """The files a `git diff` patch leaves with content (`+++ b/PATH`) and those it deletes
    (`--- a/PATH` then `+++ /dev/null`)."""
    written: set[str] = set()
    deleted: set[str] = set()
    source = ""
    for line in diff.splitlines():
        if line.startswith("--- "):
            source = line[4:]
        elif line.startswith("+++ b/"):
            written.add(line[6:])
        elif line == "+++ /dev/null" and source.startswith("a/"):
            deleted.add(source[2:])
    return written, deleted


def entry_paths(spec: ExecutionSpec) -> list[str]:
    """Where in the repository the entry point may be."""
    base = "" if spec.working_dir == "." else spec.working_dir.rstrip("/") + "/"
    if spec.entry.script:
        return [base + spec.entry.script.removeprefix("./")]
    module = spec.entry.module.replace(".", "/") if spec.entry.module else ""
    return [f"{base}{module}.py", f"{base}{module}/__main__.py", f"{base}{module}/__init__.py"]


def first_error(exc: Exception) -> str:
    """A pydantic error's first problem as `field: message`."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        return f"{field}: {message}" if field else message
    return str(exc)
