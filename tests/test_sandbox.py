"""The program sandbox: answers come back; runaway programs end as typed errors."""

import pytest

from cotdistill.sandbox import Limits, Sandbox


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(2, Limits(seconds=1, memory_mb=256)) as box:
        yield box


@pytest.mark.parametrize("program, answer, error", [
    ("a = 3\nanswer = a * 4 / 2", "6", None),
    ("def solution():\n    return 7", "7", None),
    ("from fractions import Fraction\nanswer = Fraction(6, 3)", "2", None),
    ("answer = 1 / 3", "0.333333", None),
    ("y = 2", None, "no answer"),
    ("raise ValueError('bad')", None, "exception"),
    ("while True:\n    pass", None, "timeout"),
    ("import time\ntime.sleep(10)", None, "timeout"),
    ("x = bytearray(2 * 1024**3)", None, "memory"),
    ("print('x' * 10**6)\nanswer = 1", None, "output"),
    ("def f(n):\n    return f(n + 1)\nf(0)", None, "exception"),
    ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", None, "crash"),
])
def test_outcomes(sandbox, program, answer, error):
    outcome = sandbox.run(program)
    assert (outcome.answer, outcome.error) == (answer, error)


def test_run_many_keeps_order_and_survives_bad_programs(sandbox):
    programs = [f"answer = {i} * 2" if i % 3 else "while True: pass" for i in range(12)]
    outcomes = sandbox.run_many(programs)
    assert [o.answer for o in outcomes] == [None if i % 3 == 0 else str(i * 2) for i in range(12)]
    assert sandbox.run("answer = 5").answer == "5"  # the workers are still alive
