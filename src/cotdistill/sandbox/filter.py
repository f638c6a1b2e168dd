"""The sandbox's Python-level filter: what a program may name, import and do, checked
inside the kernel boundary (`isolation.py`) as a first filter that names what a program
tried. On a machine without Landlock or seccomp it is all there is.

1. A static check refuses imports outside ALLOWED_IMPORTS, star imports, names such as
   `open`, `eval`, `getattr`, `attrgetter`, and every private or interpreter-internal
   attribute (`().__class__.__subclasses__()`, `statistics.random._os`).
2. Reduced builtins and an `__import__` admitting only ALLOWED_IMPORTS.
3. An audit hook (PEP 578) refusing files (paths normalised; `os.open` flags read),
   sockets, processes, signals and ctypes, and holding code compiled at run time (sympy's
   string parsing, `sympify("__import__('os')...")`) to the static check's name rules.
   Each refusal is written to the result pipe the moment it happens, so a program that
   swallows the exception has already been reported: nothing it can reach can unsay it.
   The hook and everything it calls run on a private copy of this module's globals and of
   the builtins (`audit_hook`), so rebinding a name here or in `builtins` changes nothing
   it does; code objects cannot be reached (`marshal` is neither importable nor a permitted
   attribute, `__code__` and `co_*` are denied), made (`code.__new__`, `code.replace`,
   `function.__new__`) or swapped into a function (`__code__`, `__defaults__`, ...).
4. `match` class patterns are attribute reads the AST does not show as attributes:
   keyword patterns (`case object(_sys=s)`) are held to the attribute rules, and
   positional ones, which read whatever names a class's `__match_args__` lists, are refused.

Imported by the worker only: it pre-imports the allowed modules, so a child's import is a
dictionary lookup.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import types
from typing import Any

ALLOWED_IMPORTS = frozenset({"math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools",
                             "operator", "collections", "sympy"})
# The light modules are imported once here, so a child's import is a dictionary lookup. sympy
# is not: it triples this process's memory and makes every fork 8x slower (4.3 ms vs 0.5 ms
# measured), so the few programs that use it import it in their child, reading only files
# under PACKAGE_DIRS, with no bytecode written.
sys.dont_write_bytecode = True
for _name in ALLOWED_IMPORTS - {"sympy"}:
    __import__(_name)

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


DENIED_NAMES = frozenset({"open", "eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr",
                          "globals", "locals", "vars", "breakpoint", "input", "help", "memoryview", "__builtins__",
                          "__loader__", "__spec__", "attrgetter", "methodcaller"})
DENIED_ATTRIBUTES = frozenset({"sys", "os", "ctypes", "modules", "builtins", "f_globals", "f_locals", "f_back",
                               "f_builtins", "gi_frame", "gi_code", "cr_frame", "ag_frame", "tb_frame", "co_code",
                               "func_globals", "attrgetter", "methodcaller", "sympify", "parse_expr", "lambdify",
                               "marshal", "inspect", "gc", "importlib", "types", "pickle", "io", "pathlib", "code",
                               "codeop", "runpy", "threading", "getmembers", "currentframe"})
# (module names above: an allowed package's attribute can be a stdlib module, e.g. sympy's
# `lambdify.inspect`, whose getmembers hands out full builtins)
DENIED_EVENTS = ("open", "os.", "socket.", "subprocess.", "ctypes.", "shutil.", "pty.", "fcntl.", "mmap.",
                 "resource.", "signal.", "sys.settrace", "sys.setprofile", "sys.addaudithook",
                 "function.__new__", "code.__new__", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.", "glob.",
                 "tempfile.", "sqlite3.", "gc.")  # gc walks every object: the hook's own state among them
# Attributes of functions and classes whose change would swap in other code or globals.
SWAPPED_ATTRIBUTES = frozenset({"__code__", "__globals__", "__closure__", "__defaults__", "__kwdefaults__",
                                "__class__", "__bases__", "__dict__", "__builtins__", "__getattr__",
                                "__getattribute__"})
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
    module = __import__(name, globals, locals, fromlist, level)
    for item in fromlist or ():  # `from sympy.x import inspect`: an allowed package re-exporting another module
        value = getattr(module, item, None) if isinstance(item, str) else None
        if isinstance(value, types.ModuleType) and value.__name__.split(".")[0] not in ALLOWED_IMPORTS:
            raise Forbidden(f"import of {value.__name__!r} (as {name}.{item}) is not allowed")
    return module


def safe_builtins() -> dict[str, Any]:
    import builtins

    safe = {name: getattr(builtins, name) for name in _BUILTIN_NAMES}
    safe["__import__"] = _guarded_import
    return safe


# Attributes that lead from any object to the interpreter's internals: run-time code (which
# sympy and mpmath generate, using single-underscore internals and `__class__`) may not name them.
ESCAPE_ATTRIBUTES = frozenset({"__subclasses__", "__bases__", "__base__", "__mro__", "__globals__",
                               "__builtins__", "__self__", "__code__", "__closure__", "__dict__", "__getattribute__",
                               "__reduce__", "__reduce_ex__", "__import__", "__loader__", "__spec__", "__func__",
                               "__traceback__", "__getattr__"})


def denied_name(tree: ast.AST, private: bool) -> str | None:
    """The first denied name or attribute in `tree`; `private`: every `_x` attribute (the
    program's own code), else the escape attributes only (code compiled at run time)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in DENIED_NAMES:
            return f"name {node.id!r}"
        if isinstance(node, ast.MatchClass):
            if node.patterns:
                return "a positional class pattern in `match`"
            names = node.kwd_attrs
        else:
            names = [node.attr] if isinstance(node, ast.Attribute) else []
        for name in names:
            if (name in DENIED_ATTRIBUTES or name.startswith("_") if private
                    else name in DENIED_ATTRIBUTES | ESCAPE_ATTRIBUTES):
                return f"attribute {name!r}"
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
    if event in ("object.__setattr__", "object.__delattr__"):
        return f"{event} {args[1]!r}" if len(args) > 1 and args[1] in SWAPPED_ATTRIBUTES else None
    if not event.startswith(DENIED_EVENTS) or _importing(event, args):
        return None
    return f"{event} {args[0]!r}" if event in ("open", "os.listdir", "os.scandir") and args else event


def _importing(event: str, args: tuple[Any, ...]) -> bool:
    """A lazy import by an allowed package (sympy imports much of the standard library):
    listing or reading, never writing, under PACKAGE_DIRS, the path normalised first."""
    if event not in ("open", "os.listdir", "os.scandir") or not args or not isinstance(args[0], str):
        return False
    path = _normpath(args[0])
    if not path.startswith("/") or not (path + "/").startswith(_PACKAGE_PREFIXES):
        return False
    if event != "open":
        return True
    mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
    flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
    return not set(mode) & set("wax+") and not flags & _WRITE_FLAGS


def _dynamic_code(args: tuple[Any, ...]) -> str | None:
    """Source compiled at run time (not an allowed package's file) is held to the name rules."""
    source, filename = (args + (None, None))[:2]
    if isinstance(filename, str) and _normpath(filename).startswith(_PACKAGE_PREFIXES):
        return None
    try:
        tree = source if isinstance(source, ast.AST) else ast.parse(source or "")
    except (SyntaxError, ValueError, TypeError):
        return None  # compile itself rejects it
    what = denied_name(tree, private=False)
    return f"code compiled at run time naming {what}" if what else None


def _normpath(path: str) -> str:
    """os.path.normpath for the hook, on strings alone: posixpath's module globals are
    reachable by a program that has escaped the static check."""
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part and part != ".":
            parts.append(part)
    return ("/" if path.startswith("/") else "") + "/".join(parts)


_OUT, _BUSY, _write, _exit = -1, [False], os.write, os._exit  # each hook's own, in its namespace


def _hook(event: str, args: tuple[Any, ...]) -> None:
    """The audit hook, run on `audit_hook`'s private namespace (_OUT, _BUSY, _write, _exit)."""
    if _BUSY[0]:
        return
    _BUSY[0] = True
    try:
        what = refusal(event, args)
    finally:
        _BUSY[0] = False
    if what is None:
        return
    try:
        _write(_OUT, b"refused " + what[:200].encode("utf-8", "replace").replace(b"\n", b" ") + b"\n")
    except OSError:
        _exit(70)
    raise Forbidden(f"{what} is not allowed")


def audit_hook(out: int) -> Any:
    """The hook, sealed: it and the functions it calls get a private copy of this module's
    globals and of the builtins, and hold os.write and os._exit themselves, so nothing a
    program rebinds afterwards reaches them. It reports each refusal on the result pipe
    before raising, so it is on record whatever the program does next; if it cannot
    report, the process ends with no reply."""
    import builtins

    namespace = dict(globals())
    namespace.update(__builtins__=dict(builtins.__dict__), _OUT=out, _BUSY=[False], _write=os.write, _exit=os._exit)
    for name in ("_hook", "refusal", "_importing", "_dynamic_code", "denied_name", "_normpath"):
        function = namespace[name]
        namespace[name] = types.FunctionType(function.__code__, namespace, function.__name__, function.__defaults__)
    return namespace["_hook"]
