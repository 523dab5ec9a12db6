"""Dataset versions: create, change a draft, finalize, tag, publish, fetch.

Every change is one database transaction, and the changes others react to (created,
finalized, tagged, untagged, published) write their event in that same transaction. Work that
can fail for outside reasons (reading and hashing local files, uploading blobs) happens before
the transaction, so a failure leaves the store as it was.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from orchestrator.datasets import manifest, queries, records
from orchestrator.datasets.manifest import FileEntry
from orchestrator.datasets.materialize import materialize
from orchestrator.datasets.scan import collect, collect_folder
from orchestrator.datasets.views import (
    ChangeSummary,
    FinalizeResult,
    VersionDetail,
    VersionInfo,
)
from orchestrator.errors import Conflict, UserError
from orchestrator.paths import normalize_relpath
from orchestrator.progress import NullReporter, Reporter
from orchestrator.storage.base import BlobStore
from orchestrator.storage.cache import BlobCache
from orchestrator.store import Store
from orchestrator.store import events as ev
from orchestrator.store.lean import is_integrity_error
from orchestrator.store.models import (
    DatasetVersion,
    VersionFile,
)

T = TypeVar("T")
_RACE_RETRIES = 3


class DatasetService:
    """The dataset operations behind the CLI and the `Dataset` SDK class."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        cache: BlobCache,
        reporter: Reporter | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.cache = cache
        self.reporter: Reporter = reporter or NullReporter()

    # -- create ----------------------------------------------------------------------------

    def create(
        self,
        project: str,
        name: str,
        *,
        version: str | None = None,
        parents: Sequence[str] = (),
        tags: Iterable[str] = (),
        description: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> VersionInfo:
        """A new draft holding its parents' merged files (later parents win on a path)."""

        def attempt(session: Session) -> VersionInfo:
            record, _ = records.create(
                _driver(session),
                project,
                name,
                version=version,
                parents=parents,
                tags=tags,
                description=description,
                metadata=metadata,
            )
            session.info[ev.WROTE_EVENTS] = True
            return VersionInfo(**record)

        return self._retrying(attempt)

    # -- change a draft --------------------------------------------------------------------

    def add_files(
        self, version_id: str, paths: Sequence[str], *, dataset_path: str | None = None
    ) -> ChangeSummary:
        """Stage local files (recursive, globs) into a draft; uploaded on finalize."""
        if not paths:
            raise UserError("--files: name at least one file, folder or glob")
        local = collect(paths, dataset_path)
        with self.store.reader() as session:
            conn = _driver(session)
            staged = records.staged(conn, records.draft(conn, version_id)["id"])
        hashed = records.hash_files(local, staged, self.reporter)
        with self.store.session() as session:
            return ChangeSummary(**records.change_files(_driver(session), version_id, hashed))

    def remove_files(self, version_id: str, pattern: str) -> ChangeSummary:
        """Remove the files matching a glob, or everything under a folder, from a draft."""
        folder = pattern.strip("/") + "/"

        def doomed(paths: list[str]) -> list[str]:
            found = [p for p in paths if fnmatch.fnmatchcase(p, pattern) or p.startswith(folder)]
            if not found:
                raise UserError(f"no file of draft {version_id} matches {pattern!r}")
            return found

        with self.store.session() as session:
            return ChangeSummary(
                **records.change_files(_driver(session), version_id, remove=doomed)
            )

    def sync_folder(
        self, version_id: str, folder: Path, *, dataset_path: str | None = None
    ) -> ChangeSummary:
        """Make the draft's files (under `dataset_path`) equal to `folder`: add new files,
        replace changed ones and remove the ones the folder no longer has."""
        prefix = normalize_relpath(dataset_path) + "/" if dataset_path else ""
        local = collect_folder(folder, dataset_path)
        with self.store.reader() as session:
            conn = _driver(session)
            records.draft(conn, version_id)
            staged = records.staged(conn, version_id)
        hashed = records.hash_files(local, staged, self.reporter)
        present = {f.path for f, _ in hashed}

        def gone(paths: list[str]) -> list[str]:
            return [p for p in paths if p.startswith(prefix) and p not in present]

        with self.store.session() as session:
            summary = records.change_files(_driver(session), version_id, hashed, remove=gone)
            return ChangeSummary(**summary)

    # -- finalize --------------------------------------------------------------------------

    def finalize(self, version_id: str) -> FinalizeResult:
        """Upload what the draft holds locally, store its manifest blob, then mark it final, in
        that order: a crash at any point leaves a draft, never a final version missing blobs."""

        @contextmanager
        def read() -> Iterator[Any]:
            with self.store.reader() as session:
                yield _driver(session)

        @contextmanager
        def write(events: bool) -> Iterator[Any]:
            with self.store.session() as session:
                yield _driver(session)
                if events:
                    session.info[ev.WROTE_EVENTS] = True

        result = records.finalize(read, write, self.blobs, self.reporter, version_id)
        return FinalizeResult(**result)

    # -- tags, publish ---------------------------------------------------------------------

    def tag(self, version_id: str, tags: Iterable[str]) -> VersionInfo:
        """Add tags (an event when any is new; tags already there are left as they are)."""
        return self._change(lambda conn: records.tag(conn, version_id, tags))

    def _change(self, work: Callable[[Any], tuple[dict[str, Any], bool]]) -> VersionInfo:
        """`work` (a change of `records`) on the driver connection of a session of its own;
        its commit wakes the scheduler when it wrote events."""
        with self.store.session() as session:
            record, wrote = work(_driver(session))
            if wrote:
                session.info[ev.WROTE_EVENTS] = True
            return VersionInfo(**record)

    def untag(self, version_id: str, tags: Iterable[str]) -> VersionInfo:
        """Remove tags (an event); naming a tag the version does not have is an error (likely a
        typo)."""
        return self._change(lambda conn: records.untag(conn, version_id, tags))

    def publish(self, version_id: str) -> VersionInfo:
        """Mark a final version published (an event, the first time only)."""
        return self._change(lambda conn: records.publish(conn, version_id))

    def delete_draft(self, version_id: str) -> VersionInfo:
        """Discard a draft (final versions are kept: runs and children refer to them). Its
        uploaded blobs stay until `storage gc` finds nothing else refers to them."""
        with self.store.session() as session:
            row = self._draft(session, version_id, for_update=True)
            info = VersionInfo.of(row)
            session.execute(delete(VersionFile).where(VersionFile.version_id == row.id))
            session.delete(row)
            session.flush()
            self._event(session, ev.DATASET_VERSION_DELETED, info)
        return info

    # -- reading ---------------------------------------------------------------------------

    def get(self, version_id: str) -> VersionInfo:
        with self.store.reader() as session:
            return VersionInfo.of(queries.load_version(session, version_id))

    def resolve(self, project: str, name: str, tags: Iterable[str] = ()) -> VersionInfo:
        with self.store.reader() as session:
            return VersionInfo.of(queries.newest_final(session, project, name, tags))

    def search(
        self,
        *,
        project: str | None = None,
        name: str | None = None,
        tags: Iterable[str] = (),
        status: str | None = None,
        limit: int | None = None,
    ) -> list[VersionInfo]:
        with self.store.reader() as session:
            found = records.search(
                _driver(session), project=project, name=name, tags=tags, status=status, limit=limit
            )
            return [VersionInfo(**r) for r in found]

    def list_files(self, version_id: str, pattern: str | None = None) -> list[FileEntry]:
        """The version's files by path, those matching the glob `pattern` when given."""
        with self.store.reader() as session:
            return records.files(_driver(session), version_id, pattern)

    def show(self, version_id: str) -> VersionDetail:
        with self.store.reader() as session:
            return VersionDetail(**records.detail(_driver(session), version_id))

    def local_copy(self, version_id: str) -> Path:
        """A read-only copy in the shared cache, built from blob storage alone."""
        info = self._final(version_id)
        assert info.manifest_sha256 is not None
        return materialize(self.blobs, self.cache, info.manifest_sha256, self.reporter)

    def mutable_copy(self, version_id: str, dest: Path) -> Path:
        """A writable copy of a final version's files in `dest`."""
        info = self._final(version_id)
        assert info.manifest_sha256 is not None
        _, entries = manifest.decode(self.blobs.get_bytes(info.manifest_sha256))
        total = sum(e.size for e in entries)
        with self.reporter.task(f"copying {info.label}", total) as advance:
            return self.cache.copy_to([e.as_tuple() for e in entries], dest, progress=advance)

    # -- storage maintenance ---------------------------------------------------------------

    # -- helpers ---------------------------------------------------------------------------

    def _retrying(self, attempt: Callable[[Session], T]) -> T:
        """Run a create transaction again when a concurrent one took the same unique name or
        version number first (PostgreSQL reports that at insert; SQLite serializes writers)."""
        for remaining in range(_RACE_RETRIES, 0, -1):
            try:
                with self.store.session() as session:
                    return attempt(session)
            except Exception as exc:
                # SQLAlchemy's, or the driver's own from the SQL in `records`.
                if remaining == 1 or not (
                    isinstance(exc, DBIntegrityError) or is_integrity_error(exc)
                ):
                    raise
        raise AssertionError("unreachable")

    def _draft(
        self, session: Session, version_id: str, *, for_update: bool = False
    ) -> DatasetVersion:
        row = queries.load_version(session, version_id, for_update=for_update)
        if row.status != "draft":
            label = f"{row.dataset.project.path}/{row.dataset.name} {row.version}"
            raise records.final_conflict(version_id, label)
        return row

    def _final(self, version_id: str) -> VersionInfo:
        info = self.get(version_id)
        if info.status != "final":
            raise Conflict(f"version {version_id} is a draft; finalize it before fetching it")
        return info

    @staticmethod
    def _event(session: Session, kind: str, info: VersionInfo, **payload: Any) -> None:
        ev.record_for(session, kind, info, records.event_payload(info.__dict__, **payload))


def _driver(session: Session) -> Any:
    """The database driver's own connection under `session`, in its transaction: for the SQL
    that `orchestrator.datasets.records` shares with the commands that run without SQLAlchemy."""
    return session.connection().connection.driver_connection
