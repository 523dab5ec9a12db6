"""The root `retrain` command and its groups.

A command imports only its own module: `main` builds a root that holds just the group or
command named on the command line (each module's own imports are the ones it needs, see
`orchestrator.cli.imports`). The full tree is built for `--help`, an unknown name, and for
whoever asks for `app`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import typer

from orchestrator.cli import context

ENTRIES: dict[str, tuple[str, str, bool]] = {
    # name: (module under orchestrator.cli, attribute, whether it is a group of commands)
    "dataset": ("dataset", "app", True),
    "task": ("task", "app", True),
    "model": ("model", "app", True),
    "triggers": ("triggers", "app", True),
    "scheduler": ("triggers", "scheduler", False),
    "history": ("triggers", "history", False),
    "worker": ("worker", "worker", False),
    "status": ("status", "status", False),
    "logs": ("logs", "logs", False),
    "metrics": ("metrics", "metrics", False),
    "health": ("health", "health", False),
    "up": ("up", "up", False),
    "queue": ("queue", "queue_app", True),
    "redis": ("queue", "redis_app", True),
    "config": ("admin", "config_app", True),
    "db": ("admin", "db_app", True),
    "storage": ("admin", "storage_app", True),
}


def build(names: Iterable[str] | None = None) -> typer.Typer:
    """The root command holding `names` (default: every command, in the order of ENTRIES)."""
    root = typer.Typer(
        suggest_commands=False,
        name="retrain",
        help="Event-driven retraining: version datasets, declare triggers, run training on GPUs.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    for name in ENTRIES if names is None else names:
        module, attribute, group = ENTRIES[name]
        target = getattr(importlib.import_module(f"orchestrator.cli.{module}"), attribute)
        if group:
            root.add_typer(target, name=name)
        else:
            root.command(name)(target)
    root.callback()(_root)
    return root


def for_args(args: list[str]) -> typer.Typer:
    """The root for one invocation: only the command it names, when it names a known one."""
    if args and args[0] in ENTRIES:
        return build([args[0]])
    return build()


def _root(ctx: typer.Context) -> None:
    """Each invocation starts from the environment as it is now."""
    context.reset()
    ctx.call_on_close(context.reset)


def __getattr__(name: str) -> Any:
    if name == "app":  # every command, as tests and documentation checks want it
        return build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
