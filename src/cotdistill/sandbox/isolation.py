"""Kernel-enforced confinement of one sandboxed process: no privileges, Landlock, and a
seccomp allow-list.

The worker builds everything once (`Confinement.build`, which also gives the worker its
own mount and IPC namespaces when it runs as root) and each forked child applies it
(`Confinement.apply`) just before it runs a program: a few prctl calls, a setuid, one
landlock_restrict_self and the seccomp filter, not a rebuild.

- **No privileges**: a child started as root becomes `nobody` (65534:65534, no
  supplementary groups), so file permissions protect the rest of the machine; in every
  case the capability sets (effective, permitted, inheritable, ambient) are emptied, the
  bounding set too where the worker may (root, or an unprivileged worker in a user
  namespace of its own), no_new_privs is set and the child dies with its worker. As root
  the worker's mount namespace shows the child a /proc of its own user's processes only
  (hidepid) and, where the interpreter lives under a directory `nobody` cannot search
  (/root), a tmpfs over that directory holding only the paths the program needs, so the
  host's processes and the rest of that directory are not even there to probe.
- **Landlock** (Linux >= 5.13): reads only under the standard library and the allowed
  packages, writes only under the worker's temporary directory (each program's fresh work
  dir inside it), no TCP bind/connect (ABI >= 4), no signals to or abstract UNIX sockets
  of anything outside the child's own domain (ABI >= 6). Rules are on inodes, so `..`,
  symlinks and `/proc/<pid>/...` paths reach nothing the rules do not name.
- **seccomp-bpf** (compiled by libseccomp, the system library, loaded with ctypes): an
  allow-list, `ALLOWED` below, found by tracing the workload; `ioctl`, `fcntl` and
  `prlimit64` are allowed only with the arguments listed in `ALLOWED_IF`. Every other
  call, including any a later kernel adds, fails with EPERM: no new process or thread, no
  signal, no socket, no SysV or POSIX IPC, no metadata change (chmod, chown, utime,
  xattrs, chattr's ioctl), no inotify/fanotify, no mount or mount listing, no kernel log,
  clock, host name, scheduling or priority call, no prctl, no second seccomp filter. A
  foreign-architecture or x32 call kills the process (libseccomp's default).

Written with ctypes rather than a binding: the one Landlock binding on PyPI is a pre-release
without the ABI 6 scopes, and pyseccomp (last release 2021) loads the filter in the process
that builds it, where the worker needs the compiled BPF to hand to each child. Where a
layer is missing (an older kernel, macOS, no libseccomp) `build` records why in `missing`,
and the pool refuses to run unless its caller accepts the weaker isolation.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
import time
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

# prctl(2) options and their arguments
_PR_SET_PDEATHSIG, _PR_CAPBSET_READ, _PR_CAPBSET_DROP, _PR_SET_SECUREBITS = 1, 23, 24, 28
_PR_SET_NO_NEW_PRIVS, _PR_GET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 39, 22, 2
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
# SECBIT_NOROOT, its lock, SECBIT_KEEP_CAPS_LOCKED, SECBIT_NO_CAP_AMBIENT_RAISE and its lock
_SECUREBITS = 0b11100011
_CAPABILITY_VERSION_3 = 0x20080522
# unshare(2), mount(2)
_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18

NOBODY = 65534  # the uid and gid a child started as root runs as

# libseccomp (seccomp.h)
_ACT_ALLOW, _ACT_ERRNO = 0x7FFF0000, 0x00050000
_CMP_EQ = 4

# The one list of what a confined program may ask of the kernel; everything else fails
# with EPERM. Found by tracing (strace -f) the children running GSM8K gold programs and
# model-style programs that import every allowed module and call sympy's solve, simplify,
# integrate, nsimplify and sympify, with the Python filter on and off; the few calls not in
# that trace are other routes CPython takes to the same effect (stat vs newfstatat, open vs
# openat on older architectures), each with no effect outside the process and its work dir.
ALLOWED: dict[str, tuple[str, ...]] = {
    # the allocator, and mapping the extension modules sympy imports (files Landlock lets it read)
    "memory": ("brk", "mmap", "munmap", "mremap", "mprotect", "madvise"),
    # reading files and directories: Landlock decides which (the standard library, the packages)
    "reading": ("read", "pread64", "readv", "lseek", "close", "open", "openat", "getdents64", "newfstatat",
                "fstat", "stat", "lstat", "statx", "readlink", "readlinkat", "access", "faccessat", "faccessat2",
                "getcwd", "dup", "dup2", "dup3"),
    # writing: the result pipe, and files in the work dir only (Landlock); no metadata calls
    "writing": ("write", "writev", "ftruncate", "mkdir", "mkdirat", "unlink", "unlinkat", "rmdir", "rename",
                "renameat", "renameat2"),
    # clocks and sleeping (time.sleep; the deadline still holds)
    "time": ("clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep", "clock_nanosleep"),
    # questions about itself, random bytes, and ending
    "itself": ("getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getrandom", "uname",
               "sched_getaffinity", "sched_yield", "futex", "getrlimit", "exit", "exit_group"),
    # its own signal handlers and mask (sending a signal is not here)
    "signal handling": ("rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack"),
}
# Calls allowed only with these values of one argument (index, values): `isatty()` and
# `os.get_terminal_size()` (TCGETS, TIOCGWINSZ), never chattr's FS_IOC_SETFLAGS or a
# terminal's TIOCSTI; fcntl's descriptor flags and duplicates, never F_SETOWN, F_SETSIG,
# leases, F_NOTIFY, locks or pipe sizes; prlimit64 only reading its own limits (below).
ALLOWED_IF: dict[str, tuple[int, tuple[int, ...]]] = {
    "ioctl": (1, (0x5401, 0x5413)),
    "fcntl": (1, (0, 1, 2, 3, 4, 1030)),  # F_DUPFD F_GETFD F_SETFD F_GETFL F_SETFL F_DUPFD_CLOEXEC
}


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


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


# The syscall numbers and prctl options here are Linux's: elsewhere they would name other
# calls, so on another system every one of them refuses (ENOSYS) and the layers show as missing.
_LINUX = sys.platform.startswith("linux")
_libc = ctypes.CDLL(None, use_errno=True)
# Resolved here, in the worker: a lookup in each forked child would cost ~0.4 ms a program.
_libc_syscall, _libc_prctl = _libc.syscall, getattr(_libc, "prctl", None)
_libc_capset, _libc_capget = getattr(_libc, "capset", None), getattr(_libc, "capget", None)
_libc_syscall.restype = ctypes.c_long


def _check(result: int) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _syscall(number: int, *args: object) -> int:
    if not _LINUX:
        raise OSError(errno.ENOSYS, "not Linux")
    return _check(_libc_syscall(number, *args))


def _prctl(option: int, *args: object) -> int:
    if not _LINUX or _libc_prctl is None:
        raise OSError(errno.ENOSYS, "not Linux")
    return _check(_libc_prctl(option, *args, *(0,) * (4 - len(args))))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is absent or disabled."""
    try:
        return _syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0


@dataclass
class Confinement:
    """Everything applied to each child, built once per worker; `missing` says what this
    kernel lacks, `user` whom the child runs as."""

    landlock: int = 0  # the ABI in use, 0 if none
    seccomp: bool = False
    user: str = ""  # "65534:65534", or the worker's own ids where it is not root
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # weaker than it could be, but not a missing kernel layer
    _ids: tuple[int, int] | None = None  # the uid and gid to switch to, None to keep them
    _last_cap: int = -1  # the bounding set to drop, -1 where the worker may not
    _ruleset: int = -1
    _filter: ctypes.Array[ctypes.c_char] | None = None
    _fprog: Any = None  # a pointer to the filter's sock_fprog, made once

    @classmethod
    def build(cls, readable: Iterable[str], writable: str) -> Confinement:
        """Prepare the worker (namespaces), the Landlock rules (read under `readable`,
        read-write under `writable`) and the seccomp filter; what cannot be built goes to
        `missing` or `notes` with the reason."""
        readable = list(readable)
        made = cls()
        if _LINUX:
            made._prepare_privileges(readable + [writable])
        made.user = f"{made._ids[0]}:{made._ids[1]}" if made._ids else f"{os.getuid()}:{os.getgid()}"
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
            made.missing.append(f"seccomp ({error.strerror}): processes, signals, sockets and IPC unconfined")
        if 0 < made.landlock < 6:
            made.missing.append(f"Landlock signal and abstract-socket scoping (ABI 6; this kernel has {made.landlock})")
        return made

    def _prepare_privileges(self, paths: list[str]) -> None:
        """As root: children become nobody, in a mount namespace where nobody can reach the
        paths it needs and nothing else of /proc. Otherwise: a user namespace of the
        worker's own (its ids mapped to themselves), so children may drop the bounding set."""
        if os.geteuid() == 0:
            self._last_cap = _last_cap()
            try:
                _private_view(paths)
            except OSError as error:
                self.notes.append(f"no private mount namespace ({error.strerror}): /proc shows the host's processes")
            if all(_searchable(p, NOBODY, NOBODY) for p in paths):
                self._ids = (NOBODY, NOBODY)
            else:
                self.notes.append("children run as uid 0 without capabilities: nobody cannot reach the interpreter")
            return
        uid, gid = os.getuid(), os.getgid()
        try:
            _unshare(_CLONE_NEWUSER)
            for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as handle:
                    handle.write(text)
            _unshare(_CLONE_NEWIPC)
            self._last_cap = _last_cap()
        except OSError as error:
            self.notes.append(f"no user namespace ({error.strerror}): the capability bounding set is kept "
                              "(no_new_privs still stops any gain)")

    def apply(self, keep: int) -> None:
        """Restrict this (child) process for good: privileges dropped and checked,
        Landlock, every descriptor closed but stdio and `keep`, then seccomp (last, so the
        calls before it are not themselves filtered). Raises OSError if any step fails."""
        if _LINUX:
            if self._last_cap >= 0:
                _prctl(_PR_SET_SECUREBITS, _SECUREBITS)
                for cap in range(self._last_cap + 1):
                    _prctl(_PR_CAPBSET_DROP, cap)
            if self._ids:
                os.setgroups([])
                os.setresgid(self._ids[1], self._ids[1], self._ids[1])
                os.setresuid(self._ids[0], self._ids[0], self._ids[0])
            _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
            _capset_empty()
            _prctl(_PR_SET_PDEATHSIG, 9)  # after the uid change, which clears it: die with the worker
            _prctl(_PR_SET_NO_NEW_PRIVS, 1)
            if _capabilities() != (0, 0, 0) or (self._ids and set(os.getresuid() + os.getresgid()) != set(self._ids)):
                raise OSError(errno.EPERM, "privileges still held after dropping them")
        if self._ruleset >= 0:
            _syscall(_SYS_RESTRICT_SELF, self._ruleset, 0)
        _close_all_but(keep)  # the ruleset's descriptor too
        if self._fprog is not None:
            _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, self._fprog)

    def report(self) -> dict[str, object]:
        return {"landlock": self.landlock, "seccomp": self.seccomp, "user": self.user, "missing": self.missing,
                "notes": self.notes}


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 40


def _capset_empty() -> None:
    if _libc_capset is None:
        raise OSError(errno.ENOSYS, "no capset")
    data = (_CapData * 2)()
    _check(_libc_capset(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), data))


def _capabilities() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this process, as bit masks."""
    if _libc_capget is None:
        raise OSError(errno.ENOSYS, "no capget")
    data = (_CapData * 2)()
    _check(_libc_capget(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), data))
    return tuple(getattr(data[0], f) | getattr(data[1], f) << 32 for f in ("effective", "permitted", "inheritable"))


def _unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)))


def _searchable(path: str, uid: int, gid: int) -> bool:
    """Whether `uid`/`gid` (no capabilities) may walk every directory down to `path`."""
    parts = os.path.abspath(path).split(os.sep)
    return all(_may_search(os.sep.join(parts[:depth]) or os.sep, uid, gid) for depth in range(1, len(parts)))


def _may_search(directory: str, uid: int, gid: int) -> bool:
    try:
        info = os.stat(directory)
    except OSError:
        return False
    bits = stat.S_IXUSR if info.st_uid == uid else stat.S_IXGRP if info.st_gid == gid else stat.S_IXOTH
    return bool(info.st_mode & bits)


def _private_view(paths: Iterable[str]) -> None:
    """The worker's own mount and IPC namespaces (root only). Each directory nobody cannot
    search on the way to one of `paths` (/root, say) is covered by a small tmpfs holding
    bind mounts of just the entries leading there, so the paths stay where they are and
    the rest of that directory is gone; /proc is remounted to show each user only their
    own processes."""
    _unshare(_CLONE_NEWNS | _CLONE_NEWIPC)
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    for _ in range(8):  # a covered directory may lead to another one nobody cannot search
        blocked: dict[str, set[str]] = {}
        for path in paths:
            parts = os.path.abspath(path).split(os.sep)
            for depth in range(1, len(parts) - 1):
                directory = os.sep.join(parts[:depth + 1])
                if not _may_search(directory, NOBODY, NOBODY):
                    blocked.setdefault(directory, set()).add(parts[depth + 1])
                    break
        if not blocked:
            break
        for directory, entries in blocked.items():
            handles = {entry: os.open(os.path.join(directory, entry), os.O_PATH | os.O_CLOEXEC) for entry in entries}
            try:
                _mount("tmpfs", directory, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0711,size=64k")
                for entry, handle in handles.items():
                    target = os.path.join(directory, entry)
                    if stat.S_ISDIR(os.fstat(handle).st_mode):
                        os.mkdir(target)
                    else:
                        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
                    _mount(f"/proc/self/fd/{handle}", target, None, _MS_BIND | _MS_REC)
            finally:
                for handle in handles.values():
                    os.close(handle)
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "hidepid=invisible")


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
    """The compiled BPF program: ALLOWED and ALLOWED_IF, EPERM for the rest (libseccomp
    checks the architecture and the x32 ABI)."""
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
    context = lib.seccomp_init(_ACT_ERRNO | errno.EPERM)
    if not context:
        raise OSError(errno.ENOMEM, "seccomp_init failed")

    def allow(syscall: str, *compare: _ArgCmp) -> None:
        number = lib.seccomp_syscall_resolve_name(syscall.encode())
        if number < 0:  # not a call on this architecture (open on arm64, say)
            return
        args = (_ArgCmp * len(compare))(*compare) if compare else None
        if lib.seccomp_rule_add_array(context, _ACT_ALLOW, number, len(compare), args) < 0:
            raise OSError(errno.EINVAL, f"seccomp rule for {syscall} refused")

    try:
        for group in ALLOWED.values():
            for syscall in group:
                allow(syscall)
        for syscall, (arg, values) in ALLOWED_IF.items():
            for value in values:
                allow(syscall, _ArgCmp(arg, _CMP_EQ, value, 0))
        allow("prlimit64", _ArgCmp(0, _CMP_EQ, 0, 0), _ArgCmp(2, _CMP_EQ, 0, 0))  # its own, reading only
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


# Work dirs: shared by the worker (after each program) and the pool (after a worker it killed).
MAX_PROGRAM = 1 << 24  # bytes; the pool refuses a longer program itself, as a verdict


def remove_contents(root: str) -> None:
    """Remove everything under `root`, however deep, without recursion and without long
    paths: each directory met is first moved up to `root` itself, then emptied of files
    and removed. Directories a program made unreadable are opened up first."""
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        pending, serial = sorted(os.listdir(top)), 0
        while pending:
            name = pending.pop()
            try:
                info = os.stat(name, dir_fd=top, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(info.st_mode):
                os.unlink(name, dir_fd=top)
                continue
            path = os.path.join(root, name)
            if stat.S_IMODE(info.st_mode) & 0o700 != 0o700:
                os.chmod(path, 0o700)
            directory = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
            try:
                for entry in os.scandir(directory):
                    if entry.is_dir(follow_symlinks=False):
                        while True:  # a name nothing in `root` has (a program may have made `.up1`)
                            serial += 1
                            lifted = f".up{serial}"
                            if not _exists(lifted, top):
                                break
                        os.rename(entry.name, lifted, src_dir_fd=directory, dst_dir_fd=top)
                        pending.append(lifted)
                    else:
                        os.unlink(entry.name, dir_fd=directory)
            finally:
                os.close(directory)
            os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)


def _exists(name: str, directory: int) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def remove_tree(path: str, seconds: float) -> bool:
    """`path` and all below it, retried for up to `seconds` while a worker's cleaner (see
    worker._clean_behind) may still be removing a work dir inside it; True once it is gone."""
    end = time.monotonic() + seconds
    while True:
        try:
            remove_contents(path)
            os.rmdir(path)
            return True
        except FileNotFoundError:
            if not os.path.lexists(path):
                return True
        except OSError:
            pass
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
