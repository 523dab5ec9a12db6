"""Logging for the daemons, configured by the CLI entry point only: one line per decision,
with the ids it is about; JSON when not on a terminal (for log shippers), readable otherwise."""

from __future__ import annotations

import logging
import sys

# Off a terminal, structlog is imported without rich: structlog loads rich's traceback and
# pretty-printing machinery at import time (a tenth of a second, a third of a worker's start)
# for the console renderer alone, and a daemon that logs JSON never uses it. This module is the
# daemons' first import of structlog; rich stays importable for everything else.
_WITHOUT_RICH = "rich" not in sys.modules and not sys.stderr.isatty()
if _WITHOUT_RICH:
    sys.modules["rich"] = None  # type: ignore[assignment]
try:
    import structlog
finally:
    if _WITHOUT_RICH:
        del sys.modules["rich"]

LIBRARY_LEVEL = logging.WARNING
"""Records of libraries (RQ, APScheduler, Alembic) below this are dropped: their routine
lines (job OK, job added) would bury the daemon's own decisions."""


def configure(level: str = "INFO") -> None:
    """Log to stderr: readable lines on a terminal, one JSON object per line otherwise.
    Libraries that log through `logging` (RQ's worker above all, which would otherwise add
    its own console handler) get the same format."""
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                stamp,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(LIBRARY_LEVEL)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
