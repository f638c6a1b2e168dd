"""A bundled paper recipe end to end with a real served teacher (issue 25): llama-cpp-python's
OpenAI-compatible server, serving the embedded SmolLM2-135M GGUF, writes the rationales of
`specialization` sized down with `--set`; the students are the tiny test model. Then the
same server through the plain-completion endpoint that base models need.

Skips where llama-cpp-python[server] is not installed (see tests/test_real_server.py)."""

import pytest

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")

from test_real_server import free_port, start_server  # noqa: E402
from test_recipes import math_data  # noqa: E402

from cotdistill.annotate import annotate  # noqa: E402
from cotdistill.recipe import run_recipe  # noqa: E402
from cotdistill.store import Store  # noqa: E402

pytestmark = pytest.mark.integration


def test_a_paper_recipe_runs_end_to_end_with_a_served_teacher(tmp_path, tiny_model):
    data = math_data(tmp_path / "data")
    port = free_port()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        run_dir = run_recipe("specialization", tmp_path / "run", scale="small", settings={
            "teacher": "openai:smollm2", "base_url": url, "concurrency": 1, "teacher_temperature": 0.0,
            "teacher_max_new_tokens": 48, "student": str(tiny_model), "data": str(data), "train_limit": 20,
            "select_limit": 2, "save_steps": 1, "max_new_tokens": 8, "eval_batch_size": 4, "batch_size": 4,
            "evals": [{"task": "gsm8k", "data": f"{data}/gsm8k/train.jsonl", "split": "dev[:400]", "limit": 2}]})
        plain = annotate(tmp_path / "plain", "arith", limit=2, teacher="openai:smollm2", max_new_tokens=24,
                         temperature=0.0, stop=["\n\n"], api={"base_url": url, "endpoint": "completions"})
    finally:
        server.kill()
    with Store(run_dir) as store:
        replies = store.annotations("cot", kept_only=False)
        students = {name: store.run(f"train:{name}")["result"] for name in ("cot", "mixed-id-dev", "mixed-ood-dev")}
    assert len(replies) == 20 and {r.teacher for r in replies} == {"openai:smollm2"}
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 for r in replies)
    kept = sum(r.kept for r in replies)
    assert kept >= 1, [r.text for r in replies]  # the served 135M model adds 2 to a small number
    assert all(s["teachers"] == {"openai:smollm2": kept} for s in students.values())
    report = (run_dir / "report.md").read_text()
    assert f"- cot: openai:smollm2 ({kept} annotation" in report and "gold stands in" not in report
    assert "| mixed-ood-dev:gsm8k:dev[:400] |" in report or "mixed-ood-dev" in report
    assert plain["done"] == 2 and plain["completion_tokens"] > 0  # /v1/completions, plain text
