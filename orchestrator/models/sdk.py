"""`orchestrator.Model`: the model registry from Python, with the names ClearML users know.

from orchestrator import Model

[newest] = Model.query(project_name="dataset_blogpost", model_name="occupancy",
                       tags=["candidate"], max_results=1)
newest.url, newest.task                 # where it is; the run that registered it
newest.get_task().get_inputs()          # the dataset versions it was trained on
Model(model_id).publish()
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UserError
from orchestrator.runtime import Runtime, default_runtime
from orchestrator.sdkbase import Handle

if TYPE_CHECKING:
    from orchestrator.models.views import ModelInfo
    from orchestrator.tasks.lineage import ModelLineage
    from orchestrator.tasks.sdk import Task

_QUERY_CEILING = 10_000
"""How many models one `query` with several tags reads before filtering on the others."""


class Model(Handle):
    """One registered model: `Model(model_id)`, or from `Model.query` / `task.get_models()`."""

    _info: ModelInfo

    def __init__(
        self, model_id: str, *, runtime: Runtime | None = None, info: ModelInfo | None = None
    ) -> None:
        self._runtime = runtime or default_runtime()
        self._info = info if info is not None else self._runtime.models.get(model_id)

    @classmethod
    def query(
        cls,
        project_name: str | None = None,
        model_name: str | None = None,
        tags: Sequence[str] = (),
        only_published: bool = False,
        max_results: int | None = None,
        *,
        runtime: Runtime | None = None,
    ) -> list[Model]:
        """Models newest first: `project_name` and `model_name` are globs as in `retrain
        model list` (`team/*` reaches sub-projects), every tag in `tags` must be present."""
        if max_results is not None and max_results < 1:
            raise UserError("Model.query: max_results must be at least 1")
        rt = runtime or default_runtime()
        wanted = list(tags)
        found = rt.models.list(
            project=project_name,
            name=model_name,
            tag=wanted[0] if wanted else None,
            published=True if only_published else None,
            limit=(max_results or _QUERY_CEILING) if len(wanted) <= 1 else _QUERY_CEILING,
        )
        kept = [m for m in found if all(t in m.tags for t in wanted[1:])]
        return [cls(m.id, runtime=rt, info=m) for m in kept[:max_results]]

    query_models = query
    """ClearML's name for `query`."""

    # -- reading ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where the model is (ClearML's name; `uri` too)."""
        return self._info.uri

    uri = url

    @property
    def published(self) -> bool:
        return self._info.published

    @property
    def task(self) -> str | None:
        """The id of the run that registered it (ClearML's `model.task`)."""
        return self._info.task_id

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._info.metadata)

    @property
    def created_at(self) -> dt.datetime:
        return self._info.created_at

    @property
    def info(self) -> ModelInfo:
        return self._info

    def get_task(self) -> Task | None:
        """The run that registered the model."""
        from orchestrator.tasks.sdk import Task

        if self.task is None:
            return None
        return Task(self._runtime.tasks.get(self.task), self._runtime)

    def lineage(self) -> ModelLineage:
        """What `retrain model show` lists: its run, the template that run was cloned from,
        and the dataset versions it was trained on."""
        from orchestrator.tasks.lineage import model_lineage

        return model_lineage(self._runtime.store, self.id)

    # -- changing --------------------------------------------------------------------------

    def add_tags(self, tags: str | Sequence[str]) -> None:
        self._info = self._runtime.models.tag(self.id, [tags] if isinstance(tags, str) else tags)

    def remove_tags(self, tags: str | Sequence[str]) -> None:
        self._info = self._runtime.models.untag(
            self.id, [tags] if isinstance(tags, str) else tags
        )

    def publish(self) -> None:
        self._info = self._runtime.models.publish(self.id)

    def __repr__(self) -> str:
        return f"<Model {self._info.label} {self.id}>"
