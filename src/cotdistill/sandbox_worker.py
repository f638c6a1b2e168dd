"""The sandbox's worker process: reads one JSON job per line on stdin, runs its program in a
forked child, writes one validated JSON result per line.

Started by `sandbox.py` as `python -I -c BOOT PACKAGE_ROOT CONFIG`: isolated from the
caller's environment (no API keys, no PYTHONPATH), told explicitly where this package and
the allowed third-party packages live.

The boundary is the kernel (`isolation.py`): each child is put under Landlock and seccomp
before the program's first instruction. The Python layers below run inside that boundary
as a first filter that names what a program tried (and they are all a machine without
Landlock or seccomp has):
1. A static check refuses imports outside ALLOWED_IMPORTS, star imports, names such as
   `open`, `eval`, `getattr`, `attrgetter`, and every private or interpreter-internal
   attribute (`().__class__.__subclasses__()`, `statistics.random._os`).
2. Reduced builtins and an `__import__` admitting only ALLOWED_IMPORTS.
3. An audit hook (PEP 578) refusing files (paths normalised; `os.open` flags read),
   sockets, processes, signals and ctypes, and holding code compiled at run time (sympy's
   string parsing, `sympify("__import__('os')...")`) to the static check's name rules.
   Each refusal is written to the result pipe the moment it happens, so a program that
   swallows the exception has already been reported: nothing it can reach can unsay it.
4. Process limits: its own session and process group, stdio on /dev/null, no inherited
   descriptors but the result pipe, RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE 0; killed at the
   wall-clock deadline.

The worker trusts nothing the child writes: it reads at most a fixed number of bytes
before the deadline and accepts only a dict holding a string answer or a known error. Its
own memory is capped (RLIMIT_AS); its CPU time per program is the fork and that bounded read.
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

from cotdistill.isolation import Confinement

ALLOWED_IMPORTS = {"math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools", "operator",
                   "collections", "sympy"}
# The light modules are imported once here, so a child's import is a dictionary lookup. sympy
# is not: it triples this process's memory and makes every fork 8x slower (4.3 ms vs 0.5 ms
# measured), so the few programs that use it import it in their child, reading only files
# under PACKAGE_DIRS, with no bytecode written.
sys.dont_write_bytecode = True
for _name in ALLOWED_IMPORTS - {"sympy"}:
    __import__(_name)

PROGRAM_ERRORS = ("memory", "forbidden", "exception", "no answer", "output")
MARK = b'{"isolated": true}\n'  # the child's first line: its isolation is in place
ANSWER_CHARS = 1000


def _package_dirs() -> tuple[str, ...]:
    """Where a child may read files to import: the standard library (without the
    site-packages inside it) and the allowed third-party packages."""
    stdlib = os.path.dirname(os.__file__)
    dirs = [os.path.join(stdlib, entry) for entry in os.listdir(stdlib)
            if entry not in ("site-packages", "dist-packages")]
    for name in ("sympy", "mpmath"):
        spec = importlib.util.find_spec(name)
        if spec is not None:
            dirs += list(spec.submodule_search_locations or [])
    return tuple(os.path.normpath(d) for d in dirs)


PACKAGE_DIRS = _package_dirs()
_PACKAGE_PREFIXES = tuple(d + os.sep for d in PACKAGE_DIRS) + PACKAGE_DIRS


DENIED_NAMES = {"open", "eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "globals",
                "locals", "vars", "breakpoint", "input", "help", "memoryview", "__builtins__", "__loader__",
                "__spec__", "attrgetter", "methodcaller"}
DENIED_ATTRIBUTES = {"sys", "os", "ctypes", "modules", "builtins", "f_globals", "f_locals", "f_back", "f_builtins",
                     "gi_frame", "gi_code", "cr_frame", "ag_frame", "tb_frame", "co_code", "func_globals",
                     "attrgetter", "methodcaller", "sympify", "parse_expr", "lambdify"}
DENIED_EVENTS = ("open", "os.", "socket.", "subprocess.", "ctypes.", "shutil.", "pty.", "fcntl.", "mmap.",
                 "resource.", "signal.", "sys.settrace", "sys.setprofile", "sys.addaudithook",
                 "function.__new__", "code.__new__", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.", "glob.",
                 "tempfile.", "sqlite3.")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_BUILTIN_NAMES = (
    "abs all any ascii bin bool bytearray bytes callable chr complex dict divmod enumerate filter float format frozenset "
    "hash hex id int isinstance issubclass iter len list map max min next object oct ord pow print range repr "
    "reversed round set slice sorted str sum tuple type zip __build_class__ "
    "ArithmeticError AssertionError AttributeError Exception IndexError KeyError LookupError NameError "
    "OverflowError RecursionError StopIteration TypeError ValueError ZeroDivisionError"
).split()


class Forbidden(BaseException):
    """Raised by the checks; a BaseException so `except Exception` in a program cannot hide it."""


def _guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    if level or name.split(".")[0] not in ALLOWED_IMPORTS:
        raise Forbidden(f"import of {name!r} is not allowed")
    return __import__(name, globals, locals, fromlist, level)


def _builtins() -> dict[str, Any]:
    import builtins

    safe = {name: getattr(builtins, name) for name in _BUILTIN_NAMES}
    safe["__import__"] = _guarded_import
    return safe


# Attributes that lead from any object to the interpreter's internals: run-time code (which
# sympy and mpmath generate, using single-underscore internals and `__class__`) may not name them.
ESCAPE_ATTRIBUTES = {"__subclasses__", "__bases__", "__base__", "__mro__", "__globals__", "__builtins__", "__self__",
                     "__code__", "__closure__", "__dict__", "__getattribute__", "__reduce__", "__reduce_ex__",
                     "__import__", "__loader__", "__spec__", "__func__", "__traceback__", "__getattr__"}


def denied_name(tree: ast.AST, private: bool) -> str | None:
    """The first denied name or attribute in `tree`; `private`: every `_x` attribute (the
    program's own code), else the escape attributes only (code compiled at run time)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in DENIED_NAMES:
            return f"name {node.id!r}"
        if isinstance(node, ast.Attribute) and (
                node.attr in DENIED_ATTRIBUTES or node.attr.startswith("_") if private
                else node.attr in DENIED_ATTRIBUTES | ESCAPE_ATTRIBUTES):
            return f"attribute {node.attr!r}"
    return None


def static_check(code: str) -> ast.Module:
    """Parse and refuse what the program may not name (raises Forbidden or SyntaxError)."""
    tree = ast.parse(code, "<program>")
    what = denied_name(tree, private=True)
    if what:
        raise Forbidden(f"{what} is not allowed")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if node.__dict__.get("level") or module.split(".")[0] not in ALLOWED_IMPORTS:
                    raise Forbidden(f"import of {module!r} is not allowed")
            if isinstance(node, ast.ImportFrom) and any(
                    a.name == "*" or a.name.startswith("_") or a.name in DENIED_ATTRIBUTES | DENIED_NAMES
                    for a in node.names):
                raise Forbidden("importing private, internal or all (*) names is not allowed")
    return tree


def refusal(event: str, args: tuple[Any, ...]) -> str | None:
    """What the audit event attempts, if the program may not do it."""
    if event == "compile":
        return _dynamic_code(args)
    if not event.startswith(DENIED_EVENTS) or _importing(event, args):
        return None
    return f"{event} {args[0]!r}" if event in ("open", "os.listdir", "os.scandir") and args else event


def _importing(event: str, args: tuple[Any, ...]) -> bool:
    """A lazy import by an allowed package (sympy imports much of the standard library):
    listing or reading, never writing, under PACKAGE_DIRS, the path normalised first."""
    if event not in ("open", "os.listdir", "os.scandir") or not args or not isinstance(args[0], str):
        return False
    path = os.path.normpath(args[0])
    if not os.path.isabs(path) or not (path + os.sep).startswith(_PACKAGE_PREFIXES):
        return False
    if event != "open":
        return True
    mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
    flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
    return not set(mode) & set("wax+") and not flags & _WRITE_FLAGS


def _dynamic_code(args: tuple[Any, ...]) -> str | None:
    """Source compiled at run time (not an allowed package's file) is held to the name rules."""
    source, filename = (args + (None, None))[:2]
    if isinstance(filename, str) and os.path.normpath(filename).startswith(_PACKAGE_PREFIXES):
        return None
    try:
        tree = source if isinstance(source, ast.AST) else ast.parse(source or "")
    except (SyntaxError, ValueError, TypeError):
        return None  # compile itself rejects it
    what = denied_name(tree, private=False)
    return f"code compiled at run time naming {what}" if what else None


def _audit_hook(out: int) -> Any:
    """The hook reports each refusal on the result pipe before raising, so it is on record
    whatever the program does next; if it cannot report, the process ends with no reply."""
    busy = [False]  # the hook's own ast.parse raises a nested compile event

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if busy[0]:
            return
        busy[0] = True
        try:
            what = refusal(event, args)
        finally:
            busy[0] = False
        if what is None:
            return
        try:
            os.write(out, json.dumps({"refused": what[:200]}).encode() + b"\n")
        except OSError:
            os._exit(70)
        raise Forbidden(f"{what} is not allowed")

    return hook


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
            namespace: dict[str, Any] = {"__builtins__": _builtins(), "__name__": "__sandbox__"}
            sys.addaudithook(_audit_hook(out))
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
        isolation.apply()
    except Exception as error:
        os.write(out, json.dumps({"unavailable": f"the kernel refused the isolation: {error}"}).encode() + b"\n")
        return
    os.closerange(3, out)  # nothing of the worker's but the result pipe stays open
    os.closerange(out + 1, 1 << 16)
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
