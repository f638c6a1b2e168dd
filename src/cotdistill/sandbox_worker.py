"""The sandbox's worker process: reads one JSON job per line on stdin, runs its program in a
forked child, writes one validated JSON result per line.

Started by `sandbox.py` as `python -I -c BOOT PACKAGE_ROOT CONFIG`: isolated from the
caller's environment (no API keys, no PYTHONPATH), told explicitly where this package and
the allowed third-party packages live.

The boundary is the kernel (`isolation.py`): each child is put under Landlock and seccomp
before the program's first instruction. Inside it, the Python-level filter
(`sandbox_filter.py`: static check, reduced builtins, audit hook) names what a program
tried, and process limits hold: its own session and process group, stdio on /dev/null, no
inherited descriptors but the result pipe, RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE 0; killed
at the wall-clock deadline.

The worker trusts nothing the child writes: it reads at most a fixed number of bytes
before the deadline and accepts only a dict holding a string answer or a known error. Its
own memory is capped (RLIMIT_AS); its CPU time per program is the fork and that bounded read.
"""

from __future__ import annotations

import contextlib
import fractions
import io
import json
import math
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

from cotdistill.isolation import Confinement
from cotdistill.sandbox_filter import PACKAGE_DIRS, Forbidden, audit_hook, safe_builtins, static_check

PROGRAM_ERRORS = ("memory", "forbidden", "exception", "no answer", "output")
MARK = b'{"isolated": true}\n'  # the child's first line: its isolation is in place
ANSWER_CHARS = 1000


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


def child(code: str, config: dict[str, Any], isolation: Confinement, workdir: str, out: int) -> None:
    limits = config["limits"]
    os.setsid()
    os.chdir(workdir)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the worker's protocol pipes are not the program's to touch
        os.dup2(null, fd)
    cpu = max(1, math.ceil(limits["seconds"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = limits["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    try:
        isolation.apply(keep=out)  # nothing of the worker's but the result pipe stays open
    except Exception as error:
        os.write(out, json.dumps({"unavailable": f"the kernel refused the isolation: {error}"}).encode() + b"\n")
        return
    os.write(out, MARK)
    result = json.dumps(execute(code, out, limits, config["python_filter"]))
    os.write(out, result.encode("utf-8", "backslashreplace") + b"\n")


def supervise(code: str, config: dict[str, Any], isolation: Confinement, root: str) -> dict[str, Any]:
    """Fork a child for one program; read at most `cap` bytes of its reply before the
    deadline; kill it and anything it belongs to; empty the work directory."""
    limits = config["limits"]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            child(code, config, isolation, root, write)
        finally:
            os._exit(0)
    os.close(write)
    reply, cap, late = b"", limits["output_bytes"] + 4096, False
    end = time.monotonic() + limits["seconds"]
    while len(reply) <= cap:
        left = end - time.monotonic()
        if left <= 0 or not select.select([read], [], [], left)[0]:
            late = True
            break
        chunk = os.read(read, 65536)
        if not chunk:
            break
        reply += chunk
    os.close(read)
    done, status = os.waitpid(pid, os.WNOHANG)
    while not done and not late and len(reply) <= cap and time.monotonic() < end:
        time.sleep(0.0002)  # the pipe closes a moment before the exit can be reaped: keep how it ended
        done, status = os.waitpid(pid, os.WNOHANG)
    for kill in (os.killpg, os.kill):  # the group, and the child should it have left its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)
    if not done:
        _, status = os.waitpid(pid, 0)
    _empty(root)
    return classify(reply, status if done else None, late, len(reply) > cap, limits)


def classify(reply: bytes, status: int | None, late: bool, over: bool, limits: dict[str, Any]) -> dict[str, Any]:
    """The child's reply judged: only a well-formed dict after the isolation mark counts.
    `status` is how the child ended on its own; None when the worker had to kill it."""
    lines = reply.split(b"\n")
    if lines[0].startswith(b'{"unavailable"'):
        return {"unavailable": json.loads(lines[0])["unavailable"]}
    if reply and not reply.startswith(MARK):
        return {"error": "crash", "detail": "the child failed before the program started"}
    refused = [line for line in lines[1:] if line.startswith(b'{"refused": ')]
    if refused:  # first, whatever the program did after
        return {"error": "forbidden", "detail": _refused(refused[0]) + " is not allowed"}
    signalled = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None
    if signalled == signal.SIGSYS:
        return {"error": "forbidden", "detail": "a system call the sandbox forbids (stopped by seccomp)"}
    if late:
        return {"error": "timeout", "detail": f"over {limits['seconds']} s wall clock"}
    if signalled in (signal.SIGXCPU, signal.SIGKILL):  # the kernel's CPU-time limits
        return {"error": "timeout", "detail": "over the CPU-time limit"}
    if over:
        return {"error": "malformed reply", "detail": f"the program wrote more than {limits['output_bytes']} bytes"}
    body = [line for line in lines[1:] if line]
    if not body:
        if signalled is not None:
            return {"error": "crash", "detail": f"the program died ({signal.Signals(signalled).name})"}
        return {"error": "malformed reply", "detail": "the program ended or closed its result pipe without a result"}
    return validate(body[-1], len(body))


def _refused(line: bytes) -> str:
    """What a refusal line names (forged ones too: they only make the program's outcome worse)."""
    try:
        return str(json.loads(line)["refused"])[:200]
    except (ValueError, KeyError, TypeError):
        return "an operation"


def validate(line: bytes, lines: int = 1) -> dict[str, Any]:
    """Accept exactly {"answer": str} or {"error": known, "detail": str} (the caller cleans the text)."""
    try:
        result = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        result = None
    if lines == 1 and isinstance(result, dict) and set(result) == {"answer"} and isinstance(result["answer"], str):
        if len(result["answer"]) > ANSWER_CHARS:
            return {"error": "output", "detail": f"answer longer than {ANSWER_CHARS} characters"}
        return {"answer": result["answer"]}
    if (lines == 1 and isinstance(result, dict) and set(result) == {"error", "detail"}
            and result["error"] in PROGRAM_ERRORS and isinstance(result["detail"], str)):
        return {"error": result["error"], "detail": result["detail"][:300]}
    return {"error": "malformed reply", "detail": f"the program's reply is not a result: {line[:80]!r}"}


def _empty(root: str) -> None:
    """Remove whatever the last program left, so the next one starts from nothing."""
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def main(config_json: str) -> None:
    config = json.loads(config_json)
    ceiling = (2 * config["limits"]["memory_mb"] + 512) * 2**20  # the worker's own cap; a child lowers its own
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    root = tempfile.mkdtemp(prefix="cotdistill-sandbox-")
    isolation = Confinement.build(PACKAGE_DIRS, root)
    try:
        sys.stdout.write(json.dumps({"ready": True, "isolation": isolation.report()}) + "\n")
        sys.stdout.flush()
        for line in sys.stdin:
            result = supervise(json.loads(line)["code"], config, isolation, root)
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
    finally:
        shutil.rmtree(root, ignore_errors=True)
