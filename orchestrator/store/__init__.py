"""The store: every piece of state retrain keeps, in one SQL database."""

from orchestrator.store.db import Store

__all__ = ["Store"]
