"""Run model-written programs (PoT, KPDD-PoT) away from the caller's process.

A few long-lived worker processes (`sandbox_worker.py`, started once, never per program)
receive programs over a pipe and run each in a forked child that the kernel confines
(`isolation.py`: Landlock for files, TCP and signals; seccomp for processes, sockets and
the rest) before the first instruction, under the Python-level filters, CPU, memory and
file-size limits and a wall-clock deadline. The caller never executes the code, and its
environment (API keys) never reaches a worker. Forking from a warm worker costs about a
millisecond; starting an interpreter per program would cost tens.

The caller trusts nothing it is sent: each reply is read with a byte cap and a deadline and
must be a dict holding a string answer or a known error. A worker that dies or garbles its
reply is replaced and the program tried once more, so a broken worker is not a verdict on
a program. A pool that cannot run a program at all (the worker cannot start, the kernel
refuses the isolation, `answer = 6 * 7` does not give 42) raises SandboxUnavailable before
any outcome is produced: infrastructure failure is never stored as a rejected program.

Covered (each case a test in tests/test_sandbox_escapes.py, with the Python filter on and
off): reading any file but the standard library's and the allowed packages' (secrets, other
processes' /proc entries and environment, the run store), writing, truncating or creating
files outside the program's own emptied work dir, exec and any new process (so nothing
outlives the deadline), signals to other processes, sockets and TCP, forged, huge or
non-UTF-8 replies, hiding a refusal. Not covered: timing and cache side channels; reading
the code the sandbox allows; using up the program's own CPU, memory and time limits. On a
kernel without Landlock or seccomp only the Python filters and limits remain, and model-
written programs run only when the user accepts that (`require_sandbox`).

A program answers by assigning `answer` (or defining `solution()`); the sandbox returns
that value as text, or a typed error (ERRORS).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from cotdistill.errors import EnvironmentProblem

ERRORS = ("timeout", "memory", "forbidden", "exception", "no answer", "output", "malformed reply", "crash")
_BOOT = ("import os, sys; sys.path += [p for p in sys.argv[1].split(os.pathsep) if p not in sys.path]; "
         "from cotdistill.sandbox_worker import main; main(sys.argv[2])")
_START_SECONDS = 60.0  # for the worker's hello and the health check, on a loaded machine
_SLACK_SECONDS = 10.0  # beyond the program's own deadline before a worker counts as stuck
log = logging.getLogger(__name__)


class SandboxUnavailable(EnvironmentProblem):
    """The sandbox cannot run programs on this machine or installation: nothing may be
    judged by it."""


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


@dataclass(frozen=True)
class Isolation:
    """What the kernel enforces around each program, as the workers found it."""

    landlock: int = 0  # Landlock ABI, 0 if absent
    seccomp: bool = False
    missing: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        if not self.missing:
            return f"kernel isolation: Landlock ABI {self.landlock} and seccomp"
        return "kernel isolation incomplete on this machine: missing " + "; ".join(self.missing)


class _Broken(Exception):
    """The worker died, stalled or garbled its reply (not the program's verdict)."""


def _search_path() -> list[str]:
    """Where the worker finds this package and the allowed third-party packages, passed to
    it explicitly: it runs isolated (`-I`), without PYTHONPATH or the caller's sys.path."""
    paths = [str(Path(__file__).resolve().parents[1])]
    for name in ("sympy", "mpmath"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            paths.append(str(Path(list(spec.submodule_search_locations)[0]).parent))
    return list(dict.fromkeys(paths))


class _Worker:
    def __init__(self, limits: Limits, python_filter: bool):
        self.limits = limits
        self.config = json.dumps({"limits": asdict(limits), "python_filter": python_filter})
        self._start()

    def _start(self) -> None:
        """A fresh worker process, its hello read and its isolation report kept."""
        errors: IO[bytes] = tempfile.TemporaryFile()
        paths = _search_path()
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOT, os.pathsep.join(paths), self.config],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, env={"PATH": os.defpath}, cwd="/",
        )
        self.process, self._buffer = process, b""
        try:
            hello = json.loads(self._read_line(_START_SECONDS, 65536))
            self.isolation = Isolation(hello["isolation"]["landlock"], hello["isolation"]["seccomp"],
                                       tuple(hello["isolation"]["missing"]))
        except (_Broken, ValueError, KeyError, TypeError):
            process.kill()
            process.wait()
            errors.seek(0)
            lines = errors.read().decode("utf-8", "replace").strip().splitlines()
            raise SandboxUnavailable(f"the program sandbox's worker did not start ({sys.executable}): "
                                     f"{lines[-1] if lines else 'no message'}") from None
        finally:
            errors.close()

    def _read_line(self, seconds: float, cap: int) -> bytes:
        """One reply line, within `seconds` and `cap` bytes, or _Broken."""
        end = time.monotonic() + seconds
        out = self.process.stdout
        assert out is not None
        while b"\n" not in self._buffer:
            left = end - time.monotonic()
            if len(self._buffer) > cap or left <= 0 or not select.select([out], [], [], left)[0]:
                raise _Broken("no reply in time" if len(self._buffer) <= cap else "reply too long")
            chunk = os.read(out.fileno(), 65536)
            if not chunk:
                raise _Broken("the worker exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def run(self, code: str) -> Outcome:
        """Raises _Broken when the worker, not the program, failed."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"code": code}).encode() + b"\n")
            self.process.stdin.flush()
            line = self._read_line(self.limits.seconds + _SLACK_SECONDS, 4 * self.limits.output_bytes + 4096)
            reply = json.loads(line.decode("utf-8"))
        except (OSError, ValueError) as error:
            raise _Broken(str(error)) from None
        if isinstance(reply, dict) and "unavailable" in reply:
            raise SandboxUnavailable(f"the program sandbox cannot isolate programs: {reply['unavailable']}")
        return _outcome(reply)

    def restart(self) -> None:
        self.kill()
        self._start()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


def _outcome(reply: Any) -> Outcome:
    """The worker's reply as an Outcome; anything but the two accepted shapes is _Broken."""
    if isinstance(reply, dict) and set(reply) == {"answer"} and isinstance(reply["answer"], str):
        return Outcome(_clean(reply["answer"]), None)
    if (isinstance(reply, dict) and set(reply) == {"error", "detail"} and reply["error"] in ERRORS
            and isinstance(reply["detail"], str)):
        return Outcome(None, reply["error"], _clean(reply["detail"]))
    raise _Broken(f"unexpected reply {str(reply)[:80]!r}")


def _clean(text: str) -> str:
    """No NUL or lone surrogate reaches a store or a terminal."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\0", "")


class Sandbox:
    """A pool of sandbox workers; use as a context manager, or call `close()`.

    `python_filter=False` leaves the kernel layers alone (tests use it to show they hold
    by themselves). Raises SandboxUnavailable if the workers cannot start or fail the
    health check."""

    def __init__(self, workers: int | None = None, limits: Limits = Limits(), python_filter: bool = True):
        self.limits = limits
        self.workers: list[_Worker] = []
        try:
            for _ in range(workers or os.cpu_count() or 1):
                self.workers.append(_Worker(limits, python_filter))
            for worker in self.workers:
                _health_check(worker)
        except BaseException:
            self.close()
            raise
        self.isolation = self.workers[0].isolation
        self._free = list(self.workers)
        self._lock = threading.Condition()

    def run(self, code: str) -> Outcome:
        with self._lock:
            self._lock.wait_for(lambda: bool(self._free))
            worker = self._free.pop()
        try:  # the pool hands each worker to one thread at a time
            try:
                return worker.run(code)
            except _Broken:
                worker.restart()  # raises SandboxUnavailable if it cannot come back
            try:
                return worker.run(code)
            except _Broken as error:
                worker.restart()
                return Outcome(None, "crash", f"the sandbox worker broke twice on this program ({error})")
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


def _health_check(worker: _Worker) -> None:
    try:
        outcome = worker.run("answer = 6 * 7")
    except _Broken as error:
        raise SandboxUnavailable(f"the program sandbox failed its health check: {error}") from None
    if outcome.answer != "42":
        raise SandboxUnavailable("the program sandbox failed its health check (answer = 6 * 7 gave "
                                 f"{outcome.answer or outcome.error}: {outcome.detail})")


_shared: Sandbox | None = None
_shared_lock = threading.Lock()


def shared_sandbox() -> Sandbox:
    """One process-wide pool with default limits, started (and health-checked) on first use
    and closed at exit, so batch after batch of programs pays for worker start-up once."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Sandbox()
            atexit.register(_shared.close)
            if _shared.isolation.missing:
                log.warning("sandbox: %s", _shared.isolation.describe())
        return _shared


def require_sandbox(model_written: bool, accept_weak: bool = False) -> Isolation:
    """Start the shared pool before the first program, so a sandbox that cannot run stops
    the command instead of turning into verdicts; refuse model-written programs where the
    kernel layers are missing unless the user accepts the weaker isolation. Programs the
    toolkit builds itself (the gold teacher's) run either way."""
    isolation = shared_sandbox().isolation
    if model_written and isolation.missing and not accept_weak:
        raise SandboxUnavailable(f"model-written programs need the kernel sandbox, and this machine's is "
                                 f"incomplete ({'; '.join(isolation.missing)}); pass --weak-sandbox (weak_sandbox=True) "
                                 "to run them under the Python-level filters only")
    return isolation
