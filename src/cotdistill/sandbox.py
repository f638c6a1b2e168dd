"""Run model-written programs (PoT, KPDD-PoT) away from the caller's process.

A few long-lived worker processes (started once, never per program) each receive programs
over a pipe and run every one in a forked child with a CPU-time limit, an address-space
limit, no file writes (RLIMIT_FSIZE 0) and a private empty working directory, killed with
its whole process group at the wall-clock deadline. The parent never executes the code.

A program answers by assigning `answer` (or defining `solution()`); the sandbox returns
that value as text, or a typed error: timeout, memory, exception, no answer, output.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

ERRORS = ("timeout", "memory", "exception", "no answer", "output", "crash")


@dataclass(frozen=True)
class Outcome:
    answer: str | None  # the program's answer as text, None on error
    error: str | None  # one of ERRORS, None on success
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Limits:
    seconds: float = 5.0  # wall clock; CPU time is capped at the same value
    memory_mb: int = 512
    output_bytes: int = 65536


_WORKER = r'''
import io, json, math, os, resource, select, shutil, signal, sys, tempfile, time, contextlib, fractions
ROOT = tempfile.mkdtemp(prefix="cotdistill-sandbox-")

def fmt(value):
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return f"{round(value, 6):.6f}".rstrip("0").rstrip(".")
    if isinstance(value, fractions.Fraction) and value.denominator == 1:
        return str(value.numerator)
    return str(value)

def child(code, limits, workdir, out):
    os.setsid()
    os.chdir(workdir)
    cpu = max(1, math.ceil(limits["seconds"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = limits["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    printed = io.StringIO()
    try:
        namespace = {"__name__": "__sandbox__"}
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "<program>", "exec"), namespace)
            answer = namespace.get("answer")
            if answer is None and callable(namespace.get("solution")):
                answer = namespace["solution"]()
        result = {"answer": fmt(answer)} if answer is not None else {"error": "no answer", "detail": "no `answer` variable or solution()"}
    except MemoryError:
        result = {"error": "memory", "detail": "MemoryError"}
    except RecursionError as e:
        result = {"error": "exception", "detail": "RecursionError"}
    except BaseException as e:
        result = {"error": "exception", "detail": f"{type(e).__name__}: {e}"[:300]}
    if len(printed.getvalue()) > limits["output_bytes"]:
        result = {"error": "output", "detail": "printed more than the output limit"}
    os.write(out, json.dumps(result).encode()[: limits["output_bytes"] + 1000])
    os._exit(0)

def run(code, limits):
    workdir = tempfile.mkdtemp(dir=ROOT)
    try:
        return supervise(code, limits, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

def supervise(code, limits, workdir):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            child(code, limits, workdir, write)
        finally:
            os._exit(1)
    os.close(write)
    chunks, deadline_hit = [], False
    end = time.monotonic() + limits["seconds"]
    while True:
        left = end - time.monotonic()
        if left <= 0 or not select.select([read], [], [], left)[0]:
            deadline_hit = True
            break
        chunk = os.read(read, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if deadline_hit:
        return {"error": "timeout", "detail": f"over {limits['seconds']} s wall clock"}
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
        return {"error": "timeout", "detail": "over the CPU-time limit"}
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        return {"error": "crash", "detail": f"exit status {status}"}

for line in sys.stdin:
    job = json.loads(line)
    sys.stdout.write(json.dumps(run(job["code"], job["limits"])) + "\n")
    sys.stdout.flush()
shutil.rmtree(ROOT, ignore_errors=True)
'''


class _Worker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process = self._start()

    @staticmethod
    def _start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-I", "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={"PATH": os.defpath}, cwd="/",
        )

    def run(self, code: str, limits: Limits) -> Outcome:
        job = json.dumps({"code": code, "limits": limits.__dict__})
        with self.lock:
            if self.process.poll() is not None:  # a program killed its worker: replace it
                self.process = self._start()
            assert self.process.stdin and self.process.stdout
            try:
                self.process.stdin.write(job + "\n")
                self.process.stdin.flush()
                line = self.process.stdout.readline()
            except BrokenPipeError:
                line = ""
        if not line:
            return Outcome(None, "crash", "the program killed its sandbox worker")
        result = json.loads(line)
        return Outcome(result.get("answer"), result.get("error"), result.get("detail", ""))

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=10)


class Sandbox:
    """A pool of sandbox workers; use as a context manager, or call `close()`."""

    def __init__(self, workers: int | None = None, limits: Limits = Limits()):
        self.limits = limits
        self.workers = [_Worker() for _ in range(workers or os.cpu_count() or 1)]
        self._free = list(self.workers)
        self._lock = threading.Condition()

    def run(self, code: str) -> Outcome:
        with self._lock:
            self._lock.wait_for(lambda: bool(self._free))
            worker = self._free.pop()
        try:
            return worker.run(code, self.limits)
        finally:
            with self._lock:
                self._free.append(worker)
                self._lock.notify()

    def run_many(self, programs: Sequence[str]) -> list[Outcome]:
        with ThreadPoolExecutor(len(self.workers)) as pool:
            return list(pool.map(self.run, programs))

    def close(self) -> None:
        for worker in self.workers:
            worker.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: Sandbox | None = None
_shared_lock = threading.Lock()


def shared_sandbox() -> Sandbox:
    """One process-wide pool with default limits, started on first use and closed at exit,
    so batch after batch of programs pays for worker start-up once."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Sandbox()
            atexit.register(_shared.close)
        return _shared
