"""Issue 10, a root job and its host: a job whose process starts as root (a root worker, with
or without --job-user) runs in a mount namespace of its own where the host is read-only but
for its writable folders, with a private /dev/shm; every confined job has no_new_privs.
Through the real `run_process` and `sandbox.confinement`, as tests/workers/test_sandbox.py."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from workers import sandbox
from workers.runner import RunResult, run_process

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="only a root worker's job starts as root")


def _run(argv: list[str], policy: sandbox.Policy | None, cwd: Path = Path("/")) -> tuple[
    RunResult, list[str]
]:
    lines: list[str] = []
    result = run_process(
        argv, env={"PATH": "/usr/bin:/bin"}, cwd=cwd, timeout_s=60,
        on_line=lambda _stream, line: lines.append(line), sandbox=sandbox.confinement(policy))
    return result, lines


def _root_policy(tmp_path: Path) -> tuple[sandbox.Policy, Path, Path]:
    """A job's policy, its work folder `tmp_path/work` (the rest of `tmp_path` is the host's)."""
    outputs, tmp = tmp_path / "work" / "outputs", tmp_path / "work" / "tmp"
    outputs.mkdir(parents=True)
    tmp.mkdir()
    policy = sandbox.policy_for(workdir=tmp_path / "work", writable=[outputs, tmp],
                                readable=[], hidden=[], python="/usr/bin/python3")
    assert policy is not None and policy.host_readonly, policy
    return policy, outputs, tmp


ATTEMPTS = """
import os, sys
for path in sys.argv[1:]:
    for name, act in (("chmod", lambda: os.chmod(path, 0o4755)),
                      ("utime", lambda: os.utime(path, (0, 0))),
                      ("xattr", lambda: os.setxattr(path, "user.retrain", b"x")),
                      ("write", lambda: open(path, "a").close())):
        try:
            act()
            print(path, name, "done")
        except OSError as exc:
            print(path, name, "refused", exc.errno)
"""


@ROOT
def test_a_root_job_cannot_chmod_the_hosts_files(tmp_path: Path) -> None:
    """Landlock does not govern chmod, utime or setxattr, and a root job owns root's files:
    it made a root-owned binary setuid (root for any local user). The host is read-only to
    it now (EROFS), whatever Landlock allows."""
    policy, _, _ = _root_policy(tmp_path)
    beside = tmp_path / "beside"  # root's, outside the job's folders
    beside.write_text("x")
    beside.chmod(0o644)
    system = Path("/var/tmp") / f"retrain-test-{secrets.token_hex(4)}"  # stands for /usr/bin/...
    shutil.copy2("/bin/true", system)
    try:
        before = {path: path.stat() for path in (beside, system)}
        result, lines = _run(["/usr/bin/python3", "-c", ATTEMPTS, str(beside), str(system)],
                             policy)
        assert result.status == "completed", (result, lines)
        said = {tuple(line.split()[:2]): line.split()[2:] for line in lines}
        for path in (beside, system):
            for act in ("chmod", "utime", "xattr"):
                assert said[(str(path), act)] == ["refused", str(errno.EROFS)], lines
            assert said[(str(path), "write")][0] == "refused", lines
            now = path.stat()
            assert (now.st_mode, now.st_mtime_ns) == (
                before[path].st_mode, before[path].st_mtime_ns)
    finally:
        system.unlink()


WORK = """
import os, sys
out, tmp = sys.argv[1], sys.argv[2]
with open(os.path.join(out, "script"), "w") as f:
    f.write("#!/bin/sh\\necho ran\\n")
os.chmod(os.path.join(out, "script"), 0o755)
os.rename(os.path.join(out, "script"), os.path.join(out, "run.sh"))
os.mkdir(os.path.join(out, "models"))
with open(os.path.join(tmp, "scratch"), "w") as f:
    f.write("x")
os.utime(os.path.join(tmp, "scratch"), (0, 0))
# Written in tmp, then moved into outputs in one step, as atomic savers do.
with open(os.path.join(tmp, "checkpoint.partial"), "w") as f:
    f.write("weights")
os.rename(os.path.join(tmp, "checkpoint.partial"), os.path.join(out, "checkpoint"))
with open("/dev/null", "w") as null:
    null.write("x")
os.close(os.open("/dev/zero", os.O_RDWR))
print("done")
"""


@ROOT
def test_a_root_job_still_works_in_its_folders(tmp_path: Path) -> None:
    policy, outputs, tmp = _root_policy(tmp_path)
    result, lines = _run(["/usr/bin/python3", "-c", WORK, str(outputs), str(tmp)], policy)
    assert result.status == "completed" and lines == ["done"], (result, lines)
    made = outputs / "run.sh"
    assert made.stat().st_mode & 0o777 == 0o755 and (outputs / "models").is_dir()
    assert (tmp / "scratch").stat().st_mtime == 0
    assert (outputs / "checkpoint").read_text() == "weights"


MOUNTS = """
import os, sys
name = sys.argv[1]
with open("/dev/shm/" + name, "w") as f:
    f.write("x")
print("host file seen", os.path.exists("/dev/shm/" + name + ".host"))
print("shm mode", oct(os.stat("/dev/shm").st_mode & 0o7777))
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    if fields[4] in ("/", "/dev/shm", sys.argv[2]):
        print("mount", fields[4], fields[5])
"""


@ROOT
def test_a_root_jobs_shared_memory_and_mounts_are_its_own(tmp_path: Path) -> None:
    """/dev/shm is a fresh tmpfs of the job's (its data loaders and ranks share it; nothing
    it leaves there survives it, nothing of the host's is seen); its writable folders are
    nosuid and nodev; nothing it mounts reaches the host's mount table."""
    policy, outputs, _ = _root_policy(tmp_path)
    name = f"retrain-test-{secrets.token_hex(4)}"
    host_file = Path("/dev/shm") / f"{name}.host"
    host_file.write_text("the host's")
    before = Path("/proc/self/mountinfo").read_text()
    try:
        result, lines = _run(["/usr/bin/python3", "-c", MOUNTS, name, str(outputs.parent)],
                             policy)
    finally:
        host_file.unlink()
    assert result.status == "completed", (result, lines)
    assert Path("/proc/self/mountinfo").read_text() == before
    assert not (Path("/dev/shm") / name).exists()
    assert "host file seen False" in lines and "shm mode 0o1777" in lines, lines
    mounts: dict[str, str] = {}
    for line in lines:
        if line.startswith("mount "):
            mounts[line.split()[1]] = line.split()[2]  # the last one at a path is on top
    assert mounts["/"].split(",")[0] == "ro", lines
    # With Landlock, the job's folders are one mount, its work folder (a rename from tmp/
    # into outputs/ must not cross mounts); Landlock keeps it to them within it.
    for path in ("/dev/shm", str(outputs.parent)):
        options = mounts[path].split(",")
        assert options[0] == "rw" and "nosuid" in options and "nodev" in options, lines


@ROOT
def test_a_writable_folder_on_a_read_only_mount_stays_read_only(tmp_path: Path) -> None:
    """The job's mounts never grant more than the host's: a writable folder whose mount was
    read-only (a `--sandbox-write` on a read-only disk) is not made writable."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    subprocess.run(["mount", "--bind", str(scratch), str(scratch)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(scratch)], check=True)
        policy = sandbox.policy_for(workdir=tmp_path, writable=[outputs, scratch], readable=[],
                                    hidden=[], python="/usr/bin/python3")
        assert policy is not None and policy.host_readonly
        result, lines = _run(["/bin/sh", "-c", f"touch {scratch}/x || echo refused; "
                              f"touch {outputs}/y && echo wrote"], policy)
    finally:
        subprocess.run(["umount", str(scratch)], check=True)
    assert result.status == "completed", (result, lines)
    assert "refused" in lines and lines[-1] == "wrote", lines
    assert not (scratch / "x").exists() and (outputs / "y").exists()


NNP = "grep NoNewPrivs /proc/self/status"


def test_a_job_without_landlock_still_gets_no_new_privs(tmp_path: Path) -> None:
    """On a host without Landlock a confined job gained privileges through a setuid binary
    as before: no_new_privs was only set with the Landlock ruleset."""
    policy = sandbox.Policy(write=[str(tmp_path)], landlock=False)
    result, lines = _run(["/bin/sh", "-c", NNP], policy)
    assert result.status == "completed", (result, lines)
    assert lines == ["NoNewPrivs:\t1"], lines


@ROOT
def test_a_host_view_that_cannot_be_made_starts_nothing(tmp_path: Path) -> None:
    """As every other step: if the job's mounts cannot be made, the job is not started."""
    policy, outputs, _ = _root_policy(tmp_path)
    confinement = sandbox.confinement(policy)
    assert confinement is not None and confinement.host is not None
    gone = tmp_path / "gone"
    confinement.host.binds.append((bytes(gone), False))  # removed since it was listed
    marker = outputs / "ran"
    lines: list[str] = []
    result = run_process(
        ["/bin/touch", str(marker)], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path,
        timeout_s=60, on_line=lambda _stream, line: lines.append(line), sandbox=confinement)
    assert (result.status, result.exit_code) == ("failed", 126), lines
    assert lines and lines[-1].endswith("the job was not started"), lines
    assert not marker.exists()


PROBE = """
import json, os
from workers import agent, sandbox
outputs = os.environ["OUTPUTS"]
policy = sandbox.policy_for(workdir=os.path.dirname(outputs), writable=[outputs], readable=[],
                            hidden=[], python="/usr/bin/python3")
from workers.runner import run_process
result = run_process(["/bin/touch", outputs + "/made"], env={"PATH": "/usr/bin:/bin"},
                     cwd="/", timeout_s=60, sandbox=sandbox.confinement(policy))
print(json.dumps([sandbox.host_readonly(), policy.host_readonly, agent.sandbox_level(),
                  result.status]))
"""


@ROOT
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
@pytest.mark.parametrize("sys_admin", [True, False])
def test_the_worker_asks_for_a_read_only_host_only_where_it_can(
    tmp_path: Path, sys_admin: bool
) -> None:
    """A root worker in a container without CAP_SYS_ADMIN cannot make a mount namespace: its
    probe says so, its level does not claim it, and its root jobs still run (as before)."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    drop = [] if sys_admin else ["setpriv", "--bounding-set", "-sys_admin", "--"]
    env = {**os.environ, "OUTPUTS": str(outputs)}
    env.pop(sandbox.JOB_USER_ENV, None)
    done = subprocess.run([*drop, sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    import json

    probed, asked, level, status = json.loads(done.stdout.strip().splitlines()[-1])
    assert (probed, asked, status) == (sys_admin, sys_admin, "completed"), done.stdout
    assert level.endswith(", as root, host read-only") == sys_admin, level
    assert ", as root" in level and (outputs / "made").exists()


@ROOT
def test_a_root_jobs_work_folder_is_closed_to_other_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a root job writes in its outputs (umask 022: world-readable) was readable by any
    local user while it ran: its execution folder is 0700 when the job runs as root."""
    from orchestrator.settings import Settings
    from workers.job import Job

    monkeypatch.delenv(sandbox.JOB_USER_ENV, raising=False)
    settings = Settings.load(home=tmp_path / "home", storage_url=(tmp_path / "blobs").as_uri())
    job = Job({"task_id": "0" * 32, "spec": {}}, settings, None, "w")  # type: ignore[arg-type]
    job._make_workdir()
    assert stat.S_IMODE(job.workdir.stat().st_mode) == 0o700
    monkeypatch.setenv(sandbox.JOB_USER_ENV, "nobody")  # the job user must reach its folders
    other = Job({"task_id": "1" * 32, "spec": {}}, settings, None, "w")  # type: ignore[arg-type]
    other._make_workdir()
    assert stat.S_IMODE(other.workdir.stat().st_mode) & 0o055 == 0o055


def test_a_non_root_workers_job_without_landlock_gets_no_new_privs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the rootns pass: a worker of an ordinary user on a kernel without Landlock
    made no confinement at all, so its jobs could still gain privileges through a setuid
    binary. Its jobs now get no_new_privs (and the parent-death signal) all the same."""
    monkeypatch.setattr(sandbox, "landlock_abi", lambda: 0)
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    policy = sandbox.policy_for(workdir=tmp_path, writable=[outputs], readable=[], hidden=[],
                                python="/usr/bin/python3")
    assert policy is not None and not policy.landlock and not policy.host_readonly, policy
    monkeypatch.undo()
    result, lines = _run(["/bin/sh", "-c", NNP], policy)
    assert result.status == "completed" and lines == ["NoNewPrivs:\t1"], (result, lines)


ESCAPE = """
import os, sys
work = sys.argv[1]
os.chmod(work, 0o777)  # its own folder's mode: Landlock does not govern chmod
path = os.path.join(work, "outputs", "su")
with open(path, "w") as f:
    f.write("#!/bin/sh\\nid\\n")
os.chmod(path, 0o4755)  # a setuid-root file, on the host's filesystem
print("made", path)
"""


@ROOT
def test_a_root_jobs_setuid_file_is_out_of_other_users_reach(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attacker pass on issue 10: a root job chmod-ed its own execution folder (the one
    writable mount, root's) to 0777 and left a setuid-root file in its outputs, which any
    local user could run while the job slept (the mount's nosuid holds in the job's
    namespace only). The folder holding every execution is 0700 when jobs run as root, and
    the job cannot change that one."""
    import pwd
    import tempfile

    from orchestrator.settings import Settings
    from workers.job import Job

    base = Path(tempfile.mkdtemp(prefix="retrain-escape-", dir="/var/tmp"))
    try:
        base.chmod(0o755)  # a home other users may enter, as /var/lib/retrain is
        monkeypatch.delenv(sandbox.JOB_USER_ENV, raising=False)
        settings = Settings.load(home=base / "home", storage_url=(base / "blobs").as_uri())
        job = Job({"task_id": "2" * 32, "spec": {}}, settings, None, "w")  # type: ignore[arg-type]
        job._make_workdir()
        outputs = job.workdir / "outputs"
        outputs.mkdir()
        policy = sandbox.policy_for(workdir=job.workdir, writable=[outputs], readable=[],
                                    hidden=[], python="/usr/bin/python3")
        assert policy is not None and policy.host_readonly
        result, lines = _run(["/usr/bin/python3", "-c", ESCAPE, str(job.workdir)], policy)
        assert result.status == "completed", (result, lines)
        setuid = outputs / "su"
        assert setuid.stat().st_mode & stat.S_ISUID  # made: the job's folder is its own
        said = sandbox.reach_as(pwd.getpwnam("nobody"), [setuid])
        assert said is not None and "cannot enter" in said, said
    finally:
        shutil.rmtree(base)


@ROOT
def test_a_root_jobs_sysv_ipc_is_its_own(tmp_path: Path) -> None:
    """Attacker pass on issue 10: a root job listed the host's SysV shared memory (the
    database's segment among them) and removed a root segment with ipcrm; and what it made
    there would outlive it. Its namespace has an IPC namespace of its own."""
    made = subprocess.run(["ipcmk", "-M", "4096"], capture_output=True, text=True, check=True)
    shmid = made.stdout.strip().split()[-1]
    try:
        policy, _, _ = _root_policy(tmp_path)
        result, lines = _run(["/bin/sh", "-c", f"ipcrm -m {shmid} && echo removed; "
                              "ipcmk -M 4096 >/dev/null && echo made"], policy)
        assert result.status == "completed", (result, lines)
        assert "removed" not in lines and "made" in lines, lines
        listed = subprocess.run(["ipcs", "-m", "-i", shmid], capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr  # the host's segment is still there
    finally:
        subprocess.run(["ipcrm", "-m", shmid], capture_output=True, check=False)


@ROOT
def test_a_job_user_worker_on_the_same_cache_does_not_open_root_jobs_folders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attacker pass, worker.secret round: a root worker (--allow-root) and a `--job-user`
    worker sharing one cache. The job user's worker made `cache/work`, which holds the
    executions of both, 0711 at each of its jobs; a root job that had chmod-ed its own folder
    0777 (Landlock does not govern chmod) and left a setuid-root copy of Python in its outputs
    then gave any local user root. A root job's folder is now below a folder of its own
    (0700) that no job-user worker changes, and the job cannot change either."""
    import pwd
    import tempfile

    from orchestrator.settings import Settings
    from workers.job import Job

    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="retrain-mixed-", dir="/var/tmp"))
    try:
        base.chmod(0o755)
        settings = Settings.load(home=base / "home", storage_url=(base / "blobs").as_uri())
        settings.home.mkdir(mode=0o755)
        monkeypatch.delenv(sandbox.JOB_USER_ENV, raising=False)
        root_job = Job({"task_id": "3" * 32, "spec": {}}, settings, None, "w")  # type: ignore[arg-type]
        root_job._make_workdir()
        root_job.workdir.chmod(0o777)  # what the root job does to its own folder
        (root_job.workdir / "outputs").mkdir(mode=0o777)
        monkeypatch.setenv(sandbox.JOB_USER_ENV, "nobody")
        user_job = Job({"task_id": "4" * 32, "spec": {}}, settings, None, "w")  # type: ignore[arg-type]
        user_job._make_workdir()
        said = sandbox.reach_as(nobody, [root_job.workdir / "outputs"])
        assert said is not None and "cannot enter" in said, said
        # And the other way round: a root job starting later leaves the job user's folder
        # reachable (a job user's job must keep reaching its own outputs while it runs).
        monkeypatch.delenv(sandbox.JOB_USER_ENV)
        Job({"task_id": "5" * 32, "spec": {}}, settings, None, "w")._make_workdir()  # type: ignore[arg-type]
        assert sandbox.reach_as(nobody, [user_job.workdir]) is None
    finally:
        shutil.rmtree(base)


KEYRING = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
add_key, keyctl = {"x86_64": (248, 250), "aarch64": (217, 219)}[os.uname().machine]
payload = sys.argv[1].encode()
made = libc.syscall(add_key, b"user", b"retrain-test-key", payload, ctypes.c_size_t(len(payload)),
                    ctypes.c_long(-4))  # KEY_SPEC_USER_KEYRING
print("add_key", made, ctypes.get_errno())
found = libc.syscall(keyctl, ctypes.c_long(10), ctypes.c_long(-4), b"user", b"retrain-host-key",
                     ctypes.c_long(0))  # KEYCTL_SEARCH
print("search", found, ctypes.get_errno())
"""


def test_a_job_cannot_use_the_kernel_keyrings(tmp_path: Path) -> None:
    """Attacker pass, worker.secret round: the kernel keyrings are per uid, not per mount or
    IPC namespace. A root job wrote a key into root's user keyring that outlived it on the
    host and read the one root's processes keep there; a `--job-user` job read in the user's
    keyring what an earlier job of that user left. Confined jobs get no keyring calls
    (EPERM), as a container's default seccomp profile does."""
    import ctypes
    import errno

    if os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("syscall numbers known for x86_64 and aarch64 only")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    policy = sandbox.policy_for(workdir=tmp_path, writable=[outputs], readable=[], hidden=[],
                                python="/usr/bin/python3")
    assert policy is not None
    secret = "k" + secrets.token_hex(8)
    libc = ctypes.CDLL(None, use_errno=True)
    add_key = {"x86_64": 248, "aarch64": 217}[os.uname().machine]
    host_key = b"kept-by-the-host"
    made = libc.syscall(add_key, b"user", b"retrain-host-key", host_key,
                        ctypes.c_size_t(len(host_key)), ctypes.c_long(-4))
    assert made > 0, ctypes.get_errno()
    try:
        result, lines = _run(["/usr/bin/python3", "-c", KEYRING, secret], policy)
    finally:
        libc.syscall(add_key + 2, ctypes.c_long(9), ctypes.c_long(made), ctypes.c_long(-4))
    assert result.status == "completed", (result, lines)
    assert lines == [f"add_key -1 {errno.EPERM}", f"search -1 {errno.EPERM}"], lines


PRLIMIT = """
import os, resource, sys
pid = int(sys.argv[1])
try:
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (1, 1))
    print("other", "set")
except OSError as exc:
    print("other", exc.errno)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(64, hard), hard))
print("own", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_a_job_cannot_set_the_limits_of_another_process(tmp_path: Path) -> None:
    """Attacker pass, worker.secret round: prlimit is allowed on any process of one's uid and
    Landlock's signal scope does not cover it. A root job set RLIMIT_NOFILE of a host root
    process (the worker, the scheduler: a worker that opens no file) to 1, or could set its
    RLIMIT_CPU to kill it; a job user's job, the limits of another job of that user. A job
    sets its own limits only (prlimit with pid 0: setrlimit, getrlimit)."""
    import errno

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    policy = sandbox.policy_for(workdir=tmp_path, writable=[outputs], readable=[], hidden=[],
                                python="/usr/bin/python3")
    assert policy is not None
    victim = subprocess.Popen(["sleep", "60"])
    try:
        result, lines = _run(["/usr/bin/python3", "-c", PRLIMIT, str(victim.pid)], policy)
        limits = Path(f"/proc/{victim.pid}/limits").read_text()
    finally:
        victim.kill()
        victim.wait()
    assert result.status == "completed", (result, lines)
    assert lines == [f"other {errno.EPERM}", "own 64"], lines
    assert not [line for line in limits.splitlines()
                if line.startswith("Max open files") and line.split()[3] == "1"], limits
