"""Task statuses and the changes allowed between them (no imports: the CLI's fast path uses
this too)."""

from __future__ import annotations

TRANSITIONS: dict[str, tuple[str, ...]] = {
    "draft": ("queued", "aborted"),
    "queued": ("running", "aborted", "failed"),
    "running": ("completed", "failed", "aborted", "queued"),
    "completed": (),
    "failed": (),
    "aborted": (),
}
"""Allowed status changes. `running -> queued` is a retry after a lost worker."""

STATUSES = tuple(TRANSITIONS)
FINISHED = ("completed", "failed", "aborted")

EVENT_FIELDS = ("status", "type", "queue", "parent", "template", "trigger", "metrics")
"""What a task event's payload holds (of the task's `TaskInfo` fields): what triggers filter on."""
