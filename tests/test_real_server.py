"""The OpenAI-compatible path against a real server: llama-cpp-python's, serving the
embedded SmolLM2-135M GGUF. Annotate (with top log-probs), eval, and a server killed and
restarted mid-run with nothing lost or duplicated.

llama-cpp-python is in the `test` extra; it builds from source (~3 minutes on 2 cores) and
pip keeps the built wheel in its cache, so later installs take seconds. Where it is not
installed the tests skip and say so.
"""

import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed: "
                    "pip install 'llama-cpp-python[server]' (builds from source in ~3 minutes on 2 cores)")

from cotdistill.annotate import annotate  # noqa: E402
from cotdistill.evaluate import evaluate  # noqa: E402
from cotdistill.models.embedded import find_gguf  # noqa: E402
from cotdistill.store import Store  # noqa: E402

MODEL = "openai:smollm2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, model: str | None = None, alias: str = "smollm2", n_ctx: int = 4096) -> subprocess.Popen:
    """llama-cpp-python's server on `model` (default: the embedded GGUF), answering on `port`."""
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", model or str(find_gguf()),
                               "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
                               "--n_ctx", str(n_ctx), "--n_threads", "2", "--logits_all", "true", "--verbose", "false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {server.stderr.read()[-2000:]}")
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("llama_cpp.server did not answer within 120 s")


@pytest.fixture
def port():
    return free_port()


def test_annotate_with_logprobs_and_eval_against_llama_cpp_server(tmp_path, port):
    server = start_server(port)
    api = {"base_url": f"http://127.0.0.1:{port}/v1", "concurrency": 2}
    try:
        summary = annotate(tmp_path, "arith", limit=4, teacher=MODEL, max_new_tokens=48,
                           api={**api, "top_logprobs": 2})
        metrics = evaluate(tmp_path, model=MODEL, task="arith", limit=4, max_new_tokens=48, api=api)
    finally:
        server.kill()
    assert summary["done"] == 4 and summary["failed"] == 0 and summary["completion_tokens"] > 0
    with Store(tmp_path) as store:
        rows = store.annotations("cot", kept_only=False)
    assert len(rows) == 4 and all(r.text for r in rows)
    token, logprob, top = rows[0].logprobs[0]
    assert isinstance(token, str) and logprob <= 0 and len(top) == 2
    assert metrics["n"] == 4 and metrics["completion_tokens_per_problem"] > 0 and metrics["seconds_per_problem"] > 0


def test_a_server_killed_and_restarted_mid_run_loses_and_duplicates_nothing(tmp_path, port):
    server = start_server(port)
    api = {"base_url": f"http://127.0.0.1:{port}/v1", "concurrency": 2, "timeout": 30.0, "backoff": 0.5,
           "max_retries": 60}
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(
        annotate(tmp_path, "arith", limit=16, teacher=MODEL, max_new_tokens=32, api=api)))
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with Store(tmp_path) as store:
                if len(store.annotations("cot", kept_only=False)) >= 3:
                    break
            time.sleep(0.2)
        server.kill()
        server.wait()
        time.sleep(2)  # requests in flight and new ones meet a dead port meanwhile
        server = start_server(port)
        worker.join(timeout=300)
    finally:
        server.kill()
    assert not worker.is_alive()
    assert outcome["done"] == 16 and outcome["pending"] == 0 and outcome["failed"] == 0 and outcome["retries"] > 0
    with Store(tmp_path) as store:
        rows = store.annotations("cot", kept_only=False)
    assert len(rows) == 16 and len({(r.problem_id, r.sample) for r in rows}) == 16
