"""The model registry: register a trained model, tag it, publish it, find it.

Every change is one database transaction, and the changes triggers react to (registered,
tagged, published) write their event in that same transaction, so an event exists exactly
when its change does. Input is checked before the transaction opens, so a mistake leaves the
store as it was. Untagging is validated like the rest but writes no event: no trigger reacts
to a tag going away.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import PurePath
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session, selectinload

from orchestrator.datasets.validate import check_name, check_project, check_tag
from orchestrator.errors import NotFound, UserError
from orchestrator.models import records
from orchestrator.models.views import ModelInfo
from orchestrator.redact import is_secret_name
from orchestrator.store import Store, rows
from orchestrator.store import events as ev
from orchestrator.store.models import Model, ModelTag, Project, Task, utcnow

T = TypeVar("T")
_RACE_RETRIES = 3

# Two characters at least: `C:\models` is a Windows drive, not a URL scheme.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Query parameters of signed URLs (S3, GCS, Azure SAS) that `is_secret_name` does not cover;
# a signed URL is a credential, and it expires, so it is no place to keep a model either.
_SIGNATURE_PARAMS = frozenset({"sig", "signature", "x-amz-signature", "x-goog-signature"})
_URI_EXAMPLES = "s3://bucket/models/model.pt, gs://..., file:///abs/path, https://..."


def check_uri(uri: str) -> str:
    """A URL with a scheme and no credentials, or an absolute local path.

    Credentials are refused rather than stripped: silently storing a different URI than the
    one given would hide that the user's secret was on its way into a shared database. The
    error message never repeats the secret.
    """
    clean = uri.strip()
    if not clean or _CONTROL.search(clean):
        raise UserError(f"--uri: {uri!r} is not a URI; give a URL ({_URI_EXAMPLES})")
    if _SCHEME.match(clean):
        try:
            parts = urlsplit(clean)
        except ValueError as exc:
            raise UserError(f"--uri: not a valid URL ({exc})") from None
        secret_params = [
            key
            for key, _ in parse_qsl(parts.query, keep_blank_values=True)
            if is_secret_name(key) or key.lower() in _SIGNATURE_PARAMS
        ]
        if "@" in parts.netloc or secret_params:
            if "@" in parts.netloc:
                where = "user:password@" if parts.password is not None else "user@"
            else:
                where = f"?{secret_params[0]}="
            host = parts.netloc.rpartition("@")[2]
            raise UserError(
                f"--uri: the {parts.scheme}:// URL for {host or 'its host'} carries credentials "
                f"({where}); retrain never stores credentials. Give the URL without them and "
                "let the storage client find its own (AWS_PROFILE, GOOGLE_APPLICATION_"
                "CREDENTIALS, ~/.netrc, ...)"
            )
        if not (parts.netloc or parts.path.strip("/")):
            raise UserError(f"--uri: {clean!r} names nothing after the scheme")
        return clean
    if "://" in clean:
        raise UserError(f"--uri: {clean!r} does not start with a URL scheme ({_URI_EXAMPLES})")
    if not PurePath(clean).is_absolute():
        raise UserError(
            f"--uri: {clean!r} is a relative path, which means nothing on another machine; "
            f"give an absolute path or a URL ({_URI_EXAMPLES})"
        )
    return clean


def check_metadata(metadata: Any) -> dict[str, Any]:
    """A JSON object, returned as plain JSON data (what both databases store alike)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise UserError("--metadata: expected a JSON object such as '{\"auc\": 0.93}'")
    try:
        # NaN and Infinity are not JSON; PostgreSQL's jsonb refuses them at insert time.
        text = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UserError(f"--metadata: not storable as JSON ({exc})") from None
    value: dict[str, Any] = json.loads(text)
    return value


class ModelService:
    """The model-registry operations behind `retrain model ...` (and, later, workers that
    register models from job outputs)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- changes ---------------------------------------------------------------------------

    def register(
        self,
        project: str,
        name: str,
        uri: str,
        *,
        task_id: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        publish: bool = False,
    ) -> ModelInfo:
        """Record a trained model; its project is created if missing. With `publish`, it is
        published from the start and both events (registered, then published) are written,
        so triggers watching either fire."""
        project = check_project(project)
        name = check_name(name)
        uri = check_uri(uri)
        tag_list = sorted({check_tag(t) for t in tags})
        meta = check_metadata(metadata)

        def attempt(session: Session) -> ModelInfo:
            task_names = _task_names(session, [task_id] if task_id else [])
            if task_id and task_id not in task_names:
                raise NotFound("task", task_id, "--task takes a task id; see retrain task list")
            row = Model(
                project=rows.project(session, project),
                name=name,
                uri=uri,
                task_id=task_id,
                published=publish,
                meta=meta,
                created_at=utcnow(),
            )
            row.tag_rows = [ModelTag(tag=t) for t in tag_list]
            session.add(row)
            session.flush()
            info = ModelInfo.of(row, task_names.get(task_id or ""))
            _event(session, ev.MODEL_REGISTERED, info)
            if publish:
                _event(session, ev.MODEL_PUBLISHED, info)
            return info

        return self._retrying(attempt)

    # Tag, untag and publish run the SQL of models/records.py (what `retrain model tag`
    # runs on the bare driver) on the session's connection: one implementation of each.

    def tag(self, model_id: str, tags: Iterable[str]) -> ModelInfo:
        """Add tags; an event only when at least one is new (tags already there stay)."""
        return self._change(lambda conn: records.tag(conn, model_id, tags))

    def untag(self, model_id: str, tags: Iterable[str]) -> ModelInfo:
        """Remove tags; naming a tag the model lacks is an error (likely a typo)."""
        return self._change(lambda conn: records.untag(conn, model_id, tags))

    def publish(self, model_id: str) -> ModelInfo:
        """Mark a model published; publishing it again changes nothing and writes no event."""
        return self._change(lambda conn: records.publish(conn, model_id))

    def _change(self, work: Callable[[Any], tuple[dict[str, Any], bool]]) -> ModelInfo:
        with self.store.session() as session:
            record, wrote = work(session.connection().connection.driver_connection)
            if wrote:
                session.info[ev.WROTE_EVENTS] = True
            return ModelInfo(**record)

    # -- reading ---------------------------------------------------------------------------

    def get(self, model_id: str) -> ModelInfo:
        with self.store.reader() as session:
            return _info(session, _load(session, model_id))

    def _retrying(self, attempt: Callable[[Session], T]) -> T:
        """Run a register transaction again when a concurrent one created the same project
        first (PostgreSQL reports the duplicate at insert; SQLite serializes writers)."""
        for remaining in range(_RACE_RETRIES, 0, -1):
            try:
                with self.store.session() as session:
                    return attempt(session)
            except DBIntegrityError:
                if remaining == 1:
                    raise
        raise AssertionError("unreachable")

    # Last in the class: below this line `list` would name the method, not the builtin.
    def list(
        self,
        *,
        project: str | None = None,
        name: str | None = None,
        tag: str | None = None,
        published: bool | None = None,
        limit: int = 50,
    ) -> list[ModelInfo]:
        """Models newest first. `project` and `name` are globs (`*` crosses `/` in projects,
        so `team/*` reaches sub-projects); `tag` must be present; `published` filters on the
        flag when given."""
        with self.store.reader() as session:
            conn = session.connection().connection.driver_connection
            found = records.list_models(
                conn, project=project, name=name, tag=tag, published=published, limit=limit
            )
            return [ModelInfo(**r) for r in found]


# -- helpers -------------------------------------------------------------------------------


def _load(session: Session, model_id: str, *, for_update: bool = False) -> Model:
    query = select(Model).where(Model.id == model_id).options(selectinload(Model.tag_rows))
    if for_update:
        query = rows.for_update(session, query, of=Model)
    row = session.scalars(query).first()
    if row is None:
        raise NotFound("model", model_id, "list models with: retrain model list")
    return row


def _task_names(session: Session, task_ids: Iterable[str]) -> dict[str, str]:
    """`project/name` of each existing task among `task_ids` (one query for a whole page)."""
    wanted = sorted(set(task_ids))
    if not wanted:
        return {}
    rows = session.execute(
        select(Task.id, Project.path, Task.name).join(Project).where(Task.id.in_(wanted))
    )
    return {task_id: f"{path}/{name}" for task_id, path, name in rows}


def _info(session: Session, row: Model) -> ModelInfo:
    """The model as users see it, with its producing task's name looked up."""
    task_name = None
    if row.task_id:
        task_name = _task_names(session, [row.task_id]).get(row.task_id)
    return ModelInfo.of(row, task_name)


def _event(session: Session, kind: str, info: ModelInfo, **payload: Any) -> None:
    driver = session.connection().connection.driver_connection
    record = info.model_dump(mode="json")
    ev.record_for(session, kind, info, records.event_payload(driver, record, **payload))
