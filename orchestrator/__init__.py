"""retrain: event-driven retraining. The Python SDK starts here.

`from orchestrator import Dataset, Task, Model`: each imports only what it needs; the CLI
lives in `orchestrator.cli`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Dataset", "Model", "Runtime", "Settings", "Task", "__version__"]

if TYPE_CHECKING:
    from orchestrator.datasets.sdk import Dataset
    from orchestrator.models.sdk import Model
    from orchestrator.runtime import Runtime
    from orchestrator.settings import Settings
    from orchestrator.tasks.sdk import Task


def __getattr__(name: str) -> Any:
    # Lazy, so `import orchestrator.settings` (in a worker, say) does not load SQLAlchemy.
    if name == "Dataset":
        from orchestrator.datasets.sdk import Dataset

        return Dataset
    if name == "Task":
        from orchestrator.tasks.sdk import Task

        return Task
    if name == "Model":
        from orchestrator.models.sdk import Model

        return Model
    if name == "Runtime":
        from orchestrator.runtime import Runtime

        return Runtime
    if name == "Settings":
        from orchestrator.settings import Settings

        return Settings
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
