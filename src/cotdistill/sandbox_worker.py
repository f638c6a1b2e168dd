"""The sandbox's worker process (`python -I -m cotdistill.sandbox_worker`): reads one JSON job
per line on stdin, runs its program in a forked child, writes one JSON result per line.

Layers, each enough for some attacks and all of them together for the rest:
1. A static check refuses imports outside ALLOWED_IMPORTS, names such as `open`, `eval`,
   `exec`, `getattr`, and every private (`_x`, `__x__`) or interpreter-internal attribute
   (the `().__class__.__subclasses__()` family of escapes, `statistics.random._os`).
2. The program runs with a reduced set of builtins and an `__import__` that admits only
   ALLOWED_IMPORTS (pre-imported here, so the child opens no file to import them).
3. An audit hook (PEP 578; code cannot remove it) refuses opening files, sockets,
   subprocesses, fork/exec/kill, ctypes and the other operations listed in DENIED_EVENTS,
   and records every refusal, so a program that swallows the exception still reports
   "forbidden".
4. The child is its own process group in a private temp dir, its stdin/stdout/stderr on
   /dev/null (the result goes back on a pipe of its own), under RLIMIT_CPU, RLIMIT_AS
   and RLIMIT_FSIZE 0 (no bytes written anywhere); the worker kills the group at the
   wall-clock deadline and removes the temp dir.
"""

from __future__ import annotations

import ast
import contextlib
import fractions
import importlib.util
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

ALLOWED_IMPORTS = {"math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools", "operator",
                   "collections", "sympy"}
# The light modules are imported once here, so a child's import is a dictionary lookup. sympy
# is not: it triples this process's memory and makes every fork 8x slower (4.3 ms vs 0.5 ms
# measured), so the few programs that use it import it in their child, reading only files
# under PACKAGE_DIRS, with no bytecode written.
sys.dont_write_bytecode = True
for _name in (ALLOWED_IMPORTS - {"sympy"}) | {"ctypes"}:  # sympy imports ctypes, whose import calls dlopen
    __import__(_name)


def _package_dirs() -> tuple[str, ...]:
    """Where a child may read and list files to import an allowed package: sympy and mpmath,
    and the standard library they draw on."""
    dirs = [os.path.dirname(os.__file__) + os.sep]
    for name in ("sympy", "mpmath"):
        spec = importlib.util.find_spec(name)
        if spec is not None:
            dirs += [d + os.sep for d in spec.submodule_search_locations or []]
    return tuple(dirs)


PACKAGE_DIRS = _package_dirs()
IMPORT_PATH = frozenset(sys.path)


DENIED_NAMES = {"open", "eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "globals",
                "locals", "vars", "breakpoint", "input", "help", "memoryview", "__builtins__", "__loader__",
                "__spec__"}
DENIED_ATTRIBUTES = {"sys", "os", "ctypes", "modules", "builtins", "f_globals", "f_locals", "f_back", "f_builtins",
                     "gi_frame", "gi_code", "cr_frame", "ag_frame", "tb_frame", "co_code", "func_globals"}
DENIED_EVENTS = ("open", "os.", "socket.", "subprocess.", "ctypes.", "shutil.", "pty.", "fcntl.", "mmap.",
                 "resource.", "signal.", "sys.settrace", "sys.setprofile", "sys.addaudithook",
                 "function.__new__",
                 "code.__new__", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.", "glob.", "tempfile.")
_BUILTIN_NAMES = (
    "abs all any ascii bin bool bytearray bytes callable chr complex dict divmod enumerate filter float format frozenset "
    "hash hex id int isinstance issubclass iter len list map max min next object oct ord pow print range repr "
    "reversed round set slice sorted str sum tuple type zip __build_class__ "
    "ArithmeticError AssertionError AttributeError Exception IndexError KeyError LookupError NameError "
    "OverflowError RecursionError StopIteration TypeError ValueError ZeroDivisionError"
).split()


class Forbidden(BaseException):
    """Raised by the checks; a BaseException so `except Exception` in a program cannot hide it."""


violations: list[str] = []


def _guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    if level or name.split(".")[0] not in ALLOWED_IMPORTS:
        violations.append(f"import {name}")
        raise Forbidden(f"import of {name!r} is not allowed")
    return __import__(name, globals, locals, fromlist, level)


def _builtins() -> dict[str, Any]:
    import builtins

    safe = {name: getattr(builtins, name) for name in _BUILTIN_NAMES}
    safe["__import__"] = _guarded_import
    return safe


def static_check(code: str) -> ast.Module:
    """Parse and refuse what the program may not name (raises Forbidden or SyntaxError)."""
    tree = ast.parse(code, "<program>")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in DENIED_NAMES:
            raise Forbidden(f"name {node.id!r} is not allowed")
        if isinstance(node, ast.Attribute) and (node.attr.startswith("_") or node.attr in DENIED_ATTRIBUTES):
            raise Forbidden(f"attribute {node.attr!r} is not allowed")
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if node.__dict__.get("level") or module.split(".")[0] not in ALLOWED_IMPORTS:
                    raise Forbidden(f"import of {module!r} is not allowed")
            if isinstance(node, ast.ImportFrom) and any(a.name.startswith("_") or a.name in DENIED_ATTRIBUTES
                                                        for a in node.names):
                raise Forbidden("importing private or internal names is not allowed")
    return tree


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not event.startswith(DENIED_EVENTS) or _importing_allowed(event, args):
        return
    what = f"{event} {args[0]!r}" if event in ("open", "os.listdir", "os.scandir") and args else event
    violations.append(what)
    raise Forbidden(f"{what} is not allowed")


def _importing_allowed(event: str, args: tuple[Any, ...]) -> bool:
    """A lazy import by an allowed package (sympy imports much of the standard library):
    listing the import path's directories and reading files under PACKAGE_DIRS. The import
    event itself is not refused: importing a module is harmless, and what could do harm
    (files, sockets, processes, ctypes) is an audited call, refused whoever imported the
    module. The program itself can import only ALLOWED_IMPORTS (static check, `__import__`)."""
    if not args or not isinstance(args[0], str):
        return False
    if event in ("os.listdir", "os.scandir"):
        return args[0] in IMPORT_PATH or (args[0].rstrip(os.sep) + os.sep).startswith(PACKAGE_DIRS)
    mode = str(args[1]) if len(args) > 1 and args[1] is not None else "r"
    return event == "open" and args[0].startswith(PACKAGE_DIRS) and not set(mode) & set("wax+")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{round(value, 6):.6f}".rstrip("0").rstrip(".")
    if isinstance(value, fractions.Fraction) and value.denominator == 1:
        return str(value.numerator)
    return str(value)


def execute(code: str, limits: dict[str, Any]) -> dict[str, Any]:
    """Run one program in this (child) process; the answer or a typed error."""
    printed = io.StringIO()
    try:
        program = compile(static_check(code), "<program>", "exec")
        namespace: dict[str, Any] = {"__builtins__": _builtins(), "__name__": "__sandbox__"}
        sys.addaudithook(_audit)
        with contextlib.redirect_stdout(printed):
            exec(program, namespace)
            answer = namespace.get("answer")
            if answer is None and callable(namespace.get("solution")):
                answer = namespace["solution"]()
            text = None if answer is None else fmt(answer)
        result = {"answer": text} if text is not None else {"error": "no answer",
                                                            "detail": "no `answer` variable or solution()"}
    except Forbidden as error:
        result = {"error": "forbidden", "detail": str(error)}
    except MemoryError:
        result = {"error": "memory", "detail": "MemoryError"}
    except RecursionError:
        result = {"error": "exception", "detail": "RecursionError"}
    except BaseException as error:  # the program's own failure, whatever it raised
        result = {"error": "exception", "detail": f"{type(error).__name__}: {error}"[:300]}
    if violations:  # refused even if the program caught the exception and carried on
        result = {"error": "forbidden", "detail": f"{violations[0]} is not allowed"}
    elif len(printed.getvalue()) > limits["output_bytes"]:
        result = {"error": "output", "detail": "printed more than the output limit"}
    return result


def child(code: str, limits: dict[str, Any], workdir: str, out: int) -> None:
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
    os.write(out, json.dumps(execute(code, limits)).encode()[: limits["output_bytes"] + 1000])


def supervise(code: str, limits: dict[str, Any], root: str) -> dict[str, Any]:
    """Fork a child for one program; kill its process group at the deadline; clean up."""
    workdir = tempfile.mkdtemp(dir=root)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            child(code, limits, workdir, write)
        finally:
            os._exit(0)
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
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(workdir, ignore_errors=True)
    if deadline_hit:
        return {"error": "timeout", "detail": f"over {limits['seconds']} s wall clock"}
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
        return {"error": "timeout", "detail": "over the CPU-time limit"}
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        signal_name = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else f"exit {status}"
        return {"error": "crash", "detail": f"the program's process died ({signal_name})"}


def main() -> None:
    root = tempfile.mkdtemp(prefix="cotdistill-sandbox-")
    try:
        for line in sys.stdin:
            job = json.loads(line)
            sys.stdout.write(json.dumps(supervise(job["code"], job["limits"], root)) + "\n")
            sys.stdout.flush()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
