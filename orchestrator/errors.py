"""One exception hierarchy for retrain.

`UserError` and its subclasses are mistakes a user can fix (a bad id, a bad path, a bad
setting): the CLI prints their message on one line and exits with status 2, and the operation
that raised them has changed nothing. `ServiceUnavailable` is a service we cannot reach
(database, S3, Redis); it is reported the same way, since the cure is also outside the program.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RetrainError(Exception):
    """Base class of every error retrain raises on purpose."""

    exit_code = 2


class UserError(RetrainError):
    """A mistake in what the user asked for; the message names what and where."""


class ConfigError(UserError):
    """A setting (environment variable or file) is invalid."""


class NotFound(UserError):
    """A named entity does not exist."""

    def __init__(self, kind: str, ref: str, hint: str = "") -> None:
        self.kind = kind
        self.ref = ref
        message = f"no {kind} {ref!r}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class Conflict(UserError):
    """The request contradicts the current state (a final version cannot change, say)."""


class PathError(UserError):
    """A path is missing, escapes its root, or is otherwise unusable."""


class ServiceUnavailable(RetrainError):
    """A service retrain depends on (database, blob storage, Redis) cannot be reached."""


class StorageError(ServiceUnavailable):
    """Blob storage refused or failed an operation."""


class IntegrityError(RetrainError):
    """Stored data does not match its recorded hash or size."""
