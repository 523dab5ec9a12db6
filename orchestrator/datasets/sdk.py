"""`orchestrator.Dataset`: versioned datasets from Python, with the names ClearML users know.

from orchestrator import Dataset

ds = Dataset.create(dataset_project="demo", dataset_name="occupancy",
                    parent_datasets=[previous.id])
ds.sync_folder("data/")
ds.finalize()
ds.add_tags(["Production"])
path = Dataset.get(dataset_project="demo", dataset_name="occupancy",
                   dataset_tags=["Production"]).get_local_copy()
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.datasets.views import VersionInfo
from orchestrator.errors import NotFound, UserError
from orchestrator.runtime import Runtime, default_runtime
from orchestrator.sdkbase import Handle


class Dataset(Handle):
    """One dataset version. Get instances from `Dataset.create` or `Dataset.get`."""

    _info: VersionInfo

    def __init__(self, info: VersionInfo, runtime: Runtime) -> None:
        self._info = info
        self._runtime = runtime

    # -- constructors ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        dataset_name: str,
        dataset_project: str,
        *,
        parent_datasets: Sequence[str | Dataset] = (),
        dataset_version: str | None = None,
        dataset_tags: Sequence[str] = (),
        description: str = "",
        metadata: dict[str, Any] | None = None,
        runtime: Runtime | None = None,
    ) -> Dataset:
        """A new draft version holding its parents' merged files (later parents win)."""
        rt = runtime or default_runtime()
        parents = [p.id if isinstance(p, Dataset) else p for p in parent_datasets]
        info = rt.datasets.create(
            dataset_project,
            dataset_name,
            version=dataset_version,
            parents=parents,
            tags=dataset_tags,
            description=description,
            metadata=metadata,
        )
        return cls(info, rt)

    @classmethod
    def get(
        cls,
        dataset_id: str | None = None,
        *,
        dataset_project: str | None = None,
        dataset_name: str | None = None,
        dataset_tags: Sequence[str] = (),
        auto_create: bool = False,
        writable_copy: bool = False,
        runtime: Runtime | None = None,
    ) -> Dataset:
        """A version by id, or the newest final version of a project/name (with all tags).

        `writable_copy`: a new draft child of that version instead, to add files to and
        finalize (the labelling tool's "upload" button). `auto_create`: when the dataset has
        no final version yet, a new first draft instead of `NotFound` (with or without
        `writable_copy`). Neither tags the new draft: a tag such as `Production` is for the
        finalized version, where triggers react to it."""
        rt = runtime or default_runtime()
        if dataset_id:
            found: VersionInfo | None = rt.datasets.get(dataset_id)
        elif not (dataset_project and dataset_name):
            raise UserError("Dataset.get needs dataset_id, or dataset_project and dataset_name")
        else:
            try:
                found = rt.datasets.resolve(dataset_project, dataset_name, dataset_tags)
            except NotFound:
                # Only a dataset with no final version at all is created: one whose versions
                # lack the tags asked for is a mistake, not a first use.
                finals = rt.datasets.search(
                    project=_literal(dataset_project),
                    name=_literal(dataset_name),
                    status="final",
                    limit=1,
                )
                if not auto_create or finals:
                    raise
                found = None
        if found is None:
            assert dataset_project and dataset_name  # checked above
            return cls(rt.datasets.create(dataset_project, dataset_name), rt)
        if writable_copy:
            return cls(rt.datasets.create(found.project, found.name, parents=[found.id]), rt)
        return cls(found, rt)

    # -- properties ------------------------------------------------------------------------

    @property
    def version(self) -> str:
        return self._info.version

    @property
    def parents(self) -> list[str]:
        return list(self._info.parents)

    @property
    def is_final(self) -> bool:
        return self._info.status == "final"

    @property
    def created_at(self) -> dt.datetime:
        return self._info.created_at

    @property
    def info(self) -> VersionInfo:
        return self._info

    def __repr__(self) -> str:
        return f"<Dataset {self._info.label} {self.id} {self._info.status}>"

    # -- changing a draft ------------------------------------------------------------------

    def add_files(
        self, path: str | Path | Sequence[str | Path], dataset_path: str | None = None
    ) -> int:
        """Add files, folders (recursive) or globs; returns how many files were added or
        changed."""
        paths = [str(path)] if isinstance(path, (str, Path)) else [str(p) for p in path]
        summary = self._runtime.datasets.add_files(self.id, paths, dataset_path=dataset_path)
        self._refresh()
        return len(summary.added) + len(summary.modified)

    def remove_files(self, dataset_path: str) -> int:
        """Remove files matching a glob of dataset paths (or a folder); returns the count."""
        summary = self._runtime.datasets.remove_files(self.id, dataset_path)
        self._refresh()
        return len(summary.removed)

    def sync_folder(
        self, local_path: str | Path, dataset_path: str | None = None
    ) -> tuple[int, int, int]:
        """Mirror a folder; returns (added, modified, removed) counts."""
        summary = self._runtime.datasets.sync_folder(
            self.id, Path(local_path), dataset_path=dataset_path
        )
        self._refresh()
        return len(summary.added), len(summary.modified), len(summary.removed)

    def finalize(self) -> None:
        """Upload new files and make the version final (immutable)."""
        self._info = self._runtime.datasets.finalize(self.id).version

    upload = finalize
    """ClearML splits upload and finalize; here finalize uploads, so both do the same."""

    # -- tags ------------------------------------------------------------------------------

    def add_tags(self, tags: str | Sequence[str]) -> None:
        self._info = self._runtime.datasets.tag(self.id, [tags] if isinstance(tags, str) else tags)

    def remove_tags(self, tags: str | Sequence[str]) -> None:
        self._info = self._runtime.datasets.untag(
            self.id, [tags] if isinstance(tags, str) else tags
        )

    def publish(self) -> None:
        self._info = self._runtime.datasets.publish(self.id)

    # -- reading ---------------------------------------------------------------------------

    def list_files(self, dataset_path: str | None = None) -> list[str]:
        """Dataset paths, optionally filtered by a glob."""
        return [f.path for f in self._runtime.datasets.list_files(self.id, dataset_path)]

    def get_local_copy(self) -> str:
        """Path of a read-only copy in the shared per-machine cache."""
        return str(self._runtime.datasets.local_copy(self.id))

    def get_mutable_local_copy(self, target_folder: str | Path) -> str:
        """Path of a writable copy written into `target_folder` (which must be empty)."""
        return str(self._runtime.datasets.mutable_copy(self.id, Path(target_folder)))

    def _refresh(self) -> None:
        self._info = self._runtime.datasets.get(self.id)


def _literal(text: str) -> str:
    """`text` as a glob matching only itself (search takes globs; names may hold `[`)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
