"""The parts of the dataset commands that need neither typer nor the full store: writing
through `orchestrator.store.lean`, printing a version, and `dataset tag` itself, which
`orchestrator.cli.main` also runs without building the command tree (see `fast_command`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.cli import output
from orchestrator.cli.context import runtime

if TYPE_CHECKING:
    from orchestrator.datasets.views import VersionInfo

T = TypeVar("T")


def tag_version(version_id: str, tags: Sequence[str], as_json: bool) -> None:
    """`retrain dataset tag VERSION TAG... [--json]`."""
    from orchestrator.datasets import records

    info = lean_write(lambda conn: records.tag(conn, version_id, tags))
    if info is None:
        info = runtime().datasets.tag(version_id, tags).model_dump(mode="json")
    print_version(info, as_json, f"{records.label(info)} tags: {', '.join(info['tags']) or '-'}")


def fast_command(args: Sequence[str]) -> Callable[[], None] | None:
    """The command `args` name when it is one of the few that run without typer (its ~100 ms
    import is most of what they cost), in its plainest form: positional words and `--json`.
    Anything else (an option, `--help`, a missing argument) is None: typer parses it."""
    words = [a for a in args if a != "--json"]
    if len(args) - len(words) > 1 or any(a.startswith("-") for a in words):
        return None
    as_json = len(words) < len(args)
    if len(words) >= 4 and words[:2] == ["dataset", "tag"]:
        return lambda: tag_version(words[2], words[3:], as_json)
    return None


def print_version(info: VersionInfo | dict[str, Any], as_json: bool, message: str) -> None:
    """A version (a `VersionInfo`, or its JSON-ready record from the bare-driver path)."""
    if as_json:
        output.print_json(info)
    else:
        print(info["id"] if isinstance(info, dict) else info.id)
        output.note(message)


def lean_read(work: Callable[[Any], T], full: Callable[[], T] | None = None) -> T:
    """`work(conn)` on a bare driver connection to the configured database (the settings
    checked as every command checks them: a bad value is one line naming it). When only the
    full store can serve the database (a fresh or older one, an unusual URL), `full()`, or by
    default `work` again on the driver connection under the full store's session, which
    migrates the database or explains what is wrong first."""
    from orchestrator.store.lean import Unavailable, connect

    settings = runtime().settings
    try:
        with connect(settings.database_url) as conn:
            return work(conn)
    except Unavailable:
        pass
    if full is not None:
        return full()
    with runtime().store.reader() as session:
        return work(session.connection().connection.driver_connection)


def lean_task(task_id: str) -> dict[str, Any]:
    """A task by id, as `TaskInfo`'s JSON (`tasks/records.task`, the SQL the full store's
    `task show` runs too), or `NotFound`."""
    from orchestrator.errors import NotFound
    from orchestrator.tasks import records

    def work(conn: Any) -> dict[str, Any]:
        found = records.task(conn, task_id)
        if found is None:
            raise NotFound("task", task_id, "list tasks with: retrain task list")
        del found["_coalesced"]
        return found

    return lean_read(work)


def never_ran(info: dict[str, Any]) -> Exception:
    """The error `logs` and `metrics` give a draft: a template is run with `task run` (it is
    never queued itself), a draft run is queued with `task enqueue`."""
    from orchestrator.errors import UserError

    task_id = info["id"]
    if info.get("kind") == "template":
        return UserError(
            f"task {task_id} is a template ({info['project']}/{info['name']} revision "
            f"{info['revision']}): it never runs itself, its runs do (start one with: "
            f"retrain task run {task_id}; list them with: retrain task list --template "
            f"{task_id})"
        )
    return UserError(
        f"task {task_id} is a draft: it has not run (queue it: retrain task enqueue {task_id})"
    )


def lean_write(work: Callable[[Any], tuple[T, bool]]) -> T | None:
    """`work(conn)` in one transaction on the bare database driver (no SQLAlchemy, no
    pydantic), then the scheduler's wake-up when it wrote events; None when only the full
    store can do it (a fresh or older database, an unusual URL), nothing written then."""
    from orchestrator.queue.wakeup import publisher
    from orchestrator.store.lean import Unavailable, is_integrity_error, writer

    settings = runtime().settings
    for remaining in range(3, 0, -1):
        try:
            with writer(settings.database_url) as conn:
                result, wrote_events = work(conn)
            break
        except Unavailable:
            return None
        except Exception as exc:  # a concurrent create took the same name or number first
            if remaining == 1 or not is_integrity_error(exc):
                raise
    if wrote_events:
        publisher(settings)()  # after the commit, as the full store's hook does
    return result
