"""Logging for the daemons, configured by the CLI entry point only: one line per decision,
with the ids it is about; JSON when not on a terminal (for log shippers), readable otherwise."""

from __future__ import annotations

import logging
import sys

import structlog

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
