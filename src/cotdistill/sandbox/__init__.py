"""Run model-written programs (PoT, KPDD-PoT) away from the caller's process.

    from cotdistill.sandbox import Sandbox, Limits
    with Sandbox() as box:
        box.run("answer = 6 * 7")  # Outcome(answer="42", error=None)

A program answers by assigning `answer` (or defining `solution()`); the sandbox returns
that value as text, or a typed error (ERRORS). The parts:

- `pool`: the caller's side. A few long-lived workers; every reply judged here, where no
  reply can raise; a worker that breaks is infrastructure (restarted, its isolation checked
  again, the program retried; twice and SandboxUnavailable), never a program's verdict.
- `worker`: a zygote that forks each child before its program exists; the child reads its
  own program, so no program runs in a process that held another's text; a fresh work dir
  per program, removed however deep it grew.
- `isolation`: the kernel boundary: no privileges (nobody, no capabilities, no_new_privs),
  Landlock (files, TCP, signals, abstract sockets) and a seccomp allow-list.
- `filter`: the Python-level filter inside that boundary (static check, reduced builtins,
  an audit hook with its own sealed state), which names what a program tried.

Covered, with the Python filter on and off (tests/test_sandbox_world.py snapshots a world
of files, IPC objects, listeners and a second worker around each hostile program;
tests/test_sandbox_escapes.py, tests/test_sandbox.py): reading any file but the standard
library's and the allowed packages'; writing, truncating, creating, or changing the
metadata (mode, owner, times, xattrs, immutable flags) of anything outside the program's
own fresh work dir; new processes or threads, exec, signals, ptrace; sockets of any kind;
SysV and POSIX IPC; inotify/fanotify; host-wide calls (kernel log, clocks, host name,
mounts, scheduling and priority); seeing the host's processes (as root: a private /proc);
reading an earlier program's text; poisoning the next program or another worker's;
forged, huge, deeply nested, non-UTF-8 or escape-laden replies; hiding a refusal.
Not covered: timing and cache side channels; reading the code the sandbox allows;
`stat` of paths the kernel lets any process resolve (the path walk is not a Landlock
right) beyond what nobody's permissions and the private /proc hide; using up the
program's own CPU, memory and time limits, or inodes in its work dir within them (removed
after its verdict). On a kernel without Landlock or seccomp only the Python filter and the
limits remain, and the pool refuses to start unless its caller accepts that
(`weak_sandbox=True`, the CLI's `--weak-sandbox`).
"""

from cotdistill.sandbox.pool import (
    ERRORS,
    Isolation,
    Limits,
    Outcome,
    Sandbox,
    SandboxUnavailable,
    require_sandbox,
    shared_sandbox,
)

__all__ = ["ERRORS", "Isolation", "Limits", "Outcome", "Sandbox", "SandboxUnavailable", "require_sandbox",
           "shared_sandbox"]
