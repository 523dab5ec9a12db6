"""The sandbox's parts: its rules (pure), its levels, the worker's refusals of bad options,
and a root worker's `--job-user`, through the real wrapper and `run_process`."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import CLI
from workers import sandbox
from workers.runner import run_process


def test_rules_hide_paths_and_whatever_links_to_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    (tmp_path / "link-to-home").symlink_to(home)
    (tmp_path / "link-to-project").symlink_to(tmp_path / "project")
    outputs = home / "cache" / "work" / "t.0" / "outputs"
    rules = sandbox.rules(sandbox.Policy(write=[str(outputs)], hidden=[str(home)]))
    granted = set(rules)
    assert str(home) not in granted and str(tmp_path / "link-to-home") not in granted
    # Nothing granted is the home or holds it (Landlock rules cover all below them).
    assert not any(Path(p) == home or Path(p) in home.parents for p in granted), granted
    assert rules[str(tmp_path / "project")] == sandbox.READ
    assert rules[str(tmp_path / "link-to-project")] == sandbox.READ
    assert rules[str(outputs)] == sandbox.WRITE
    assert "/" not in granted  # "/" is split, or the hidden path would be readable


def test_levels() -> None:
    assert sandbox.level("off", abi=7) == "off"
    assert sandbox.level("auto", abi=7) == "landlock-abi-7"
    assert sandbox.level("auto", abi=0) == "none"
    with pytest.raises(sandbox.SandboxUnavailable, match="no Landlock"):
        sandbox.level("required", abi=0)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--sandbox", "sometimes"], "--sandbox sometimes: must be one of auto, required, off"),
        (["--job-user", "no-such-user-here"], "--job-user no-such-user-here: no such user"),
        (["--sandbox-write", "relative/dir"], "--sandbox-write relative/dir: must be an existing"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(cli: CLI, args: list[str], says: str) -> None:
    result = cli("worker", "--queue", "gpu", "--gpus", "none", "--burst", *args, expect=2)
    assert says in result.err and "Traceback" not in result.err, result.err


def test_a_write_folder_holding_the_home_is_refused(cli: CLI, retrain_home: Path) -> None:
    retrain_home.mkdir(parents=True, exist_ok=True)
    result = cli("worker", "--queue", "gpu", "--gpus", "none", "--burst", "--sandbox-write",
                 str(retrain_home.parent), expect=2)
    assert "holds the worker's" in result.err, result.err


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root worker can run jobs as another user")
def test_a_root_worker_runs_the_job_as_the_job_user(monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = pwd.getpwnam("nobody")
    # Outside pytest's own folder, which only root may enter: the job user must reach it.
    work = Path(tempfile.mkdtemp(prefix="retrain-job-user-"))
    work.chmod(0o755)
    try:
        run_as_nobody(work, nobody, monkeypatch)
    finally:
        shutil.rmtree(work)


def run_as_nobody(work: Path, nobody: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = work / "worker.secret"
    secret.write_text("hunter2")
    secret.chmod(0o600)
    outputs = work / "outputs"
    (outputs / "models").mkdir(parents=True)  # as the worker makes it, before the job
    monkeypatch.setenv(sandbox.JOB_USER_ENV, "nobody")
    policy = sandbox.policy_for(workdir=work, writable=[outputs], readable=[],
                                hidden=[], python="/usr/bin/python3")
    assert policy is not None and policy.uid == nobody.pw_uid
    assert outputs.stat().st_uid == nobody.pw_uid  # its folder is its own
    lines: list[str] = []
    result = run_process(
        ["/bin/sh", "-c", f"id -u; cat {secret} || echo refused; touch {outputs}/made; "
         f"touch {outputs}/models/model.pt"],
        env={"PATH": "/usr/bin:/bin"}, cwd=Path("/"), timeout_s=60,
        on_line=lambda _stream, line: lines.append(line), sandbox=sandbox.confinement(policy))
    assert result.status == "completed", (result, lines)
    assert lines[0] == str(nobody.pw_uid) and "hunter2" not in lines and "refused" in lines
    assert (outputs / "made").stat().st_uid == nobody.pw_uid
    # New-user pass: outputs/models, made by the worker, stayed root's: no model was written.
    assert (outputs / "models" / "model.pt").stat().st_uid == nobody.pw_uid


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may make device nodes")
def test_a_root_job_cannot_make_a_device_node(tmp_path: Path) -> None:
    """Found by the attacker pass on issue 10: a job of a root worker (no --job-user) made a
    block device node in its outputs and read the host's disk through it."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    policy = sandbox.policy_for(workdir=tmp_path, writable=[outputs], readable=[],
                                hidden=[], python="/usr/bin/python3")
    assert policy is not None
    lines: list[str] = []
    make = ("import os, stat\n"
            "for kind in (stat.S_IFBLK, stat.S_IFCHR):\n"
            "    try:\n"
            f"        os.mknod('{outputs}/node%d' % kind, kind | 0o600, os.makedev(7, 0))\n"
            "        print('made', kind)\n"
            "    except OSError as exc:\n"
            "        print('refused', kind, exc.errno)\n")
    result = run_process(
        ["/usr/bin/python3", "-c", make], env={"PATH": "/usr/bin:/bin"}, cwd=Path("/"),
        timeout_s=60, on_line=lambda _stream, line: lines.append(line),
        sandbox=sandbox.confinement(policy))
    assert result.status == "completed", (result, lines)
    assert [line.split()[0] for line in lines] == ["refused", "refused"], lines
    assert not list(outputs.iterdir())


ROOT_CAPS = """
import os
caps = {}
for line in open("/proc/self/status"):
    if line.startswith("Cap"):
        key, value = line.split(":")
        caps[key] = int(value, 16)
print("caps", " ".join(f"{k}={v:x}" for k, v in sorted(caps.items())))
for name, act in (("chown", lambda p: os.chown(p, 65534, 65534)),
                  ("chmod-other", lambda p: os.chmod(THEIRS, 0o666)),
                  ("setuid", lambda p: os.setuid(65534))):
    try:
        act(OUT)
        print(name, "done")
    except OSError as exc:
        print(name, "refused", exc.errno)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root worker's job starts as root")
def test_a_root_job_holds_no_capability(tmp_path: Path) -> None:
    """Attacker pass, second round: a job of a root worker (no --job-user) kept CAP_CHOWN,
    FOWNER, SETUID, SETFCAP and more. Landlock does not govern chmod, chown or setxattr, so
    it made the worker's secret world-readable and set file capabilities on a host binary.
    A root job now starts with every capability set empty: root in name only."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "mine").write_text("x")
    theirs = outputs / "theirs"  # another user's file: chmod needs CAP_FOWNER
    theirs.write_text("x")
    theirs.chmod(0o600)
    os.chown(theirs, 65534, 65534)
    policy = sandbox.policy_for(workdir=tmp_path, writable=[outputs], readable=[],
                                hidden=[], python="/usr/bin/python3")
    assert policy is not None
    lines: list[str] = []
    code = f"OUT = {str(outputs / 'mine')!r}\nTHEIRS = {str(theirs)!r}\n" + ROOT_CAPS
    result = run_process(
        ["/usr/bin/python3", "-c", code], env={"PATH": "/usr/bin:/bin"}, cwd=Path("/"),
        timeout_s=60, on_line=lambda _stream, line: lines.append(line),
        sandbox=sandbox.confinement(policy))
    assert result.status == "completed", (result, lines)
    caps = dict(item.split("=") for item in lines[0].split()[1:])
    assert caps == {k: "0" for k in ("CapAmb", "CapBnd", "CapEff", "CapInh", "CapPrm")}, lines
    assert [line.split()[:2] for line in lines[1:]] == [
        ["chown", "refused"], ["chmod-other", "refused"], ["setuid", "refused"]], lines
    assert (outputs / "mine").stat().st_uid == 0
    assert theirs.stat().st_mode & 0o777 == 0o600


RAW_DEVICES = ("/dev/kmsg", "/dev/loop0", "/dev/sda", "/dev/vda", "/dev/nvme0n1", "/dev/mem")

PROBE = """
import os, sys
def probe(path, flags):
    try:
        os.close(os.open(path, flags | os.O_NONBLOCK))
        return "open"
    except OSError as exc:
        return "refused" if exc.errno in (1, 13) else f"errno {exc.errno}"
for path in sys.argv[1:]:
    print(path, probe(path, os.O_RDONLY))
for path in ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random"):
    print(path, probe(path, os.O_RDWR))
with open("/dev/null", "w") as null:
    null.write("x")
with open("/dev/shm/retrain-probe-%d" % os.getpid(), "w") as shm:
    shm.write("x")
os.unlink(shm.name)
print("listed", "null" in os.listdir("/dev"))
with open("/dev/stdout", "w") as out:  # a link into /proc, judged where it leads
    print("stdout open", file=out)
import multiprocessing
multiprocessing.Lock()  # a POSIX semaphore in /dev/shm
print("semaphore open")
"""


def _readable_here(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True


@pytest.mark.skipif(sandbox.landlock_abi() < 1, reason="needs Landlock")
def test_a_job_opens_only_the_devices_it_needs(tmp_path: Path) -> None:
    """Found by the attacker pass on issue 10 (F3): Landlock granted the whole of /dev, so
    a job of a root worker read the host's raw block devices (and anyone's, /dev/kmsg). Only
    named devices are granted now; the ones a program needs still work."""
    # A terminal of the worker's user (an operator's shell): a job read what was typed in it
    # and wrote into it through /dev/pts (attacker pass, second round).
    terminal, terminal_peer = os.openpty()
    raw = [path for path in RAW_DEVICES if _readable_here(path)] + [os.ttyname(terminal_peer)]
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    policy = sandbox.policy_for(workdir=tmp_path, writable=[outputs], readable=[],
                                hidden=[], python="/usr/bin/python3")
    assert policy is not None
    lines: list[str] = []
    result = run_process(
        ["/usr/bin/python3", "-c", PROBE, *raw], env={"PATH": "/usr/bin:/bin"}, cwd=Path("/"),
        timeout_s=60, on_line=lambda _stream, line: lines.append(line),
        sandbox=sandbox.confinement(policy))
    assert result.status == "completed", (result, lines)
    opened = dict(line.rsplit(" ", 1) for line in lines)
    assert {path: opened[path] for path in raw} == {path: "refused" for path in raw}, lines
    for path in ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random"):
        assert opened[path] == "open", lines
    assert opened["listed"] == "True", lines
    assert opened["stdout"] == "open" and opened["semaphore"] == "open", lines
    os.close(terminal)
    os.close(terminal_peer)


@pytest.mark.skipif(sandbox.landlock_abi() < 1, reason="needs Landlock")
@pytest.mark.parametrize("breakage", ["error", "ruleset"])
def test_a_confinement_that_cannot_be_applied_starts_nothing(
    tmp_path: Path, breakage: str
) -> None:
    """The job never runs less confined than its worker said: a step that fails between
    fork and exec ends the process with 126 and says why, before the job's code runs."""
    marker = tmp_path / "ran"
    policy = sandbox.policy_for(workdir=tmp_path, writable=[tmp_path], readable=[],
                                hidden=[], python="/usr/bin/python3")
    confinement = sandbox.confinement(policy)
    assert confinement is not None and confinement.ruleset >= 0
    if breakage == "error":
        confinement.error = "the ruleset could not be built"
    else:  # a descriptor that is no Landlock ruleset: landlock_restrict_self fails
        os.close(confinement.ruleset)
        confinement.ruleset = os.open(tmp_path, os.O_RDONLY)
    lines: list[str] = []
    result = run_process(
        ["/bin/touch", str(marker)], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path,
        timeout_s=60, on_line=lambda _stream, line: lines.append(line), sandbox=confinement)
    assert (result.status, result.exit_code) == ("failed", 126), lines
    assert lines and lines[-1].startswith("retrain sandbox: "), lines
    assert lines[-1].endswith("the job was not started"), lines
    assert not marker.exists()
    assert confinement.ruleset == -1  # closed in the caller once started


@pytest.mark.skipif(sandbox.landlock_abi() < 1, reason="the walk is for Landlock")
def test_the_walk_is_done_once_per_worker(tmp_path: Path) -> None:
    """The read-everything rules are the slow part of a job's rules (a walk of the
    filesystem): the slot computes them before it forks (`warm`), and a job's rules reuse
    them. A change of their cache key (as /dev's was) would walk again in every job."""
    home = tmp_path / "home"
    hidden = sandbox.hidden_for(home, home / "cache", (home / "storage").as_uri())
    sandbox.warm(hidden)
    before = sandbox._everything_but.cache_info()
    policy = sandbox.policy_for(workdir=tmp_path, writable=[tmp_path], readable=[],
                                hidden=hidden, python="/usr/bin/python3")
    assert policy is not None
    sandbox.rules(policy)
    after = sandbox._everything_but.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)


@pytest.mark.skipif(sandbox.landlock_abi() < 1, reason="needs Landlock")
def test_the_deployed_credentials_file_and_named_paths_are_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attacker pass, third round: the documented systemd setup keeps the worker secret, the
    Redis password and the S3 keys in /etc/retrain/retrain.env, readable by the workers' user,
    which is the jobs' user, and a job read it. /etc/retrain (and root's shadow files) are
    hidden on every host; `--sandbox-hide` hides the operator's own places."""
    env_file = tmp_path / "etc" / "retrain.env"  # stands for a credentials file elsewhere
    env_file.parent.mkdir()
    env_file.write_text("RETRAIN_WORKER_SECRET=s3cr3t\n")
    monkeypatch.setenv(sandbox.HIDE_ENV, str(env_file.parent))
    hidden = sandbox.hidden_for(tmp_path / "home", tmp_path / "cache", "s3://bucket")
    assert Path("/etc/retrain") in hidden and Path("/etc/shadow") in hidden
    assert env_file.parent in hidden
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    policy = sandbox.policy_for(workdir=tmp_path / "work", writable=[outputs], readable=[],
                                hidden=hidden, python="/usr/bin/python3")
    assert policy is not None
    lines: list[str] = []
    probe = ("import sys\n"
             "for path in sys.argv[1:]:\n"
             "    try:\n"
             "        open(path).read(); print(path, 'read')\n"
             "    except OSError as exc:\n"
             "        print(path, 'refused', exc.errno)\n")
    targets = [str(env_file), *(p for p in ("/etc/shadow",) if os.path.exists(p))]
    result = run_process(
        ["/usr/bin/python3", "-c", probe, *targets], env={"PATH": "/usr/bin:/bin"},
        cwd=Path("/"), timeout_s=60, on_line=lambda _stream, line: lines.append(line),
        sandbox=sandbox.confinement(policy))
    assert result.status == "completed", (result, lines)
    assert [line.split()[1] for line in lines] == ["refused"] * len(targets), lines


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root worker can run jobs as another user")
def test_handing_a_folder_to_the_job_user_never_follows_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attacker lead on issue 10: the worker chowns each writable folder to --job-user; had
    one been a link a job left, its target (the worker secret) would have become the job's.
    Each is a folder made fresh for the execution, and the chown does not follow links."""
    secret = tmp_path / "worker.secret"
    secret.write_text("hunter2")
    link = tmp_path / "outputs"
    link.symlink_to(secret)
    monkeypatch.setenv(sandbox.JOB_USER_ENV, "nobody")
    sandbox.policy_for(workdir=tmp_path, writable=[link], readable=[], hidden=[],
                       python="/usr/bin/python3")
    assert secret.stat().st_uid == 0
