"""The `retrain` command. Logging, output and error policy are configured here and only here."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from orchestrator.errors import RetrainError

# Options documented as taking several values (`--files a b c`); see `expand_variadic`.
VARIADIC_OPTIONS = frozenset({"--files", "--parents", "--tags", "--param", "--input", "--env"})


def expand_variadic(argv: Sequence[str]) -> list[str]:
    """Rewrite `--files a b --x` as `--files a --files b --x`.

    Click options take one value each; users of dataset tools type several after one flag
    (`clearml-data add --files a b`). Values run until the next token that starts with `-`.
    """
    out: list[str] = []
    current: str | None = None
    for arg in argv:
        if arg == "--":
            current = None
            out.append(arg)
        elif arg.startswith("-"):
            current = arg if arg in VARIADIC_OPTIONS else None
            out.append(arg)
        elif current is not None and out and out[-1] != current:
            out.extend([current, arg])
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `retrain` console script (`argv` None: this process is the command,
    and it ends when this returns)."""
    args = expand_variadic(sys.argv[1:] if argv is None else argv)
    try:
        if not _run_fast(args):
            from orchestrator.cli.app import for_args

            for_args(args)(args=args, prog_name="retrain")
    except RetrainError as exc:
        sys.stderr.write(f"retrain: error: {exc}\n")
        sys.exit(exc.exit_code)
    except UnicodeEncodeError:
        # An argument with bytes that are not UTF-8 (Python passes them on as lone
        # surrogates) reaches the database driver or Redis, which cannot encode it; the
        # transaction it was in is rolled back. Name the argument instead of a traceback.
        bad = next((i for i, a in enumerate(args) if not _encodes(a)), None)
        if bad is None:
            raise
        option = args[bad - 1] if bad and args[bad - 1].startswith("--") else "argument"
        sys.stderr.write(f"retrain: error: {option} {args[bad]!r} is not valid UTF-8\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("retrain: interrupted\n")
        sys.exit(130)
    finally:
        if argv is None:
            leave_quickly()


def _encodes(arg: str) -> bool:
    try:
        arg.encode()
    except UnicodeEncodeError:
        return False
    return True


def _run_fast(args: list[str]) -> bool:
    """Run the command without building typer's tree when it is one that can (see
    `orchestrator.cli.lean.fast_command`); False when typer must parse it."""
    from orchestrator.cli import context
    from orchestrator.cli.lean import fast_command

    command = fast_command(args)
    if command is None:
        return False
    context.reset()  # as the root command's callback does: the environment as it is now
    try:
        command()
    finally:
        context.reset()
    return True


def leave_quickly() -> None:
    """Spare the ending process a garbage collection of everything it imported.

    Interpreter shutdown collects every reference cycle among the objects SQLAlchemy,
    pydantic and typer leave behind (80,000 of them after `dataset tag`): seconds of CPU on a
    loaded machine, after the command has printed its answer and before the shell prompt
    comes back. By now the command's runtime is closed (its transactions committed, its
    connections closed, see `orchestrator.cli.context`); freezing moves every object into
    the collector's permanent generation, so the final collections skip them. Nothing else
    changes: atexit handlers run, and stdout and stderr are flushed, as before (unlike
    `os._exit`, which could lose what they hold)."""
    import gc

    gc.freeze()
