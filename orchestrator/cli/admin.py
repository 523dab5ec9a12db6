"""`retrain config`, `retrain db` and `retrain storage`: settings and maintenance."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli import output
from orchestrator.cli.context import runtime

config_app = typer.Typer(
    help="Show the resolved settings.", no_args_is_help=True, suggest_commands=False
)
db_app = typer.Typer(
    help="Manage the store's schema.", no_args_is_help=True, suggest_commands=False
)
storage_app = typer.Typer(
    help="Maintain blob storage.", no_args_is_help=True, suggest_commands=False
)

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
    grace: Annotated[
        float | None,
        typer.Option(
            "--grace",
            min=0,
            metavar="MINUTES",
            help="Keep unreferenced blobs younger than this, as their upload may not be "
            "committed yet (default: RETRAIN_GC_GRACE_MINUTES).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Delete blobs that no row refers to (dataset files and manifests, models, run artifacts
    and logs) once older than the grace period, and stale leftovers of interrupted uploads."""
    from orchestrator.storage.gc import collect_garbage
    from orchestrator.store import blobrefs

    rt = runtime()
    minutes = rt.settings.gc_grace_minutes if grace is None else grace

    def references() -> dict[str, set[str]]:
        with rt.store.reader() as session:
            return blobrefs.referenced(session)

    report = collect_garbage(rt.blobs, references, grace_minutes=minutes, dry_run=dry_run)
    if as_json:
        output.print_json(report)
        return
    for orphan in report.orphan_details:
        print(
            f"unreferenced blob {orphan.sha256} {output.size(orphan.size)}, "
            f"{orphan.age_s / 3600:.1f} h old"
        )
    verb = "would delete" if dry_run else "deleted"
    partial = "stale partial upload(s)"
    output.note(
        f"{verb} {len(report.orphans)} unreferenced blob(s), {output.size(report.orphan_bytes)}, "
        f"and {report.partial_removed} {partial} from {rt.blobs.url}"
    )
    kept = ", ".join(f"{count} {kind}" for kind, count in report.kept.items() if count)
    output.note(
        f"kept what rows refer to: {kept or 'nothing'}; and {len(report.recent)} unreferenced "
        f"blob(s) younger than {minutes:g} min"
    )
