"""The job's side of the sandbox (`workers.sandbox`), run between fork and exec as

    python -I -S workers/sandbox_exec.py [--user UID GID GROUPS] [--landlock ABI SCOPE]
        [--rule ACCESS PATH]... -- ARGV...

by the work horse: drop to the job user, drop a root job's dangerous capabilities, restrict
this process with Landlock, then exec ARGV in its place (same pid). The work horse computes
the rules; this file imports only `os`, `sys` and `ctypes`, so it costs one interpreter
start and a few system calls. If a step fails the job is not started (exit 126): it never
runs less confined than its worker said.
"""

from __future__ import annotations

import ctypes
import os
import sys

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # all architectures
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, PR_CAPBSET_DROP = 4, 38, 1, 24

# Landlock filesystem access rights, by the ABI that brought them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
MAKE_CHAR, MAKE_BLOCK = 1 << 6, 1 << 11
# Remove dir/file, make dir/reg/sock/fifo/sym: never a device node (a job that makes one for
# a disk reads the host's raw storage around every path rule).
MAKE = sum(1 << bit for bit in range(4, 13)) & ~(MAKE_CHAR | MAKE_BLOCK)
REFER, TRUNCATE = 1 << 13, 1 << 14
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
READ = EXECUTE | READ_FILE | READ_DIR
WRITE = READ | WRITE_FILE | MAKE | REFER | TRUNCATE

ROOT_JOB_DROPS = (2, 16, 17, 19, 21, 22, 27, 32, 33, 34, 38, 39, 40)
"""Capabilities a job started as root loses (from the bounding set, so at exec): ptrace
(with it root reads a non-dumpable process's environ, which Landlock does not stop), admin,
modules, raw I/O, `open_by_handle_at` (DAC_READ_SEARCH, which would step around Landlock's
paths), mknod (a device node for a disk), MAC, syslog, perf, BPF, checkpoint/restore."""


class PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or it is disabled)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        abi = int(libc().syscall(SYS_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(abi, 0)


def become(uid: int, gid: int, groups: list[int]) -> None:
    """Drop to the job user's uid and groups (a root worker's `--job-user`), then ask again
    for the parent-death signal, which a change of credentials clears."""
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    libc().prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
    if os.getppid() == 1:  # the work horse died before we asked
        os._exit(137)


def drop_capabilities() -> None:
    """Drop `ROOT_JOB_DROPS` from the bounding set; effective at exec. Raises OSError."""
    lib = libc()
    for cap in ROOT_JOB_DROPS:
        if lib.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) and ctypes.get_errno() != 22:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap}) failed")


def restrict(rules: list[tuple[int, str]], abi: int, scope: bool) -> None:
    """Restrict this process (and what it will exec and fork) to `rules`. Raises OSError."""
    lib = libc()
    handled = READ | WRITE
    if abi < 2:
        handled &= ~REFER
    if abi < 3:
        handled &= ~TRUNCATE
    attr = RulesetAttr(handled, 0, 0)
    size = 8
    if abi >= 6 and scope:
        attr.scoped = SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET
        size = ctypes.sizeof(RulesetAttr)
    ruleset = lib.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for access, path in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # gone since it was listed, or a dangling link
            try:
                if not os.path.isdir(f"/proc/self/fd/{fd}"):
                    access &= FILE_RIGHTS
                rule = PathBeneath(access & handled, fd)
                if lib.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
        if lib.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if lib.syscall(SYS_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)


def main(args: list[str]) -> None:
    user: tuple[int, int, list[int]] | None = None
    landlock: tuple[int, bool] | None = None
    rules: list[tuple[int, str]] = []
    i = 0
    try:
        while args[i] != "--":
            if args[i] == "--user":
                groups = [int(g) for g in args[i + 3].split(",") if g]
                user, i = (int(args[i + 1]), int(args[i + 2]), groups), i + 4
            elif args[i] == "--landlock":
                landlock, i = (int(args[i + 1]), args[i + 2] == "1"), i + 3
            elif args[i] == "--rule":
                rules.append((int(args[i + 1]), args[i + 2]))
                i += 3
            else:
                raise ValueError(args[i])
        argv = args[i + 1 :]
        if not argv:
            raise ValueError("no command")
    except (IndexError, ValueError) as exc:
        sys.stderr.write(f"retrain sandbox: bad arguments ({exc}); the job was not started\n")
        os._exit(2)
    try:
        if user is not None:
            become(*user)
        if os.geteuid() == 0:
            drop_capabilities()
        if landlock is not None:
            restrict(rules, *landlock)
    except OSError as exc:
        sys.stderr.write(f"retrain sandbox: {exc}; the job was not started\n")
        os._exit(126)
    os.execvp(argv[0], argv)  # noqa: S606 (the job's argv, never through a shell)


if __name__ == "__main__":
    main(sys.argv[1:])
