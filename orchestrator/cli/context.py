"""The runtime of one CLI invocation, made on first use and closed when the command ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.cli.state import DraftMemory

if TYPE_CHECKING:
    from orchestrator.runtime import Runtime

_current: Runtime | None = None


def runtime() -> Runtime:
    global _current
    if _current is None:
        # Imported here: the runtime pulls in SQLAlchemy and pydantic, which commands that
        # answer from the lean read path never need.
        from orchestrator.progress import reporter_for_terminal
        from orchestrator.runtime import Runtime

        _current = Runtime(reporter=reporter_for_terminal())
    return _current


def drafts() -> DraftMemory:
    return DraftMemory(runtime().settings.state_dir)


def reset() -> None:
    """Forget the runtime (each invocation reads the environment anew)."""
    global _current
    if _current is not None:
        _current.close()
    _current = None
