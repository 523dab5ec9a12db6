"""`retrain model ...`: the model registry from the command line.

Commands that register or change a model print its id alone on stdout (so scripts can capture
it) and a human summary on stderr; `show` and `list` print a table, or JSON with `--json`.
The store and the service are imported only when a command runs, so `--help` stays fast.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.cli import output
from orchestrator.cli.context import runtime
from orchestrator.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Callable

    from orchestrator.models.service import ModelService
    from orchestrator.models.views import ModelInfo

app = typer.Typer(
    suggest_commands=False,
    help="Register trained models, tag and publish them, find them.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ModelId = Annotated[str, typer.Argument(help="Model id.")]


@app.command()
def register(
    project: Annotated[str, typer.Option("--project", help="Project path, e.g. Team/area.")],
    name: Annotated[str, typer.Option("--name", help="Model name inside the project.")],
    uri: Annotated[
        str,
        typer.Option(
            "--uri", help="Where the model is: s3://, gs://, file://, https:// or an absolute path."
        ),
    ],
    task: Annotated[
        str | None, typer.Option("--task", help="Id of the task that produced the model.")
    ] = None,
    tags: Annotated[list[str], typer.Option("--tags", help="Tags (several values allowed).")] = [],  # noqa: B006
    metadata: Annotated[
        str | None,
        typer.Option("--metadata", help='JSON object stored with the model, e.g. {"auc": 0.93}.'),
    ] = None,
    publish: Annotated[bool, typer.Option("--publish", help="Publish it right away.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Register a trained model; prints its id."""
    info = runtime().models.register(
        project,
        name,
        uri,
        task_id=task,
        tags=tags,
        metadata=_json_object(metadata),
        publish=publish,
    )
    produced = f" from task {info.task_name} ({info.task_id})" if info.task_id else ""
    state = ", published" if info.published else ""
    _print_model(info, as_json, f"registered {info.label}{produced}{state}: {info.uri}")


@app.command()
def tag(
    model_id: ModelId,
    tags: Annotated[list[str], typer.Argument(help="Tags to add.")],
    as_json: JsonFlag = False,
) -> None:
    """Add tags to a model (adding a new tag is an event triggers can react to)."""
    from orchestrator.models import records

    info = _change(lambda conn: records.tag(conn, model_id, tags), lambda m: m.tag(model_id, tags))
    _print_model(info, as_json, f"{_label(info)} tags: {', '.join(info['tags']) or '-'}")


@app.command()
def untag(
    model_id: ModelId,
    tags: Annotated[list[str], typer.Argument(help="Tags to remove.")],
    as_json: JsonFlag = False,
) -> None:
    """Remove tags from a model."""
    from orchestrator.models import records

    info = _change(
        lambda conn: records.untag(conn, model_id, tags), lambda m: m.untag(model_id, tags)
    )
    _print_model(info, as_json, f"{_label(info)} tags: {', '.join(info['tags']) or '-'}")


@app.command()
def publish(model_id: ModelId, as_json: JsonFlag = False) -> None:
    """Mark a model as published (once; publishing again changes nothing)."""
    from orchestrator.models import records

    info = _change(lambda conn: records.publish(conn, model_id), lambda m: m.publish(model_id))
    _print_model(info, as_json, f"published {_label(info)}")


@app.command()
def show(model_id: ModelId, as_json: JsonFlag = False) -> None:
    """A model: where it is, its tags, its run, that run's template and input dataset
    versions, its metadata."""
    from orchestrator.cli.lean import lean_read
    from orchestrator.tasks import records

    # The SQL of models/records.py and tasks/records.py on the bare driver (the full store's
    # session runs the same when the lean path cannot serve the database).
    shown = lean_read(lambda conn: records.model_show(conn, model_id))
    if as_json:
        output.print_json(shown)
        return
    run, template = shown["run"], shown["template"]
    entity = run["trigger_entity"] if run else None
    rows: list[tuple[str, Any]] = [
        ("id", shown["id"]),
        ("model", f"{shown['project']}/{shown['name']}"),
        ("uri", shown["uri"]),
        ("tags", shown["tags"]),
        ("published", "yes" if shown["published"] else "no"),
        ("task", _task_cell(shown)),
        (
            "template",
            f"{template['project']}/{template['name']} ({template['id']})" if template else None,
        ),
        (
            "trigger",
            f"{run['trigger']} on {entity['kind']} {entity['id']}"
            if run and run["trigger"] and entity
            else None,
        ),
        ("created", shown["created_at"]),
    ]
    output.table(None, ["field", "value"], rows)
    if shown["inputs"]:
        output.out.print("\ntrained on:")
        for name, entry in sorted(shown["inputs"].items()):
            label = f"{entry.get('project')}/{entry.get('name')} {entry.get('version')}"
            output.out.print(f"  {name} = {label}  {entry.get('version_id')}", markup=False)
    if shown["metadata"]:
        output.out.print("\nmetadata:")
        for key, value in sorted(shown["metadata"].items()):
            output.out.print(f"  {key} = {json.dumps(value)}", markup=False)


@app.command("list")
def list_models(
    project: Annotated[
        str | None,
        typer.Option("--project", help="Project glob (* also matches sub-projects)."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name glob.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only models with this tag.")] = None,
    published: Annotated[
        bool | None,
        typer.Option("--published/--unpublished", help="Only published (or unpublished) ones."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=output.MAX_LIMIT)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Models, newest first, with their ids and producing tasks."""
    from orchestrator.cli.lean import lean_read
    from orchestrator.models import records

    options: dict[str, Any] = {
        "project": project,
        "name": name,
        "tag": tag,
        "published": published,
        "limit": limit,
    }
    found = lean_read(
        lambda conn: records.list_models(conn, **options),
        full=lambda: [m.model_dump(mode="json") for m in runtime().models.list(**options)],
    )
    if as_json:
        output.print_json(found)
        return
    output.table(
        None,
        ["id", "project", "name", "tags", "published", "task", "created"],
        [
            (
                m["id"],
                m["project"],
                m["name"],
                m["tags"],
                "yes" if m["published"] else "no",
                _task_cell(m, short=True),
                m["created_at"],
            )
            for m in found
        ],
    )
    if not found:
        output.note("no model matches")


def _task_cell(info: ModelInfo | dict[str, Any], *, short: bool = False) -> str | None:
    """`project/name (id)` of the producing task; the id cut to 8 characters in listings."""
    record = info if isinstance(info, dict) else info.model_dump()
    if not record["task_id"]:
        return None
    task_id = record["task_id"][:8] if short else record["task_id"]
    return f"{record['task_name']} ({task_id})"


def _change(
    work: Callable[[Any], tuple[dict[str, Any], bool]], full: Callable[[ModelService], ModelInfo]
) -> dict[str, Any]:
    """A model changed in one transaction on the bare driver (models/records.py, the SQL the
    full store's `ModelService` runs too), or through the full store when only it can serve
    the database (it migrates or explains first)."""
    from orchestrator.cli.lean import lean_write

    record = lean_write(work)
    return record if record is not None else full(runtime().models).model_dump(mode="json")


def _label(info: dict[str, Any]) -> str:
    return f"{info['project']}/{info['name']}"


def _print_model(info: ModelInfo | dict[str, Any], as_json: bool, message: str) -> None:
    if as_json:
        output.print_json(info)
    else:
        print(info["id"] if isinstance(info, dict) else info.id)
        output.note(message)


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None

    def no_constant(name: str) -> Any:
        # Python's json reads NaN and Infinity; JSON (and PostgreSQL's jsonb) has neither.
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except ValueError as exc:
        raise UserError(f"--metadata: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError("--metadata: expected a JSON object such as '{\"auc\": 0.93}'")
    return value
