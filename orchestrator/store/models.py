"""ORM models of the store. The schema itself is owned by the Alembic migrations beside this
module; `tests/store/test_migrations.py` checks that the two agree."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from orchestrator.tasks.jobs import input_versions

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 32
"""Entity ids are 32 lowercase hex characters (a uuid4 without dashes), as ClearML users know."""


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite forgets the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value


class _JSON(TypeDecorator[Any]):
    """JSON, stored as JSONB on PostgreSQL. The PostgreSQL dialect's types are imported when
    a PostgreSQL engine first uses the column, not with the models: a command on the default
    SQLite store would pay for them on every start (`with_variant(JSONB(), ...)` needs them
    at import)."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


JSONType = _JSON()
# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (and so auto-incrementing).
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Project(Base):
    """A project path such as `DeepSchool/Tutorials/cats_vs_dogs`; the hierarchy is by `/`."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(String(512), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Dataset(Base):
    """A named dataset inside a project; its content lives in its versions."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    project: Mapped[Project] = relationship(lazy="joined")


class DatasetVersion(Base):
    """One version of a dataset: draft while files change, then final and immutable."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        Index("ix_dataset_versions_dataset_status", "dataset_id", "status", "finalized_at"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    version: Mapped[str] = mapped_column(String(64))
    major: Mapped[int] = mapped_column(Integer)
    minor: Mapped[int] = mapped_column(Integer)
    patch: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(Text, default="")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finalized_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    total_size: Mapped[int] = mapped_column(BigInteger, default=0)

    dataset: Mapped[Dataset] = relationship(lazy="joined")
    parent_links: Mapped[list[VersionParent]] = relationship(
        foreign_keys="VersionParent.version_id",
        order_by="VersionParent.position",
        cascade="all, delete-orphan",
    )
    tag_rows: Mapped[list[VersionTag]] = relationship(
        cascade="all, delete-orphan", order_by="VersionTag.tag"
    )

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]

    @property
    def parent_ids(self) -> list[str]:
        return [link.parent_id for link in self.parent_links]


class VersionParent(Base):
    """Ordered parents of a version: several parents merge, later ones win on a shared path."""

    __tablename__ = "dataset_version_parents"

    version_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"), index=True)


class VersionTag(Base):
    __tablename__ = "dataset_version_tags"

    version_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class VersionFile(Base):
    """One row of a version's full manifest (inherited files included).

    `source`, `mtime_ns` are set while a draft holds a local file that is not uploaded yet;
    finalize uploads it and clears them, so a final version's rows only name blobs.
    """

    __tablename__ = "dataset_version_files"

    version_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Event(Base):
    """The ordered log the scheduler reads: one row per change, written in the change's own
    transaction. `seq` is the primary key, so "events after N" is an index range scan."""

    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    project: Mapped[str] = mapped_column(String(512))
    name: Mapped[str] = mapped_column(String(256))
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Task(Base):
    """A unit of work: a template revision (`kind` "template", what `task create` / `task
    capture` registered) or a run (`kind` "run", a clone of a template revision or of
    another run, with overrides). Templates stay drafts for ever: they are cloned, never
    queued. `project/name` and `project/name@tag` resolve to template revisions only.

    `spec` is the execution spec (repository, commit, entry point, requirements, ...),
    `parameters` the sectioned parameters, `inputs` the declared dataset inputs and
    `resolved_inputs` what they resolved to when the task was queued. A queued task's job
    payload is built from these columns alone, so Redis can always be refilled from the store.
    """

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_project_name", "project_id", "name", "created_at"),
        Index("ix_tasks_status", "status", "queued_at"),
        Index("ix_tasks_template_id", "template_id", "created_at"),
        Index("ix_tasks_kind_name", "kind", "project_id", "name", "created_at"),
        Index("ux_tasks_template_revision", "project_id", "name", "revision", unique=True),
        # `task list` pages newest first; without it, every listing sorts all tasks.
        Index("ix_tasks_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(256))
    type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(8), default="run", server_default="run")
    """"template" or "run" (see the class)."""
    revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """A template's revision number within its project/name: 1, 2, ... (None for runs)."""
    template_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), nullable=True)
    """A run's template revision (None for templates, and for runs of stores older than
    templates that were queued without one)."""
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), nullable=True, index=True)
    """What a run was cloned from: its template revision, or the run it re-runs."""
    trigger_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    trigger_event_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    trigger_entity_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """What the triggering event was about: dataset | task | model | schedule."""
    trigger_entity_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    """The id of that entity (a dataset version, task or model id): `task list --dataset`
    finds the runs a version fired through this index."""
    queue: Mapped[str] = mapped_column(String(64))
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(256), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    resolved_inputs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    held: Mapped[bool] = mapped_column(Boolean, default=False)
    """Queued in the store but not sent to Redis yet: its trigger is at `max_concurrent`
    (`on_busy: queue`); the scheduler sends it when a slot frees up."""
    coalesced_events: Mapped[list[int]] = mapped_column(JSONType, default=list)
    """Events folded into this queued run by `on_busy: coalesce`, oldest first."""
    environment: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    """What the run ran in, as its worker reported: environment key, cache hit or miss, build
    time, tool, and the frozen package list."""
    artifacts: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    """Files the run left in its output directory (and its log), uploaded: [{path, uri}]."""
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    """How long the job ran on its worker, checkout to upload, as the worker measured it."""
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    """Times the run went back to its queue after its worker was lost (see spec `retries`)."""
    logged_params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    """Parameters as the run's code logged them (`retrain_run.connect` defaults, MLflow
    params), beside `parameters`, the values it was given."""

    project: Mapped[Project] = relationship(lazy="joined")
    tag_rows: Mapped[list[TaskTag]] = relationship(
        cascade="all, delete-orphan", order_by="TaskTag.tag"
    )
    input_links: Mapped[list[TaskInput]] = relationship(
        cascade="all, delete-orphan", order_by="TaskInput.name"
    )
    """`resolved_inputs` as rows, kept equal to it on every assignment (see
    `_link_inputs`), so "which runs used version X" is an index lookup on both databases."""

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]


class TaskInput(Base):
    """One dataset version a run took as an input: `tasks.resolved_inputs` as rows, written
    in the same flush as the task."""

    __tablename__ = "task_inputs"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"), index=True)


@event.listens_for(Task.resolved_inputs, "set")
def _link_inputs(target: Task, value: Any, oldvalue: Any, initiator: Any) -> None:
    """Every path that freezes a run's inputs (queue, run, a coalesced re-point, code not
    written yet) assigns `resolved_inputs`; mirroring it here keeps the rows from ever
    disagreeing with the JSON, whoever assigns it."""
    wanted = input_versions(value)
    existing = {link.name: link for link in target.input_links}
    links = []
    for name, version_id in sorted(wanted.items()):
        link = existing.get(name)
        if link is None:
            link = TaskInput(name=name, version_id=version_id)
        link.version_id = version_id
        links.append(link)
    target.input_links = links


class MetricSeries(Base):
    """One metric series of a run, stored when its worker reports: the summary exact, the
    points (`[[step, value], ...]`) as the worker kept them (downsampled past the report's
    limit, extremes kept)."""

    __tablename__ = "metric_series"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(1024), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    last: Mapped[float] = mapped_column(Float)
    step: Mapped[float | None] = mapped_column(Float, nullable=True)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)
    points: Mapped[list[list[float]]] = mapped_column(JSONType, default=list)


class TaskTag(Base):
    __tablename__ = "task_tags"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class Model(Base):
    """A trained model in the registry: a blob in storage, produced by a task."""

    __tablename__ = "models"
    __table_args__ = (Index("ix_models_project_name", "project_id", "name", "created_at"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(256))
    uri: Mapped[str] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), nullable=True, index=True)
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    project: Mapped[Project] = relationship(lazy="joined")
    tag_rows: Mapped[list[ModelTag]] = relationship(
        cascade="all, delete-orphan", order_by="ModelTag.tag"
    )

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]


class ModelTag(Base):
    __tablename__ = "model_tags"

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class TriggerFiring(Base):
    """The ledger: one row per (trigger, event) decision. The unique constraint is what makes
    firing exactly-once, even with two schedulers: the second insert fails and its whole
    transaction (clone, cursor advance) rolls back."""

    __tablename__ = "trigger_firings"
    __table_args__ = (
        UniqueConstraint("trigger_name", "event_seq"),
        Index("ix_trigger_firings_entity", "trigger_name", "entity_id", "decision"),
        Index("ix_trigger_firings_time", "created_at"),
        # Firings that cannot start (`error`) are few among millions and looked up by every
        # retry pass and every `retrain status`: a range of this index.
        Index("ix_trigger_firings_decision", "decision", "event_seq"),
    )

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    trigger_name: Mapped[str] = mapped_column(String(128))
    trigger_revision: Mapped[str] = mapped_column(String(64))
    event_seq: Mapped[int] = mapped_column(BigInteger, index=True)
    entity_id: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(16))
    """fired | skipped | coalesced | error (cannot start: waits, decided again later)"""
    reason: Mapped[str] = mapped_column(Text, default="")
    task_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class TriggerState(Base):
    """What the scheduler remembers per trigger: since when it counts events, its revision."""

    __tablename__ = "trigger_state"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    revision: Mapped[str] = mapped_column(String(64))
    start_seq: Mapped[int] = mapped_column(BigInteger)
    """Events at or before this sequence predate the trigger and never fire it."""
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SchedulerState(Base):
    """The scheduler's cursor and health, one row (name 'main'): advanced in the same
    transaction as the firings it covers."""

    __tablename__ = "scheduler_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    leader: Mapped[str | None] = mapped_column(String(256), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_poll_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    config_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    config_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    config_loaded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    steps: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, nullable=True)
    """The leader's loop steps: last success, last error, failing since (see
    `orchestrator.scheduler.steps`), written with each heartbeat."""
    config_problems: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    """What the loaded triggers file refers to and cannot resolve (a template that does not
    exist), re-checked as the store changes."""
    reports_signed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    """Whether the leader checks report signatures (it holds the worker secret): `retrain
    status` warns when not. In the store, not in Redis, where anyone could claim it."""
    reports_refused: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Reports the leaders refused (dead-lettered), counted with each heartbeat: Redis's
    dead-letter stream keeps the entries, but anyone with Redis access could delete it."""
    last_refused_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_refused_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
