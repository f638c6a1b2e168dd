"""The OpenAI-compatible teacher against a real HTTP server on loopback that injects faults:
every request ends stored exactly once, totals add up, budgets hold, kill -9 loses nothing."""

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from cotdistill.annotate import annotate
from cotdistill.errors import CotdistillError, EnvironmentProblem
from cotdistill.methods import get_method
from cotdistill.models.openai_api import RateLimiter
from cotdistill.store import Store
from cotdistill.testing import StubServer, fingerprint
from cotdistill.tasks import get_task

PROBLEMS = get_task("arith").load(split="train", limit=200)
ANSWERS = {p.question: p.answer for p in PROBLEMS}
COT = get_method("cot")
FAULTS = {"429": 0.06, "500": 0.06, "timeout": 0.02, "truncated": 0.06, "drop": 0.06}
FAST_RETRIES = {"timeout": 1.0, "backoff": 0.05, "max_retries": 30}


def arith_teacher(messages):
    """Right for every other problem, wrong for the rest: both paths get exercised."""
    question = messages[-1]["content"].split("\n")[0]
    answer = int(ANSWERS[question])
    return f"Let me think. The answer is {answer if answer % 2 == 0 else answer + 1}."


def expected_rows(problems, samples):
    return {fingerprint(COT.teacher_messages(p), s) for p in problems for s in range(samples)}


@pytest.fixture
def server():
    stub = StubServer(arith_teacher, latency=0.005, faults=FAULTS, hang=3.0)
    stub.start()
    yield stub
    stub.stop()


def stored(run_dir):
    db = sqlite3.connect(run_dir / "store.sqlite")
    rows = db.execute("SELECT problem_id, sample, kept, reason, prompt_tokens, completion_tokens, cost "
                      "FROM annotations").fetchall()
    db.close()
    return rows


def test_faults_every_request_done_exactly_once_with_correct_totals(tmp_path, server):
    api = {"base_url": server.base_url, "concurrency": 32, "price_input": 2.0, "price_output": 10.0, **FAST_RETRIES}
    summary = annotate(tmp_path, "arith", limit=200, teacher="openai:stub", samples=2, api=api)
    assert set(server.injected) == set(FAULTS)  # every fault kind really happened
    assert summary["retries"] >= sum(server.injected.values()) and summary["failed"] == 0
    rows = stored(tmp_path)
    assert len(rows) == 400 and len({(r[0], r[1]) for r in rows}) == 400  # one row per (problem, sample)
    assert set(server.served) == expected_rows(PROBLEMS, 2) and set(server.served.values()) == {1}
    kept = sum(int(p.answer) % 2 == 0 for p in PROBLEMS) * 2
    assert (summary["done"], summary["kept"], summary["pending"]) == (400, kept, 0)
    assert summary["rejected_by_reason"] == {"wrong answer": 400 - kept}
    prompt_tokens = sum(len(m["content"].split()) for p in PROBLEMS for m in COT.teacher_messages(p)) * 2
    assert summary["prompt_tokens"] == sum(r[4] for r in rows) == prompt_tokens
    completion_tokens = sum(len(arith_teacher(COT.teacher_messages(p)).split()) for p in PROBLEMS) * 2
    assert summary["completion_tokens"] == sum(r[5] for r in rows) == completion_tokens
    assert summary["cost"] == pytest.approx((prompt_tokens * 2.0 + completion_tokens * 10.0) / 1e6)
    again = annotate(tmp_path, "arith", limit=200, teacher="openai:stub", samples=2, api=api)
    assert again["new"] == 0 and set(server.served.values()) == {1}  # a rerun sends nothing


def test_sigkill_mid_run_then_resume_repeats_no_finished_request(tmp_path, server):
    args = [sys.executable, "-c", "from cotdistill.cli import main; main()", "annotate", "--run-dir", str(tmp_path),
            "--task", "arith", "--limit", "200", "--samples", "2", "--teacher", "openai:stub",
            "--base-url", server.base_url, "--concurrency", "4", "--timeout", "1", "--max-retries", "30"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        if (tmp_path / "store.sqlite").exists() and len(stored(tmp_path)) >= 100:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = stored(tmp_path)
    assert 100 <= len(before) < 400, "the kill should land mid-run"
    finished = {fingerprint(COT.teacher_messages(PROBLEMS[int(r[0].split("-")[-1])]), r[1]) for r in before}
    served_before = sum(server.served.values())
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = stored(tmp_path)
    assert len(rows) == 400 and len({(r[0], r[1]) for r in rows}) == 400
    assert all(server.served[f] == 1 for f in finished)  # nothing stored before the kill was asked again
    assert set(server.served) == expected_rows(PROBLEMS, 2)
    assert sum(server.served.values()) - served_before <= 400 - len(before) + 4  # at most the 4 in flight redone


def test_budget_cap_stops_before_overspending_and_resumes(tmp_path):
    server = StubServer(arith_teacher)
    server.start()
    try:
        api = {"base_url": server.base_url, "concurrency": 8, "price_input": 100.0, "price_output": 100.0,
               "max_cost": 0.5}
        first = annotate(tmp_path, "arith", limit=100, teacher="openai:stub", max_new_tokens=64, api=api)
        assert first["stopped_by_budget"] and first["not_sent"] > 0 and first["pending"] > 0
        assert 0 < first["cost"] <= 0.5 and first["done"] == sum(server.served.values())
        # It stops at the cap, not short of it: within one request's worst case (~$0.05 here), although
        # the first reservations, made before any reply told the client its prompts' sizes, were ~4x that.
        assert first["cost"] > 0.5 - 0.06
        status = annotate(tmp_path, "arith", limit=100, teacher="openai:stub", max_new_tokens=64, api=api, status=True)
        assert (status["done"], status["pending"], status["cost"]) == (first["done"], first["pending"], first["cost"])
        bigger = annotate(tmp_path, "arith", limit=100, teacher="openai:stub", max_new_tokens=64,
                          api={**api, "max_cost": 100.0})
        assert bigger["pending"] == 0 and set(server.served.values()) == {1}
        tokens = annotate(tmp_path / "t", "arith", limit=100, teacher="openai:stub", max_new_tokens=64,
                          api={"base_url": server.base_url, "max_tokens": 3000})
        assert tokens["stopped_by_budget"] and 0 < tokens["prompt_tokens"] + tokens["completion_tokens"] <= 3000
    finally:
        server.stop()


def test_two_annotate_runs_on_one_job_never_pay_twice(tmp_path):
    """The second run refuses at once while the first holds the job; together they never
    spend past the cap, and the store records every request the server was paid for."""
    server = StubServer(arith_teacher, latency=0.1)
    server.start()
    api = {"base_url": server.base_url, "concurrency": 2, "price_input": 100.0, "price_output": 100.0,
           "max_cost": 0.5}
    first = subprocess.Popen([sys.executable, "-c", f"from cotdistill.annotate import annotate; annotate("
                              f"{str(tmp_path)!r}, 'arith', limit=30, teacher='openai:stub', max_new_tokens=64, "
                              f"api={api!r})"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(EnvironmentProblem, match=r"pid \d+ \(since .*\) is already running annotate cot with "
                                                     r"openai:stub; a second run would pay"):
            annotate(tmp_path, "arith", limit=30, teacher="openai:stub", max_new_tokens=64, api=api)
        assert first.wait(timeout=120) == 0, first.stderr.read()
        after = annotate(tmp_path, "arith", limit=30, teacher="openai:stub", max_new_tokens=64, api=api)
    finally:
        first.kill()
        server.stop()
    with Store(tmp_path) as store:
        rows = store.annotations("cot", kept_only=False)
    assert len(rows) == sum(server.served.values()) and set(server.served.values()) == {1}
    assert after["cost"] == pytest.approx(sum(r.cost for r in rows)) and 0.5 - 0.06 < after["cost"] <= 0.5


def test_rate_limiter_holds_the_rate():
    async def take(n):
        limiter = RateLimiter(per_minute=600)  # 10 per second, bursts of at most 100
        started = time.perf_counter()
        for _ in range(n):
            await limiter.acquire()
        return time.perf_counter() - started

    assert asyncio.run(take(100)) < 0.5 and 1.9 < asyncio.run(take(120)) < 3.0


def test_finish_reasons_refusals_logprobs_and_unparseable_replies(tmp_path):
    replies = iter(["The answer is", ("I cannot help with that.", "content_filter"), ("Step one, step two", "length"), 400])

    def teacher(messages):
        return next(replies, "no final statement at all")

    server = StubServer(teacher)
    server.start()
    try:
        summary = annotate(tmp_path, "arith", limit=4, teacher="openai:stub", temperature=0.0,
                           api={"base_url": server.base_url, "concurrency": 1, "top_logprobs": 3})
    finally:
        server.stop()
    assert summary["rejected_by_reason"] == {"no final answer statement": 1, "blocked by the teacher's content filter": 1,
                                             "cut off at max_new_tokens": 1}
    assert (summary["refused"], summary["pending"]) == (1, 1)  # a 4xx is not stored: the next run asks again
    assert summary["first_refusal"] == "HTTP 400: scripted error 400"
    rows = Store(tmp_path).annotations("cot", kept_only=False)
    first = next(a for a in rows if a.text == "The answer is")
    assert [token for token, _, _ in first.logprobs] == ["The", "answer", "is"]
    assert len(first.logprobs[0][2]) == 3 and first.logprobs[0][2][0] == ["The", -0.25]


def test_unreachable_or_refusing_server_is_a_clear_error(tmp_path):
    with pytest.raises(CotdistillError, match="API options"):
        annotate(tmp_path, "arith", limit=1, teacher="gold", api={"concurrency": 2})
    with pytest.raises(CotdistillError, match="unknown openai backend option"):
        annotate(tmp_path, "arith", limit=1, teacher="openai:m", api={"concurency": 2})
    server = StubServer()
    server.start()
    try:  # a server without the chat route answers 404: fatal, not retried
        summary_error = None
        try:
            annotate(tmp_path, "arith", limit=2, teacher="openai:m",
                     api={"base_url": server.base_url.replace("/v1", "/nowhere")})
        except CotdistillError as error:
            summary_error = str(error)
        assert summary_error and "HTTP 404" in summary_error
    finally:
        server.stop()
    # a port nobody listens on: retries run out, the requests stay pending, nothing is stored as done,
    # and the command fails with the reason
    down = {"base_url": "http://127.0.0.1:9/v1", "max_retries": 1, "backoff": 0.01, "timeout": 1}
    with pytest.raises(EnvironmentProblem, match=r"2 of 2 requests failed \(http://127.0.0.1:9/v1: ClientConnectorError"):
        annotate(tmp_path / "down", "arith", limit=2, teacher="openai:m", api=down)
    summary = annotate(tmp_path / "down", "arith", limit=2, teacher="openai:m", api=down, status=True)
    assert (summary["done"], summary["pending"]) == (0, 2)


def test_decompositions_verified_by_a_solver_server(tmp_path):
    def solver(messages):  # right on problems with an even answer, wrong on the rest
        question = messages[-1]["content"].split("\n")[0]
        answer = int(ANSWERS[question])
        return f"Working through the sub-questions. The answer is {answer if answer % 2 == 0 else answer + 1}."

    server = StubServer(solver)
    server.start()
    try:
        summary = annotate(tmp_path, "arith", limit=10, method="decompose", teacher="gold",
                           verify_with="openai:solver", api={"base_url": server.base_url})
        again = annotate(tmp_path, "arith", limit=10, method="decompose", teacher="gold",
                         verify_with="openai:solver", api={"base_url": server.base_url})
    finally:
        server.stop()
    even = sum(int(p.answer) % 2 == 0 for p in PROBLEMS[:10])
    assert (summary["verified"], summary["kept"]) == (10, even) and again["verified"] == 0
    assert summary["completion_tokens"] > 0  # the gold teacher is free; the solver's tokens are the job's spend
    assert set(summary["rejected_by_reason"]) == {"solver openai:solver missed the gold answer with it (wrong answer)"}
    kept = Store(tmp_path).annotations("decompose")
    assert all(a.parsed["solution"].startswith("Working through") for a in kept)
    problem = next(p for p in PROBLEMS if p.id == kept[0].problem_id)
    solver_example = get_method("decompose").training_examples(problem, kept[0].parsed)[1]
    assert solver_example.role == "solver" and solver_example.completion.startswith("Working through")


def test_retry_after_in_seconds_or_as_an_http_date():
    from email.utils import formatdate

    from cotdistill.models.openai_api import _seconds

    assert _seconds("2") == 2.0 and _seconds("3600") == 60.0
    assert _seconds(None) is None and _seconds("soon") is None
    assert _seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date past: retry now
    assert 3.5 < _seconds(formatdate(time.time() + 5, usegmt=True)) <= 5.0


def test_a_server_that_wants_max_completion_tokens(tmp_path):
    """OpenAI's newer models refuse `max_tokens`: the client switches once and remembers."""
    server = StubServer(arith_teacher, reject_max_tokens=True)
    server.start()
    try:
        summary = annotate(tmp_path, "arith", limit=6, teacher="openai:m",
                           api={"base_url": server.base_url, "concurrency": 1})
    finally:
        server.stop()
    assert (summary["done"], summary["refused"]) == (6, 0)
    assert server.requests == 7  # one refusal, then every request with max_completion_tokens


def test_a_400_for_every_request_stops_after_the_first_few(tmp_path):
    server = StubServer(lambda messages: 400)
    server.start()
    try:
        with pytest.raises(CotdistillError, match=r"first 5 requests were all refused \(HTTP 400: scripted error 400\)"):
            annotate(tmp_path, "arith", limit=40, teacher="openai:m", api={"base_url": server.base_url, "concurrency": 1})
    finally:
        server.stop()
    assert server.requests == 5


def test_api_time_per_problem_is_wall_time_not_summed_latency(tmp_path):
    """Eight requests in flight at once take about one request's time: per problem, an
    eighth of it, not each request's latency (which would not change with concurrency)."""
    from cotdistill.evaluate import evaluate

    server = StubServer(lambda messages: "The answer is 5.", latency=0.3)
    server.start()
    try:
        per = {c: evaluate(tmp_path, model="openai:m", task="arith", limit=8, name=f"c{c}",
                           api={"base_url": server.base_url, "concurrency": c})["seconds_per_problem"]
               for c in (1, 8)}
    finally:
        server.stop()
    assert 0.25 < per[1] < 0.6 and per[8] < per[1] / 3, per
