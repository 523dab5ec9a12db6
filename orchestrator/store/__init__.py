"""The store: every piece of state retrain keeps, in one SQL database.

`Store` (SQLAlchemy) is imported on first use, so `orchestrator.store.lean` and
`orchestrator.store.revision` stay cheap for commands that must start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.store.db import Store

__all__ = ["Store"]


def __getattr__(name: str) -> Any:
    if name == "Store":
        from orchestrator.store.db import Store

        return Store
    raise AttributeError(f"module 'orchestrator.store' has no attribute {name!r}")
