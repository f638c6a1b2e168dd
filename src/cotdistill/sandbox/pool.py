"""The pool: a few long-lived workers (`worker.py`), each program sent to one of them, each
reply judged here.

The caller trusts nothing a worker forwards: the frame is read with a byte cap and a
deadline, and `judge` turns any bytes (deep nesting, huge numbers, NaN, any signal number,
garbage) into an Outcome without an exception escaping. A worker that dies or garbles its
frame is infrastructure, not a verdict: it is restarted, its isolation checked again (the
self-test and the same report as the pool's first worker, then the health check), and the
program tried once more; a second failure raises SandboxUnavailable with the worker's
stderr, so nothing is stored for that program. Answers and details are cleaned of control
characters (C0, C1, ANSI escape sequences, bidirectional overrides) before they reach the
caller or a store.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from cotdistill.errors import EnvironmentProblem
from cotdistill.sandbox.isolation import MAX_PROGRAM, remove_tree

ERRORS = ("timeout", "memory", "forbidden", "exception", "no answer", "output", "malformed reply", "crash")
PROGRAM_ERRORS = ("memory", "forbidden", "exception", "no answer", "output")  # what a child may report itself
_BOOT = ("import os, sys; sys.path += [p for p in sys.argv[1].split(os.pathsep) if p not in sys.path]; "
         "from cotdistill.sandbox.worker import main; main(sys.argv[2])")
_MARK = b'{"isolated": true}'
_START_SECONDS = 60.0  # for the worker's hello and the health check, on a loaded machine
_SLACK_SECONDS = 10.0  # beyond the program's own deadline before a worker counts as stuck
ANSWER_CHARS = 1000
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
    user: str = ""  # uid:gid the programs run as
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        if not self.missing:
            return f"kernel isolation: Landlock ABI {self.landlock} and seccomp, programs as {self.user}"
        return "kernel isolation incomplete on this machine: missing " + "; ".join(self.missing)


class _Broken(Exception):
    """The worker died, stalled or garbled its frame (not the program's verdict)."""


def _search_path() -> list[str]:
    """Where the worker finds this package and the allowed third-party packages, passed to
    it explicitly: it runs isolated (`-I`), without PYTHONPATH or the caller's sys.path."""
    paths = [str(Path(__file__).resolve().parents[2])]
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
        """A fresh worker process, its hello read, its isolation report and self-test kept."""
        self.errors: IO[bytes] = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _BOOT, os.pathsep.join(_search_path()), self.config],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors, env={"PATH": os.defpath}, cwd="/",
        )
        self._buffer = b""
        try:
            hello = json.loads(self._read_line(_START_SECONDS, 65536))
            report = hello["isolation"]
            self.isolation = Isolation(int(report["landlock"]), bool(report["seccomp"]), tuple(report["missing"]),
                                       str(report["user"]), tuple(report["notes"]))
            self.checked = str(hello["checked"])
            self.root = str(hello["root"])
        except (_Broken, ValueError, KeyError, TypeError):
            self.kill()
            raise SandboxUnavailable(f"the program sandbox's worker did not start ({sys.executable}): "
                                     f"{self.stderr() or 'no message'}") from None
        if not self.isolation.missing and self.checked != "ok":
            self.kill()
            raise SandboxUnavailable(f"the program sandbox's self-test found a confined child could still do: "
                                     f"{self.checked}")

    def stderr(self) -> str:
        """The last line the worker wrote to its stderr, for the error message."""
        self.errors.seek(0)
        lines = self.errors.read()[-4096:].decode("utf-8", "replace").strip().splitlines()
        return clean(lines[-1]) if lines else ""

    def _read(self, size: int, end: float) -> bytes:
        """Exactly `size` bytes before `end`, or _Broken."""
        self._fill(size, end)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _fill(self, size: int, end: float) -> None:
        out = self.process.stdout
        assert out is not None
        while len(self._buffer) < size:
            left = end - time.monotonic()
            if left <= 0 or not select.select([out], [], [], left)[0]:
                raise _Broken("no reply in time")
            chunk = os.read(out.fileno(), 65536)
            if not chunk:
                raise _Broken("the worker exited")
            self._buffer += chunk

    def _read_line(self, seconds: float, cap: int) -> bytes:
        """One line, within `seconds` and `cap` bytes, or _Broken."""
        end = time.monotonic() + seconds
        while b"\n" not in self._buffer:
            if len(self._buffer) > cap:
                raise _Broken("reply too long")
            self._fill(len(self._buffer) + 1, end)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def run(self, code: str) -> Outcome:
        """Raises _Broken when the worker, not the program, failed."""
        assert self.process.stdin is not None
        payload = code.encode("utf-8", "surrogatepass")
        if len(payload) > MAX_PROGRAM:  # the child would refuse to read it: a verdict, not a broken worker
            return Outcome(None, "forbidden", f"a program of {len(payload)} bytes (at most {MAX_PROGRAM})")
        try:
            self.process.stdin.write(b"%d\n" % len(payload) + payload)
            self.process.stdin.flush()
            end = time.monotonic() + self.limits.seconds + _SLACK_SECONDS
            header = json.loads(self._read_line(end - time.monotonic(), 4096))
            status, late, over, size = header["status"], header["late"], header["over"], header["bytes"]
            if not (isinstance(size, int) and 0 <= size <= self.limits.output_bytes + 4097
                    and (status is None or isinstance(status, int)) and isinstance(late, bool)
                    and isinstance(over, bool)):
                raise _Broken(f"a malformed frame header {str(header)[:80]}")
            body = self._read(size, end)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise _Broken(str(error)) from None
        return judge(body, status, late, over, self.limits)

    def restart(self) -> None:
        self.kill()
        self.errors.close()
        self._start()

    def kill(self) -> None:
        """Kill the worker and remove what it could not: its root, with every program's work dir
        (a worker killed mid-run leaves them, and /tmp would gather each one)."""
        self.process.kill()
        self.process.wait()
        self._remove_root()

    def _remove_root(self) -> None:
        root = getattr(self, "root", None)  # None if it died before its hello
        if root:
            remove_tree(root, 10.0)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._remove_root()  # what the worker could not remove in time (a cleaner still at work)
        self.errors.close()


def judge(reply: bytes, status: int | None, late: bool, over: bool, limits: Limits) -> Outcome:
    """The child's reply as an Outcome, whatever its bytes: only a well-formed result after
    the isolation mark counts. `status` is how the child ended on its own, None when the
    worker had to kill it. Raises only SandboxUnavailable (the kernel refused the isolation)."""
    first = reply.split(b"\n", 1)[0]
    if first.startswith(b'{"unavailable"'):
        why = clean(first.decode("utf-8", "replace"))[:300]
        raise SandboxUnavailable(f"the program sandbox cannot isolate programs: {why}")
    try:
        return _judge(reply, status, late, over, limits)
    except Exception as error:  # a reply no rule foresaw is still only a bad reply
        return Outcome(None, "malformed reply", f"the program's reply could not be read ({type(error).__name__})")


def _judge(reply: bytes, status: int | None, late: bool, over: bool, limits: Limits) -> Outcome:
    lines = reply.split(b"\n")
    if reply and lines[0] != _MARK:
        return Outcome(None, "crash", "the child failed before the program started")
    refused = [line for line in lines[1:] if line.startswith(b"refused ")]
    if refused:  # first, whatever the program did after
        return Outcome(None, "forbidden", clean(refused[0][8:208].decode("utf-8", "replace")) + " is not allowed")
    signalled = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None
    if signalled == signal.SIGSYS:
        return Outcome(None, "forbidden", "a system call the sandbox forbids (stopped by seccomp)")
    if late:
        return Outcome(None, "timeout", f"over {limits.seconds} s wall clock")
    if signalled in (signal.SIGXCPU, signal.SIGKILL):  # the kernel's CPU-time limits
        return Outcome(None, "timeout", "over the CPU-time limit")
    if over:
        return Outcome(None, "malformed reply", f"the program wrote more than {limits.output_bytes} bytes")
    body = [line for line in lines[1:] if line]
    if not body:
        if signalled is not None:
            return Outcome(None, "crash", f"the program died ({signal_name(signalled)})")
        return Outcome(None, "malformed reply", "the program ended or closed its result pipe without a result")
    if len(body) > 1:
        return Outcome(None, "malformed reply", f"the program's reply is not one result: {clean(repr(body[0][:80]))}")
    return _result(body[0])


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a result")


def _result(line: bytes) -> Outcome:
    """Accept exactly {"answer": str} or {"error": known, "detail": str}."""
    try:
        result = json.loads(line.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        result = None
    if isinstance(result, dict) and set(result) == {"answer"} and isinstance(result["answer"], str):
        if len(result["answer"]) > ANSWER_CHARS:
            return Outcome(None, "output", f"answer longer than {ANSWER_CHARS} characters")
        return Outcome(clean(result["answer"]), None)
    if (isinstance(result, dict) and set(result) == {"error", "detail"} and result["error"] in PROGRAM_ERRORS
            and isinstance(result["detail"], str)):
        return Outcome(None, result["error"], clean(result["detail"][:300]))
    return Outcome(None, "malformed reply", f"the program's reply is not a result: {clean(repr(line[:80]))}")


def signal_name(number: int) -> str:
    """SIGSEGV, SIGRTMIN+6, or "signal 99": never an exception."""
    try:
        return signal.Signals(number).name
    except ValueError:
        low, high = getattr(signal, "SIGRTMIN", 34), getattr(signal, "SIGRTMAX", 64)
        return f"SIGRTMIN+{number - low}" if low <= number <= high else f"signal {number}"


_CONTROL = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # ANSI CSI sequences (colours, cursor moves, erasing), 7- and 8-bit
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC (window titles, hyperlinks)
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS, SOS, PM, APC strings
    r"|\x1b.?"  # any other escape
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]"  # C0 but tab/newline, DEL, C1, bidi
)


def clean(text: str) -> str:
    """Text safe for a terminal and a store: no control characters or escape sequences,
    tabs and newlines as spaces, lone surrogates replaced."""
    text = _CONTROL.sub("", text.encode("utf-8", "replace").decode("utf-8")).replace("\t", " ").replace("\n", " ")
    # and the invisible: format characters (bidi marks, zero widths, BOM), line/paragraph separators
    return "".join(ch for ch in text if ch.isascii() or unicodedata.category(ch) not in ("Cf", "Zl", "Zp"))


class Sandbox:
    """A pool of sandbox workers; use as a context manager, or call `close()`.

    Raises SandboxUnavailable if the workers cannot start or fail the self-test or the
    health check, and, unless `weak_sandbox=True` (the CLI's `--weak-sandbox`), if this
    kernel lacks a layer (Landlock or seccomp). `python_filter=False` leaves the kernel
    layers alone (tests use it to show they hold by themselves)."""

    def __init__(self, workers: int | None = None, limits: Limits = Limits(), python_filter: bool = True,
                 weak_sandbox: bool = False):
        self.limits = limits
        self.workers: list[_Worker] = []
        try:
            for _ in range(workers or os.cpu_count() or 1):
                self.workers.append(_Worker(limits, python_filter))
            self.isolation = self.workers[0].isolation
            if self.isolation.missing and not weak_sandbox:
                raise SandboxUnavailable(
                    f"model-written programs need the kernel sandbox, and this machine's is incomplete "
                    f"({'; '.join(self.isolation.missing)}); pass --weak-sandbox (weak_sandbox=True) to run them "
                    "under the Python-level filters only")
            for worker in self.workers:
                self._check(worker)
        except BaseException:
            self.close()
            raise
        self._free = list(self.workers)
        self._lock = threading.Condition()

    def _check(self, worker: _Worker) -> None:
        """A (re)started worker confines as the first one did and answers 6 * 7."""
        if worker.isolation != self.isolation:
            raise SandboxUnavailable(f"a restarted sandbox worker is not isolated as before: "
                                     f"{worker.isolation.describe()}")
        try:
            outcome = worker.run("answer = 6 * 7")
        except _Broken as error:
            raise SandboxUnavailable(f"the program sandbox failed its health check: {error}; "
                                     f"{worker.stderr()}") from None
        if outcome.answer != "42":
            raise SandboxUnavailable("the program sandbox failed its health check (answer = 6 * 7 gave "
                                     f"{outcome.answer or outcome.error}: {outcome.detail})")

    def run(self, code: str) -> Outcome:
        with self._lock:
            self._lock.wait_for(lambda: bool(self._free))
            worker = self._free.pop()
        try:  # the pool hands each worker to one thread at a time
            failures = []
            for _ in range(2):
                try:
                    return worker.run(code)
                except _Broken as error:
                    failures.append(f"{error} ({worker.stderr() or 'nothing on stderr'})")
                    worker.restart()  # raises SandboxUnavailable if it cannot come back
                    self._check(worker)
            raise SandboxUnavailable("a sandbox worker failed twice on one program, so nothing is judged: "
                                     + "; ".join(failures))
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


def shared_sandbox(weak_sandbox: bool = False) -> Sandbox:
    """One process-wide pool with default limits, started (and health-checked) on first use
    and closed at exit, so batch after batch of programs pays for worker start-up once.
    Like Sandbox, it refuses a kernel without its layers unless the first call accepts it."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Sandbox(weak_sandbox=weak_sandbox)
            atexit.register(_shared.close)
            if _shared.isolation.missing:
                log.warning("sandbox: %s", _shared.isolation.describe())
        return _shared


def require_sandbox(model_written: bool, accept_weak: bool = False) -> Isolation:
    """Start the shared pool before the first program, so a sandbox that cannot run stops
    the command instead of turning into verdicts; refuse model-written programs where the
    kernel layers are missing unless the user accepts the weaker isolation. Programs the
    toolkit builds itself (the gold teacher's) run either way."""
    isolation = shared_sandbox(weak_sandbox=accept_weak or not model_written).isolation
    if model_written and isolation.missing and not accept_weak:
        raise SandboxUnavailable(f"model-written programs need the kernel sandbox, and this machine's is "
                                 f"incomplete ({'; '.join(isolation.missing)}); pass --weak-sandbox "
                                 "(weak_sandbox=True) to run them under the Python-level filters only")
    return isolation
