"""What a job's process sees of its worker's environment: an allow-list, never the whole.

A job runs code from any repository, so it gets none of the worker's credentials (cloud keys,
the Redis URL, a git token): only what a program needs to run (PATH, HOME, locale, temporary
folders, CUDA and certificate locations, proxies without credentials), the task's own `env`,
retrain's job variables, and the names the worker's operator passes on purpose
(`retrain worker --pass-env NAME`, kept in `PASS_ENV` for the work horses). The variables
that place the job (its GPUs, its virtual environment, retrain's own) are set last, so a task
can never override them.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping

from orchestrator.redact import has_url_credentials

PASS_ENV = "RETRAIN_PASS_ENV"  # noqa: S105 (a variable's name, not a password)
"""Comma-separated names (or globs) the operator lets through, set by `--pass-env`."""

ALLOWED = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "TZ",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TMPDIR",
    "TEMP",
    "TMP",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
    "CUDA_PATH",
    "NVIDIA_*",
    "XDG_*",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
"""What passes by default: names, or globs for families (`LC_*`)."""


def passed_names() -> list[str]:
    """The operator's `--pass-env` names, from this process's environment."""
    return [n.strip() for n in os.environ.get(PASS_ENV, "").split(",") if n.strip()]


def job_environment(
    worker_env: Mapping[str, str],
    task_env: Mapping[str, str],
    placed: Mapping[str, str],
    *,
    passed: Iterable[str] = (),
) -> dict[str, str]:
    """The job's whole environment: allowed and passed names from `worker_env` (values with
    URL credentials, such as a proxy with a password, only when passed by name), then the
    task's `env`, then `placed` (retrain's variables, GPUs, PATH), which always win."""
    explicit = list(passed)
    env: dict[str, str] = {}
    for name, value in worker_env.items():
        if name.startswith("RETRAIN_"):
            continue  # the worker's own settings: Redis, storage, git token, home
        wanted = any(fnmatch.fnmatchcase(name, p) for p in explicit)
        allowed = any(fnmatch.fnmatchcase(name, p) for p in ALLOWED)
        if wanted or (allowed and not has_url_credentials(value)):
            env[name] = value
    env.update({str(k): str(v) for k, v in task_env.items()})
    env.update(placed)
    return env
