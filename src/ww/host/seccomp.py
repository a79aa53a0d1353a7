"""The seccomp filter every jailed cell runs under: the kernel surface a cell never needs.

A cell has no business tracing or reading other processes, mounting, making namespaces,
loading kernel code or BPF programs, using io_uring or the kernel keyring, rebooting,
swapping, opening files by handle, touching I/O ports, setting the clock, reading the kernel
log, injecting terminal input, or using the 32-bit system call ABI.  The filter denies
exactly those (``DENIED`` below, plus ``clone`` with a namespace flag, the calls of
``BY_ARGUMENT`` with the arguments named there, and the whole 32-bit ABI); a call numbered
above ``LAST_KNOWN`` fails with ``ENOSYS``; everything else is allowed, because the jail's
namespaces and bubblewrap's dropped capabilities already confine it.  docs/security.md
compares the filter with Docker's default profile call by call: every difference is
listed there with its reason.

Two modes:

* **deny** (the default): a denied call fails with ``EPERM``.  bubblewrap installs the
  program (``--seccomp FD``) just before it executes the cell.
* **strict** (``ww run --strict``): a denied call is reported to the host, which kills the
  cell on the first one and exits 67 naming the call.  The report is the kernel's user
  notification (``SECCOMP_RET_USER_NOTIF``): a few lines of Python inside the jail
  (``STRICT_HELPER``) install the filter with a listener, pass the listener to the host
  over a socket and then execute the cell, so the cell never holds the listener.
  Strict mode also denies installing a seccomp filter (``seccomp`` with
  ``SECCOMP_SET_MODE_STRICT`` or ``SECCOMP_SET_MODE_FILTER``, ``prctl(PR_SET_SECCOMP)``):
  the kernel ranks a filter's ``ERRNO`` or ``TRAP`` above ``USER_NOTIF``, so a cell's own
  filter answering a denied call would otherwise take precedence over the report and the
  call would fail quietly instead of stopping the cell.

``clone3`` fails with ``ENOSYS`` in both modes (its flags are behind a pointer the filter
cannot read), which makes the C library fall back to ``clone``, whose flags it can.  So do
the inotify calls (``ABSENT``): a cell could take every inotify instance of its host uid, and
watch the host's processes use the bound system files; ``ENOSYS`` makes programs poll.

The program is written directly in classic BPF: no libseccomp, nothing to import.  Building
it takes about 50 microseconds, less than reading it back from a cache file would (about
70), so it is built once per process, on first use, and kept (``program``).
"""

from __future__ import annotations

import errno
import os
import struct

from ww.core.errors import HostError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

# The calls denied, by name, in the order they are checked.  Docker's default profile
# denies every one of them too (docs/security.md compares the two call by call).
DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev",
    "kcmp", "pidfd_getfd", "process_madvise",
    "mount", "umount2", "pivot_root", "chroot",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "open_tree_attr",
    "unshare", "setns",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "open_by_handle_at", "iopl", "ioperm",
    "syslog", "acct", "vhangup", "quotactl", "quotactl_fd", "fanotify_init",
    "lookup_dcookie", "uselib", "ustat", "sysfs",
    "settimeofday", "clock_settime", "sethostname", "setdomainname",
    "mbind", "set_mempolicy", "get_mempolicy", "set_mempolicy_home_node",
    "migrate_pages", "move_pages",
    "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules",
)  # fmt: skip

# Calls that fail with ENOSYS in both modes, as if the kernel had no inotify (denied, but not
# a violation under --strict: watching files is ordinary, and these programs have a fallback).
# The kernel counts inotify instances per host uid across user namespaces (128 by default,
# fs.inotify.max_user_instances), so a cell could take all of its host uid's and refuse
# inotify to every other process of that uid; and the bound system files are the host's
# inodes, so a watch on /usr/bin reports every command any host process runs.  ENOSYS, not
# EPERM: it is what programs read as "this kernel has no inotify" and fall back to polling
# quietly (coreutils' `tail -f` warns on any other errno, then polls).  inotify_rm_watch
# needs an instance, so it is left alone; aarch64 has no inotify_init.
ABSENT = ("inotify_init", "inotify_init1", "inotify_add_watch")

# Calls denied for some values of one argument: name -> (argument index, how, values).
# "deny": these values are denied; "allow": only these values are allowed.  Only the low
# 32 bits of the argument are compared: each of these is an int (or, for ioctl, an unsigned
# int request) of which the kernel itself reads only the low 32 bits.
BY_ARGUMENT = {
    # AF_ALG (the kernel's crypto API) and AF_VSOCK (reaches the hypervisor, outside every
    # network namespace), as Docker's profile.
    "socket": (0, "deny", (38, 40)),
    # TIOCSTI pushes input into a terminal, TIOCLINUX (selection paste) into a console.
    "ioctl": (1, "deny", (0x5412, 0x541C)),
    # Only the personalities Docker's profile allows: Linux, its 32-bit variant, UNAME26
    # forms, and the query (0xffffffff); never ADDR_NO_RANDOMIZE or READ_IMPLIES_EXEC.
    "personality": (0, "allow", (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)),
    # F_SETLEASE (1024): a lease on a host file (a `--dir` grant's, which the cell's host
    # uid owns) makes every host program that opens it for writing wait for the cell.
    "fcntl": (1, "deny", (1024,)),
}

# chmod and its kin may not set the setuid or setgid bit: name -> index of the mode
# argument.  They fail with EPERM in both modes (not a violation under --strict: `cp -p` and
# `tar -p` ask for the bits as a matter of course).  nosuid holds in the jail only: a
# program the cell made setuid in a `--dir NAME=PATH:rw` grant would run as the cell's host
# uid (nobody, or the operator's) for any host user who runs it there, and a setgid
# directory would hand the cell's group to what host users create in it.  A file created
# with these bits (open, mknod) is empty, and writing or extending it clears them.
NO_SET_ID = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2}
SET_ID_BITS = 0o6000

# System calls numbered above the last one this table knows (the same number on x86_64
# and aarch64: the tables are shared from 424 on) fail with ENOSYS: a call newer than the
# filter is not trusted until it is reviewed, and ENOSYS makes the C library fall back.
LAST_KNOWN = 469  # file_setattr, Linux 6.17

# Strict mode only: the calls that install a seccomp filter, (name, first argument values).
# seccomp(op, ...) with op SECCOMP_SET_MODE_STRICT (0) or SECCOMP_SET_MODE_FILTER (1), and
# prctl(PR_SET_SECCOMP (22), ...); seccomp's other operations only ask questions.
STRICT_DENIED = (("seccomp", (0, 1)), ("prctl", (22,)))

# clone(flags, ...) with any of these flags makes a namespace, as unshare would.
CLONE_NEW_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x00000080  # CLONE_NEWTIME
)


class _Arch:
    def __init__(self, audit: int, compat: int | None, x32: bool, numbers: dict[str, int]):
        self.audit = audit  # AUDIT_ARCH_* of the native ABI
        self.compat = compat  # AUDIT_ARCH_* of its 32-bit ABI, if any
        self.x32 = x32  # numbers with bit 30 set are the x32 ABI
        self.numbers = numbers


_ARCHES = {
    "x86_64": _Arch(0xC000003E, 0x40000003, True, {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "mount": 165, "umount2": 166, "pivot_root": 155,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442,
        "unshare": 272, "setns": 308, "keyctl": 250, "add_key": 248, "request_key": 249,
        "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168,
        "open_by_handle_at": 304, "iopl": 172, "ioperm": 173,
        "kcmp": 312, "pidfd_getfd": 438, "process_madvise": 440, "chroot": 161,
        "open_tree_attr": 467, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "syslog": 103, "acct": 163, "vhangup": 153,
        "quotactl": 179, "quotactl_fd": 443, "fanotify_init": 300, "lookup_dcookie": 212,
        "uselib": 134, "ustat": 136, "sysfs": 139, "settimeofday": 164, "clock_settime": 227,
        "sethostname": 170, "setdomainname": 171, "mbind": 237, "set_mempolicy": 238,
        "get_mempolicy": 239, "set_mempolicy_home_node": 450, "migrate_pages": 256,
        "move_pages": 279, "lsm_get_self_attr": 459, "lsm_set_self_attr": 460,
        "lsm_list_modules": 461,
        "clone": 56, "clone3": 435, "seccomp": 317, "prctl": 157,
        "socket": 41, "ioctl": 16, "personality": 135, "fcntl": 72,
        "inotify_init": 253, "inotify_add_watch": 254, "inotify_init1": 294,
        "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452,
    }),
    # The generic table (asm-generic/unistd.h); aarch64 has no iopl/ioperm.
    "aarch64": _Arch(0xC00000B7, 0x40000028, False, {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "mount": 40, "umount2": 39, "pivot_root": 41,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442,
        "unshare": 97, "setns": 268, "keyctl": 219, "add_key": 217, "request_key": 218,
        "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225,
        "open_by_handle_at": 265,
        "kcmp": 272, "pidfd_getfd": 438, "process_madvise": 440, "chroot": 51,
        "open_tree_attr": 467, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "syslog": 116, "acct": 89, "vhangup": 58,
        "quotactl": 60, "quotactl_fd": 443, "fanotify_init": 262, "lookup_dcookie": 18,
        "settimeofday": 170, "clock_settime": 112,
        "sethostname": 161, "setdomainname": 162, "mbind": 235, "set_mempolicy": 237,
        "get_mempolicy": 236, "set_mempolicy_home_node": 450, "migrate_pages": 238,
        "move_pages": 239, "lsm_get_self_attr": 459, "lsm_set_self_attr": 460,
        "lsm_list_modules": 461,
        "clone": 220, "clone3": 435, "seccomp": 277, "prctl": 167,
        "socket": 198, "ioctl": 29, "personality": 92, "fcntl": 25,
        "inotify_init1": 26, "inotify_add_watch": 27,
        "fchmod": 52, "fchmodat": 53, "fchmodat2": 452,
    }),
}  # fmt: skip

# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_JGT_K = 0x25
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_USER_NOTIF = 0x7FC00000
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16
_X32_BIT = 0x40000000

DENY = "deny"
STRICT = "strict"


def _arch() -> _Arch:
    machine = os.uname().machine
    arch = _ARCHES.get(machine)
    if arch is None:
        raise HostError(f"the seccomp filter has no system call table for {machine}: "
                        "run with --jail=none, or add the table to ww/host/seccomp.py")
    return arch


def build(mode: str = DENY, machine: str | None = None) -> bytes:
    """The filter as the kernel's ``struct sock_filter[]``, in native byte order."""
    arch = _ARCHES[machine] if machine else _arch()
    deny = _RET_USER_NOTIF if mode == STRICT else _RET_ERRNO | errno.EPERM
    numbers = [arch.numbers[name] for name in DENIED if name in arch.numbers]
    # Layout (each line one instruction; jumps are relative and forward only):
    #   ld arch; jeq native ? +1 : ->bad_abi
    #   ld nr; [jge X32 ->bad_abi]; jgt LAST_KNOWN ->enosys; jeq clone3 ->enosys;
    #   jeq a_i ->enosys (for every call of ABSENT);
    #   jeq clone ? ->clone : +0
    #   jeq n_i ->deny   (for every denied number)
    #   jeq n ->n        (for every call checked by argument, BY_ARGUMENT and strict's)
    #   jeq m ->m:mode   (for every call of NO_SET_ID)
    #   ret ALLOW
    # clone: ld arg0 (low word); jset CLONE_NEW* ->deny; ret ALLOW
    # n (deny values): ld arg (low word); jeq v_i ->deny (each value); ret ALLOW
    # n (allow values): ld arg (low word); jeq v_i ->allow (each value); ret DENY
    # m:mode: ld mode (low word); jset SET_ID_BITS ->eperm; ret ALLOW
    # deny: ret DENY;  eperm: ret ERRNO(EPERM);  bad_abi: ret DENY;  enosys: ret ERRNO(ENOSYS)
    # (The kernel caches, per call number, that a filter always allows it: only calls that
    # are denied or checked by argument ever run it.)
    prog: list[tuple[int, int, int, int]] = []
    fixups: list[tuple[int, str, str]] = []  # (index, jt label, jf label)
    labels: dict[str, int] = {}

    def op(code: int, k: int = 0, jt: str = "", jf: str = "") -> None:
        if jt or jf:
            fixups.append((len(prog), jt, jf))
        prog.append((code, 0, 0, k))

    op(_LD_W_ABS, _OFF_ARCH)
    op(_JEQ_K, arch.audit, jf="bad_abi")
    op(_LD_W_ABS, _OFF_NR)
    if arch.x32:
        op(_JGE_K, _X32_BIT, jt="bad_abi")
    op(_JGT_K, LAST_KNOWN, jt="enosys")
    op(_JEQ_K, arch.numbers["clone3"], jt="enosys")
    for name in ABSENT:
        if name in arch.numbers:
            op(_JEQ_K, arch.numbers[name], jt="enosys")
    op(_JEQ_K, arch.numbers["clone"], jt="clone")
    for nr in numbers:
        op(_JEQ_K, nr, jt="deny")
    by_argument = dict(BY_ARGUMENT)
    if mode == STRICT:
        by_argument.update({name: (0, "deny", values) for name, values in STRICT_DENIED})
    for name in by_argument:
        op(_JEQ_K, arch.numbers[name], jt=name)
    set_id = {name: index for name, index in NO_SET_ID.items() if name in arch.numbers}
    for name in set_id:
        op(_JEQ_K, arch.numbers[name], jt=f"{name}:mode")
    op(_RET_K, _RET_ALLOW)
    labels["clone"] = len(prog)
    op(_LD_W_ABS, _OFF_ARG0)  # the flags' low 32 bits (little-endian) hold every CLONE_NEW*
    op(_JSET_K, CLONE_NEW_FLAGS, jt="deny")
    op(_RET_K, _RET_ALLOW)
    for name, (index, how, values) in by_argument.items():
        labels[name] = len(prog)
        op(_LD_W_ABS, _OFF_ARG0 + 8 * index)  # the argument's low 32 bits
        for value in values:
            op(_JEQ_K, value, jt="deny" if how == "deny" else f"{name}:allow")
        op(_RET_K, _RET_ALLOW if how == "deny" else deny)
        if how == "allow":
            labels[f"{name}:allow"] = len(prog)
            op(_RET_K, _RET_ALLOW)
    for name, index in set_id.items():
        labels[f"{name}:mode"] = len(prog)
        op(_LD_W_ABS, _OFF_ARG0 + 8 * index)  # mode_t: the low 32 bits
        op(_JSET_K, SET_ID_BITS, jt="eperm")
        op(_RET_K, _RET_ALLOW)
    labels["deny"] = len(prog)
    op(_RET_K, deny)
    labels["eperm"] = len(prog)
    op(_RET_K, _RET_ERRNO | errno.EPERM)
    labels["bad_abi"] = len(prog)
    op(_RET_K, deny)
    labels["enosys"] = len(prog)
    op(_RET_K, _RET_ERRNO | errno.ENOSYS)
    for index, jt, jf in fixups:
        code, _, _, k = prog[index]
        t = labels[jt] - index - 1 if jt else 0
        f = labels[jf] - index - 1 if jf else 0
        if not (0 <= t < 256 and 0 <= f < 256):  # a backward jump ("allow") or too far
            raise AssertionError(f"seccomp filter: jump out of range at {index}")
        prog[index] = (code, t, f, k)
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


_cache: dict[str, bytes] = {}


def program(mode: str = DENY) -> bytes:
    """This machine's compiled filter for ``mode``, built on first use and kept."""
    if mode not in _cache:
        _cache[mode] = build(mode)
    return _cache[mode]


def program_fd(mode: str = DENY) -> int:
    """A pipe's read end holding the compiled filter, for bubblewrap's ``--seccomp FD``."""
    data = program(mode)
    r, w = os.pipe()
    try:
        os.write(w, data)  # a few hundred bytes: always fits the pipe's buffer
    finally:
        os.close(w)
    return r


_DESCRIBED = {
    "clone": "clone with a namespace flag",
    "seccomp": "seccomp to install a filter of its own",
    "prctl": "prctl(PR_SET_SECCOMP) to install a filter of its own",
    "socket": "socket for AF_ALG or AF_VSOCK",
    "ioctl": "ioctl TIOCSTI or TIOCLINUX (terminal input injection)",
    "personality": "personality with a flag that weakens the process (e.g. no ASLR)",
}


def syscall_name(nr: int, audit_arch: int) -> str:
    """A person's name for a denied call the kernel reported."""
    arch = _arch()
    if audit_arch != arch.audit:
        return f"the 32-bit system call ABI (call {nr})"
    if arch.x32 and nr & _X32_BIT:
        return f"the x32 system call ABI (call {nr & ~_X32_BIT})"
    for name, number in arch.numbers.items():
        if number == nr:
            return _DESCRIBED.get(name, name)
    return f"system call {nr}"


# --- strict mode -------------------------------------------------------------------------

# Run inside the jail as `python -I -S -c STRICT_HELPER FILTER_FD SOCK_FD PROGRAM ARGS...`:
# install the filter with a user-notification listener, hand the listener to the host over
# SOCK_FD, close both fds (the cell must never hold the listener), execute the cell.
STRICT_HELPER = """\
import ctypes, os, socket, sys
ffd, sfd = int(sys.argv[1]), int(sys.argv[2])
with open(ffd, "rb") as f:
    code = f.read()
buf = ctypes.create_string_buffer(code, len(code))
class P(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = P(len(code) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
nr = {"x86_64": 317, "aarch64": 277}[os.uname().machine]
fd = libc.syscall(nr, 1, 8, ctypes.byref(prog))
if fd < 0:
    sys.stderr.write("ww: cannot install the strict seccomp filter: "
                     + os.strerror(ctypes.get_errno()) + "\\n")
    os._exit(1)
s = socket.socket(fileno=sfd)
socket.send_fds(s, [b"L"], [fd])
s.close()
os.close(fd)
try:
    os.execv(sys.argv[3], sys.argv[3:])
except OSError as e:
    sys.stderr.write("ww: " + sys.argv[3] + ": " + e.strerror + "\\n")
    os._exit(127 if e.errno == 2 else 126)
"""

# struct seccomp_notif is 80 bytes: id u64, pid u32, flags u32, data (nr i32, arch u32, ...).
_NOTIF_SIZE = 80
_IOCTL_NOTIF_RECV = 0xC0502100  # SECCOMP_IOWR(0, struct seccomp_notif)
_IOCTL_NOTIF_ID_VALID = 0x40082102  # SECCOMP_IOW(2, __u64)


class Violation:
    """One denied call the kernel reported: which call, and who is blocked in it."""

    def __init__(self, notif_id: int, pid: int, name: str) -> None:
        self.id = notif_id  # the kernel's cookie for this notification
        self.pid = pid  # the caller, in the host's pid namespace
        self.name = name


def receive_listener(sock: socket.socket) -> int | None:
    """The listener the strict helper sent, or None if it closed the socket without one."""
    import socket  # here: only --strict needs it

    try:
        _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    except OSError:
        return None
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if fds else None


def receive_violation(listener: int) -> Violation | None:
    """Read one notification from the listener; None if there was none."""
    import fcntl

    buf = bytearray(_NOTIF_SIZE)
    try:
        fcntl.ioctl(listener, _IOCTL_NOTIF_RECV, buf, True)
    except OSError:
        return None
    notif_id, pid = struct.unpack_from("=QI", buf, 0)
    nr, audit_arch = struct.unpack_from("=iI", buf, 16)
    return Violation(notif_id, pid, syscall_name(nr, audit_arch))


def kill_caller(listener: int, violation: Violation) -> None:
    """SIGKILL the process blocked in the reported call, and no other.

    The pid is pinned with a pidfd first, then the notification is checked to be still
    pending: if it is, the pid cannot have been reused, because its owner is still blocked
    in the call.  Once the kill returns the caller has SIGKILL pending, so it never runs
    another instruction, whatever later happens to the listener.
    """
    import fcntl
    import signal

    try:
        pidfd = os.pidfd_open(violation.pid)
    except OSError:
        return  # already gone
    try:
        fcntl.ioctl(listener, _IOCTL_NOTIF_ID_VALID, struct.pack("=Q", violation.id))
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass  # no longer pending: the caller was killed already
    finally:
        os.close(pidfd)


def wait_until_unused(listener: int, timeout: float) -> bool:
    """Wait until no process runs under the listener's filter any more (POLLHUP).

    Until then the listener must stay open: closing it answers every call still waiting
    for the host with ``ENOSYS`` and lets its caller go on.
    """
    import select
    import time

    poller = select.poll()
    poller.register(listener, select.POLLIN)
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        for _, events in poller.poll(left * 1000):
            if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return True
            if events & select.POLLIN and (other := receive_violation(listener)):
                kill_caller(listener, other)  # another call of the dying cell
    return False
