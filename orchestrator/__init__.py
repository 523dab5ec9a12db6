"""retrain: event-driven retraining. The Python SDK starts here.

`from orchestrator import Dataset` imports only what datasets need; the CLI lives in
`orchestrator.cli`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Dataset", "Runtime", "Settings", "__version__"]

if TYPE_CHECKING:
    from orchestrator.datasets.sdk import Dataset
    from orchestrator.runtime import Runtime
    from orchestrator.settings import Settings


def __getattr__(name: str) -> Any:
    # Lazy, so `import orchestrator.settings` (in a worker, say) does not load SQLAlchemy.
    if name == "Dataset":
        from orchestrator.datasets.sdk import Dataset

        return Dataset
    if name == "Runtime":
        from orchestrator.runtime import Runtime

        return Runtime
    if name == "Settings":
        from orchestrator.settings import Settings

        return Settings
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
