"""`retrain dataset ...`: versioned datasets from the command line.

Commands that make or change a version print its id alone on stdout (so scripts can capture
it) and a human summary on stderr; listings print a table, or JSON with `--json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from orchestrator.cli import output
from orchestrator.cli.context import drafts, runtime
from orchestrator.cli.lean import lean_read, lean_write, print_version
from orchestrator.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Callable

    from orchestrator.datasets.views import VersionInfo

T = TypeVar("T")

app = typer.Typer(
    suggest_commands=False,
    help="Create, change, finalize, tag and fetch dataset versions.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
DraftId = Annotated[
    str | None,
    typer.Option("--id", help="The draft; default: the last one created from this directory."),
]
DatasetPath = Annotated[
    str | None,
    typer.Option("--dataset-path", help="Folder inside the dataset to put the files under."),
]
Tags = Annotated[list[str], typer.Option("--tags", help="Tags (several values allowed).")]


@app.command()
def create(
    project: Annotated[str, typer.Option("--project", help="Project path, e.g. Team/area.")],
    name: Annotated[str, typer.Option("--name", help="Dataset name inside the project.")],
    version: Annotated[
        str | None,
        typer.Option("--version", help="Semantic version; default: the next patch."),
    ] = None,
    parents: Annotated[
        list[str],
        typer.Option("--parents", help="Parent version ids, in merge order (later wins)."),
    ] = [],  # noqa: B006
    tags: Tags = [],  # noqa: B006
    description: Annotated[str, typer.Option("--description")] = "",
    metadata: Annotated[
        str | None,
        typer.Option("--metadata", help="JSON object stored with the version."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a draft version holding its parents' files; prints its id."""
    from orchestrator.datasets import records

    options: dict[str, Any] = {
        "version": version,
        "parents": parents,
        "tags": tags,
        "description": description,
        "metadata": _json_object(metadata, "--metadata"),
    }
    info = lean_write(lambda conn: records.create(conn, project, name, **options))
    if info is None:
        info = runtime().datasets.create(project, name, **options).model_dump(mode="json")
    drafts().remember(info["id"])
    message = f"created draft {records.label(info)} with {info['file_count']} file(s)"
    print_version(info, as_json, message)


@app.command()
def add(
    files: Annotated[
        list[str], typer.Option("--files", help="Files, folders (recursive) or globs.")
    ],
    version_id: DraftId = None,
    dataset_path: DatasetPath = None,
    as_json: JsonFlag = False,
) -> None:
    """Add files to a draft (uploaded when it is finalized)."""
    from orchestrator.datasets import records
    from orchestrator.datasets.scan import collect
    from orchestrator.progress import reporter_for_terminal

    target = drafts().resolve(version_id)
    if not files:
        raise UserError("--files: name at least one file, folder or glob")
    local = collect(files, dataset_path)
    # The same steps as DatasetService.add_files, on the bare driver.
    staged = lean_read(
        lambda conn: records.staged(conn, records.draft(conn, target)["id"]), full=lambda: None
    )
    if staged is None:  # a fresh or older database, an unusual URL: the full store does it
        summary = runtime().datasets.add_files(target, files, dataset_path=dataset_path)
        _print_change(summary.model_dump(mode="json"), as_json)
        return
    hashed = records.hash_files(local, staged, reporter_for_terminal())
    change = lean_write(lambda conn: (records.change_files(conn, target, hashed), False))
    if change is None:
        change = (
            runtime()
            .datasets.add_files(target, files, dataset_path=dataset_path)
            .model_dump(mode="json")
        )
    _print_change(change, as_json)


@app.command()
def remove(
    pattern: Annotated[str, typer.Argument(help="Glob of dataset paths, or a folder.")],
    version_id: DraftId = None,
    as_json: JsonFlag = False,
) -> None:
    """Remove files from a draft."""
    target = drafts().resolve(version_id)
    _print_change(runtime().datasets.remove_files(target, pattern).model_dump(mode="json"), as_json)


@app.command()
def sync(
    folder: Annotated[Path, typer.Option("--folder", help="Local folder to mirror.")],
    version_id: DraftId = None,
    dataset_path: DatasetPath = None,
    as_json: JsonFlag = False,
) -> None:
    """Make a draft match a folder: add new, replace changed, remove missing files."""
    target = drafts().resolve(version_id)
    summary = runtime().datasets.sync_folder(target, folder, dataset_path=dataset_path)
    _print_change(summary.model_dump(mode="json"), as_json)


@app.command("list")
def list_files(
    version_id: DraftId = None,
    pattern: Annotated[
        str | None,
        typer.Option("--filter", help="Only paths matching this glob."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List a version's files with size and hash, and the totals."""
    from orchestrator.datasets import records

    target = drafts().resolve(version_id)
    files = lean_read(lambda conn: records.files(conn, target, pattern))
    total = sum(f.size for f in files)
    if as_json:
        output.print_json(
            {
                "version_id": target,
                "files": [f.__dict__ for f in files],
                "file_count": len(files),
                "total_size": total,
            }
        )
        return
    output.table(
        None, ["path", "size", "sha256"], [(f.path, output.size(f.size), f.sha256) for f in files]
    )
    output.note(f"{len(files)} file(s), {output.size(total)}")


@app.command()
def show(
    version_id: Annotated[str, typer.Argument(help="Version id.")],
    as_json: JsonFlag = False,
) -> None:
    """Show a version: status, tags, lineage, what it changed relative to its parents, the
    runs that used it and the models they registered."""
    from orchestrator.datasets import records

    limit = records.RUN_LIMIT

    def full() -> tuple[dict[str, Any], dict[str, Any]]:
        from orchestrator.tasks.lineage import version_usage

        detail = runtime().datasets.show(version_id).model_dump(mode="json")
        usage = version_usage(runtime().store, version_id, limit=limit).model_dump(mode="json")
        return detail, usage

    detail, usage = lean_read(
        lambda conn: (
            records.detail(conn, version_id),
            records.usage(conn, version_id, limit=limit),
        ),
        full=full,
    )
    if as_json:
        output.print_json({**detail, **usage})
        return
    v = detail["version"]
    rows: list[tuple[str, Any]] = [
        ("id", v["id"]),
        ("dataset", f"{v['project']}/{v['name']}"),
        ("version", v["version"]),
        ("status", v["status"] + (" (published)" if v["published"] else "")),
        ("tags", v["tags"]),
        ("files", f"{v['file_count']} ({output.size(v['total_size'])})"),
        ("created", v["created_at"]),
        ("finalized", v["finalized_at"]),
        ("manifest", v["manifest_sha256"]),
        ("description", v["description"] or None),
    ]
    output.table(None, ["field", "value"], rows)
    output.out.print("\nlineage:")
    for entry in detail["lineage"]:
        output.out.print(f"  {'  ' * entry['depth']}{entry['label']}  {entry['id']}", markup=False)
    added, modified, removed = detail["added"], detail["modified"], detail["removed"]
    output.out.print(
        f"\nchanges vs parents: {len(added)} added, {len(modified)} modified, "
        f"{len(removed)} removed ({output.size(detail['added_bytes'])} new)"
    )
    for label, paths in (("+", added), ("~", modified), ("-", removed)):
        for path in paths[:20]:
            output.out.print(f"  {label} {path}", markup=False)
        if len(paths) > 20:
            output.out.print(f"  {label} ... and {len(paths) - 20} more")
    _print_usage(v["id"], usage)


def _print_usage(version_id: str, usage: dict[str, Any]) -> None:
    """The runs that used the version (how: which inputs, or as their trigger's entity), and
    the models those runs registered."""
    runs, models = usage["runs"], usage["models"]
    output.out.print(f"\nruns that used it: {len(runs) or 'none'}")
    for run in runs:
        how = [f"input {name}" for name in run["inputs"]]
        if run["trigger_entity"] and run["trigger_entity"]["id"] == version_id:
            how.append(f"fired {run['trigger']}")
        output.out.print(
            f"  {run['id']}  {run['project']}/{run['name']}  {run['status']}  {', '.join(how)}",
            markup=False,
        )
    output.out.print(f"\nmodels trained by those runs: {len(models) or 'none'}")
    for model in models:
        output.out.print(
            f"  {model['id']}  {model['project']}/{model['name']}  run {model['task_id']}  "
            f"{model['uri']}",
            markup=False,
        )


@app.command()
def finalize(version_id: DraftId = None, as_json: JsonFlag = False) -> None:
    """Upload the draft's new files and make it final (immutable), atomically."""
    from orchestrator.datasets import records
    from orchestrator.progress import reporter_for_terminal
    from orchestrator.store.lean import Unavailable, connect

    target = drafts().resolve(version_id)
    rt = runtime()
    url = rt.settings.database_url

    @contextmanager
    def write(events: bool) -> Iterator[Any]:
        from orchestrator.queue.wakeup import publisher
        from orchestrator.store.lean import writer

        with writer(url) as conn:
            yield conn
        if events:
            publisher(rt.settings)()  # after the commit, as the full store's hook does

    try:  # the steps of DatasetService.finalize, on the bare driver
        result = records.finalize(
            lambda: connect(url), write, rt.blobs, reporter_for_terminal(), target
        )
    except Unavailable:  # a fresh or older database, an unusual URL: the full store does it
        result = rt.datasets.finalize(target).model_dump(mode="json")
    drafts().forget(target)
    final = result["version"]
    print_version(
        final,
        as_json,
        f"finalized {records.label(final)}: {final['file_count']} file(s), uploaded "
        f"{result['uploaded_blobs']} new blob(s) ({output.size(result['uploaded_bytes'])}), "
        f"reused {result['reused_blobs']}",
    )


app.command("close", help="Same as finalize (the clearml-data name).")(finalize)


@app.command()
def delete(
    version_id: Annotated[str, typer.Argument(help="Draft version id.")],
    as_json: JsonFlag = False,
) -> None:
    """Discard a draft. Final versions cannot be deleted (runs and children refer to them)."""
    info = runtime().datasets.delete_draft(version_id)
    drafts().forget(version_id)
    print_version(
        info,
        as_json,
        f"deleted draft {info.label}; `retrain storage gc` frees blobs nothing else uses",
    )


@app.command()
def tag(
    version_id: Annotated[str, typer.Argument(help="Version id.")],
    tags: Annotated[list[str], typer.Argument(help="Tags to add.")],
    as_json: JsonFlag = False,
) -> None:
    """Add tags to a version (each addition is an event triggers can react to)."""
    from orchestrator.cli.lean import tag_version

    tag_version(version_id, tags, as_json)


@app.command()
def untag(
    version_id: Annotated[str, typer.Argument(help="Version id.")],
    tags: Annotated[list[str], typer.Argument(help="Tags to remove.")],
    as_json: JsonFlag = False,
) -> None:
    """Remove tags from a version."""
    from orchestrator.datasets import records

    info = _change(
        lambda conn: records.untag(conn, version_id, tags),
        lambda: runtime().datasets.untag(version_id, tags),
    )
    print_version(info, as_json, f"{records.label(info)} tags: {', '.join(info['tags']) or '-'}")


@app.command()
def publish(
    version_id: Annotated[str, typer.Argument(help="Version id.")],
    as_json: JsonFlag = False,
) -> None:
    """Mark a final version as published."""
    from orchestrator.datasets import records

    info = _change(
        lambda conn: records.publish(conn, version_id),
        lambda: runtime().datasets.publish(version_id),
    )
    print_version(info, as_json, f"published {records.label(info)}")


def _change(
    work: Callable[[Any], tuple[dict[str, Any], bool]], full: Callable[[], VersionInfo]
) -> dict[str, Any]:
    """A version changed in one transaction on the bare driver (`records`, which the full
    store's service runs too), or by `full()` where only the full store can serve the
    database; its record."""
    info = lean_write(work)
    return full().model_dump(mode="json") if info is None else info


@app.command()
def search(
    project: Annotated[
        str | None,
        typer.Option("--project", help="Project glob (* also matches sub-projects)."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name glob.")] = None,
    tags: Tags = [],  # noqa: B006
    status: Annotated[
        str | None,
        typer.Option("--status", help="draft or final."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=output.MAX_LIMIT)] = 200,
    as_json: JsonFlag = False,
) -> None:
    """Find versions, newest first, with their ids."""
    from orchestrator.datasets import records

    if status not in (None, "draft", "final"):
        raise UserError(f"--status: {status!r} is not draft or final")
    options: dict[str, Any] = {
        "project": project,
        "name": name,
        "tags": tags,
        "status": status,
        "limit": limit,
    }
    found = lean_read(
        lambda conn: records.search(conn, **options),
        full=lambda: [v.model_dump(mode="json") for v in runtime().datasets.search(**options)],
    )
    if as_json:
        output.print_json(found)
        return
    output.table(
        None,
        ["id", "project", "name", "version", "status", "tags", "files", "size", "created"],
        [
            (
                v["id"],
                v["project"],
                v["name"],
                v["version"],
                v["status"] + ("*" if v["published"] else ""),
                v["tags"],
                v["file_count"],
                output.size(v["total_size"]),
                v["created_at"],
            )
            for v in found
        ],
    )
    if not found:
        output.note("no dataset version matches")


@app.command()
def get(
    version_id: Annotated[str | None, typer.Argument(help="Version id.")] = None,
    project: Annotated[str | None, typer.Option("--project")] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    tags: Tags = [],  # noqa: B006
    copy: Annotated[
        Path | None,
        typer.Option("--copy", help="Write a writable copy into this folder instead."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Fetch a final version; prints the local path (a read-only cached copy by default)."""
    datasets = runtime().datasets
    if version_id and (project or name):
        raise UserError("give a version id or --project/--name, not both")
    if not version_id:
        if not (project and name):
            raise UserError("give a version id, or --project and --name to take the newest")
        version_id = datasets.resolve(project, name, tags).id
    path = datasets.mutable_copy(version_id, copy) if copy else datasets.local_copy(version_id)
    if as_json:
        output.print_json(
            {"version_id": version_id, "path": str(path), "writable": copy is not None}
        )
    else:
        print(path)


def _print_change(summary: dict[str, Any], as_json: bool) -> None:
    """A `ChangeSummary` as its JSON-ready record."""
    if as_json:
        output.print_json(summary)
        return
    print(summary["version_id"])
    output.note(
        f"draft {summary['version_id']}: {len(summary['added'])} added, "
        f"{len(summary['modified'])} modified, {len(summary['removed'])} removed, "
        f"{summary['unchanged']} unchanged; now {summary['file_count']} file(s), "
        f"{output.size(summary['total_size'])}"
    )


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{option}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f'{option}: expected a JSON object such as \'{{"source": "lab"}}\'')
    return value
