"""What the SDK's `Dataset`, `Task` and `Model` share: a handle on one stored row, read into
`_info` (a view with `id`, `name`, `project` and `tags`), re-read by the methods that change
it. Standard library only: importing the SDK loads nothing more through this."""

from __future__ import annotations

from typing import Any


class Handle:
    _info: Any

    @property
    def id(self) -> str:
        return str(self._info.id)

    @property
    def name(self) -> str:
        return str(self._info.name)

    @property
    def project(self) -> str:
        return str(self._info.project)

    @property
    def tags(self) -> list[str]:
        """As of the last read."""
        return list(self._info.tags)
