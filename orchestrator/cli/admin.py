"""`retrain config`, `retrain db` and `retrain storage`: settings and maintenance."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli import output
from orchestrator.cli.context import runtime

config_app = typer.Typer(help="Show the resolved settings.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the store's schema.", no_args_is_help=True)
storage_app = typer.Typer(help="Maintain blob storage.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@config_app.command("show")
def config_show(as_json: JsonFlag = False) -> None:
    """Print every setting as resolved from RETRAIN_* variables, secrets redacted."""
    values = runtime().settings.redacted()
    if as_json:
        output.print_json(values)
    else:
        output.table(None, ["setting", "value"], sorted(values.items()))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations (also done automatically on first use)."""
    from orchestrator.store import Store

    store = Store(runtime().settings.database_url, migrate=False)
    try:
        before = store.current_revision()
        store.upgrade()
        after = store.current_revision()
    finally:
        store.dispose()
    if before == after:
        output.note(f"schema of {store.safe_url} is up to date (revision {after})")
    else:
        output.note(f"upgraded {store.safe_url} from {before or 'empty'} to revision {after}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the store."""
    from orchestrator.store import Store

    store = Store(runtime().settings.database_url, migrate=False)
    try:
        print(store.current_revision() or "empty")
    finally:
        store.dispose()


@storage_app.command("gc")
def storage_gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List, do not delete.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete blobs that no dataset version refers to (left by failed or abandoned uploads)."""
    report = runtime().datasets.collect_garbage(dry_run=dry_run)
    if as_json:
        output.print_json(report)
        return
    verb = "would delete" if dry_run else "deleted"
    output.note(
        f"{verb} {len(report.orphans)} unreferenced blob(s) from {runtime().blobs.url}"
        + (
            f" and {report.partial_removed} stale partial upload(s)"
            if report.partial_removed
            else ""
        )
    )
