"""The sandbox's worker process: a zygote that never holds a program.

Started by the pool as `python -I -B -c BOOT PACKAGE_ROOT CONFIG`: isolated from the
caller's environment (no API keys, no PYTHONPATH), writing no bytecode, told explicitly
where this package and the allowed third-party packages live.

The worker forks the next child *before* any program exists for it; the child reads its
own program from the worker's stdin (a length-prefixed message the worker never reads),
so no program runs in a process that has held another program's text. The child then
takes its fresh work dir, its limits (CPU, memory, file size 0, no core, few descriptors,
no processes) and the kernel confinement (`isolation.py`), writes a mark, and runs the
program under the Python filter (`filter.py`). The worker reads at most a fixed number of
bytes of the child's reply before the deadline into one reused buffer, kills the child's
process group, forwards the bytes with how the child ended, then removes the work dir (a
full one in a cleaner process, so no program's files delay its verdict or the next program);
it judges nothing, so no reply can break it: the pool judges (`pool.judge`).

Before the hello, a probe child checks the confinement from the inside (`_self_test`):
the pool refuses a worker whose children could still reach what they must not.
"""

from __future__ import annotations

import contextlib
import ctypes
import fractions
import io
import json
import math
import os
import resource
import select
import signal
import socket
import sys
import tempfile
import time
from typing import Any

from cotdistill.sandbox.filter import PACKAGE_DIRS, Forbidden, audit_hook, safe_builtins, static_check
from cotdistill.sandbox.isolation import MAX_PROGRAM, Confinement, _libc, remove_contents, remove_tree

MARK = b'{"isolated": true}\n'  # the child's first line: its isolation is in place


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{round(value, 6):.6f}".rstrip("0").rstrip(".")
    if isinstance(value, fractions.Fraction) and value.denominator == 1:
        return str(value.numerator)
    return str(value)


def execute(code: str, out: int, limits: dict[str, Any], python_filter: bool) -> dict[str, Any]:
    """Run one program in this (child) process; the answer or a typed error."""
    printed = io.StringIO()
    try:
        if python_filter:
            program = compile(static_check(code), "<program>", "exec")
            namespace: dict[str, Any] = {"__builtins__": safe_builtins(), "__name__": "__sandbox__"}
            sys.addaudithook(audit_hook(out))
        else:
            program = compile(code, "<program>", "exec")
            namespace = {"__name__": "__sandbox__"}
        with contextlib.redirect_stdout(printed):
            exec(program, namespace)
            answer = namespace.get("answer")
            if answer is None and callable(namespace.get("solution")):
                answer = namespace["solution"]()
            text = None if answer is None else fmt(answer)
        if text is None:
            return {"error": "no answer", "detail": "no `answer` variable or solution()"}
        if len(printed.getvalue()) > limits["output_bytes"]:
            return {"error": "output", "detail": "printed more than the output limit"}
        return {"answer": text}
    except Forbidden as error:
        return {"error": "forbidden", "detail": str(error)}
    except PermissionError as error:  # the kernel said no
        return {"error": "forbidden", "detail": f"refused by the kernel: {error}"[:300]}
    except MemoryError:
        return {"error": "memory", "detail": "MemoryError"}
    except BaseException as error:  # the program's own failure, whatever it raised
        return {"error": "exception", "detail": f"{type(error).__name__}: {error}"[:300]}


def _receive() -> str | None:
    """This child's program from stdin: `<length>\\n<UTF-8 bytes>`; None when the pool is done."""
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte or len(header) > 20:
            return None
        header += byte
    size, body = int(header), bytearray()
    if size > MAX_PROGRAM:
        return None
    while len(body) < size:
        chunk = os.read(0, size - len(body))
        if not chunk:
            return None
        body += chunk
    return body.decode("utf-8", "surrogatepass")


def _limit(limits: dict[str, Any]) -> None:
    cpu = max(1, math.ceil(limits["seconds"]))
    memory = limits["memory_mb"] * 2**20
    for which, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (memory, memory)),
                         (resource.RLIMIT_FSIZE, (0, 0)), (resource.RLIMIT_CORE, (0, 0)),
                         (resource.RLIMIT_NOFILE, (64, 64)), (resource.RLIMIT_NPROC, (0, 0))):
        resource.setrlimit(which, value)


def child(config: dict[str, Any], isolation: Confinement, workdir: str, out: int) -> None:
    code = _receive()
    if code is None:
        return
    os.setsid()
    os.chdir(workdir)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the worker's protocol pipes are not the program's to touch
        os.dup2(null, fd)
    _limit(config["limits"])
    try:
        isolation.apply(keep=out)  # nothing of the worker's but the result pipe stays open
    except Exception as error:
        os.write(out, json.dumps({"unavailable": f"the kernel refused the isolation: {error}"}).encode() + b"\n")
        return
    os.write(out, MARK)
    result = json.dumps(execute(code, out, config["limits"], config["python_filter"]))
    os.write(out, result.encode("utf-8", "backslashreplace") + b"\n")


class Supervisor:
    """Forks, watches and cleans up after one child per program."""

    def __init__(self, config: dict[str, Any], isolation: Confinement, root: str):
        self.config, self.isolation, self.root = config, isolation, root
        self.limits = config["limits"]
        self.cap = self.limits["output_bytes"] + 4096
        self.buffer = bytearray(self.cap + 1)  # reused: the worker keeps no reply either
        self.serial = 0

    def next(self) -> bool:
        """Run the next program the pool sends; False when the pool has closed our stdin."""
        self.serial += 1
        work = os.path.join(self.root, f"w{self.serial}")
        os.mkdir(work, 0o700)
        if self.isolation._ids:
            os.chown(work, *self.isolation._ids)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                child(self.config, self.isolation, work, write)
            finally:
                os._exit(0)
        os.close(write)
        try:
            size, late, started = self._collect(read)
        finally:
            os.close(read)
        status = self._end(pid, late, size)
        if not started:
            remove_contents(self.root)
            return False
        view = memoryview(self.buffer)[:size]
        header = json.dumps({"status": status, "late": late, "over": size > self.cap, "bytes": size})
        _write_all(header.encode() + b"\n")
        _write_all(view)
        view[:] = bytes(size)
        _clean_behind(work)
        return True

    def _collect(self, read: int) -> tuple[int, bool, bool]:
        """Read the reply into the buffer: no deadline until the child's first byte (it is
        waiting for its program), then the program's. (bytes, late, started)."""
        size, end = 0, None
        while size <= self.cap:
            left = None if end is None else end - time.monotonic()
            if left is not None and (left <= 0 or not select.select([read], [], [], left)[0]):
                return size, True, True
            got = os.readv(read, [memoryview(self.buffer)[size:]])
            if not got:
                break
            if end is None:
                end = time.monotonic() + self.limits["seconds"]
            size += got
        return size, False, end is not None

    def _end(self, pid: int, late: bool, size: int) -> int | None:
        """Kill the child and whatever it belongs to; its wait status if it ended on its own."""
        done, status = os.waitpid(pid, os.WNOHANG)
        end = time.monotonic() + 0.05
        while not done and not late and size <= self.cap and time.monotonic() < end:
            time.sleep(0.0002)  # the pipe closes a moment before the exit can be reaped: keep how it ended
            done, status = os.waitpid(pid, os.WNOHANG)
        for kill in (os.killpg, os.kill):  # the group, and the child should it have left its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
        if not done:
            os.waitpid(pid, 0)
        return status if done else None


def _clean_behind(work: str) -> None:
    """Remove a finished program's work dir in a cleaner process, after its verdict is sent: a
    program that made tens of thousands of directories within its deadline takes longer to
    remove than the pool waits for a reply, and removing it first turned one program into a
    stuck worker (and, killed mid-removal, a tree left in /tmp). Each program has its own dir,
    so the next one starts at once. The cleaner is forked twice and its parent reaped here,
    so the worker is left with no child but the next program's; neither holds program text.
    Most programs write nothing: an empty dir goes at once, with no fork."""
    try:
        os.rmdir(work)
        return
    except OSError:
        pass
    pid = os.fork()
    if pid == 0:
        try:
            if os.fork() == 0:
                remove_contents(work)
                os.rmdir(work)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _write_all(data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def _self_test(isolation: Confinement, root: str) -> str:
    """Apply the confinement in a probe child and try, from inside, what it must stop;
    "ok" or what got through."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            leaks = []
            isolation.apply(keep=write)
            if isolation._ids and os.getuid() != isolation._ids[0]:
                leaks.append("still root")
            for what, attempt in (
                    ("reading /etc/passwd", lambda: os.open("/etc/passwd", os.O_RDONLY)),
                    ("a socket", lambda: socket.socket()),
                    ("chmod", lambda: os.chmod(root, 0o777)),
                    ("a signal to the worker", lambda: os.kill(os.getppid(), 0)),
                    ("SysV shared memory", lambda: _errno_call(_libc.shmget, 0, 4096, 0o1600)),
                    ("a new process", lambda: os.fork() or os._exit(0))):
                try:
                    attempt()
                    leaks.append(what)
                except OSError:
                    pass
            os.write(write, ("; ".join(leaks) or "ok").encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = b""
    while chunk := os.read(read, 4096):
        answer += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return answer.decode() or "the probe child failed before reporting"


def _errno_call(function: Any, *args: Any) -> None:
    if function(*args) < 0:
        raise OSError(ctypes.get_errno(), "refused")


def main(config_json: str) -> None:
    config = json.loads(config_json)
    ceiling = (2 * config["limits"]["memory_mb"] + 512) * 2**20  # the worker's own cap; a child lowers its own
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    root = tempfile.mkdtemp(prefix="cotdistill-sandbox-")
    try:
        os.chmod(root, 0o711)  # nobody may pass through to its own work dir, not list or write here
        isolation = Confinement.build(PACKAGE_DIRS, root)
        hello = {"ready": True, "isolation": isolation.report(), "root": root,
                 "checked": _self_test(isolation, root) if isolation.seccomp and isolation.landlock else "not checked"}
        _write_all(json.dumps(hello).encode() + b"\n")
        supervisor = Supervisor(config, isolation, root)
        while supervisor.next():
            pass
    finally:
        remove_tree(root, 8.0)
