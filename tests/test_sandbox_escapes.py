"""The sandbox against an attacker: every escape found in review, written as a program a
model could write, run with the Python-level filter on and off (the kernel layers alone),
through `Sandbox.run` and through `cotdistill annotate --method pot` with a teacher server
replying with it. Each must be contained (no secret read, no file touched, no process
started, the caller and its store alive) and classified, never a clean answer."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _process_tree

from cotdistill.sandbox.isolation import landlock_abi
from cotdistill.sandbox import Limits, Sandbox, SandboxUnavailable
from cotdistill.testing import StubServer

SECRET = "sk-cotdistill-test-SECRET-4711"
# Reaches the real `os` without naming it: what the static check could not see.
GET_OS = "import operator, collections\nsys = operator.attrgetter('_sys')(collections)\nos = sys.modules['os']\n"

# Another user's process: refused by Landlock, or (started as root) not even there.
HIDDEN = ("forbidden", "exception")
# name -> (program, outcome with the filter on, outcome(s) with the kernel layers alone)
ESCAPES: dict[str, tuple[str, str | None, str | tuple[str, ...]]] = {
    "attrgetter to sys, read a secret file": (
        GET_OS + "answer = open('SECRET_FILE').read()", "forbidden", "forbidden"),
    "attrgetter('__self__') to the real builtins": (
        "import operator\nb = operator.attrgetter('__self__')(print)\nanswer = b.open('SECRET_FILE').read()",
        "forbidden", "forbidden"),
    "sympify evaluates with the real builtins": (
        "import sympy\nanswer = sympy.sympify(\"__import__('builtins').open('SECRET_FILE').read()\")",
        "forbidden", "forbidden"),
    "sympy string route without naming sympify": (
        "import sympy\nanswer = sympy.simplify(\"__import__('builtins').open('SECRET_FILE').read()\")",
        "forbidden", "forbidden"),
    "path traversal out of the standard library": (
        GET_OS + "answer = open(os.path.dirname(os.__file__) + '/../../../../../../SECRET_FILE').read()",
        "forbidden", "forbidden"),
    "/etc/shadow": (GET_OS + "answer = open('/etc/shadow').read()", "forbidden", "forbidden"),
    "the caller's environment (API keys)": (
        GET_OS + "answer = open('/proc/CALLER/environ', 'rb').read().decode()", "forbidden", HIDDEN),
    "the worker's environment, then its parent's": (
        GET_OS + "ppid = open(f'/proc/{os.getppid()}/stat').read().split(')')[1].split()[1]\n"
                 "answer = open(f'/proc/{ppid}/environ', 'rb').read().decode()", "forbidden", HIDDEN),
    "os.open with O_TRUNC is a write": (
        GET_OS + "os.open('TARGET', os.O_WRONLY | os.O_TRUNC)\nanswer = 1", "forbidden", "forbidden"),
    "create a file outside the work dir": (
        GET_OS + "os.close(os.open('NEWFILE', os.O_WRONLY | os.O_CREAT))\nanswer = 1", "forbidden", "forbidden"),
    "open the run store with sqlite3": (
        GET_OS + "import sqlite3\nsqlite3.connect('STORE').execute('DELETE FROM t')\nanswer = 1",
        "forbidden", "exception"),  # kernel alone: sqlite reports 'unable to open database file'
    "write the run store's bytes": (
        GET_OS + "fd = os.open('STORE', os.O_RDWR)\nos.write(fd, b'garbage')\nanswer = 1", "forbidden", "forbidden"),
    "fork_exec a shell": (
        GET_OS + "import subprocess\nsubprocess.run(['/bin/sh', '-c', ': > TARGET'])\nanswer = 1",
        "forbidden", "forbidden"),
    "fork": (
        GET_OS + "os.fork()\nanswer = 1",
        "forbidden", "forbidden"),
    "kill -9 the caller": (GET_OS + "os.kill(CALLER, 9)\nanswer = 1", "forbidden", "forbidden"),
    "kill -9 the worker": (GET_OS + "os.kill(os.getppid(), 9)\nanswer = 1", "forbidden", "forbidden"),
    "a detached process outliving the deadline": (
        GET_OS + "import subprocess\nsubprocess.Popen(['/bin/sh', '-c', 'sleep 1; : > STORE'], "
                 "start_new_session=True)\nanswer = 1", "forbidden", "forbidden"),
    "connect to a local port": (
        GET_OS + "import socket\nsocket.create_connection(('127.0.0.1', PORT))\nanswer = 1", "forbidden", "forbidden"),
    "forged reply: null": (
        GET_OS + "for fd in range(3, 64):\n    try:\n        os.write(fd, b'null\\n')\n    except OSError:\n"
                 "        pass\nos._exit(0)", "forbidden", "malformed reply"),
    "forged reply: a list": (
        GET_OS + "for fd in range(3, 64):\n    try:\n        os.write(fd, b'[1, 2]\\n')\n    except OSError:\n"
                 "        pass\nos._exit(0)", "forbidden", "malformed reply"),
    "forged reply: a dict answer": (
        GET_OS + "for fd in range(3, 64):\n    try:\n        os.write(fd, b'{\"answer\": {\"x\": 1}}\\n')\n"
                 "    except OSError:\n        pass\nos._exit(0)", "forbidden", "malformed reply"),
    "forged reply: not UTF-8": (
        GET_OS + "for fd in range(3, 64):\n    try:\n        os.write(fd, b'{\"answer\": \"\\xff\\xfe\"}\\n')\n"
                 "    except OSError:\n        pass\nos._exit(0)", "forbidden", "malformed reply"),
    "forged reply: 2 GB": (
        GET_OS + "chunk = b'x' * 2**20\nfor f in range(3, 64):\n    try:\n        os.fstat(f)\n        fd = f\n    except OSError:\n"
                 "        pass\nfor _ in range(2048):\n    os.write(fd, chunk)\nanswer = 1",
        "forbidden", "malformed reply"),
    "refusal swallowed, then a clean answer": (
        "try:\n    import socket\nexcept BaseException:\n    pass\nanswer = 1", "forbidden", None),
    "refusal swallowed, the record attacked": (
        "import operator\ntry:\n    open('SECRET_FILE')\nexcept BaseException:\n    pass\n"
        "try:\n    operator.attrgetter('_sys')(operator).modules['cotdistill.sandbox.filter'].__dict__.clear()\n"
        "except BaseException:\n    pass\nanswer = 1", "forbidden", None),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Things a program must not reach: a secret file, a file to truncate, a path to
    create, a run store, a listening port; and the caller's own pid and environment."""
    root = tmp_path_factory.mktemp("world")
    secret = root / "secret.txt"
    secret.write_text(SECRET)
    target = root / "target.txt"
    target.write_text("keep me")
    store = root / "store.sqlite"
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
    db.close()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    os.environ["COTDISTILL_TEST_SECRET"] = SECRET  # in the caller's /proc/PID/environ
    yield {"SECRET_FILE": str(secret), "TARGET": str(target), "NEWFILE": str(root / "new.txt"),
           "STORE": str(store), "PORT": str(server.getsockname()[1]), "server": server, "root": root}
    server.close()
    os.environ.pop("COTDISTILL_TEST_SECRET", None)


def _fill(program: str, world: dict, caller: int) -> str:
    for key in ("SECRET_FILE", "TARGET", "NEWFILE", "STORE", "PORT"):
        program = program.replace(key, world[key])
    return program.replace("CALLER", str(caller))


def _intact(world: dict) -> None:
    """Nothing a program aimed at changed, leaked or connected."""
    assert Path(world["TARGET"]).read_text() == "keep me"
    assert not Path(world["NEWFILE"]).exists()
    with sqlite3.connect(world["STORE"]) as db:
        assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    db.close()
    with pytest.raises(BlockingIOError):
        world["server"].accept()


def _descendants(pid: int) -> list[int]:
    children = _process_tree()
    found, todo = [], list(children.get(pid, []))
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


@pytest.mark.parametrize("python_filter", [True, False], ids=["python-filter", "kernel-alone"])
def test_every_escape_is_contained_and_classified(world, python_filter, sandbox_leftovers):
    if landlock_abi() == 0:  # a capable kernel that fails to build a layer still fails below
        pytest.skip("this kernel has no Landlock: the kernel layers cannot be tested here")
    with Sandbox(2, Limits(seconds=3, memory_mb=256, output_bytes=10_000), python_filter=python_filter) as box:
        assert box.isolation.missing == (), box.isolation.describe()
        workers = {w.process.pid for w in box.workers}
        for name, (program, filtered, kernel_only) in ESCAPES.items():
            expected = filtered if python_filter else kernel_only
            if expected is None:  # a Python-filter-only scenario
                continue
            started = time.monotonic()
            outcome = box.run(_fill(program, world, os.getpid()))
            assert outcome.error in (expected if isinstance(expected, tuple) else (expected,)), (name, outcome)
            assert SECRET not in (outcome.answer or "") + outcome.detail, name
            assert time.monotonic() - started < 3 + 2, name  # the deadline holds, whatever was written
        assert {w.process.pid for w in box.workers} == workers  # no worker was killed or had to be replaced
        assert box.run("answer = 6 * 7").answer == "42"
        time.sleep(1.5)  # what a detached process would have done by now
        _intact(world)
        assert sandbox_leftovers(workers) == []  # nothing left running under the workers


def test_answers_are_clean_text(world):
    with Sandbox(1) as box:
        outcome = box.run("answer = '7' + chr(0xdcff) + chr(0)")
    assert outcome.answer == "7?"
    outcome.answer.encode("utf-8")  # storable


def test_a_sandbox_that_cannot_start_says_why(monkeypatch):
    monkeypatch.setattr("cotdistill.sandbox.pool._BOOT", "import cotdistill_no_such_module")
    with pytest.raises(SandboxUnavailable, match="did not start.*No module named 'cotdistill_no_such_module'"):
        Sandbox(1)


def test_annotate_with_a_hostile_teacher(world, tmp_path):
    """Every escape as a teacher's PoT reply through the real CLI: exit 0, each reply
    rejected with its program error, the run store sound, no secret stored, nothing left."""
    escapes = {name: program for name, (program, filtered, _) in ESCAPES.items() if filtered}
    names = sorted(escapes)
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "question": f"Escape number {i}?", "answer": "1"}) + "\n"
                            for i in range(len(names))))
    caller: list[int] = []
    run_dir = tmp_path / "run"
    targets = {**world, "STORE": str(run_dir / "store.sqlite")}  # the attacks aim at annotate's own store

    def reply(messages: list[dict[str, str]]) -> str:
        text = messages[-1]["content"]
        index = int(text.split("Escape number ", 1)[1].split("?", 1)[0])
        return "```python\n" + _fill(escapes[names[index]], targets, caller[0]) + "\n```"

    server = StubServer(reply)
    server.start()
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "cotdistill", "annotate", "-r", str(run_dir), "--task", "jsonl", "--data", str(data),
             "--method", "pot", "--teacher", "openai:stub", "--base-url", server.base_url, "--concurrency", "4"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        caller.append(process.pid)
        out, err = process.communicate(timeout=300)
    finally:
        server.stop()
    assert process.returncode == 0, err
    time.sleep(1.5)
    _intact(world)
    store = run_dir / "store.sqlite"
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT problem_id, kept, reason FROM annotations").fetchall()
    db.close()
    assert len(rows) == len(names)
    assert all(not kept and reason == "program forbidden" for _, kept, reason in rows), rows
    assert SECRET.encode() not in store.read_bytes()
    assert _descendants(process.pid) == []


def test_uninstalled_checkout_runs_programs(tmp_path):
    """`PYTHONPATH=src python -m cotdistill annotate --method pot` from a checkout that is
    not installed: the worker is told where the package is, so programs run as installed."""
    site = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bare_site = next((venv / "lib").glob("python*/site-packages"))
    (bare_site / "deps.pth").write_text(site + "\n")  # the dependencies, without the editable cotdistill
    python = venv / "bin" / "python"
    src = Path(__file__).resolve().parents[1] / "src"
    bare_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a fresh shell has it
    check = subprocess.run([str(python), "-c", "import cotdistill"], capture_output=True, text=True, env=bare_env)
    assert check.returncode != 0, "cotdistill must not be importable without PYTHONPATH here"
    counts = {}
    for label, cmd, env in [
        ("installed", [sys.executable, "-m", "cotdistill"], dict(os.environ)),
        ("checkout", [str(python), "-m", "cotdistill"], {**os.environ, "PYTHONPATH": str(src)}),
    ]:
        run_dir = tmp_path / label
        result = subprocess.run(cmd + ["annotate", "-r", str(run_dir), "--task", "arith", "--limit", "30",
                                       "--method", "pot"], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        counts[label] = json.loads(result.stdout)["kept"]
    assert counts["checkout"] == counts["installed"] > 0


def test_weak_kernel_refuses_model_programs_unless_accepted(monkeypatch, tmp_path):
    """A kernel without Landlock or seccomp (simulated on the shared pool's report): model
    teachers' programs are refused before anything is stored, unless the user accepts the
    weaker isolation; the gold teacher's programs run either way."""
    from cotdistill import sandbox
    from cotdistill.annotate import annotate

    weak = sandbox.Isolation(0, False, ("Landlock (simulated)", "seccomp (simulated)"))
    monkeypatch.setattr(sandbox.shared_sandbox(), "isolation", weak)
    with pytest.raises(SandboxUnavailable, match="--weak-sandbox") as refused:
        annotate(tmp_path / "run", "arith", limit=2, method="pot", teacher="openai:m", api={"base_url": "http://127.0.0.1:9/v1"})
    assert refused.value.exit_code == 1
    assert not (tmp_path / "run").exists()
    assert sandbox.require_sandbox(model_written=True, accept_weak=True) is weak
    assert annotate(tmp_path / "gold", "arith", limit=3, method="pot")["kept"] == 3


def test_a_system_without_the_linux_calls_reports_them_missing_and_still_runs(monkeypatch):
    """Off Linux no Linux syscall number is ever sent (it would name another call there):
    Landlock shows as missing, and a child applies what is left without failing."""
    from cotdistill.sandbox import isolation

    monkeypatch.setattr(isolation, "_LINUX", False)
    assert isolation.landlock_abi() == 0
    made = isolation.Confinement.build([], "/tmp")
    assert (made.landlock, made.seccomp) == (0, False)
    assert [m.split(" ")[0] for m in made.missing] == ["Landlock", "seccomp"], made.missing
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            made.apply(keep=write)
            os.write(write, b"applied")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 100) == b"applied"
    os.close(read)
    os.waitpid(pid, 0)
