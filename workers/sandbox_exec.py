"""The job's side of the sandbox (`workers.sandbox`): a `Confinement`, prepared by the work
horse and applied in the job's process between fork and exec (`subprocess`'s `preexec_fn`):
ask for the parent-death signal, make the host read-only to a job that starts as root (a
mount namespace of its own, `HostView`), drop to the job user, drop a root job's dangerous
capabilities, set no_new_privs, restrict the process with the Landlock ruleset the work horse
built, then let `subprocess` exec the job. The work horse builds the ruleset (the paths are
opened there) and resolves the job's writable folders, so the child makes a handful of
system calls through functions resolved beforehand: no second interpreter start, no import.
If a step fails the job is not started (exit 126, the reason on its output): it never runs
less confined than its worker said.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from dataclasses import dataclass, field

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

SYS_MOUNT_SETATTR = 442  # all architectures
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
"""With the mount namespace: SysV IPC and POSIX message queues of the job's own (a root job
listed and removed the host's shared memory segments, and what it made outlived it)."""
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 1 << 12, 1 << 14, 1 << 18
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
SHM = "/dev/shm"  # noqa: S108 (the job's own tmpfs there)

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
KEYRING_CALLS = {
    0xC000003E: (248, 249, 250),  # x86_64 (x32 too: bit 30 of the number is masked)
    0x40000003: (286, 287, 288),  # i386, int 0x80 from an x86_64 process
    0xC00000B7: (217, 218, 219),  # aarch64
}
"""add_key, request_key and keyctl, by audit architecture. The kernel keyrings are per uid,
not per mount or IPC namespace: a root job wrote keys into root's user keyring that outlived
it on the host and read root's, and jobs of one job user left keys to the next. Confined jobs
get EPERM for them (a container's default seccomp profile refuses them too)."""
PRLIMIT_CALL = {0xC000003E: 302, 0x40000003: 340, 0xC00000B7: 261}
"""prlimit64, by audit architecture: allowed on the job's own process only (pid 0, as
setrlimit and getrlimit call it). The kernel lets a process set the limits of any process of
its uid, and Landlock's signal scope does not cover it: a root job set RLIMIT_NOFILE of host
root processes (the worker's) to 1, and could have set RLIMIT_CPU to kill them."""


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def job_filter() -> list[tuple[int, int, int, int]]:
    """A seccomp BPF program: the keyring calls of `KEYRING_CALLS`, and `PRLIMIT_CALL` on a
    pid other than 0, fail with EPERM; every other call (and every other architecture) is
    allowed."""
    load_word, jump_eq, ret, and_k = 0x20, 0x15, 0x06, 0x54
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    program = [(load_word, 0, 0, 4)]  # seccomp_data.arch
    for arch, numbers in KEYRING_CALLS.items():
        body = [(load_word, 0, 0, 0), (and_k, 0, 0, 0xBFFFFFFF)]  # seccomp_data.nr
        for number in numbers:
            body += [(jump_eq, 0, 1, number), (ret, 0, 0, deny)]
        # prlimit64: its pid (args[0]; the kernel reads an int, the low word) must be 0.
        body += [
            (jump_eq, 0, 3, PRLIMIT_CALL[arch]),  # not prlimit64: allowed
            (load_word, 0, 0, 16),  # seccomp_data.args[0], its low word (little-endian)
            (jump_eq, 1, 0, 0),  # pid 0: allowed
            (ret, 0, 0, deny),
            (ret, 0, 0, allow),
        ]
        program += [(jump_eq, 0, len(body), arch), *body]
    program.append((ret, 0, 0, allow))
    return program


CAP_SETPCAP = 8
"""Needed to drop the others from the bounding set: dropped last."""
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CAPABILITY_VERSION_3 = 0x20080522


def root_job_drops() -> tuple[int, ...]:
    """Every capability this kernel knows, CAP_SETPCAP last: a job started as root (a root
    worker without --job-user) loses them all from its bounding set, so at exec it gains none
    (root's file capabilities are the bounding set). Landlock does not govern chmod, chown,
    setxattr or utime, nor does it stop a job with CAP_SETUID becoming another user, with
    CAP_SYS_PTRACE reading a non-dumpable process, or with CAP_MKNOD making a disk's node:
    such a job is root in name only (it owns root's files, nothing more)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as known:
            last = int(known.read())
    except (OSError, ValueError):
        last = 40
    return (*(cap for cap in range(last + 1) if cap != CAP_SETPCAP), CAP_SETPCAP)


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


@dataclass
class HostView:
    """What a job that starts as root sees of the host's filesystem (`Confinement`): all of
    it read-only, in a mount namespace of its own, but `binds` (its writable folders: real
    path, and whether their mount already was read-only, which stays so), each bound onto
    itself, nosuid and nodev; and a fresh tmpfs on /dev/shm (`shm`: its mount options) of its
    own. Prepared in the work horse (`host_view`)."""

    binds: list[tuple[bytes, bool]] = field(default_factory=list)
    shm: bytes | None = None


def host_view(writable: list[str]) -> HostView:
    """The `HostView` of a job that may write `writable` (folders that are gone are left out,
    as `build_ruleset` does): resolved here, so that the child only makes system calls."""
    binds: dict[str, bool] = {}
    for path in writable:
        real = os.path.realpath(path)
        try:
            readonly = bool(os.statvfs(real).f_flag & os.ST_RDONLY)
        except OSError:
            continue
        binds[real] = binds.get(real, False) or readonly
    view = HostView(binds=[(os.fsencode(p), ro) for p, ro in sorted(binds.items())])
    try:
        # As large as the host's: an operator's limit (a container's --shm-size) still holds.
        shm = os.statvfs(SHM)
        view.shm = f"mode=1777,size={shm.f_blocks * shm.f_frsize}".encode()
    except OSError:
        pass  # no /dev/shm on this host: none for the job either
    return view


def probe_host_view() -> bool:
    """Whether a `HostView` can be made here (root with CAP_SYS_ADMIN, Linux 5.12+ for
    mount_setattr; not in a container that withholds them): tried in a forked child, which
    makes a mount namespace, makes it private and all of it read-only, and exits."""
    import warnings

    lib = libc()
    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    with warnings.catch_warnings():  # 3.12+ warns of fork in a threaded process: no lock here
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        made = False
        try:
            made = (
                lib.unshare(CLONE_NEWNS | CLONE_NEWIPC) == 0
                and lib.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0
                and lib.syscall(
                    ctypes.c_long(SYS_MOUNT_SETATTR),
                    ctypes.c_long(AT_FDCWD),
                    b"/",
                    ctypes.c_uint(AT_RECURSIVE),
                    ctypes.byref(attr),
                    ctypes.c_size_t(ctypes.sizeof(attr)),
                )
                == 0
            )
        finally:
            os._exit(0 if made else 1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


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


def handled_access(abi: int) -> int:
    """The filesystem rights a ruleset of this ABI handles (and so restricts)."""
    handled = READ | WRITE
    if abi < 2:
        handled &= ~REFER
    if abi < 3:
        handled &= ~TRUNCATE
    return handled


def build_ruleset(rules: list[tuple[int, str]], abi: int, scope: bool) -> int:
    """A Landlock ruleset holding `rules` (access, path), as a close-on-exec descriptor that
    `Confinement` applies in the child. Raises OSError."""
    lib = libc()
    handled = handled_access(abi)
    attr = RulesetAttr(handled, 0, 0)
    size = 8
    if abi >= 6 and scope:
        attr.scoped = SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET
        size = ctypes.sizeof(RulesetAttr)
    ruleset = int(lib.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for access, path in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # gone since it was listed, or a dangling link
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= FILE_RIGHTS
                rule = PathBeneath(access & handled, fd)
                if lib.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


class Confinement:
    """What one job's process becomes before it execs: prepared here, in the work horse
    (`__init__`: the ruleset built, libc's functions resolved), applied in the child by
    calling the object (`subprocess.Popen(..., preexec_fn=confinement)`), which must not
    import or allocate much: it runs between fork and exec. `close()` after the start."""

    def __init__(
        self,
        *,
        user: tuple[int, int, list[int]] | None,
        landlock: tuple[list[tuple[int, str]], int, bool] | None,
        host: HostView | None = None,
    ) -> None:
        lib = libc()
        self._prctl = lib.prctl
        self._syscall = lib.syscall
        self._get_errno = ctypes.get_errno
        self.user = user
        self.ruleset = -1
        self.error = ""
        self._handled = 0
        if landlock is not None:
            try:
                self.ruleset = build_ruleset(*landlock)
            except OSError as exc:
                self.error = str(exc)
            self._handled = handled_access(landlock[1])
        self.host = host
        self._unshare = lib.unshare
        self._mount = lib.mount
        text = ctypes.c_char_p
        self._mount.argtypes = [text, text, text, ctypes.c_ulong, text]
        self._shm = SHM.encode()
        self._setattr_args = (
            ctypes.c_long(SYS_MOUNT_SETATTR),
            ctypes.c_long(AT_FDCWD),
            ctypes.c_size_t(ctypes.sizeof(MountAttr)),
        )
        self._recursive, self._alone = ctypes.c_uint(AT_RECURSIVE), ctypes.c_uint(0)
        nosuid = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
        self._readonly = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
        self._writable = MountAttr(nosuid, MOUNT_ATTR_RDONLY, 0, 0)
        self._kept_readonly = MountAttr(nosuid, 0, 0, 0)
        self._shm_rule = PathBeneath(WRITE & self._handled, -1)
        self._drops = root_job_drops()
        self._capget = lib.capget
        self._capset = lib.capset
        self._cap_header = CapHeader(CAPABILITY_VERSION_3, 0)
        self._cap_data = (CapData * 2)()
        program = job_filter()
        self._filter = (SockFilter * len(program))(*(SockFilter(*op) for op in program))
        self._fprog = SockFprog(len(program), self._filter)

    def close(self) -> None:
        if self.ruleset >= 0:
            os.close(self.ruleset)
            self.ruleset = -1

    def __call__(self) -> None:
        """In the child, between fork and exec. Never returns on failure: exit 126."""
        try:
            self._apply()
        except BaseException as exc:  # whatever it is, the job must not start
            os.write(2, f"retrain sandbox: {exc}; the job was not started\n".encode())
            os._exit(126)

    def _drop_capabilities(self) -> None:
        """A root job's bounding, ambient and inheritable sets emptied: exec gives it none."""
        for cap in self._drops:
            if self._prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) and self._get_errno() != 22:
                raise OSError(self._get_errno(), f"prctl(PR_CAPBSET_DROP, {cap}) failed")
        if self._prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) and (
            self._get_errno() != 22
        ):
            raise OSError(self._get_errno(), "prctl(PR_CAP_AMBIENT_CLEAR_ALL) failed")
        data = self._cap_data
        if self._capget(ctypes.byref(self._cap_header), data):
            raise OSError(self._get_errno(), "capget failed")
        if data[0].inheritable or data[1].inheritable:
            data[0].inheritable = data[1].inheritable = 0
            if self._capset(ctypes.byref(self._cap_header), data):
                raise OSError(self._get_errno(), "capset failed")

    def _set_mount(self, path: bytes, flags: ctypes.c_uint, attr: MountAttr) -> None:
        number, here, size = self._setattr_args
        if self._syscall(number, here, path, flags, ctypes.byref(attr), size):
            raise OSError(self._get_errno(), f"mount_setattr({path!r}) failed")

    def _make_host_readonly(self, host: HostView) -> None:
        """In a mount namespace of the job's own (nothing propagates back to the host): the
        whole tree read-only, its writable folders bound onto themselves and writable again
        (unless the host's mount was read-only), nosuid and nodev, and a tmpfs of its own on
        /dev/shm. Device nodes stay usable on a read-only mount (/dev/null, the GPUs)."""
        if self._unshare(CLONE_NEWNS | CLONE_NEWIPC):
            raise OSError(self._get_errno(), "unshare(CLONE_NEWNS|CLONE_NEWIPC) failed")
        if self._mount(None, b"/", None, MS_REC | MS_PRIVATE, None):
            raise OSError(self._get_errno(), "mount(/, MS_REC|MS_PRIVATE) failed")
        for path, _ in host.binds:
            if self._mount(path, path, None, MS_BIND | MS_REC, None):
                raise OSError(self._get_errno(), f"bind mount of {path!r} failed")
        self._set_mount(b"/", self._recursive, self._readonly)
        for path, readonly in host.binds:
            self._set_mount(path, self._alone, self._kept_readonly if readonly else self._writable)
        if host.shm is not None:
            if self._mount(b"tmpfs", self._shm, b"tmpfs", MS_NOSUID | MS_NODEV, host.shm):
                raise OSError(self._get_errno(), "mount of a tmpfs on /dev/shm failed")
            if self.ruleset >= 0:  # Landlock's rules are on inodes: the host's /dev/shm's
                shm = os.open(self._shm, os.O_PATH | os.O_CLOEXEC)
                self._shm_rule.parent_fd = shm
                failed = self._syscall(
                    SYS_ADD_RULE, self.ruleset, RULE_PATH_BENEATH, ctypes.byref(self._shm_rule), 0
                )
                os.close(shm)
                if failed:
                    raise OSError(self._get_errno(), "landlock_add_rule failed for /dev/shm")
        # The working folder subprocess entered is the one below a bind: enter it again.
        os.chdir(os.getcwd())

    def _apply(self) -> None:
        if self.error:
            raise OSError(self.error)
        # The kernel SIGKILLs the job when the work horse dies (a kill -9 of the worker):
        # a lost run must not go on holding a GPU.
        self._prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        if self.host is not None:  # before the uid changes (it needs CAP_SYS_ADMIN)
            self._make_host_readonly(self.host)
        if self.user is not None:
            uid, gid, groups = self.user
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            self._prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # a change of credentials clears it
        if os.getppid() == 1:  # the work horse died before we asked
            os._exit(137)
        if os.geteuid() == 0:
            self._drop_capabilities()
        # With or without Landlock: no setuid binary (nor file capability) raises the job.
        if self._prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise OSError(self._get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if self._prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self._fprog), 0, 0):
            raise OSError(self._get_errno(), "prctl(PR_SET_SECCOMP) failed")
        if self.ruleset >= 0 and self._syscall(SYS_RESTRICT_SELF, self.ruleset, 0):
            raise OSError(self._get_errno(), "landlock_restrict_self failed")
