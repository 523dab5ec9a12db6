"""`model list` on the bare database driver (orchestrator.models.records): the same records as
the ORM's, for every filter, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from orchestrator.models import records
from orchestrator.store import lean
from tests.conftest import CLI


def test_model_records_are_what_the_orm_reads(runtime: Any, cli: CLI) -> None:
    from sqlalchemy import select

    from orchestrator.models.views import ModelInfo
    from orchestrator.store.models import Model

    models = runtime.models
    made = [
        models.register("team/a", "m", "s3://b/1", tags=["z", "b"], metadata={"acc": 0.5}),
        models.register("team/a/sub", "m", "s3://b/2", publish=True),
        models.register("other", "n", "s3://b/3", tags=["b"]),
    ]
    with runtime.store.reader() as session:
        orm = {
            row.id: ModelInfo.of(row).model_dump(mode="json")
            for row in session.scalars(select(Model))
        }
    newest_first = [orm[m.id] for m in reversed(made)]
    with lean.connect(runtime.settings.database_url) as conn:
        assert records.list_models(conn) == newest_first
        assert records.list_models(conn, project="team/*") == newest_first[1:]
        assert records.list_models(conn, name="m", published=False) == [orm[made[0].id]]
        assert records.list_models(conn, tag="b", limit=1) == [orm[made[2].id]]
        assert records.list_models(conn, project="none") == []
    assert orm[made[0].id]["tags"] == ["b", "z"] and orm[made[0].id]["metadata"] == {"acc": 0.5}
    assert cli.json("model", "list", "--published") == [orm[made[1].id]]
    assert [m.model_dump(mode="json") for m in models.list(name="n")] == [orm[made[2].id]]
