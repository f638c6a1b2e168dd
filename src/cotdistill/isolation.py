"""Kernel-enforced isolation for one sandboxed process: Landlock and seccomp-bpf, no root.

The sandbox worker builds both once (`Confinement.build`) and each forked child applies them
(`Confinement.apply`) just before it runs a program, so a fork pays two prctl calls and one
landlock_restrict_self, not a rebuild.

- **Landlock** (Linux >= 5.13): the process may read files only under the directories it
  is given (the standard library and the allowed packages), may write only in its own work
  directory, may neither bind nor connect TCP sockets (ABI >= 4), and cannot signal or
  reach the abstract UNIX sockets of any process outside its own domain (ABI >= 6): not
  its worker, not the caller, not anything else of the user's. Rules are on inodes, so
  `..`, symlinks and `/proc/<pid>/...` paths reach nothing the rules do not name.
- **seccomp-bpf**, through libseccomp (the system library, loaded with ctypes): no
  execve, no new process (fork, vfork, clone without CLONE_THREAD; clone3 answers ENOSYS so
  libc falls back to clone, whose flags the filter can read), no signals (kill, tgkill,
  pidfd_send_signal, ...), no ptrace or cross-process memory access, no socket creation, no
  mount, namespace, module, keyring, BPF or io_uring calls, no changing another process's
  limits or priority, no new session or process group. These kill the process at once
  (SIGSYS), which the worker reports as "forbidden". prctl and seccomp answer EPERM, so
  nothing can be loosened.

Written with ctypes rather than a binding: the one Landlock binding on PyPI is a pre-release
without the ABI 6 scopes, and pyseccomp (last release 2021) loads the filter in the
process that builds it, where the worker needs the compiled BPF to hand to each child.
Where a layer is missing (an older kernel, macOS, no libseccomp) `build` records why, and
the sandbox says so and refuses model-written programs unless the user accepts it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Landlock UAPI (include/uapi/linux/landlock.h); the syscall numbers are the same on every
# architecture that has them (the generic table).
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_SYS_CLOSE_RANGE = 436  # generic table too
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_FS = {name: 1 << bit for bit, name in enumerate(
    "execute write_file read_file read_dir remove_dir remove_file make_char make_dir make_reg make_sock "
    "make_fifo make_block make_sym refer truncate ioctl_dev".split())}
_FS_BY_ABI = {1: 13, 2: 14, 3: 15, 4: 15, 5: 16}  # how many of the rights above each ABI knows
_FILE_RIGHTS = _FS["execute"] | _FS["write_file"] | _FS["read_file"] | _FS["truncate"] | _FS["ioctl_dev"]
READ = _FS["read_file"] | _FS["read_dir"]
WRITE = READ | _FS["write_file"] | _FS["remove_dir"] | _FS["remove_file"] | _FS["make_dir"] | _FS["make_reg"] \
    | _FS["truncate"]
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2

_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 1, 38, 22, 2

# libseccomp (seccomp.h)
_ACT_ALLOW, _ACT_KILL_PROCESS = 0x7FFF0000, 0x80000000
_CMP_NE, _CMP_MASKED_EQ = 1, 7
_CLONE_THREAD = 0x00010000
_ACT_ERRNO = 0x00050000

KILLED = (
    "execve execveat fork vfork ptrace process_vm_readv process_vm_writev process_madvise kcmp "
    "kill tkill tgkill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_open pidfd_send_signal pidfd_getfd "
    "socket socketpair setsid setpgid mount umount2 pivot_root chroot unshare setns move_mount open_tree fsopen "
    "fsmount fspick mount_setattr bpf perf_event_open keyctl add_key request_key userfaultfd io_uring_setup "
    "io_uring_enter io_uring_register open_by_handle_at name_to_handle_at init_module finit_module delete_module "
    "kexec_load kexec_file_load reboot swapon swapoff acct quotactl"
).split()
# Calls harmless on the process itself but not on others: killed unless the target is 0 (self).
KILLED_UNLESS_SELF = {"prlimit64": 0, "setpriority": 1, "ioprio_set": 1, "sched_setaffinity": 0,
                      "sched_setscheduler": 0, "sched_setparam": 0, "sched_setattr": 0, "migrate_pages": 0,
                      "move_pages": 0}
REFUSED = {"prctl": errno.EPERM, "seccomp": errno.EPERM, "clone3": errno.ENOSYS}


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# The syscall numbers and prctl options here are Linux's: elsewhere they would name other
# calls, so on another system every one of them refuses (ENOSYS) and the layers show as missing.
_LINUX = sys.platform.startswith("linux")
_libc = ctypes.CDLL(None, use_errno=True)
# Resolved here, in the worker: a lookup in each forked child would cost ~0.4 ms a program.
_libc_syscall, _libc_prctl = _libc.syscall, getattr(_libc, "prctl", None)
_libc_syscall.restype = ctypes.c_long


def _syscall(number: int, *args: object) -> int:
    if not _LINUX:
        raise OSError(errno.ENOSYS, "not Linux")
    result = _libc_syscall(number, *args)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _prctl(option: int, *args: object) -> None:
    if not _LINUX or _libc_prctl is None:
        raise OSError(errno.ENOSYS, "not Linux")
    if _libc_prctl(option, *args, *(0,) * (4 - len(args))) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is absent or disabled."""
    try:
        return _syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0


@dataclass
class Confinement:
    """Both kernel layers, built once per worker; `missing` says what this kernel lacks."""

    landlock: int = 0  # the ABI in use, 0 if none
    seccomp: bool = False
    missing: list[str] = field(default_factory=list)
    _ruleset: int = -1
    _filter: ctypes.Array[ctypes.c_char] | None = None
    _fprog: Any = None  # a pointer to the filter's sock_fprog, made once

    @classmethod
    def build(cls, readable: Iterable[str], writable: str) -> Confinement:
        """Prepare Landlock rules (read under `readable`, read-write under `writable`) and the
        seccomp filter; a layer that cannot be built goes to `missing` with the reason."""
        made = cls()
        made.landlock = landlock_abi()
        if made.landlock:
            try:
                made._ruleset = _ruleset(made.landlock, readable, writable)
            except OSError as error:
                made.landlock = 0
                made.missing.append(f"Landlock (could not build the rules: {error.strerror})")
        elif os.uname().sysname == "Linux":
            made.missing.append("Landlock (kernel older than 5.13 or Landlock disabled): files and TCP unconfined")
        else:
            made.missing.append(f"Landlock (Linux only; this is {os.uname().sysname}): files and network unconfined")
        try:
            made._filter = _seccomp_filter()
            made._fprog = ctypes.pointer(_SockFprog(len(made._filter) // 8, ctypes.addressof(made._filter)))
            made.seccomp = True
        except OSError as error:
            made.missing.append(f"seccomp ({error.strerror}): processes, signals and sockets unconfined")
        if 0 < made.landlock < 6:
            made.missing.append(f"Landlock signal and abstract-socket scoping (ABI 6; this kernel has {made.landlock})")
        return made

    def apply(self, keep: int) -> None:
        """Restrict this (child) process for good: no new privileges, Landlock, every
        descriptor closed but stdio and `keep`, then seccomp (last, so the calls before it
        are not themselves filtered)."""
        if _LINUX:
            _prctl(_PR_SET_PDEATHSIG, 9)  # die with the worker, whatever happens to it
            _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        if self._ruleset >= 0:
            _syscall(_SYS_RESTRICT_SELF, self._ruleset, 0)
        _close_all_but(keep)  # the ruleset's descriptor too
        if self._fprog is not None:
            _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, self._fprog)

    def report(self) -> dict[str, object]:
        return {"landlock": self.landlock, "seccomp": self.seccomp, "missing": self.missing}


def _close_all_but(keep: int) -> None:
    """One close_range call each side of `keep` (Linux >= 5.9); os.closerange would fall back
    to one close per number, Landlock hiding /proc/self/fd from it."""
    try:
        if keep > 3:
            _syscall(_SYS_CLOSE_RANGE, 3, keep - 1, 0)
        _syscall(_SYS_CLOSE_RANGE, keep + 1, 0xFFFFFFFF, 0)
    except OSError:
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 16)


def _ruleset(abi: int, readable: Iterable[str], writable: str) -> int:
    handled = sum(1 << bit for bit in range(_FS_BY_ABI.get(abi, 16)))
    attr = _RulesetAttr(handled, _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0,
                        _SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX_SOCKET if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), size, 0)
    for path, rights in [*((p, READ) for p in readable), (writable, WRITE)]:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                rights &= _FILE_RIGHTS
            rule = _PathBeneath(rights & handled, fd)
            _syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        finally:
            os.close(fd)
    return ruleset


def _seccomp_filter() -> ctypes.Array[ctypes.c_char]:
    """The compiled BPF program (libseccomp checks the architecture and the x32 ABI)."""
    if not _LINUX:
        raise OSError(errno.ENOSYS, "seccomp is Linux's")
    try:  # by soname: ctypes.util.find_library would make every fork of the worker ~0.8 ms slower
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        raise OSError(errno.ENOENT, "libseccomp not found") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    context = lib.seccomp_init(_ACT_ALLOW)
    if not context:
        raise OSError(errno.ENOMEM, "seccomp_init failed")

    def rule(action: int, syscall: str, *compare: _ArgCmp) -> None:
        number = lib.seccomp_syscall_resolve_name(syscall.encode())
        if number < 0:  # not a call on this architecture (fork on arm64, say)
            return
        args = (_ArgCmp * len(compare))(*compare) if compare else None
        if lib.seccomp_rule_add_array(context, action, number, len(compare), args) < 0:
            raise OSError(errno.EINVAL, f"seccomp rule for {syscall} refused")

    try:
        for syscall in KILLED:
            rule(_ACT_KILL_PROCESS, syscall)
        for syscall, arg in KILLED_UNLESS_SELF.items():
            rule(_ACT_KILL_PROCESS, syscall, _ArgCmp(arg, _CMP_NE, 0, 0))
        rule(_ACT_KILL_PROCESS, "clone", _ArgCmp(0, _CMP_MASKED_EQ, _CLONE_THREAD, 0))
        for syscall, code in REFUSED.items():
            rule(_ACT_ERRNO | code, syscall)
        read, write = os.pipe()
        try:
            if lib.seccomp_export_bpf(context, write) < 0:
                raise OSError(errno.EIO, "seccomp_export_bpf failed")
            os.close(write)
            write = -1
            program = b""
            while chunk := os.read(read, 65536):
                program += chunk
        finally:
            os.close(read)
            if write >= 0:
                os.close(write)
    finally:
        lib.seccomp_release(context)
    return ctypes.create_string_buffer(program, len(program))
