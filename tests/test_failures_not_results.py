"""A failed request is never an answer: eval against a server that is down stores no
prediction and no accuracy, says why, exits 1, and the same command scores the problems
once the server is back; a failed attempt does not bind its run name."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from cotdistill.errors import CotdistillError, EnvironmentProblem
from cotdistill.evaluate import evaluate
from cotdistill.store import Store
from cotdistill.testing import StubServer


def _dead_url() -> str:
    """A loopback port nothing listens on: connections are refused at once."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"http://127.0.0.1:{port}/v1"


def _answer(messages: list[dict[str, str]]) -> str:
    return "It is 5. The answer is 5."


def _eval_served(run_dir, **kwargs) -> tuple[dict, StubServer]:
    """evaluate() against a live stub server; returns the metrics and the server."""
    server = StubServer(_answer)
    try:
        return evaluate(run_dir, model="openai:m", task="arith", api={"base_url": server.start()}, **kwargs), server
    finally:
        server.stop()


def test_eval_against_a_dead_server_stores_nothing_then_recovers(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(EnvironmentProblem, match=r"3 of 3 requests failed .*ClientConnectorError") as failed:
        evaluate(run_dir, model="openai:m", task="arith", limit=3, name="api",
                 api={"base_url": _dead_url(), "max_retries": 1, "backoff": 0.01})
    assert failed.value.exit_code == 1
    with Store(run_dir) as store:
        assert store.predicted("api") == set()
        assert store.run("api")["status"] != "done" and not store.run("api")["result"]
    metrics, server = _eval_served(run_dir, limit=3, name="api")
    assert metrics["n"] == 3 and server.requests == 3  # the failed problems were asked again, and only once


def test_a_failed_attempt_does_not_bind_the_run_name(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(CotdistillError):
        evaluate(run_dir, model=str(tmp_path / "no-such-model"), task="arith", limit=2, name="mine")
    metrics, _ = _eval_served(run_dir, limit=2, name="mine")
    assert metrics["n"] == 2
    with pytest.raises(CotdistillError, match="exists with other settings"):  # a finished run still binds its name
        evaluate(run_dir, model="openai:other", task="arith", limit=2, name="mine", api={"base_url": _dead_url()})


def test_cli_eval_dead_server_exit_1_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cotdistill", "eval", "-r", str(tmp_path / "run"), "--task", "arith", "--limit", "2",
         "--model", "openai:m", "--base-url", _dead_url(), "--max-retries", "0"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: eval ") and "ClientConnectorError" in lines[-1], result.stderr
    assert "Traceback" not in result.stderr
