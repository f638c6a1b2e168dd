"""The sandbox in a world: files outside the work dir with known modes, owners, times and
xattrs, a SysV segment and queue of another process, a TCP and an abstract UNIX
listener, a watched directory, and a second worker running innocent programs, all
snapshotted before and after each hostile program, with the Python filter on and off.

Each hostile program tries one thing of a category and answers ESCAPED only if the
kernel let it through; whatever it answers, the world must be as it was, and an innocent
program run after it must get its right answer. Run as root (the world's files belong to
nobody, whom the programs run as, so only the sandbox stops a chmod) and again, by
`test_the_world_as_an_unprivileged_user`, as nobody.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cotdistill.sandbox import Limits, Outcome, Sandbox
from cotdistill.sandbox.filter import audit_hook
from cotdistill.sandbox.isolation import landlock_abi
from cotdistill.sandbox.pool import judge

pytestmark = pytest.mark.skipif(landlock_abi() == 0, reason="this kernel has no Landlock")

LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
ROOT = os.geteuid() == 0

# name -> program; each answers "ESCAPED" if what it tried worked.
HOSTILE: dict[str, str] = {
    # writes outside the work dir through metadata
    "chmod a file outside": "import os\nos.chmod('FILE', 0o777)\nanswer = 'ESCAPED'",
    "chown a file outside": "import os\nos.chown('FILE', os.getuid(), os.getgid())\nanswer = 'ESCAPED'",
    "utime a file outside": "import os\nos.utime('FILE', (1, 1))\nanswer = 'ESCAPED'",
    "setxattr outside": "import os\nos.setxattr('FILE', 'user.evil', b'1')\nanswer = 'ESCAPED'",
    "removexattr outside": "import os\nos.removexattr('FILE', 'user.world')\nanswer = 'ESCAPED'",
    "security.capability on an executable": (
        "import os\nos.setxattr('EXE', 'security.capability', bytes([1, 0, 0, 2] + [255] * 4 + [0] * 12))\n"
        "answer = 'ESCAPED'"),
    # other processes and programs
    "SysV segment of another process": (
        LIBC + "i = libc.shmget(SHMKEY, 0, 0)\naddr = libc.shmat(i, None, 0) if i >= 0 else -1\n"
               "answer = 'ESCAPED' if i >= 0 else 'contained'"),
    "SysV segment that pins memory": (
        LIBC + "i = libc.shmget(0, 1 << 30, 0o1600)\nanswer = 'ESCAPED' if i >= 0 else 'contained'"),
    "SysV queue carrying a message on": (
        LIBC + "q = libc.msgget(MSGKEY, 0)\nq2 = libc.msgget(0x7a7a7a7a, 0o1666)\n"
               "answer = 'ESCAPED' if q >= 0 or q2 >= 0 else 'contained'"),
    "SysV semaphores": LIBC + "answer = 'ESCAPED' if libc.semget(0, 1, 0o1600) >= 0 else 'contained'",
    "POSIX message queue": (
        LIBC + "answer = 'ESCAPED' if libc.mq_open(b'/cotdistill', 0o100 | 2, 0o600, None) >= 0 else 'contained'"),
    "the caller's process in /proc": "import os\nos.stat('/proc/CALLER')\nanswer = 'ESCAPED' if ROOT else 'contained'",
    "/root's entries": "import os\nos.stat('/root/ROOTENTRY')\nanswer = 'ESCAPED' if ROOT else 'contained'",
    "read another process's memory": (
        LIBC + "buf = ctypes.create_string_buffer(16)\n"
               "class V(ctypes.Structure):\n    _fields_ = [('b', ctypes.c_void_p), ('n', ctypes.c_size_t)]\n"
               "v = V(ctypes.addressof(buf), 16)\n"
               "n = libc.process_vm_readv(CALLER, ctypes.byref(v), 1, ctypes.byref(v), 1, 0)\n"
               "answer = 'ESCAPED' if n >= 0 else 'contained'"),
    "ptrace the worker": LIBC + "answer = 'ESCAPED' if libc.ptrace(16, os.getppid(), 0, 0) >= 0 else 'contained'",
    "connect to a TCP listener": "import socket\nsocket.create_connection(('127.0.0.1', PORT), 1)\nanswer = 'ESCAPED'",
    "connect to an abstract UNIX listener": (
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(b'\\0ABSTRACT')\nanswer = 'ESCAPED'"),
    "a UNIX socket pair": "import socket\nsocket.socketpair()\nanswer = 'ESCAPED'",
    # watching and blocking the caller
    "inotify on a watched directory": (
        LIBC + "fd = libc.inotify_init1(0)\nw = libc.inotify_add_watch(fd, b'WORLD', 0xfff) if fd >= 0 else -1\n"
               "answer = 'ESCAPED' if fd >= 0 else 'contained'"),
    "fanotify permission events": (
        LIBC + "fd = libc.fanotify_init(0x8 | 0x2, 0)\nanswer = 'ESCAPED' if fd >= 0 else 'contained'"),
    # host-wide calls
    "read the kernel log": (
        LIBC + "b = ctypes.create_string_buffer(4096)\n"
               "answer = 'ESCAPED' if libc.klogctl(3, b, 4096) >= 0 else 'contained'"),
    "adjtimex": (
        LIBC + "b = ctypes.create_string_buffer(256)\nanswer = 'ESCAPED' if libc.adjtimex(b) >= 0 else 'contained'"),
    "clock_settime": (
        "import time\ntime.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME))\n"
        "answer = 'ESCAPED'"),
    "sethostname": "import socket\nsocket.sethostname(socket.gethostname())\nanswer = 'ESCAPED'",
    "listmount and statmount": (
        LIBC + "r = [libc.syscall(n, 0, 0, 0, 0) for n in (457, 458)]\n"
               "answer = 'ESCAPED' if ctypes.get_errno() not in (1, 38) else 'contained'"),
    "real-time priority 99": (
        "import os\nos.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(99))\nanswer = 'ESCAPED'"),
    "nice -20": "import os\nos.setpriority(os.PRIO_PROCESS, 0, -20)\nanswer = 'ESCAPED'",
    "mount": LIBC + "answer = 'ESCAPED' if libc.mount(b'none', b'.', b'tmpfs', 0, None) >= 0 else 'contained'",
    "unshare a user namespace": LIBC + "answer = 'ESCAPED' if libc.unshare(0x10000000) >= 0 else 'contained'",
    "prctl": LIBC + "answer = 'ESCAPED' if libc.prctl(15, b'renamed', 0, 0, 0) >= 0 else 'contained'",
    "a thread": "import threading\nt = threading.Thread(target=print)\nt.start()\nanswer = 'ESCAPED'",
    "fork": "import os\npid = os.fork()\nanswer = 'ESCAPED'",
    "kill the caller": "import os\nos.kill(CALLER, 0)\nanswer = 'ESCAPED'",
    # poisoning later programs
    "immutable flag on a file in the work dir": (
        "import fcntl, struct, os\nfd = os.open('f', os.O_CREAT | os.O_RDONLY)\n"
        "fcntl.ioctl(fd, 0x40086602, struct.pack('l', 0x10))\nanswer = 'ESCAPED'"),
    "immutable flag on the work dir": (
        "import fcntl, struct, os\nfd = os.open('.', os.O_RDONLY)\n"
        "fcntl.ioctl(fd, 0x40086602, struct.pack('l', 0x10))\nanswer = 'ESCAPED'"),
    "the work dir made unusable": "import os\nos.chmod('.', 0)\nanswer = 'ESCAPED'",
    "an unreadable directory left behind": "import os\nos.mkdir('d', 0)\nos.mkdir('e', 0o500)\nanswer = 'contained'",
    "a file lease": (
        "import fcntl, os\nfd = os.open('f', os.O_CREAT | os.O_RDONLY)\nfcntl.fcntl(fd, 1024, 0)\nanswer = 'ESCAPED'"),
    "F_SETOWN": "import fcntl, os\nfcntl.fcntl(os.open('.', os.O_RDONLY), 8, 1)\nanswer = 'ESCAPED'",
    "TIOCSTI into a terminal": "import fcntl\nfcntl.ioctl(0, 0x5412, b'x')\nanswer = 'ESCAPED'",
    # breaking the worker
    "the names the cleanup lifts directories to": (
        "import os\nos.makedirs('../.up1/x')\nos.makedirs('../.up2/y')\nos.makedirs('a/b/c')\nanswer = 'contained'"),
    "a deep directory tree": (
        "import os\nfd = os.open('.', os.O_RDONLY)\nfor _ in range(3000):\n    os.mkdir('d', dir_fd=fd)\n"
        "    new = os.open('d', os.O_RDONLY, dir_fd=fd)\n    os.close(fd)\n    fd = new\nanswer = 'contained'"),
    "deeply nested reply": (
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'[' * 60000 + b'\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)"),
    "deeply nested refusal line": (
        "import os\nfor fd in range(3, 64):\n    try:\n"
        "        os.write(fd, b'refused ' + b'{\"a\":' * 10000 + b'\\n')\n"
        "    except OSError:\n        pass\nanswer = 1"),
    "NaN and huge numbers in the reply": (
        "import os\nfor fd in range(3, 64):\n    try:\n"
        "        os.write(fd, b'{\"answer\": NaN, \"n\": ' + b'9' * 50000 + b'}\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)"),
    "garbage reply": (
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, bytes(range(256)) * 10)\n"
        "    except OSError:\n        pass\nos._exit(0)"),
    "escape sequences in the answer": "answer = '\\x1b]0;pwned\\x07\\x1b[2J7\\x9b31m\\u202e'",
    # the Python filter's own bypasses (the kernel contains them anyway)
    "match class pattern to sys": (
        "import collections\nmatch collections:\n    case object(_sys=s):\n"
        "        s.modules['os'].chmod('FILE', 0o777)\n        answer = 'ESCAPED'"),
    "match positional pattern with __match_args__": (
        "import fractions\nclass M(type):\n    def __instancecheck__(cls, other):\n        return True\n"
        "class C(metaclass=M):\n    __match_args__ = ('_sys',)\nmatch __import__('collections'):\n    case C(s):\n"
        "        s.modules['os'].chmod('FILE', 0o777)\n        answer = 'ESCAPED'"),
}
INNOCENT = [("answer = 6 * 7", "42"), ("import math\nanswer = math.comb(10, 3)", "120"),
            ("import sympy\nx = sympy.Symbol('x')\nanswer = sympy.solve(2 * x - 8, x)[0]", "4")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = Path(tmp_path_factory.mktemp("world"))
    top = base / "outside"
    top.mkdir()
    for path in (base, top):
        path.chmod(0o755)  # nobody may reach it: only the sandbox stops a program
    file, exe = top / "file.txt", top / "tool"
    file.write_text("keep me")
    exe.write_bytes(b"#!/bin/sh\n")
    for path, mode in ((file, 0o644), (exe, 0o755), (top, 0o777)):
        if ROOT:
            os.chown(path, 65534, 65534)  # the programs' own uid: no permission bit stands in the way
        path.chmod(mode)
    os.setxattr(file, "user.world", b"1")
    os.utime(file, ns=(10**18, 10**18))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    key = 0x5A000000 + os.getpid() % 0xFFFF
    shm = libc.shmget(key, 4096, 0o1666)
    queue = libc.msgget(key + 1, 0o1666)
    assert shm >= 0 and queue >= 0
    address = libc.shmat(shm, None, 0)
    ctypes.memmove(address, b"world segment", 13)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    abstract = socket.socket(socket.AF_UNIX)
    name = f"cotdistill-world-{os.getpid()}"
    abstract.bind(b"\0" + name.encode())
    for listener in (tcp, abstract):
        listener.listen()
        listener.setblocking(False)
    root_entries = [e for e in os.listdir("/root") if e != ".pyenv"] if ROOT and os.path.isdir("/root") else []
    fill = {"FILE": str(file), "EXE": str(exe), "WORLD": str(top), "SHMKEY": str(key), "MSGKEY": str(key + 1),
            "PORT": str(tcp.getsockname()[1]), "ABSTRACT": name, "CALLER": str(os.getpid()),
            "ROOTENTRY": root_entries[0] if root_entries else "nothing-here", "ROOT": str(ROOT)}
    yield {"fill": fill, "files": (file, exe, top), "segment": (libc, address), "listeners": (tcp, abstract)}
    libc.shmdt(ctypes.c_void_p(address))
    libc.shmctl(shm, 0, None)
    libc.msgctl(queue, 0, None)
    tcp.close()
    abstract.close()
    shutil.rmtree(base, ignore_errors=True)


def snapshot(world: dict) -> dict:
    """Everything a hostile program could have changed, as the caller sees it."""
    shot = {}
    for path in world["files"]:
        info = os.stat(path)
        shot[str(path)] = (info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns,
                           {name: os.getxattr(path, name) for name in os.listxattr(path)})
    shot["listing"] = sorted(os.listdir(world["files"][2]))
    shot["content"] = world["files"][0].read_text()
    shot["sysv"] = {kind: sorted(line.split()[:4] for line in _lines(f"/proc/sysvipc/{kind}"))
                    for kind in ("shm", "msg", "sem")}
    shot["segment"] = ctypes.string_at(world["segment"][1], 13)
    shot["hostname"] = socket.gethostname()
    shot["priority"] = (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))
    for listener in world["listeners"]:
        with pytest.raises(BlockingIOError):
            listener.accept()
    return shot


def _lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines()[1:]


def fill(program: str, world: dict) -> str:
    for key, value in world["fill"].items():
        program = program.replace(key, value)
    return program


@pytest.mark.parametrize("python_filter", [True, False], ids=["python-filter", "kernel-alone"])
def test_hostile_programs_leave_the_world_as_it_was(world, python_filter, sandbox_leftovers):
    limits = Limits(seconds=3, memory_mb=256, output_bytes=10_000)
    innocent_errors: list[object] = []
    stop = threading.Event()

    def second_worker(box: Sandbox) -> None:  # another worker's programs, all along
        while not stop.is_set():
            for program, answer in INNOCENT:
                outcome = box.run(program)
                if outcome.answer != answer:
                    innocent_errors.append(outcome)

    before = snapshot(world)
    with Sandbox(1, limits, python_filter=python_filter) as box, Sandbox(1, Limits(seconds=30)) as other:
        assert box.isolation.missing == (), box.isolation.describe()
        assert box.isolation.user == ("65534:65534" if ROOT else f"{os.getuid()}:{os.getgid()}")
        neighbour = threading.Thread(target=second_worker, args=(other,))
        neighbour.start()
        try:
            workers = {w.process.pid for w in box.workers}
            for name, program in HOSTILE.items():
                outcome = box.run(fill(program, world))
                assert outcome.answer != "ESCAPED", (name, outcome)
                assert all(ch.isprintable() for ch in (outcome.answer or "") + outcome.detail), (name, outcome)
                assert snapshot(world) == before, name
                for innocent, answer in INNOCENT[:2]:  # the next program is not poisoned
                    assert box.run(innocent).answer == answer, name
            assert {w.process.pid for w in box.workers} == workers  # no reply broke the worker
            assert sandbox_leftovers(workers) == []
        finally:
            stop.set()
            neighbour.join()
    assert innocent_errors == []
    assert snapshot(world) == before


def test_no_process_that_forks_programs_holds_an_earlier_program():
    """A program's text never enters the worker (nor the idle child forked for the next
    program): scan their memory for it, as a program scanning its own heap could."""
    marker = f"cotdistill-marker-{os.getpid()}-{time.time_ns()}"
    with Sandbox(1) as box:
        assert box.run(f"label = {marker!r}\nanswer = len(label)").answer == str(len(marker))
        worker = box.workers[0].process.pid
        processes = [worker] + [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == worker]
        for pid in processes:
            assert marker.encode() not in _memory(pid), pid


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _memory(pid: int) -> bytes:
    found = bytearray()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or "[vvar" in line or "[vsyscall" in line:
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                found += mem.read(end - start)
            except OSError:
                continue
    return bytes(found)


REPLIES = [
    b"", b"garbage", b'{"isolated": true}\n' + b"[" * 100000, b'{"isolated": true}\nrefused ' + b"{" * 100000,
    b'{"isolated": true}\n{"answer": NaN}', b'{"isolated": true}\n{"answer": ' + b"9" * 100000 + b"}",
    b'{"isolated": true}\n{"answer": "1"}\n{"answer": "2"}', b'{"isolated": true}\n\xff\xfe',
    b'{"isolated": true}\n{"error": "crash", "detail": "forged"}', b'{"isolated": true}\n{"answer": Infinity}',
]


def test_any_reply_and_any_signal_is_judged():
    """No reply, no way of ending (any exit code, any signal 1-64, killed) raises: each
    is an Outcome, never a clean answer."""
    for reply in REPLIES:
        for status in [None, 0, 1 << 8, *range(1, 65)]:
            for late, over in ((False, False), (True, False), (False, True)):
                outcome = judge(reply, status, late, over, Limits())
                assert isinstance(outcome, Outcome) and not outcome.ok, (reply[:40], status, outcome)


def test_control_characters_never_reach_the_caller():
    with Sandbox(1) as box:
        outcome = box.run("answer = '4\\x1b[31m2\\x1b]0;title\\x07\\x9b\\x00\\u202e'")
    assert outcome.answer == "42"


def test_the_audit_hook_ignores_rebound_globals():
    """Rebinding the filter module's names (or the builtins') after the hook is made
    changes nothing it does."""
    from cotdistill.sandbox import filter as module

    read, write = os.pipe()
    hook = audit_hook(write)
    saved = {name: getattr(module, name) for name in ("refusal", "DENIED_EVENTS", "_importing", "Forbidden")}
    try:
        module.refusal = lambda event, args: None
        module.DENIED_EVENTS = ()
        module._importing = lambda event, args: True
        with pytest.raises(saved["Forbidden"]):
            hook("open", ("/etc/passwd", "r", 0))
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
    assert os.read(read, 100).startswith(b"refused open")
    with pytest.raises(saved["Forbidden"]):  # no code swapped into a function
        hook("object.__setattr__", (print, "__code__", None))
    os.close(read)
    os.close(write)


def test_without_the_kernel_layers_the_pool_refuses_unless_accepted(monkeypatch):
    from cotdistill.sandbox import pool

    start = pool._Worker._start

    def weak_start(self):
        start(self)
        self.isolation = pool.Isolation(0, False, ("Landlock (simulated)",), self.isolation.user)

    monkeypatch.setattr(pool._Worker, "_start", weak_start)
    with pytest.raises(pool.SandboxUnavailable, match="--weak-sandbox"):
        Sandbox(1)
    monkeypatch.setattr(pool, "_shared", None)
    with pytest.raises(pool.SandboxUnavailable, match="--weak-sandbox"):
        pool.shared_sandbox()
    with Sandbox(1, weak_sandbox=True) as box:
        assert box.run("answer = 1").answer == "1"


def test_a_worker_that_dies_is_restarted_checked_and_never_a_verdict(monkeypatch):
    """Killing the worker mid-program: the program is retried on a restarted worker; a
    worker that dies on every try raises, with nothing stored as the program's outcome."""
    with Sandbox(1, Limits(seconds=30)) as box:
        killer = threading.Timer(0.3, box.workers[0].process.kill)
        killer.start()
        assert box.run("x = 0\nfor i in range(10**7):\n    x += 1\nanswer = 7").answer == "7"
        killer.join()
        assert box.run("answer = 5").answer == "5"
        from cotdistill.sandbox import pool

        run = pool._Worker.run

        def dies(self, code):
            if code == "answer = 6 * 7":  # the health check of the restarted worker passes
                return run(self, code)
            raise pool._Broken("gone")

        monkeypatch.setattr(pool._Worker, "run", dies)
        with pytest.raises(pool.SandboxUnavailable, match="failed twice"):
            box.run("answer = 1")


@pytest.mark.skipif(not ROOT or os.environ.get("COTDISTILL_WORLD_UNPRIVILEGED") == "1",
                    reason="re-runs itself from root")
def test_the_world_as_an_unprivileged_user():
    """This file's world tests again as nobody, with an interpreter nobody may run (the
    venv's may live under /root), the venv's packages on PYTHONPATH."""
    setpriv = shutil.which("setpriv")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, os.path.realpath(sys.executable), f"/usr/bin/{version}", f"/usr/local/bin/{version}"]
    site = next(p for p in sys.path if p.endswith("site-packages"))
    src = str(Path(__file__).resolve().parents[1] / "src")
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if setpriv else []
    env = {"PATH": os.defpath, "PYTHONPATH": os.pathsep.join([src, site]), "PYTHONDONTWRITEBYTECODE": "1",
           "COTDISTILL_WORLD_UNPRIVILEGED": "1", "HF_HUB_OFFLINE": "1"}
    python = next((c for c in candidates if as_nobody and subprocess.run(
        as_nobody + [c, "-c", "import subprocess, sys, sympy, pytest, cotdistill.sandbox; "
                                "subprocess.run([sys.executable, '-c', ''], check=True)"],
        env=env, capture_output=True).returncode == 0),
        None)
    if python is None:
        pytest.skip("no setpriv, or no interpreter nobody may run with these packages")
    result = subprocess.run(
        as_nobody + [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not unprivileged", __file__],
        env=env, cwd="/tmp", capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], result.stdout[-500:]
