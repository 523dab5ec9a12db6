"""Per-directory CLI memory: the last draft created from each directory, so `add`, `sync`,
`remove` and `close` work without `--id` (as `clearml-data` users expect)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from orchestrator.errors import UserError


class DraftMemory:
    def __init__(self, state_dir: Path) -> None:
        self.file = state_dir / "drafts.json"

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write(self, data: dict[str, str]) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".drafts.")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.file)

    def remember(self, version_id: str, cwd: Path | None = None) -> None:
        data = self._read()
        data[str((cwd or Path.cwd()).absolute())] = version_id
        self._write(data)

    def forget(self, version_id: str) -> None:
        data = self._read()
        kept = {k: v for k, v in data.items() if v != version_id}
        if kept != data:
            self._write(kept)

    def resolve(self, explicit: str | None, cwd: Path | None = None) -> str:
        """`--id` when given, else the draft last created from this directory."""
        if explicit:
            return explicit
        found = self._read().get(str((cwd or Path.cwd()).absolute()))
        if not found:
            raise UserError(
                "--id: no draft was created from this directory; pass --id VERSION_ID "
                "(find it with: retrain dataset search --status draft)"
            )
        return found
