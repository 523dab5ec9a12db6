"""`retrain history` reads through the bare driver and says what the ORM's rows say."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from tests.conftest import CLI


def test_history_from_the_driver_matches_the_store(
    database_url: str, cli: CLI, monkeypatch: object, retrain_home: Path
) -> None:
    from sqlalchemy import select

    from orchestrator.scheduler.history import history
    from orchestrator.store import Store
    from orchestrator.store.models import Event, TriggerFiring

    monkeypatch.setenv("RETRAIN_DATABASE_URL", database_url)  # type: ignore[attr-defined]
    store = Store(database_url)
    try:
        with store.session() as session:
            for i in range(3):
                event = Event(
                    kind="dataset.version.tagged",
                    entity_id=f"{i:032x}",
                    project="team/vision",
                    name="images",
                    tags=["Production"],
                    payload={"version": f"1.0.{i}"} if i else {},
                    created_at=dt.datetime(2026, 1, 2, 3, 4, 5, 6000 * i, tzinfo=dt.timezone.utc),
                )
                session.add(event)
                session.flush()
                session.add(
                    TriggerFiring(
                        trigger_name="nightly" if i == 1 else "retrain",
                        trigger_revision="r1",
                        event_seq=event.seq,
                        entity_id=event.entity_id,
                        decision="fired" if i else "skipped",
                        reason="" if i else "cooldown: 1h not over",
                        task_id=f"{i:032x}" if i else None,
                        created_at=event.created_at + dt.timedelta(seconds=1),
                    )
                )
        # What the ORM objects say (the command's rows before it read through the driver).
        with store.reader() as session:
            query = (
                select(TriggerFiring, Event)
                .join(Event, Event.seq == TriggerFiring.event_seq)
                .order_by(TriggerFiring.id.desc())
            )
            expected = [
                {
                    "time": f.created_at.isoformat().replace("+00:00", "Z"),  # as task show
                    "trigger": f.trigger_name,
                    "event": f.event_seq,
                    "kind": e.kind,
                    "entity": f"{e.project}/{e.name}",
                    "entity_kind": e.kind.split(".", 1)[0],
                    "entity_id": f.entity_id,
                    "version": (e.payload or {}).get("version"),
                    "decision": f.decision,
                    "reason": f.reason,
                    "task": f.task_id,
                }
                for f, e in session.execute(query)
            ]
            # The fallback runs the same query on the session's own connection.
            under_session = history(session.connection().connection.driver_connection)
    finally:
        store.dispose()
    assert len(expected) == 3
    assert cli.json("history") == expected == under_session
    assert cli.json("history", "--trigger", "nightly", "--limit", "5") == [expected[1]]
    assert cli.json("history", "--limit", "1") == expected[:1]
    table = cli("history").out
    assert "cooldown: 1h not over" in table and "team/vision/images 1.0.2" in table
