"""Run model-written programs (PoT, KPDD-PoT) away from the caller's process.

A few long-lived worker processes (`sandbox_worker.py`, started once, never per program)
receive programs over a pipe and run each in a forked child under restricted imports and
builtins, an audit hook refusing files, network, subprocesses and the like, CPU-time,
address-space and file-size limits, and a wall-clock deadline. The caller never executes
the code. Forking from a warm worker costs about a millisecond; starting an interpreter
per program would cost tens.

A program answers by assigning `answer` (or defining `solution()`); the sandbox returns
that value as text, or a typed error (ERRORS).
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

ERRORS = ("timeout", "memory", "forbidden", "exception", "no answer", "output", "crash")


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


class _Worker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process = self._start()

    @staticmethod
    def _start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-I", "-m", "cotdistill.sandbox_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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
        try:
            result = json.loads(line)
        except ValueError:  # the worker died or its channel was written to: start a fresh one next time
            self.process.kill()
            return Outcome(None, "crash", "the sandbox worker died or garbled its reply")
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
