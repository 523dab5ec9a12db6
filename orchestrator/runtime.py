"""The objects one process needs, built lazily from settings and shared by CLI and SDK."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from orchestrator.progress import NullReporter, Reporter
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from redis import Redis

    from orchestrator.datasets.service import DatasetService
    from orchestrator.git import Mirror
    from orchestrator.models.service import ModelService
    from orchestrator.queue.adapter import QueueAdapter
    from orchestrator.storage import BlobCache, BlobStore
    from orchestrator.store import Store
    from orchestrator.tasks.service import TaskService


class Runtime:
    """Settings plus the store, blob storage, cache and services made from them. Nothing
    connects, or is imported, until first used: `retrain config show` works with a database
    down, and a command pays only for the parts it touches."""

    def __init__(self, settings: Settings | None = None, reporter: Reporter | None = None):
        self.settings = settings or Settings.load()
        self.reporter: Reporter = reporter or NullReporter()

    @cached_property
    def store(self) -> Store:
        from orchestrator.queue.wakeup import publisher
        from orchestrator.store import Store

        store = Store(self.settings.database_url)
        # After every commit that wrote events, wake the scheduler (best effort).
        store.on_events_committed.append(publisher(self.settings))
        return store

    @cached_property
    def blobs(self) -> BlobStore:
        from orchestrator.storage import open_storage

        return open_storage(self.settings)

    @cached_property
    def cache(self) -> BlobCache:
        from orchestrator.storage import open_cache

        return open_cache(self.settings, self.blobs)

    @cached_property
    def datasets(self) -> DatasetService:
        from orchestrator.datasets.service import DatasetService

        return DatasetService(self.store, self.blobs, self.cache, self.reporter)

    @cached_property
    def mirror(self) -> Mirror:
        from orchestrator.git import Mirror

        return Mirror(self.settings.resolved_cache_dir / "git")

    @cached_property
    def redis(self) -> Redis:
        from orchestrator.queue.connection import connect

        return connect(self.settings)

    @cached_property
    def queues(self) -> QueueAdapter:
        from orchestrator.queue.adapter import QueueAdapter

        return QueueAdapter(self.redis, secret=self.settings.worker_secret)

    @cached_property
    def tasks(self) -> TaskService:
        from orchestrator.tasks.service import TaskService

        return TaskService(self.store, self.mirror, lambda: self.queues)

    @cached_property
    def models(self) -> ModelService:
        from orchestrator.models.service import ModelService

        return ModelService(self.store)

    def close(self) -> None:
        if "redis" in self.__dict__:
            self.redis.close()
        if "store" in self.__dict__:
            self.store.dispose()


_default: Runtime | None = None


def default_runtime() -> Runtime:
    """The process-wide runtime from the environment (what the SDK uses by default)."""
    global _default
    if _default is None:
        _default = Runtime()
    return _default
