"""The job sandbox: what a job's process may touch on its worker's host.

A job is code from any repository, run by a worker that holds credentials (cloud keys, the
Redis URL, the worker secret) and shared caches (environments, git mirrors, blobs) that later
jobs trust. These layers keep the job away from them:

1. The worker is not dumpable (`prctl(PR_SET_DUMPABLE, 0)`, `make_undumpable`, called by
   `retrain worker` and inherited by its work horses): a process of the same uid cannot read
   its `/proc/<pid>/environ` or `mem`, nor ptrace it.
2. Landlock (Linux 5.13+, `landlock_abi()`): the job's process is restricted between fork and
   exec (`workers/sandbox_exec.py`: the work horse builds the ruleset, the child applies it
   before exec, with no second interpreter). It may write only its outputs folder and a
   private tmp; read (and execute) its checkout, its environment, its inputs and the rest of
   the system; it cannot read the worker's home (the secret, the database, the caches), other
   attempts' folders, the blob cache beyond its own inputs, or the worker user's credential
   files. Landlock also refuses ptrace and `/proc/<pid>/environ` of any process outside the
   job's domain, even to root, and from ABI 6 signals and abstract unix sockets.
3. A job started as root (a root worker without `--job-user`) loses every capability, so
   it is root in name only; but it owns root's files, and Landlock does not govern chmod,
   chown, utime or setxattr.
4. The host read-only (`host_readonly`, `sandbox_exec.HostView`): a job whose process
   starts as root (a root worker, with or without `--job-user`) gets a mount namespace of
   its own, made before its uid changes, where every mount is read-only but its writable
   folders (bound onto themselves, nosuid and nodev; never writable where the host's mount
   was not), and /dev/shm is a fresh tmpfs of its own (nothing it leaves there survives
   it). So it can chmod no host file, leave no setuid file behind, and on a host without
   Landlock write only its own folders. Probed once per worker: a root worker without
   CAP_SYS_ADMIN (a container) runs its jobs as before, and its level does not claim it.
5. `--job-user USER` (a worker running as root): the job runs under that user's uid and
   groups; its outputs and tmp folders are made its own, everything else stays root's.

Every confined job also has no_new_privs, with or without Landlock: no setuid binary or
file capability raises it.

The level a worker reaches is in its advertisement (`retrain status`) and its start log line;
`--sandbox required` refuses to start without Landlock, `--sandbox off` runs jobs as before.
The worker reads its options from the environment (`SANDBOX_ENV`...), set by the CLI, as
`workers.jobenv.PASS_ENV` is, so that supervised slots and work horses see them.
"""

from __future__ import annotations

import functools
import os
import pwd
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from workers.sandbox_exec import (
    READ,
    READ_DIR,
    READ_FILE,
    TRUNCATE,
    WRITE,
    WRITE_FILE,
    Confinement,
    host_view,
    landlock_abi,
    probe_host_view,
)

__all__ = [
    "MODES",
    "Policy",
    "SandboxUnavailable",
    "confinement",
    "host_readonly",
    "landlock_abi",
    "level",
    "make_undumpable",
]

MODES = ("auto", "required", "off")
"""`--sandbox`: auto (Landlock when the kernel has it, and say so when not), required (refuse
to start without it), off (jobs run unconfined, as the worker's user)."""

SANDBOX_ENV = "RETRAIN_SANDBOX"
WRITE_ENV = "RETRAIN_SANDBOX_WRITE"
"""Extra folders jobs may write (`--sandbox-write`, space-separated): a scratch disk."""
JOB_USER_ENV = "RETRAIN_JOB_USER"
ALLOW_ROOT_ENV = "RETRAIN_ALLOW_ROOT"
"""`--allow-root`: a worker running as root without `--job-user` runs its jobs as root. Without
it such a worker refuses to start (`refuse_root_jobs`)."""
ALLOW_BUILDS_ENV = "RETRAIN_ALLOW_BUILDS"
"""`--allow-builds`: environments may build packages from source, which runs their build
code (confined by `build_policy`); without it they are installed from wheels only."""

HIDDEN_IN_HOME = (
    ".aws",
    ".azure",
    ".config/gcloud",
    ".docker",
    ".git-credentials",
    ".gnupg",
    ".kube",
    ".netrc",
    ".pgpass",
    ".ssh",
    ".cache/uv",  # other tasks' wheels (private indexes), hard-linked into environments
    ".cache/pip",
    ".config/retrain",
)
"""Credential files of the worker's user that no job may read, below its home folder."""
HIDDEN_ON_HOST = ("/etc/retrain", "/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-")
"""Host files no job may read: `/etc/retrain` holds the deployed workers' environment file
(`deploy/`: the worker secret, the Redis and S3 credentials), readable by the workers' user,
which is the jobs' user unless `--job-user`; the shadow files are root's (a root job owns
them)."""
HIDE_ENV = "RETRAIN_SANDBOX_HIDE"
"""More paths no job may read (`--sandbox-hide`, space-separated): where an operator keeps
the worker's credentials elsewhere (a systemd EnvironmentFile, a mounted secret)."""


class SandboxUnavailable(RuntimeError):
    """`--sandbox required` on a host without Landlock, or a `--job-user` that cannot be."""


def make_undumpable() -> bool:
    """Make this process (and what it forks) not dumpable: same-uid processes can no longer
    read its /proc environ or memory, nor ptrace it. False where it cannot be done."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)) == 0  # SET_DUMPABLE
    except (OSError, AttributeError):
        return False


def mode() -> str:
    value = os.environ.get(SANDBOX_ENV, "auto")
    return value if value in MODES else "auto"


def level(wanted: str | None = None, abi: int | None = None) -> str:
    """What this worker's jobs get: `landlock-abi-N` (N ≥ 6 also scopes signals and abstract
    sockets), `none` (no Landlock here), or `off`. `required` without Landlock raises."""
    wanted = wanted or mode()
    if wanted == "off":
        return "off"
    abi = landlock_abi() if abi is None else abi
    if abi <= 0:
        if wanted == "required":
            raise SandboxUnavailable(
                "--sandbox required: this kernel has no Landlock (Linux 5.13+ with "
                "landlock in the lsm= list); jobs would run unconfined"
            )
        return "none"
    return f"landlock-abi-{abi}"


def allow_builds() -> bool:
    """Whether this worker lets environments build packages from source (`--allow-builds`)."""
    return os.environ.get(ALLOW_BUILDS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def job_user() -> pwd.struct_passwd | None:
    """The `--job-user` account, checked: only a worker running as root can use one."""
    name = os.environ.get(JOB_USER_ENV, "")
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        raise SandboxUnavailable(f"--job-user {name}: no such user on this host") from None
    if os.geteuid() != 0:
        raise SandboxUnavailable(f"--job-user {name}: only a worker running as root can")
    if entry.pw_uid == 0:
        raise SandboxUnavailable(f"--job-user {name}: is root; name an unprivileged user")
    return entry


def refuse_root_jobs(option: str = "--allow-root") -> None:
    """Raise `SandboxUnavailable` when this process is root, names no job user and was not
    told `option`: its jobs would run as root. With no capabilities and under Landlock they
    still own root's files, which Landlock does not stop them from chmod-ing (a setuid-root
    binary for any local user, or `chmod 000` of libc), and they pass the owner checks of
    root's own sockets and IPC (a container runtime's or D-Bus's, where uid 0 is trusted)."""
    if os.geteuid() != 0 or os.environ.get(JOB_USER_ENV, ""):
        return
    if os.environ.get(ALLOW_ROOT_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return
    raise SandboxUnavailable(
        "running as root, jobs would run as root too (owning root's files and sockets, "
        "which the sandbox does not cover): name an unprivileged account with --job-user "
        f"USER, or pass {option} to run them as root anyway"
    )


def reach_as(user: pwd.struct_passwd, paths: Sequence[Path]) -> str | None:
    """Whether `user` can reach each of `paths` (enter every folder above it and read it), as
    its jobs must (their checkout and environment in the cache, the Python environments are
    made from); a line naming the first it cannot, else None. Checked in a forked child that
    becomes `user`, so the kernel's own permission checks answer (ACLs, groups)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: becomes the user, never returns
        try:
            os.close(read)
            os.setgroups(sorted({user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}))
            os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
            os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
            answer = ""
            for path in paths:
                answer = _first_unreachable(path)
                if answer:
                    break
            os.write(write, answer.encode()[:4000])
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode(errors="replace")
    os.waitpid(pid, 0)
    return answer or None


def job_user_cannot_reach(user: pwd.struct_passwd) -> str | None:
    """What of the worker's `user` (`--job-user`) cannot reach that its jobs need: the cache
    (their checkout and environment), the Python environments are made from, local blob
    storage; a line saying so and what to do, else None. Checked at the worker's start (and
    `retrain up`'s), rather than failing every job (a home under /root, a pyenv Python)."""
    from urllib.parse import urlsplit

    from orchestrator.settings import Settings

    settings = Settings.load()
    needed = [
        Path(settings.resolved_cache_dir),
        Path(os.path.realpath(sys.executable)),
        Path(os.path.realpath(os.path.dirname(os.__file__))),
    ]
    if settings.storage_url.startswith("file:"):
        needed.append(Path(urlsplit(settings.storage_url).path))
    problem = reach_as(user, needed)
    if not problem:
        return None
    return (
        f"{problem}; let that user enter it, or install retrain and keep RETRAIN_HOME where it "
        "can (deploy/README.md: a venv under /opt/retrain from the system Python, "
        "RETRAIN_HOME=/var/lib/retrain), or run the worker as that user"
    )


def _first_unreachable(path: Path) -> str:
    """In `reach_as`'s child: the first folder on the way to `path` it cannot enter, or
    `path` itself if it cannot read it, said in a line; "" when it can."""
    target = Path(os.path.abspath(path))
    for folder in (*reversed(target.parents), target):
        if not folder.exists() and folder != target:
            break  # made later, by the worker, as it needs it
        if folder != target and not os.access(folder, os.X_OK):
            try:
                mode = f"mode {os.stat(folder).st_mode & 0o7777:o}"
            except OSError:
                mode = "no access"
            return f"cannot enter {folder} ({mode}) to reach {path}"
    if target.exists() and not os.access(target, os.R_OK):
        return f"cannot read {path}"
    return ""


@dataclass
class Policy:
    """What one job may touch. Paths are absolute; `hidden` wins over the read-everything
    default but not over `read`/`write`, which name exactly what the job needs."""

    write: list[str] = field(default_factory=list)
    read: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    scope: bool = True
    uid: int | None = None
    gid: int | None = None
    groups: list[int] = field(default_factory=list)
    landlock: bool = True
    host_readonly: bool = False
    """The job starts as root: the host is read-only to it but for `write`, in a mount
    namespace of its own with a /dev/shm of its own (`sandbox_exec.HostView`)."""
    mounts: list[str] = field(default_factory=list)
    """Where `host_readonly` binds writable mounts, when not `write` itself: the work folder
    that holds all of the job's own folders, as one mount, so that a file made in `tmp/`
    moves into `outputs/` with a rename (separate mounts: EXDEV). Only where Landlock keeps
    the job to its folders within it."""


@functools.lru_cache(maxsize=1)
def host_readonly() -> bool:
    """Whether this worker's jobs that start as root see the host read-only: a root worker
    (with or without --job-user, as the mount namespace is made before the uid changes)
    where the kernel and the container allow it (`probe_host_view`, once per worker: a
    root worker without CAP_SYS_ADMIN runs its jobs as before)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    return probe_host_view()


def policy_for(
    *,
    workdir: Path,
    writable: Sequence[Path],
    readable: Sequence[Path],
    hidden: Sequence[Path],
    python: str,
) -> Policy | None:
    """The policy of a job, from the worker's options (`hidden`: `hidden_for`); None when
    sandboxing is off. Without Landlock it still confines what it can: no_new_privs, the
    parent-death signal, a root job's capabilities and read-only host."""
    lvl = level()
    user = job_user()
    if user is None and lvl == "off":
        return None
    extra = os.environ.get(WRITE_ENV, "").split()
    read = [*readable, *_interpreter_prefixes(python)]
    policy = Policy(
        write=[str(p) for p in (*writable, *extra)],
        read=[str(p) for p in read],
        hidden=[str(Path(p).absolute()) for p in hidden],
        scope=True,
        landlock=lvl.startswith("landlock"),
        host_readonly=lvl != "off" and os.geteuid() == 0 and host_readonly(),
    )
    if policy.landlock and writable and all(Path(workdir) in Path(p).parents for p in writable):
        policy.mounts = [str(workdir), *extra]
    if user is not None:
        policy.uid, policy.gid = user.pw_uid, user.pw_gid
        policy.groups = sorted({user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)})
        for path in writable:
            # Made fresh for this execution by the worker, with what it made in them (such
            # as `outputs/models`); even so, never through a link.
            os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
            for folder, dirs, files in os.walk(path):
                for name in (*dirs, *files):
                    os.chown(os.path.join(folder, name), user.pw_uid, user.pw_gid,
                             follow_symlinks=False)
        del workdir  # only its listed parts are the job's
    return policy


def build_policy(*, writable: Sequence[Path], hidden: Sequence[Path]) -> Policy | None:
    """The policy of an environment build's steps that may run a package's code (its build
    backend, a wheel's `.pth` file): write only `writable` (the new environment, the tool's
    cache, a private tmp), read the rest but `hidden` (`hidden_for`). Run as the worker's
    user, never `--job-user`: an environment a job's user owned, a later job could change.
    None when sandboxing is off or there is nothing to do (as `policy_for`)."""
    lvl = level()
    if lvl == "off" or (lvl == "none" and os.geteuid() != 0):
        return None
    return Policy(
        write=[str(p) for p in writable],
        read=[],
        hidden=[str(Path(p).absolute()) for p in hidden],
        scope=True,
        landlock=lvl.startswith("landlock"),
    )


def _interpreter_prefixes(python: str) -> list[Path]:
    """The environment of `python` and the installation it was made from (a venv's
    `pyvenv.cfg` `home`), which may live in a hidden folder such as a uv-managed Python."""
    env = Path(python).parent.parent
    found = [env]
    cfg = env / "pyvenv.cfg"
    try:
        lines = cfg.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            found.append(Path(value.strip()).parent)
    return found


def confinement(policy: Policy | None) -> Confinement | None:
    """What puts a job's process under `policy` between fork and exec (None: nothing to do):
    the Landlock ruleset is built here, in the work horse, once per job; the child only
    applies it (`workers.sandbox_exec.Confinement`). Close it once the job has started."""
    if policy is None:
        return None
    user = None
    if policy.uid is not None and policy.gid is not None:
        user = (policy.uid, policy.gid, list(policy.groups))
    landlock = None
    if policy.landlock:
        landlock = (
            [(access, path) for path, access in rules(policy).items()],
            landlock_abi(),
            policy.scope,
        )
    host = host_view(policy.mounts or policy.write) if policy.host_readonly else None
    return Confinement(user=user, landlock=landlock, host=host)


DEVICES = ("null", "zero", "full", "random", "urandom", "tty", "kfd")
"""Device files a job may read and write (`kfd`: AMD GPUs); nothing else in /dev but
`DEVICE_FOLDERS`, `/dev/shm` and the GPUs (`GPU_PREFIX`). Not `/dev/pts` (nor `ptmx`): its
entries are the terminals of the worker's user, where a job read what an operator typed and
wrote into their screen; a job has no terminal (its output is a pipe) and cannot make one."""
DEVICE_FOLDERS = ("dri", "nvidia-caps")
GPU_PREFIX = "nvidia"
"""nvidia0..., nvidiactl, nvidia-uvm, nvidia-uvm-tools, nvidia-modeset."""
DEVICE = READ_FILE | WRITE_FILE | TRUNCATE | READ_DIR


def rules(policy: Policy) -> dict[str, int]:
    """Path -> access rights: `read` on everything but the hidden paths and /dev (each
    ancestor of a hidden path is split into its other entries, as Landlock only allows,
    never denies), then the policy's own paths, then the devices a program needs, by name:
    a raw disk (`/dev/sda`, `/dev/loop0`) or the kernel log stays closed to a root job."""
    granted = dict(_everything_but(_closed(policy.hidden)))
    for path in policy.read:
        granted[path] = granted.get(path, 0) | READ
    granted["/dev"] = READ_DIR  # its names (`ls /dev`), none of its files
    granted.update(device_rules())
    for path in ("/dev/shm", *policy.write):  # noqa: S108 (shared memory, as data loaders need)
        granted[path] = WRITE
    return granted


def device_rules(dev: str = "/dev") -> dict[str, int]:
    """The devices a job may open (read and write), those of them that exist now: listed
    for each job, as a GPU's nodes may appear after the worker started. /dev/fd, stdin,
    stdout and stderr are links into /proc, judged where they lead."""
    try:
        names = os.listdir(dev)
    except OSError:
        names = []
    chosen = [
        name
        for name in names
        if name in DEVICES or name in DEVICE_FOLDERS or name.startswith(GPU_PREFIX)
    ]
    return {f"{dev}/{name}": DEVICE for name in sorted(chosen)}


def _closed(hidden: Sequence[str]) -> tuple[str, ...]:
    """What the read-everything rules leave out: the hidden paths and /dev (its devices are
    granted by name), as the key of `_everything_but`'s cache."""
    return tuple(sorted({*map(str, hidden), "/dev"}))


@functools.lru_cache(maxsize=4)
def _everything_but(hidden_paths: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """`read` rules for all of the filesystem except `hidden_paths`. Cached: the hidden
    paths are the worker's, the same for each job, and the slot computes them before it
    forks its work horses (`warm`)."""
    hidden = [Path(os.path.realpath(p)) for p in hidden_paths]
    granted: dict[str, int] = {}

    def visit(folder: Path) -> None:
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            return
        for name in entries:
            path = folder / name
            # A rule is on what a path names, so a link is judged by where it leads.
            real = Path(os.path.realpath(path)) if path.is_symlink() else path
            if any(real == h or h in real.parents for h in hidden):
                continue
            if any(real in h.parents for h in hidden):
                if real == path and path.is_dir():
                    visit(path)
                continue  # a link to a folder that is itself split: reached as its real path
            granted[str(path)] = READ

    if hidden:
        visit(Path("/"))
    else:
        granted["/"] = READ
    return tuple(granted.items())


def hidden_for(home: Path, cache: Path, storage_url: str) -> list[Path]:
    """What no job may read or write: the worker's home (secret, database, embedded Redis),
    its cache (other runs' folders, environments, mirrors, blobs), local blob storage, the
    worker user's credential files, the host's (`HIDDEN_ON_HOST`) and the operator's own
    (`--sandbox-hide`)."""
    from urllib.parse import urlsplit

    hidden = [home, cache]
    if storage_url.startswith("file:"):
        hidden.append(Path(urlsplit(storage_url).path))
    worker_home = Path(pwd.getpwuid(os.geteuid()).pw_dir)
    hidden += [worker_home / name for name in HIDDEN_IN_HOME]
    hidden += [Path(name) for name in HIDDEN_ON_HOST]
    hidden += [Path(name) for name in os.environ.get(HIDE_ENV, "").split()]
    return [p.absolute() for p in hidden]


def warm(hidden: Sequence[Path]) -> None:
    """Compute the walk once in the slot, before it forks work horses (see `rules`), and
    probe whether its root jobs can see the host read-only (`host_readonly`)."""
    lvl = level()
    if lvl.startswith("landlock"):
        _everything_but(_closed([str(p) for p in hidden]))
    if lvl != "off":
        host_readonly()
