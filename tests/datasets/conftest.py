"""Backends for dataset tests: the embedded defaults, real PostgreSQL, and S3 over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite+file", "postgres+file", "sqlite+s3"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    database, storage = str(request.param).split("+")
    if database == "postgres":
        monkeypatch.setenv("RETRAIN_DATABASE_URL", request.getfixturevalue("postgres_url"))
    if storage == "s3":
        monkeypatch.setenv("RETRAIN_STORAGE_URL", request.getfixturevalue("s3_bucket_url"))
        monkeypatch.setenv("RETRAIN_S3_ENDPOINT_URL", request.getfixturevalue("s3_endpoint"))
    return str(request.param)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Create `files` (relative path -> text) under `root`."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
