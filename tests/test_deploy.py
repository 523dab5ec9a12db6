"""The deployment files under deploy/: they parse, wire the services as designed (workers never
get the database), and every `retrain ...` command line in them names subcommands and options
that exist in the real CLI. No docker daemon, cluster or network is needed."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import pytest
import typer.main
import yaml

from orchestrator.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
SYSTEMD = DEPLOY / "systemd"
SCHEDULER_UNIT = SYSTEMD / "retrain-scheduler.service"
WORKER_UNIT = SYSTEMD / "retrain-worker@.service"
K8S = DEPLOY / "k8s"
README = DEPLOY / "README.md"
ENV_EXAMPLES = {
    "retrain.env": DEPLOY / "retrain.env.example",
    "database.env": DEPLOY / "database.env.example",
}

ROOT_COMMAND = typer.main.get_command(app)
WORKERS = ("worker-cpu", "worker-gpu")
SCHEDULERS = ("scheduler-a", "scheduler-b")
DATABASE_URL = "RETRAIN_DATABASE_URL"


# -- reading the files ------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for ext in ("*.yml", "*.yaml") for p in DEPLOY.rglob(ext))


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    (document,) = load_yaml(COMPOSE)
    assert isinstance(document, dict)
    return document


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_yaml(path)]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name} under deploy/k8s, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(workload)["containers"]
    assert isinstance(container, dict)
    return container


def secret_keys(name: str) -> set[str]:
    secret = k8s_object("Secret", name)
    return set(secret.get("stringData") or {}) | set(secret.get("data") or {})


def env_file(path: Path) -> dict[str, str]:
    """NAME=value lines of an env file, comments and blank lines skipped."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            values[name.strip()] = value
    return values


def service_env_files(service: dict[str, Any]) -> list[str]:
    files = service.get("env_file") or []
    names = [files] if isinstance(files, str) else files
    return [f if isinstance(f, str) else f["path"] for f in names]


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    """What a compose service's environment holds: its env files (read from the examples)
    overridden by `environment:`."""
    values: dict[str, str] = {}
    for name in service_env_files(service):
        values.update(env_file(ENV_EXAMPLES[name]))
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        for item in environment:
            name, _, value = str(item).partition("=")
            values[name] = value
    else:
        values.update({str(k): str(v) for k, v in environment.items()})
    return values


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def unit_values(path: Path, key: str) -> list[str]:
    """Every value of a key that systemd allows several times (configparser keeps the last)."""
    return [
        line.partition("=")[2].strip()
        for line in path.read_text().splitlines()
        if line.partition("=")[0].strip() == key
    ]


def seconds(timespan: str) -> float:
    """A systemd time span such as `6h`, `5min 30s` or `90`."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}
    parts = re.findall(r"(\d+)\s*([a-z]*)", timespan)
    assert parts, f"not a time span: {timespan!r}"
    return sum(int(number) * units[suffix] for number, suffix in parts)


# -- finding the `retrain` command lines ------------------------------------------------------

SHELL_OPERATORS = frozenset({"&&", "||", "|", ";", "&", "(", ")"})


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell line, split at `&&`, `;`, `|` and the like, without
    redirections (`>/dev/null`, `2>&1`) and `#` comments."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    redirected = False
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        elif set(token) <= set("<>&|"):  # a redirection: drop it, its target and its fd
            if commands[-1] and commands[-1][-1].isdecimal():
                commands[-1].pop()
            redirected = True
        elif redirected:
            redirected = False
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def is_retrain(token: str) -> bool:
    return token == "retrain" or token.endswith("/bin/retrain")


def retrain_part(words: Sequence[str]) -> list[str] | None:
    """`retrain ...` within a command: as the command itself (after `sudo` and NAME=value
    assignments), after `--` (kubectl exec), after `exec SERVICE` (docker compose exec), or
    anywhere as an absolute `.../bin/retrain`."""
    for i, word in enumerate(words):
        if not is_retrain(word):
            continue
        before = [w for w in words[:i] if w != "sudo" and not re.match(r"^[A-Z_][A-Z0-9_]*=", w)]
        if (
            not before
            or words[i - 1] == "--"
            or (i >= 2 and words[i - 2] == "exec")
            or word.endswith("/bin/retrain")
        ):
            return ["retrain", *words[i + 1 :]]
    return None


def from_shell(text: str) -> list[list[str]]:
    found = [retrain_part(c) for c in shell_commands(text)]
    return [c for c in found if c is not None]


def from_argv(argv: Sequence[str]) -> list[list[str]]:
    part = retrain_part(list(argv))
    return [] if part is None else [part]


def as_argv(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def compose_commands(document: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    for name, service in document["services"].items():
        build = service.get("build")
        ours = isinstance(build, dict) and build.get("dockerfile") == "deploy/Dockerfile"
        if "entrypoint" in service:
            argv = as_argv(service["entrypoint"]) + as_argv(service.get("command"))
        elif ours:  # the image's ENTRYPOINT is `retrain`
            argv = ["retrain", *as_argv(service.get("command"))]
        else:
            argv = []
        for command in from_argv(argv):
            yield f"service {name}", command
        test = (service.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test and test[0] == "CMD":
            healthchecks = from_argv(test[1:])
        elif isinstance(test, list) and test and test[0] == "CMD-SHELL":
            healthchecks = from_shell(test[1])
        elif isinstance(test, str):
            healthchecks = from_shell(test)
        else:
            healthchecks = []
        for command in healthchecks:
            yield f"service {name} healthcheck", command


def unit_commands(text: str) -> Iterator[tuple[str, list[str]]]:
    """Exec*= lines, and the commented-out ExecStart= alternatives the comments offer."""
    for line in text.splitlines():
        match = re.match(r"^\s*(#\s*)?(Exec[A-Za-z]*)=(.*)$", line)
        if match and match.group(3).strip():
            value = match.group(3).strip().lstrip("-@:+!")
            where = f"commented {match.group(2)}" if match.group(1) else match.group(2)
            for command in from_argv(shlex.split(value)):
                yield where, command


def k8s_commands(documents: Sequence[dict[str, Any]]) -> Iterator[tuple[str, list[str]]]:
    for doc in documents:
        if doc["kind"] not in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            continue
        spec = pod_spec(doc)
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            where = f"{doc['kind']} {doc['metadata']['name']} {container['name']}"
            # No `command`: the image's ENTRYPOINT, `retrain`, runs the args.
            argv = as_argv(container.get("command")) or ["retrain"]
            for command in from_argv(argv + as_argv(container.get("args"))):
                yield where, command
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                exec_ = (container.get(probe) or {}).get("exec")
                if exec_:
                    for command in from_argv(as_argv(exec_["command"])):
                        yield f"{where} {probe}", command


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), line continuations joined, comments dropped."""
    joined = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)
    instructions = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_commands(text: str) -> Iterator[tuple[str, list[str]]]:
    entrypoint: list[str] = []
    cmd: list[str] = []
    for keyword, rest in dockerfile_instructions(text):
        if keyword == "RUN":
            for command in from_shell(rest):
                yield "RUN", command
        elif keyword in ("ENTRYPOINT", "CMD"):
            argv = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
            if keyword == "ENTRYPOINT":
                entrypoint = argv
            else:
                cmd = argv
    for command in from_argv(entrypoint + cmd):
        yield "ENTRYPOINT + CMD", command


def markdown_code(text: str) -> Iterator[str]:
    """The lines of fenced code blocks, continuations joined; a ```markdown block is read as
    markdown (the README's draft section holds code blocks of its own)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^\s*(`{3,}|~{3,})\s*(\S*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, info = opening.groups()
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        i += 1
        if info in ("markdown", "md"):
            yield from markdown_code("\n".join(body))
        else:
            yield from "\n".join(body).replace("\\\n", " ").splitlines()


def readme_commands(text: str) -> Iterator[tuple[str, list[str]]]:
    for line in markdown_code(text):
        if line.strip().startswith("#"):
            continue
        for command in from_shell(line.strip().removeprefix("$ ")):
            yield "code block", command


def all_commands() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []

    def add(path: Path, items: Iterator[tuple[str, list[str]]]) -> None:
        name = path.relative_to(DEPLOY).as_posix()
        found.extend((f"{name} ({where})", command) for where, command in items)

    add(COMPOSE, compose_commands(compose()))
    for path in sorted(SYSTEMD.glob("*.service")):
        add(path, unit_commands(path.read_text()))
    for path in sorted(K8S.glob("*.yaml")):
        add(path, k8s_commands(load_yaml(path)))
    add(DOCKERFILE, dockerfile_commands(DOCKERFILE.read_text()))
    add(README, readme_commands(README.read_text()))
    unique: dict[str, tuple[str, list[str]]] = {}
    for where, command in found:
        unique.setdefault(f"{where}: {shlex.join(command)}", (where, command))
    return list(unique.values())


# -- checking a command line against the CLI --------------------------------------------------


def options_of(command: click.Command, ctx: click.Context) -> dict[str, click.Option]:
    """Every spelling of every option, `--help` included (click adds it per context)."""
    return {
        opt: param
        for param in command.get_params(ctx)
        if isinstance(param, click.Option)
        for opt in param.opts + param.secondary_opts
    }


def check_command(argv: Sequence[str]) -> list[str]:
    """What in a `retrain ...` command line the CLI does not have: a subcommand, an option, or
    a group left without its subcommand. Option values and arguments are not checked."""
    assert argv and argv[0] == "retrain", argv
    command: click.Command = ROOT_COMMAND
    ctx = click.Context(command, info_name="retrain", **command.context_settings)
    path = ["retrain"]
    problems: list[str] = []
    asked_help = False
    words = list(argv[1:])
    while words:
        word = words.pop(0)
        if word == "--":
            break
        if word.startswith("-") and word != "-":
            name = word.partition("=")[0]
            option = options_of(command, ctx).get(name)
            if option is None:
                problems.append(f"`{' '.join(path)}` has no option {name}")
            elif option.is_flag or option.count:
                asked_help = asked_help or name in ctx.help_option_names
            elif "=" not in word and words:
                words.pop(0)  # its value
            continue
        if isinstance(command, click.Group):
            sub = command.get_command(ctx, word)
            if sub is None:
                problems.append(f"`{' '.join(path)}` has no subcommand {word!r}")
                break
            ctx = click.Context(sub, parent=ctx, info_name=word, **sub.context_settings)
            command = sub
            path.append(word)
        # else: an argument of the command; nothing to check
    if isinstance(command, click.Group) and not asked_help and not problems:
        problems.append(f"`{' '.join(path)}` needs a subcommand")
    return problems


COMMANDS = all_commands()


@pytest.mark.parametrize(
    ("where", "argv"), COMMANDS, ids=[f"{w}: {' '.join(a)}" for w, a in COMMANDS]
)
def test_command_exists_in_cli(where: str, argv: list[str]) -> None:
    assert check_command(argv) == [], f"deploy/{where}: {shlex.join(argv)}"


def test_commands_are_found_in_every_deploy_file() -> None:
    files = {where.partition(" (")[0] for where, _ in COMMANDS}
    assert files >= {
        "docker-compose.yml",
        "systemd/retrain-scheduler.service",
        "systemd/retrain-worker@.service",
        "k8s/scheduler.yaml",
        "k8s/worker.yaml",
        "Dockerfile",
        "README.md",
    }
    subcommands = {tuple(argv[1:3]) for _, argv in COMMANDS}
    assert {("scheduler", "--triggers"), ("worker", "--queue"), ("db", "upgrade")} <= subcommands
    assert {("health", "scheduler"), ("health", "worker")} <= subcommands


def test_checker_accepts_real_commands() -> None:
    assert check_command(["retrain", "db", "upgrade"]) == []
    assert check_command(["retrain", "--help"]) == []
    assert check_command(["retrain", "task", "list", "-h"]) == []
    assert check_command(["retrain", "worker", "--queue", "gpu", "--gpus", "0", "--name=x"]) == []
    # A value that looks like an option is the option's value, not an option.
    assert check_command(["retrain", "worker", "--queue", "--burst"]) == []


def test_checker_rejects_what_the_cli_lacks() -> None:
    assert check_command(["retrain", "worker", "--queue", "gpu", "--no-such-flag"]) == [
        "`retrain worker` has no option --no-such-flag"
    ]
    assert check_command(["retrain", "db", "upgrade", "--bogus=1"]) == [
        "`retrain db upgrade` has no option --bogus"
    ]
    assert check_command(["retrain", "no-such-command"]) == [
        "`retrain` has no subcommand 'no-such-command'"
    ]
    assert check_command(["retrain", "db", "sideways"]) == [
        "`retrain db` has no subcommand 'sideways'"
    ]
    assert check_command(["retrain", "db"]) == ["`retrain db` needs a subcommand"]


def test_extraction_finds_a_made_up_flag_in_each_format() -> None:
    """The extractors see the commands of every format, so a bad flag cannot slip through."""
    bad = "`retrain worker` has no option --made-up"
    unit_text = "[Service]\nExecStart=-/opt/retrain/bin/retrain worker --queue gpu --made-up\n"
    compose_doc = {
        "services": {
            "w": {
                "build": {"context": "..", "dockerfile": "deploy/Dockerfile"},
                "command": ["worker", "--made-up"],
                "healthcheck": {"test": ["CMD-SHELL", "retrain worker --made-up || exit 1"]},
            }
        }
    }
    pod = {"containers": [{"name": "w", "args": ["worker", "--made-up"]}]}
    k8s_doc = {"kind": "DaemonSet", "metadata": {"name": "w"}, "spec": {"template": {"spec": pod}}}
    docker = 'FROM x\nRUN set -eux; \\\n    retrain worker --made-up >/dev/null\nCMD ["worker"]\n'
    readme = "```sh\nkubectl exec w -- retrain worker \\\n  --made-up  # comment\n```\n"
    found = [
        *[c for _, c in unit_commands(unit_text)],
        *[c for _, c in compose_commands(compose_doc)],
        *[c for _, c in k8s_commands([k8s_doc])],
        *[c for _, c in dockerfile_commands(docker)],
        *[c for _, c in readme_commands(readme)],
    ]
    assert len(found) == 6, found
    assert [check_command(c) for c in found] == [[bad]] * 6


# -- YAML, compose ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path: Path) -> None:
    assert load_yaml(path), f"{path} holds no document"


def test_compose_has_the_services() -> None:
    assert set(services()) >= {
        "redis",
        "postgres",
        "s3",
        "s3-init",
        "migrate",
        *SCHEDULERS,
        *WORKERS,
    }


def test_compose_redis_is_append_only() -> None:
    command = as_argv(services()["redis"]["command"])
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert any(v.endswith(":/data") for v in services()["redis"]["volumes"])


def test_compose_gpu_worker_reserves_nvidia_devices() -> None:
    devices = services()["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert as_argv(services()["worker-gpu"]["command"])[:3] == ["worker", "--queue", "gpu"]
    assert "none" in as_argv(services()["worker-cpu"]["command"])


@pytest.mark.parametrize("name", WORKERS)
def test_compose_workers_get_no_database(name: str) -> None:
    service = services()[name]
    assert DATABASE_URL not in service_environment(service)
    postgres_networks = set(services()["postgres"].get("networks") or ["default"])
    assert not postgres_networks & set(service.get("networks") or ["default"])


@pytest.mark.parametrize("name", ["migrate", *SCHEDULERS])
def test_compose_schedulers_get_the_database(name: str) -> None:
    service = services()[name]
    assert service_environment(service)[DATABASE_URL].startswith("postgresql://")
    assert set(services()["postgres"]["networks"]) & set(service["networks"])


def test_compose_shares_settings_and_storage() -> None:
    for name in (*SCHEDULERS, *WORKERS, "migrate"):
        environment = service_environment(services()[name])
        assert environment["RETRAIN_STORAGE_URL"] == "s3://retrain/"
        assert environment["RETRAIN_S3_ENDPOINT_URL"] == "http://s3:9000"
        assert environment["RETRAIN_REDIS_URL"].startswith("redis://redis:")
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(environment)
    assert "x-retrain-env" in compose()


@pytest.mark.parametrize("name", SCHEDULERS)
def test_compose_schedulers_read_the_mounted_triggers(name: str) -> None:
    service = services()[name]
    command = as_argv(service["command"])
    target = command[command.index("--triggers") + 1]
    volume = next(v for v in service["volumes"] if v.split(":")[1] == target)
    source, _, mode = volume.split(":")
    assert mode == "ro"
    assert (DEPLOY / source).resolve() == ROOT / "triggers.yaml"
    assert (ROOT / "triggers.yaml").is_file()


@pytest.mark.parametrize(("names", "kind"), [(SCHEDULERS, "scheduler"), (WORKERS, "worker")])
def test_compose_healthchecks_use_retrain_health(names: tuple[str, ...], kind: str) -> None:
    for name in names:
        assert services()[name]["healthcheck"]["test"] == ["CMD", "retrain", "health", kind]


# -- environment files -----------------------------------------------------------------------


def test_env_examples_use_real_settings_and_no_real_secrets() -> None:
    from orchestrator.settings import Settings
    from workers.checkout import TOKEN_ENV

    known = {f"RETRAIN_{name.upper()}" for name in Settings.model_fields} | {TOKEN_ENV}
    for path in ENV_EXAMPLES.values():
        text = path.read_text()
        # Commented-out settings count: they are documentation and must be real names too.
        named = set(re.findall(r"^#?\s*(RETRAIN_[A-Z0-9_]+)=", text, flags=re.M))
        assert named, path
        assert named <= known, f"{path.name}: unknown settings {sorted(named - known)}"
        for name, value in env_file(path).items():
            if any(word in name for word in ("SECRET", "PASSWORD", "ACCESS_KEY", "TOKEN")):
                assert "CHANGE-ME" in value, f"{path.name}: {name} must be a placeholder"
            assert not value.startswith(("'", '"')), f"{path.name}: {name}: no quotes"


def test_env_examples_are_commented() -> None:
    for path in ENV_EXAMPLES.values():
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line and not line.startswith("#"):
                # The nearest line above that is not a setting is a comment (a comment may
                # cover a block of settings, e.g. both S3 keys).
                j = i - 1
                while j >= 0 and lines[j] and not lines[j].startswith("#"):
                    j -= 1
                assert j >= 0 and lines[j].startswith("#"), f"{path.name}: {line} undocumented"


def test_database_url_is_in_database_env_only() -> None:
    shared = ENV_EXAMPLES["retrain.env"].read_text()
    assert re.search(rf"^#?\s*{DATABASE_URL}=", shared, flags=re.M) is None
    assert env_file(ENV_EXAMPLES["database.env"])[DATABASE_URL].startswith("postgresql://")


def test_env_examples_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.settings import Settings

    for path in ENV_EXAMPLES.values():
        for name, value in env_file(path).items():
            monkeypatch.setenv(name, value)
    settings = Settings.load()
    assert settings.storage_url == "s3://retrain/"
    assert settings.database_url.startswith("postgresql://")


# -- systemd ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SCHEDULER_UNIT, WORKER_UNIT], ids=lambda p: p.name)
def test_systemd_unit(path: Path) -> None:
    parsed = unit(path)
    assert {"Unit", "Service", "Install"} <= set(parsed.sections())
    service = parsed["Service"]
    assert service["Restart"] in ("always", "on-failure")
    assert seconds(service["RestartSec"]) > 0
    assert service["User"] == "retrain"
    assert service["KillSignal"] == "SIGTERM"
    # SIGTERM to the main process only: the worker's job must not get it too.
    assert service["KillMode"] == "mixed"
    assert "/etc/retrain/retrain.env" in unit_values(path, "EnvironmentFile")
    assert service["ExecStart"].startswith("/opt/retrain/bin/retrain ")
    assert "network-online.target" in parsed["Unit"]["After"].split()
    assert "network-online.target" in parsed["Unit"]["Wants"].split()
    assert parsed["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_worker_is_a_template_per_gpu() -> None:
    assert WORKER_UNIT.name.endswith("@.service")
    service = unit(WORKER_UNIT)["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[argv.index("--gpus") + 1] == "%i"
    # Long enough for a warm shutdown of a running job.
    assert seconds(service["TimeoutStopSec"]) >= 3600
    # GPU claims are lock files in /tmp, shared by every worker of the host.
    assert service.get("PrivateTmp", "no") in ("no", "false")


def test_systemd_database_only_for_the_scheduler() -> None:
    assert "/etc/retrain/database.env" in unit_values(SCHEDULER_UNIT, "EnvironmentFile")
    assert unit_values(WORKER_UNIT, "EnvironmentFile") == ["/etc/retrain/retrain.env"]
    assert DATABASE_URL not in WORKER_UNIT.read_text().replace("#", "")


# -- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    keywords = [k for k, _ in instructions]
    arg = instructions.index(("ARG", "BASE_IMAGE=python:3.11-slim"))
    assert ("FROM", "${BASE_IMAGE}") in instructions
    assert arg < instructions.index(("FROM", "${BASE_IMAGE}"))
    assert keywords.count("FROM") == 1
    assert ("ENTRYPOINT", '["retrain"]') in instructions
    assert ("USER", "retrain") in instructions
    runs = " ".join(rest for k, rest in instructions if k == "RUN")
    assert re.search(r"\bgit\b", runs)
    assert "python3-venv" in runs
    env = " ".join(rest for k, rest in instructions if k == "ENV")
    assert "RETRAIN_HOME=/var/lib/retrain" in env
    # Everything it copies exists (the build context is the repository root).
    for keyword, rest in instructions:
        if keyword == "COPY":
            *sources, _target = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


# -- Kubernetes ------------------------------------------------------------------------------


def test_k8s_documents_are_namespaced_objects() -> None:
    documents = k8s_documents()
    assert {d["kind"] for d in documents} >= {
        "Namespace",
        "Secret",
        "ConfigMap",
        "Deployment",
        "DaemonSet",
    }
    for doc in documents:
        assert doc["apiVersion"] and doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "retrain"


def test_k8s_scheduler() -> None:
    deployment = k8s_object("Deployment", "retrain-scheduler")
    assert deployment["spec"]["replicas"] == 2
    container = main_container(deployment)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["retrain", "health", "scheduler"]
    secrets = [e["secretRef"]["name"] for e in container["envFrom"]]
    assert any(DATABASE_URL in secret_keys(name) for name in secrets)
    argv = as_argv(container["command"]) + as_argv(container["args"])
    triggers = Path(argv[argv.index("--triggers") + 1])
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(triggers.parent)]
    assert "subPath" not in mount  # ConfigMap updates reach only whole-directory mounts
    configmap = k8s_object("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    assert triggers.name in configmap["data"]


def test_k8s_triggers_configmap_is_the_repositorys_triggers_file() -> None:
    from orchestrator.triggers.config import load_config

    text = k8s_object("ConfigMap", "retrain-triggers")["data"]["triggers.yaml"]
    config = load_config(Path("triggers.yaml"), text=text)
    assert config.triggers
    assert text == (ROOT / "triggers.yaml").read_text(), "the copy drifted from triggers.yaml"


def test_k8s_worker() -> None:
    daemonset = k8s_object("DaemonSet", "retrain-worker-gpu")
    spec = pod_spec(daemonset)
    container = main_container(daemonset)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    argv = as_argv(container["command"]) + as_argv(container["args"])
    assert argv[:4] == ["retrain", "worker", "--queue", "gpu"]
    assert argv[argv.index("--gpus") + 1] == "all"
    assert container["livenessProbe"]["exec"]["command"] == ["retrain", "health", "worker"]
    assert spec["terminationGracePeriodSeconds"] >= 3600
    # No database: neither from a Secret nor set directly.
    for source in container["envFrom"]:
        assert DATABASE_URL not in secret_keys(source["secretRef"]["name"])
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert DATABASE_URL not in env
    # The cache directory is on a volume.
    cache = env["RETRAIN_CACHE_DIR"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = [
        m
        for m in container["volumeMounts"]
        if cache == m["mountPath"] or cache.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert mounts and ({"emptyDir", "hostPath"} & set(volumes[mounts[0]["name"]]))


def test_k8s_secret_example_has_placeholders_only() -> None:
    assert DATABASE_URL in secret_keys("retrain-scheduler")
    for name in ("retrain-scheduler", "retrain-worker"):
        data = k8s_object("Secret", name)["stringData"]
        assert {"RETRAIN_REDIS_URL", "RETRAIN_STORAGE_URL", "AWS_ACCESS_KEY_ID"} <= set(data)
        for key, value in data.items():
            if any(word in key for word in ("SECRET", "PASSWORD", "ACCESS_KEY", "TOKEN")):
                assert "CHANGE-ME" in value, f"{name}: {key} must be a placeholder"
