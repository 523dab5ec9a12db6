"""What a task is made of, validated where it enters: the execution spec, parameters, inputs.

The same models validate `retrain task create` options and `task.yaml`, so both give the same
errors; task.yaml errors also carry file:line:col.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from orchestrator.redact import has_url_credentials, is_secret_name
from orchestrator.tasks.names import check_input_name as check_input_name
from orchestrator.tasks.names import check_param_name as check_param_name
from orchestrator.tasks.names import check_queue as check_queue

TASK_TYPES = ("training", "data_processing", "evaluation", "inference", "other")
TaskType = Literal["training", "data_processing", "evaluation", "inference", "other"]
Priority = Literal["high", "normal", "low"]

DEFAULT_TIMEOUT_S = 24 * 3600
"""A task with no timeout still gets one: an unbounded job would hold a GPU forever, and RQ's
own default (180 s) would kill real training."""
DEFAULT_QUEUE = "default"
DEFAULT_ABORT_GRACE_S = 30

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Values that are credentials whatever their variable is called.
_SECRET_VALUE = re.compile(
    r"(AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|xox[abprs]-[\w-]{10,}"
    r"|sk-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{20,}|glpat-[\w-]{20,}|-----BEGIN [A-Z ]*PRIVATE KEY)"
)


MAX_TIMEOUT_S = 30 * 86400
"""A run's longest timeout: a run that needs longer should checkpoint and be re-run."""
MAX_DURATION_S = 365 * 86400
"""The longest duration anything accepts (cooldowns, intervals): past it is a typo."""


def parse_duration(
    value: str | int | float, *, minimum: int = 1, maximum: int = MAX_DURATION_S
) -> int:
    """`12h`, `30m`, `90s`, `2d` or a number of seconds → seconds (`minimum` to `maximum`)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration such as 90s, 30m, 12h or 2d")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < minimum:
        raise ValueError(f"{value!r} is shorter than {minimum} second(s)")
    if seconds > maximum:
        raise ValueError(f"{value!r} is too long (at most {describe_seconds(maximum)})")
    return int(seconds)


def describe_seconds(seconds: int) -> str:
    """The largest whole unit: `30d`, `1h`, `90s`."""
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def check_env(env: Mapping[str, str], not_secret: Iterable[str] = ()) -> None:
    """A task's `env` holds no credential: tasks are stored, shown by `task show` and sent to
    Redis. Names are judged by `redact.is_secret_name` (a name declared in `not_secret` passes:
    the override for a false positive); values holding a URL with a password or a well-known
    token format are refused whatever their name."""
    declared = set(not_secret)
    check_env_names(env)
    for name, text in env.items():
        if has_url_credentials(str(text)) or _SECRET_VALUE.search(str(text)):
            raise ValueError(
                f"{name}: the value holds a credential (a URL with a password, or an access "
                "token); tasks are stored and shown to everyone, so set it in the worker's "
                "environment instead"
            )
        if is_secret_name(name) and name not in declared:
            raise ValueError(
                f"{name} looks like a credential's name; tasks are stored and shown to "
                "everyone, so set it in the worker's environment instead (if it is not a "
                f"secret, say so with --env-not-secret {name}, or env_not_secret: [{name}] in "
                "task.yaml)"
            )


def check_env_names(env: Mapping[str, str]) -> None:
    for name in env:
        if not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        if name in RESERVED_ENV or name.startswith("RETRAIN_"):
            raise ValueError(f"{name} is set by the worker for every run; a task cannot set it")


RESERVED_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "PYTHONPATH", "VIRTUAL_ENV"})
"""Variables the worker sets for each run: a task setting them would escape its GPU slot or
its environment."""


class EntryPoint(BaseModel):
    """What to run: a script path inside the repository, or a module (`python -m`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    script: str | None = None
    module: str | None = None

    @model_validator(mode="after")
    def _one(self) -> EntryPoint:
        if bool(self.script) == bool(self.module):
            raise ValueError("give exactly one of script or module")
        if self.script and (self.script.startswith("/") or ".." in self.script.split("/")):
            raise ValueError(f"script {self.script!r} must be a path inside the repository")
        if self.module and not re.match(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$", self.module):
            raise ValueError(f"module {self.module!r} is not a dotted module name")
        return self

    def describe(self) -> str:
        return f"script {self.script}" if self.script else f"module {self.module}"


class ExecutionSpec(BaseModel):
    """Everything a worker needs to run the task, apart from parameters and inputs."""

    model_config = ConfigDict(extra="forbid")

    repo: str
    branch: str | None = None
    commit: str | None = None
    working_dir: str = "."
    entry: EntryPoint
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    diff: str | None = None
    requirements: list[str] = Field(default_factory=list)
    python: str | None = None
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    env_not_secret: list[str] = Field(default_factory=list)
    """Names in `env` that look like a credential's but are not (the user said so)."""
    timeout_s: Annotated[int, Field(ge=1, le=MAX_TIMEOUT_S)] = DEFAULT_TIMEOUT_S
    abort_grace_s: Annotated[int, Field(ge=0, le=3600)] = DEFAULT_ABORT_GRACE_S
    """Between SIGTERM and SIGKILL when the run is aborted, times out or its worker stops."""
    retries: Annotated[int, Field(ge=0, le=10)] = 0
    """Times the run goes back to its queue when its worker is lost (0: it fails)."""

    @field_validator("commit")
    @classmethod
    def _commit(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[0-9a-f]{7,64}$", value):
            raise ValueError(f"{value!r} is not a commit hash")
        return value

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"{value!r} must be a folder inside the repository")
        return value.strip("/") or "."

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        # Credentials are judged where a task is declared (TaskDefinition): a stored spec is
        # not judged again, so a rule made stricter never stops existing templates' clones.
        check_env_names(value)
        return value

    @field_validator("python")
    @classmethod
    def _python(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^3\.\d{1,2}(\.\d{1,2})?$", value):
            raise ValueError(f"{value!r} is not a Python version such as 3.11")
        return value


class TaskDefinition(BaseModel):
    """A task as `task.yaml` or `retrain task create` declare it."""

    model_config = ConfigDict(extra="forbid")

    project: str
    name: str
    type: TaskType = "training"
    tags: list[str] = Field(default_factory=list)
    comment: str = ""
    repo: str
    branch: str | None = None
    commit: str | None = None
    working_dir: str = "."
    script: str | None = None
    module: str | None = None
    args: list[str] = Field(default_factory=list)
    env_not_secret: list[str] = Field(default_factory=list)
    """Names in `env` that look like a credential's but are not (declared before `env`, whose
    check reads it)."""
    env: dict[str, str] = Field(default_factory=dict)
    requirements: list[str] | str | None = None
    """A list of pinned lines, or the path of a requirements file (relative to task.yaml)."""
    resolve: bool = False
    """Pin unpinned requirements with uv's resolver at registration."""
    python: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    queue: str = DEFAULT_QUEUE
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    timeout: str | int = DEFAULT_TIMEOUT_S
    abort_grace: str | int = DEFAULT_ABORT_GRACE_S
    """Grace between SIGTERM and SIGKILL on abort or timeout (`30s`, `2m`)."""
    retries: Annotated[int, Field(ge=0, le=10)] = 0
    """Times a run goes back to its queue when its worker is lost."""

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            check_param_name(name)
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            check_input_name(name)
        return value

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        return check_queue(value)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str | int) -> int:
        return parse_duration(value, maximum=MAX_TIMEOUT_S)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        check_env(value, info.data.get("env_not_secret") or ())
        return value

    @field_validator("abort_grace")
    @classmethod
    def _abort_grace(cls, value: str | int) -> int:
        seconds = parse_duration(value, minimum=0)
        if seconds > 3600:
            raise ValueError("at most 1h")
        return seconds

    @model_validator(mode="after")
    def _branch_or_commit(self) -> TaskDefinition:
        if self.branch and self.commit:
            raise ValueError("give a branch or a commit, not both")
        return self
