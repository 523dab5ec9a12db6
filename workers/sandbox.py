"""The job sandbox: what a job's process may touch on its worker's host.

A job is code from any repository, run by a worker that holds credentials (cloud keys, the
Redis URL, the worker secret) and shared caches (environments, git mirrors, blobs) that later
jobs trust. Three layers keep the job away from them:

1. The worker is not dumpable (`prctl(PR_SET_DUMPABLE, 0)`, `make_undumpable`, called by
   `retrain worker` and inherited by its work horses): a process of the same uid cannot read
   its `/proc/<pid>/environ` or `mem`, nor ptrace it.
2. Landlock (Linux 5.13+, `landlock_abi()`): the job's process is restricted between fork and
   exec by a small wrapper (`workers/sandbox_exec.py`, run by the worker's own interpreter,
   so the work horse keeps spawning with vfork). It may write only its outputs folder and a
   private tmp; read (and execute) its checkout, its environment, its inputs and the rest of
   the system; it cannot read the worker's home (the secret, the database, the caches), other
   attempts' folders, the blob cache beyond its own inputs, or the worker user's credential
   files. Landlock also refuses ptrace and `/proc/<pid>/environ` of any process outside the
   job's domain, even to root, and from ABI 6 signals and abstract unix sockets.
3. `--job-user USER` (a worker running as root): the job runs under that user's uid and
   groups; its outputs and tmp folders are made its own, everything else stays root's.

The level a worker reaches is in its advertisement (`retrain status`) and its start log line;
`--sandbox required` refuses to start without Landlock, `--sandbox off` runs jobs as before.
The worker reads its options from the environment (`SANDBOX_ENV`...), set by the CLI, as
`workers.jobenv.PASS_ENV` is, so that supervised slots and work horses see them.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "MODES",
    "Policy",
    "SandboxUnavailable",
    "landlock_abi",
    "level",
    "make_undumpable",
    "prefix",
]

MODES = ("auto", "required", "off")
"""`--sandbox`: auto (Landlock when the kernel has it, and say so when not), required (refuse
to start without it), off (jobs run unconfined, as the worker's user)."""

SANDBOX_ENV = "RETRAIN_SANDBOX"
WRITE_ENV = "RETRAIN_SANDBOX_WRITE"
"""Extra folders jobs may write (`--sandbox-write`, space-separated): a scratch disk."""
JOB_USER_ENV = "RETRAIN_JOB_USER"

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
)
"""Credential files of the worker's user that no job may read, below its home folder."""

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # all architectures
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS, _PR_SET_PDEATHSIG, _PR_CAPBSET_DROP = 4, 38, 1, 24
ROOT_JOB_DROPS = (2, 16, 17, 19, 21, 22, 32, 33, 34, 38, 39, 40)
"""Capabilities a job started as root loses (from the bounding set, so at exec): ptrace
(with it root reads a non-dumpable process's environ, which Landlock does not stop), admin,
modules, raw I/O, `open_by_handle_at` (DAC_READ_SEARCH, which would step around Landlock's
paths), MAC, syslog, perf, BPF, checkpoint/restore."""

# Filesystem access rights, by the ABI that brought them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_MAKE = sum(1 << bit for bit in range(4, 13))  # remove dir/file, make char/dir/reg/sock/...
REFER, TRUNCATE = 1 << 13, 1 << 14
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

READ = EXECUTE | READ_FILE | READ_DIR
WRITE = READ | WRITE_FILE | _MAKE | REFER | TRUNCATE


class SandboxUnavailable(RuntimeError):
    """`--sandbox required` on a host without Landlock, or a `--job-user` that cannot be."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or it is disabled)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        abi = int(_libc().syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(abi, 0)


def make_undumpable() -> bool:
    """Make this process (and what it forks) not dumpable: same-uid processes can no longer
    read its /proc environ or memory, nor ptrace it. False where it cannot be done."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return int(_libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
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


def policy_for(
    *,
    workdir: Path,
    writable: Sequence[Path],
    readable: Sequence[Path],
    hidden: Sequence[Path],
    python: str,
) -> Policy | None:
    """The policy of a job, from the worker's options; None when sandboxing is off (or there
    is nothing this host can do: no Landlock and no job user)."""
    lvl = level()
    user = job_user()
    if lvl in ("off", "none") and user is None:
        return None
    extra = os.environ.get(WRITE_ENV, "").split()
    read = [*readable, *_interpreter_prefixes(python)]
    worker_home = Path(pwd.getpwuid(os.geteuid()).pw_dir)
    hide = [*hidden, *(worker_home / name for name in HIDDEN_IN_HOME)]
    policy = Policy(
        write=[str(p) for p in (*writable, *extra)],
        read=[str(p) for p in read],
        hidden=[str(Path(p).absolute()) for p in hide],
        scope=True,
        landlock=lvl.startswith("landlock"),
    )
    if user is not None:
        policy.uid, policy.gid = user.pw_uid, user.pw_gid
        policy.groups = sorted({user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)})
        for path in writable:
            os.chown(path, user.pw_uid, user.pw_gid)
        del workdir  # only its listed parts are the job's
    return policy


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


WRAPPER = Path(__file__).with_name("sandbox_exec.py")


def prefix(policy: Policy | None) -> list[str]:
    """What runs before a job's argv to put it under `policy` (nothing when None): this
    interpreter in isolated mode without site, running the wrapper, a few milliseconds."""
    if policy is None:
        return []
    return [sys.executable, "-I", "-S", str(WRAPPER), json.dumps(asdict(policy)), "--"]


# --- in the job's process, between fork and exec (run by sandbox_exec.py) ------------------


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


def rules(policy: Policy) -> dict[str, int]:
    """Path -> access rights: `read` on everything but the hidden paths (each ancestor of a
    hidden path is split into its other entries, as Landlock only allows, never denies),
    then the policy's own paths, then the devices and /proc a program needs."""
    hidden = [Path(os.path.realpath(p)) for p in policy.hidden]
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
    for path in policy.read:
        granted[path] = granted.get(path, 0) | READ
    for path in ("/dev/shm", *policy.write):  # noqa: S108 (shared memory, as data loaders need)
        granted[path] = WRITE
    granted["/dev"] = granted.get("/dev", 0) | READ | WRITE_FILE  # /dev/null, GPUs
    return granted


def restrict(policy: Policy, abi: int) -> None:
    """Restrict this process (and what it will exec and fork) to `policy`. Raises OSError."""
    libc = _libc()
    handled = READ | WRITE
    if abi < 2:
        handled &= ~REFER
    if abi < 3:
        handled &= ~TRUNCATE
    attr = _RulesetAttr(handled, 0, 0)
    size = 8
    if abi >= 6 and policy.scope:
        attr.scoped = SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET
        size = ctypes.sizeof(_RulesetAttr)
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for path, access in rules(policy).items():
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # gone since it was listed, or a dangling link
            try:
                if not os.path.isdir(f"/proc/self/fd/{fd}"):
                    access &= _FILE_RIGHTS
                rule = _PathBeneath(access & handled, fd)
                if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)


def become(policy: Policy) -> None:
    """Drop to the job user's uid and groups (a root worker's `--job-user`), then ask again
    for the parent-death signal, which a change of credentials clears."""
    if policy.uid is None or policy.gid is None:
        return
    os.setgroups(policy.groups)
    os.setresgid(policy.gid, policy.gid, policy.gid)
    os.setresuid(policy.uid, policy.uid, policy.uid)
    libc = _libc()
    libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
    if os.getppid() == 1:  # the work horse died before we asked
        os._exit(137)


def drop_capabilities() -> None:
    """Drop `ROOT_JOB_DROPS` from the bounding set; effective at exec. Raises OSError."""
    libc = _libc()
    for cap in ROOT_JOB_DROPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) and ctypes.get_errno() != 22:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap}) failed")


def exec_main(args: Iterable[str]) -> None:
    """`sandbox_exec.py POLICY -- ARGV...`: apply POLICY, then exec ARGV (same pid)."""
    items = list(args)
    if len(items) < 3 or items[1] != "--":
        sys.stderr.write("usage: sandbox_exec.py POLICY -- ARGV...\n")
        os._exit(2)
    policy = Policy(**json.loads(items[0]))
    argv = items[2:]
    try:
        become(policy)
        if os.geteuid() == 0:
            drop_capabilities()
        if policy.landlock:
            restrict(policy, landlock_abi())
    except OSError as exc:
        # Never run the job less confined than the worker said: fail the run instead.
        sys.stderr.write(f"retrain sandbox: {exc}; the job was not started\n")
        os._exit(126)
    os.execvp(argv[0], argv)  # noqa: S606 (the job's argv, never through a shell)
