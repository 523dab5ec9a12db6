"""Dataset versions as plain JSON-ready records, read and tagged with SQL on a bare driver
connection: the one data path of `retrain dataset tag` and `dataset search`, whether the
connection comes from `orchestrator.store.lean` (no SQLAlchemy, no pydantic imported) or
from under a SQLAlchemy session (`DatasetService`, which wraps the records in `VersionInfo`).

A record has `VersionInfo`'s fields, in its order, with times as pydantic writes them.
"""

from __future__ import annotations

import fnmatch
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from orchestrator.datasets.validate import (
    check_name,
    check_project,
    check_tag,
    check_tags,
    format_version,
    next_version,
    parse_version,
)
from orchestrator.errors import Conflict, NotFound, UserError
from orchestrator.models.records import model_ref
from orchestrator.store import eventlog
from orchestrator.store.lean import (
    Row,
    add_tags,
    execute,
    executemany,
    fetch,
    is_sqlite,
    json_time,
    json_value,
    placeholders,
    remove_tags,
    stamp,
    utcnow,
)

if TYPE_CHECKING:
    from orchestrator.datasets.manifest import FileEntry
    from orchestrator.datasets.scan import LocalFile
    from orchestrator.progress import Reporter
    from orchestrator.storage.base import BlobStore

VERSION_SQL = (
    "SELECT v.id, p.path AS project, d.name AS name, v.version, v.status, v.published, "
    "v.description, v.metadata, v.file_count, v.total_size, v.created_at, v.finalized_at, "
    "v.manifest_sha256 "
    "FROM dataset_versions v JOIN datasets d ON d.id = v.dataset_id "
    "JOIN projects p ON p.id = d.project_id"
)
TAGS_SQL = "SELECT version_id, tag FROM dataset_version_tags WHERE version_id IN ({}) ORDER BY tag"
PARENTS_SQL = (
    "SELECT version_id, parent_id FROM dataset_version_parents WHERE version_id IN ({}) "
    "ORDER BY position"
)
INSERT_TAG_SQL = "INSERT INTO dataset_version_tags (version_id, tag) VALUES (%s, %s)"
DELETE_TAG_SQL = "DELETE FROM dataset_version_tags WHERE version_id = %s AND tag = %s"
PUBLISH_SQL = "UPDATE dataset_versions SET published = %s WHERE id = %s"
DATASETS_SQL = (
    "SELECT d.id, p.path AS project, d.name FROM datasets d JOIN projects p ON p.id = d.project_id"
)
HAVING_ALL_TAGS_SQL = (
    "SELECT version_id FROM dataset_version_tags WHERE tag IN ({}) "
    "GROUP BY version_id HAVING count(*) = %s"
)
PROJECT_SQL = "SELECT id FROM projects WHERE path = %s"
INSERT_PROJECT_SQL = "INSERT INTO projects (path, created_at) VALUES (%s, %s) RETURNING id"
DATASET_SQL = (
    "SELECT d.id FROM datasets d JOIN projects p ON p.id = d.project_id "
    "WHERE p.path = %s AND d.name = %s"
)
INSERT_DATASET_SQL = (
    "INSERT INTO datasets (id, project_id, name, created_at) VALUES (%s, %s, %s, %s)"
)
VERSION_NUMBERS_SQL = "SELECT major, minor, patch FROM dataset_versions WHERE dataset_id = %s"
INSERT_VERSION_SQL = (
    "INSERT INTO dataset_versions (id, dataset_id, version, major, minor, patch, status, "
    "published, description, metadata, file_count, total_size, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, 'draft', %s, %s, %s, %s, %s, %s)"
)
INSERT_PARENT_SQL = (
    "INSERT INTO dataset_version_parents (version_id, position, parent_id) VALUES (%s, %s, %s)"
)
MANIFEST_SQL = "SELECT path, size, sha256 FROM dataset_version_files WHERE version_id = %s"
INSERT_FILE_SQL = (
    "INSERT INTO dataset_version_files (version_id, path, size, sha256) VALUES (%s, %s, %s, %s)"
)
NEWEST_FIRST = "v.created_at DESC, v.major DESC, v.minor DESC, v.patch DESC"
NOT_FOUND_HINT = "list versions with: retrain dataset search"


def label(record: Row) -> str:
    """`project/name 1.0.1`, as `VersionInfo.label`."""
    return f"{record['project']}/{record['name']} {record['version']}"


def load(conn: Any, version_id: str, *, for_update: bool = False) -> Row:
    """The version's record, or `NotFound` with a hint to search. `for_update` locks its row
    until commit on PostgreSQL (SQLite writers run one at a time already)."""
    lock = " FOR UPDATE OF v" if for_update and not is_sqlite(conn) else ""
    rows = fetch(conn, f"{VERSION_SQL} WHERE v.id = %s{lock}", [version_id])
    if not rows:
        raise NotFound("dataset version", version_id, NOT_FOUND_HINT)
    return _records(conn, rows)[0]


def search(
    conn: Any,
    *,
    project: str | None = None,
    name: str | None = None,
    tags: Iterable[str] = (),
    status: str | None = None,
    limit: int | None = None,
) -> list[Row]:
    """Versions newest first. `project` and `name` are globs (`*` crosses `/` in projects,
    so `Team/**` and `Team/*` both reach sub-projects); every tag in `tags` must be present."""
    wanted = [
        r["id"]
        for r in fetch(conn, DATASETS_SQL, ())
        if (project is None or fnmatch.fnmatchcase(r["project"], project))
        and (name is None or fnmatch.fnmatchcase(r["name"], name))
    ]
    if not wanted:
        return []
    where = [f"v.dataset_id IN ({placeholders(len(wanted))})"]
    params: list[Any] = list(wanted)
    tag_list = sorted(set(tags))
    if tag_list:
        where.append(f"v.id IN ({HAVING_ALL_TAGS_SQL.format(placeholders(len(tag_list)))})")
        params += [*tag_list, len(tag_list)]
    if status:
        where.append("v.status = %s")
        params.append(status)
    sql = f"{VERSION_SQL} WHERE {' AND '.join(where)} ORDER BY {NEWEST_FIRST}"
    if limit:
        sql += " LIMIT %s"
        params.append(limit)
    return _records(conn, fetch(conn, sql, params))


def tag(conn: Any, version_id: str, tags: Iterable[str]) -> tuple[Row, bool]:
    """Add tags, in the open write transaction of `conn`, with their event when any is new
    (tags already there are left as they are). Returns the record and whether it wrote an
    event (its commit then wakes the scheduler)."""
    wanted = check_tags(tags)
    record = load(conn, version_id, for_update=True)
    added = add_tags(conn, record, wanted, INSERT_TAG_SQL)
    if not added:
        return record, False
    record_event(conn, eventlog.DATASET_VERSION_TAGGED, record, added=added)
    return record, True


def untag(conn: Any, version_id: str, tags: Iterable[str]) -> tuple[Row, bool]:
    """Remove tags, with their event (`removed`); naming a tag the version lacks is an error
    (likely a typo)."""
    record = load(conn, version_id, for_update=True)
    removed = remove_tags(conn, record, tags, DELETE_TAG_SQL, f"version {version_id}")
    record_event(conn, eventlog.DATASET_VERSION_UNTAGGED, record, removed=removed)
    return record, True


def publish(conn: Any, version_id: str) -> tuple[Row, bool]:
    """Mark a final version published, with its event; publishing it again changes nothing
    and writes no event."""
    record = load(conn, version_id, for_update=True)
    if record["status"] != "final":
        raise Conflict(f"version {version_id} is a draft; finalize it before publishing")
    if record["published"]:
        return record, False
    execute(conn, PUBLISH_SQL, [True, version_id])
    record["published"] = True
    record_event(conn, eventlog.DATASET_VERSION_PUBLISHED, record)
    return record, True


def create(
    conn: Any,
    project: str,
    name: str,
    *,
    version: str | None = None,
    parents: Sequence[str] = (),
    tags: Iterable[str] = (),
    description: str = "",
    metadata: dict[str, Any] | None = None,
) -> tuple[Row, bool]:
    """A new draft holding its parents' merged files (later parents win on a path), with its
    event, in the open write transaction of `conn`. Two creates racing for the same new
    project, dataset or version number: the loser's insert fails with the driver's
    IntegrityError, and its caller runs the whole transaction again."""
    project = check_project(project)
    name = check_name(name)
    tag_list = sorted({check_tag(t) for t in tags})
    wanted = parse_version(version) if version else None
    if len(set(parents)) != len(parents):
        raise UserError("--parents: the same parent is named twice")
    now = stamp(conn, utcnow())
    found = fetch(conn, DATASET_SQL, [project, name])
    if found:
        dataset_id = found[0]["id"]
    else:
        projects = fetch(conn, PROJECT_SQL, [project]) or fetch(
            conn, INSERT_PROJECT_SQL, [project, now]
        )
        dataset_id = uuid.uuid4().hex
        execute(conn, INSERT_DATASET_SQL, [dataset_id, projects[0]["id"], name, now])
    for parent_id in parents:
        if load(conn, parent_id)["status"] != "final":
            raise Conflict(f"--parents: {parent_id} is a draft; finalize it first")
    existing = [
        (r["major"], r["minor"], r["patch"]) for r in fetch(conn, VERSION_NUMBERS_SQL, [dataset_id])
    ]
    if wanted is not None and wanted in existing:
        raise Conflict(f"--version: {project}/{name} already has version {format_version(wanted)}")
    parts = wanted or next_version(existing)
    files: dict[str, tuple[str, int, str]] = {}
    for parent_id in parents:
        for r in fetch(conn, MANIFEST_SQL, [parent_id]):
            files[r["path"]] = (r["path"], int(r["size"]), r["sha256"])
    version_id = uuid.uuid4().hex
    execute(
        conn,
        INSERT_VERSION_SQL,
        [
            version_id,
            dataset_id,
            format_version(parts),
            *parts,
            False,
            description,
            json.dumps(metadata or {}),
            len(files),
            sum(f[1] for f in files.values()),
            now,
        ],
    )
    executemany(conn, INSERT_PARENT_SQL, [(version_id, i, p) for i, p in enumerate(parents)])
    executemany(conn, INSERT_TAG_SQL, [(version_id, t) for t in tag_list])
    executemany(conn, INSERT_FILE_SQL, [(version_id, *f) for f in files.values()])
    record = load(conn, version_id)
    record_event(
        conn,
        eventlog.DATASET_VERSION_CREATED,
        record,
        parents=record["parents"],
        file_count=record["file_count"],
    )
    return record, True


def event_payload(record: Row, **extra: Any) -> dict[str, Any]:
    """What every dataset event carries about its version, then what is particular to it."""
    return {
        "version": record["version"],
        "status": record["status"],
        "published": record["published"],
        "manifest_sha256": record["manifest_sha256"],
        **extra,
    }


def record_event(conn: Any, kind: str, record: Row, **extra: Any) -> None:
    eventlog.record_event(
        conn,
        kind,
        entity_id=record["id"],
        project=record["project"],
        name=record["name"],
        tags=record["tags"],
        payload=event_payload(record, **extra),
    )


def _records(conn: Any, rows: Sequence[Row]) -> list[Row]:
    """Rows of `VERSION_SQL` with their tags and parents, as records."""
    if not rows:
        return []
    ids = [r["id"] for r in rows]
    tags: dict[str, list[str]] = {i: [] for i in ids}
    parents: dict[str, list[str]] = {i: [] for i in ids}
    for start in range(0, len(ids), 500):  # keep IN lists within every backend's limits
        chunk = ids[start : start + 500]
        for r in fetch(conn, TAGS_SQL.format(placeholders(len(chunk))), chunk):
            tags[r["version_id"]].append(r["tag"])
        for r in fetch(conn, PARENTS_SQL.format(placeholders(len(chunk))), chunk):
            parents[r["version_id"]].append(r["parent_id"])
    out = []
    for r in rows:
        metadata = json_value(r["metadata"])
        final = r["status"] == "final"
        out.append(
            {
                "id": r["id"],
                "project": r["project"],
                "name": r["name"],
                "version": r["version"],
                "status": r["status"],
                "published": bool(r["published"]),
                "tags": tags[r["id"]],
                "parents": parents[r["id"]],
                "description": r["description"],
                "metadata": dict(metadata) if isinstance(metadata, dict) else {},
                "file_count": int(r["file_count"]),
                "total_size": int(r["total_size"]),
                "created_at": json_time(r["created_at"]),
                "finalized_at": json_time(r["finalized_at"]),
                # A draft may name the manifest it is about to store; only a final one has it.
                "manifest_sha256": r["manifest_sha256"] if final else None,
            }
        )
    return out


# -- `dataset show` ------------------------------------------------------------------------

RUN_LIMIT = 200
"""The most runs (and their models) `dataset show` lists; `task list --dataset` pages further."""

USAGE_RUNS_SQL = (
    "SELECT t.id, p.path AS project, t.name, t.status, t.parent_id, t.trigger_name, "
    "t.trigger_entity_kind, t.trigger_entity_id, t.created_at "
    "FROM tasks t JOIN projects p ON p.id = t.project_id "
    # A union of two index lookups (an OR across tables would scan every task).
    "WHERE t.id IN (SELECT task_id FROM task_inputs WHERE version_id = %s "
    "UNION SELECT id FROM tasks WHERE trigger_entity_id = %s) "
    "ORDER BY t.created_at DESC, t.id LIMIT %s"
)
USAGE_INPUTS_SQL = "SELECT task_id, name FROM task_inputs WHERE version_id = %s AND task_id IN ({})"
USAGE_MODELS_SQL = (
    "SELECT m.id, p.path AS project, m.name, m.uri, m.task_id, m.created_at "
    "FROM models m JOIN projects p ON p.id = m.project_id WHERE m.task_id IN ({}) "
    "ORDER BY m.created_at DESC, m.id"
)


def manifest(conn: Any, version_id: str) -> dict[str, tuple[str, int, str]]:
    """A version's files: path -> (path, size, sha256)."""
    return {
        r["path"]: (r["path"], int(r["size"]), r["sha256"])
        for r in fetch(conn, MANIFEST_SQL, [version_id])
    }


def files(conn: Any, version_id: str, pattern: str | None = None) -> list[FileEntry]:
    """A version's files by path, those matching the glob `pattern` when given; `NotFound`
    when there is no such version."""
    from orchestrator.datasets.manifest import FileEntry

    load(conn, version_id)
    return [
        FileEntry(*entry)
        for path, entry in sorted(manifest(conn, version_id).items())
        if pattern is None or fnmatch.fnmatchcase(path, pattern)
    ]


def detail(conn: Any, version_id: str) -> Row:
    """`VersionDetail` as a record: the version, its ancestry breadth first (each once, with
    its depth), and what it adds, changes and removes relative to its merged parents."""
    record = load(conn, version_id)
    files = manifest(conn, record["id"])
    base: dict[str, tuple[str, int, str]] = {}
    for parent_id in record["parents"]:  # later parents win on a shared path
        base.update(manifest(conn, parent_id))
    added = sorted(p for p in files if p not in base)
    removed = sorted(p for p in base if p not in files)
    modified = sorted(p for p in files if p in base and files[p][2] != base[p][2])
    lineage = []
    seen = {record["id"]}
    frontier = [(record, 0)]
    while frontier:
        row, depth = frontier.pop(0)
        lineage.append(
            {"id": row["id"], "label": label(row), "depth": depth, "parents": row["parents"]}
        )
        for parent_id in row["parents"]:
            if parent_id not in seen:
                seen.add(parent_id)
                frontier.append((load(conn, parent_id), depth + 1))
    return {
        "version": record,
        "lineage": lineage,
        "added": added,
        "modified": modified,
        "removed": removed,
        "added_bytes": sum(files[p][1] for p in added + modified),
    }


def usage(conn: Any, version_id: str, *, limit: int) -> Row:
    """`VersionUsage` as a record: the runs that took the version as an input or were fired
    by an event about it, newest first, and the models those runs registered."""
    load(conn, version_id)
    runs = fetch(conn, USAGE_RUNS_SQL, [version_id, version_id, limit])
    ids = [r["id"] for r in runs]
    names: dict[str, list[str]] = {}
    models: list[Row] = []
    if ids:
        inputs = USAGE_INPUTS_SQL.format(placeholders(len(ids)))
        for r in fetch(conn, inputs, [version_id, *ids]):
            names.setdefault(r["task_id"], []).append(r["name"])
        models = fetch(conn, USAGE_MODELS_SQL.format(placeholders(len(ids))), ids)
    return {
        "runs": [
            {
                "id": r["id"],
                "project": r["project"],
                "name": r["name"],
                "status": r["status"],
                "template": r["parent_id"],
                "trigger": r["trigger_name"],
                "trigger_entity": {
                    "kind": r["trigger_entity_kind"] or "",
                    "id": r["trigger_entity_id"],
                }
                if r["trigger_entity_id"]
                else None,
                "inputs": sorted(names.get(r["id"], ())),
                "created_at": json_time(r["created_at"]),
            }
            for r in runs
        ],
        "models": [
            model_ref(m)
            for m in models
        ],
    }


# -- changing a draft's files --------------------------------------------------------------

STAGED_SQL = (
    "SELECT path, size, sha256, source, mtime_ns FROM dataset_version_files "
    "WHERE version_id = %s AND source IS NOT NULL"
)
DELETE_FILES_SQL = "DELETE FROM dataset_version_files WHERE version_id = %s AND path IN ({})"
INSERT_STAGED_SQL = (
    "INSERT INTO dataset_version_files (version_id, path, size, sha256, source, mtime_ns) "
    "VALUES (%s, %s, %s, %s, %s, %s)"
)
RECOUNT_SQL = "UPDATE dataset_versions SET file_count = %s, total_size = %s WHERE id = %s"


class Staged(NamedTuple):
    """A draft's file that is still local (not uploaded yet)."""

    path: str
    size: int
    sha256: str
    source: str | None
    mtime_ns: int | None


def final_conflict(version_id: str, label: str) -> Conflict:
    return Conflict(
        f"version {version_id} ({label}) is final and cannot change; make a child version "
        f"with `retrain dataset create --project ... --name ... --parents {version_id}`"
    )


def draft(conn: Any, version_id: str, *, for_update: bool = False) -> Row:
    """The draft's record; a final version is a `Conflict` that says what to do instead."""
    record = load(conn, version_id, for_update=for_update)
    if record["status"] != "draft":
        raise final_conflict(version_id, label(record))
    return record


def staged(conn: Any, version_id: str) -> dict[str, Staged]:
    return {
        r["path"]: Staged(r["path"], int(r["size"]), r["sha256"], r["source"], r["mtime_ns"])
        for r in fetch(conn, STAGED_SQL, [version_id])
    }


def hash_files(
    local: Sequence[LocalFile], staged: Mapping[str, Any], reporter: Reporter
) -> list[tuple[LocalFile, str]]:
    """Hash local files, reusing the hash of a file staged from the same place with the
    same size and modification time (repeated `sync` of a large folder stays cheap)."""
    from orchestrator.storage.base import sha256_file

    out: list[tuple[LocalFile, str]] = []
    with reporter.task("hashing", sum(f.size for f in local)) as advance:
        for f in local:
            row = staged.get(f.path)
            if (
                row is not None
                and row.source == str(f.source)
                and row.size == f.size
                and row.mtime_ns == f.mtime_ns
            ):
                out.append((f, row.sha256))
            else:
                out.append((f, sha256_file(f.source)))
            advance(f.size)
    return out


def change_files(
    conn: Any,
    version_id: str,
    hashed: Sequence[tuple[LocalFile, str]] = (),
    *,
    remove: Callable[[list[str]], list[str]] | None = None,
) -> Row:
    """In the open write transaction of `conn`: stage `hashed` files into the draft (new
    paths added, changed content replaced) after removing the paths `remove` picks from the
    draft's current ones; recount the draft. Returns `ChangeSummary` as a record."""
    record = draft(conn, version_id, for_update=True)
    known = manifest(conn, record["id"])
    removed = sorted(remove(list(known))) if remove is not None else []
    _delete_files(conn, record["id"], removed)
    added: list[str] = []
    modified: list[str] = []
    unchanged = 0
    new_rows = []
    for local, sha in hashed:
        before = known.get(local.path)
        if before is not None and before[2] == sha:
            unchanged += 1
            continue
        (added if before is None else modified).append(local.path)
        new_rows.append(
            (record["id"], local.path, local.size, sha, str(local.source), local.mtime_ns)
        )
    _delete_files(conn, record["id"], modified)
    executemany(conn, INSERT_STAGED_SQL, new_rows)
    files = manifest(conn, record["id"])
    total = sum(f[1] for f in files.values())
    execute(conn, RECOUNT_SQL, [len(files), total, record["id"]])
    return {
        "version_id": version_id,
        "added": added,
        "modified": modified,
        "removed": removed,
        "unchanged": unchanged,
        "file_count": len(files),
        "total_size": total,
    }


def _delete_files(conn: Any, version_id: str, paths: Sequence[str]) -> None:
    for start in range(0, len(paths), 500):  # keep IN lists within every backend's limits
        chunk = paths[start : start + 500]
        execute(conn, DELETE_FILES_SQL.format(placeholders(len(chunk))), [version_id, *chunk])


# -- finalize ------------------------------------------------------------------------------

KNOWN_STORED_SQL = (
    "SELECT DISTINCT f.sha256 FROM dataset_version_files f "
    "JOIN dataset_versions v ON v.id = f.version_id "
    "WHERE f.sha256 IN ({}) AND v.status = 'final'"
)
SET_MANIFEST_SQL = "UPDATE dataset_versions SET manifest_sha256 = %s WHERE id = %s"
CLEAR_SOURCES_SQL = (
    "UPDATE dataset_version_files SET source = NULL, mtime_ns = NULL WHERE version_id = %s"
)
MAKE_FINAL_SQL = (
    "UPDATE dataset_versions SET status = 'final', finalized_at = %s, manifest_sha256 = %s "
    "WHERE id = %s"
)

Read = Callable[[], AbstractContextManager[Any]]
"""Opens a driver connection to read in."""
Write = Callable[[bool], AbstractContextManager[Any]]
"""Opens a driver connection in a write transaction committed at its end; the argument says
whether it writes events (its commit then wakes the scheduler)."""


def known_stored(conn: Any, hashes: Iterable[str]) -> set[str]:
    """Hashes already held by a final version, so certainly in blob storage (uploads happen
    before a version is committed as final)."""
    wanted = sorted(set(hashes))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        sql = KNOWN_STORED_SQL.format(placeholders(len(chunk)))
        found.update(r["sha256"] for r in fetch(conn, sql, chunk))
    return found


def finalize(
    read: Read, write: Write, blobs: BlobStore, reporter: Reporter, version_id: str
) -> Row:
    """Upload what the draft holds locally, store its manifest blob, then mark it final, in
    that order: a crash at any point leaves a draft, never a final version missing blobs.
    Returns `FinalizeResult` as a record."""
    from orchestrator.datasets import manifest as manifests
    from orchestrator.datasets.manifest import FileEntry
    from orchestrator.storage.base import sha256_bytes

    with read() as conn:
        record = draft(conn, version_id)
        files = manifest(conn, record["id"])
        staged_files = staged(conn, record["id"])
        needed = {row.sha256 for row in staged_files.values()}
        needed -= known_stored(conn, needed)
    missing = blobs.missing(needed)
    uploads: dict[str, Staged] = {}
    for row in staged_files.values():
        if row.sha256 in missing:
            uploads.setdefault(row.sha256, row)
    total = sum(row.size for row in uploads.values())
    with reporter.task(f"uploading {label(record)}", total) as advance:
        blobs.put_many(
            [(sha, partial(unchanged_source, row)) for sha, row in uploads.items()],
            progress=advance,
        )
    header = {k: record[k] for k in ("id", "project", "name", "version", "parents")}
    body = manifests.encode(header, [FileEntry(*f) for f in files.values()])
    manifest_sha = sha256_bytes(body)
    # Name the manifest on the draft before storing it, so `storage gc` sees it referenced
    # in the moment between its upload and the commit below.
    with write(False) as conn:
        draft(conn, version_id, for_update=True)
        execute(conn, SET_MANIFEST_SQL, [manifest_sha, record["id"]])
    if not blobs.exists(manifest_sha):
        blobs.put_bytes(manifest_sha, body)
    with write(True) as conn:
        draft(conn, version_id, for_update=True)
        if manifest(conn, record["id"]) != files:
            raise Conflict(
                f"draft {version_id} changed while it was being finalized; run finalize again"
            )
        execute(conn, CLEAR_SOURCES_SQL, [record["id"]])
        execute(conn, MAKE_FINAL_SQL, [stamp(conn, utcnow()), manifest_sha, record["id"]])
        final = load(conn, version_id)
        record_event(
            conn,
            eventlog.DATASET_VERSION_FINALIZED,
            final,
            manifest_sha256=manifest_sha,
            file_count=final["file_count"],
            total_size=final["total_size"],
            parents=final["parents"],
        )
    return {
        "version": final,
        "uploaded_blobs": len(uploads),
        "uploaded_bytes": total,
        "reused_blobs": len({f[2] for f in files.values()}) - len(uploads),
    }


def unchanged_source(row: Staged) -> Path:
    """The local file a staged row names, checked to be as it was when it was added."""
    assert row.source is not None
    source = Path(row.source)
    try:
        stat = source.stat()
    except OSError:
        raise UserError(
            f"{source} (dataset path {row.path!r}) is gone since it was added; "
            "add it again or remove it from the draft"
        ) from None
    if stat.st_size != row.size or stat.st_mtime_ns != row.mtime_ns:
        raise UserError(
            f"{source} (dataset path {row.path!r}) changed since it was added; "
            "run `retrain dataset add` (or sync) again before finalizing"
        )
    return source
