"""Pipelines: stages run with their own models, and each stage's cost is counted with that
stage's own tokenizer."""

import pytest

from cotdistill.errors import CotdistillError
from cotdistill.methods import get_method
from cotdistill.models import LocalModel, render_prompt
from cotdistill.pipeline import Settings, Trace, run_pipeline, vote
from cotdistill.tasks import get_task

PROBLEMS = get_task("arith").load(split="test", limit=3)


def prompt_tokens(model: LocalModel, messages) -> int:
    return len(model.tokenizer(render_prompt(model.tokenizer, messages),
                               add_special_tokens=not model.tokenizer.chat_template)["input_ids"])


def test_decompose_then_solve_with_two_models_counts_each_stage(tiny_model):
    decomposer = LocalModel(str(tiny_model))  # a 2-layer model with a 400-token vocabulary
    solver = LocalModel("smollm2-135m")  # the embedded model, 49k vocabulary
    decompose = get_method("decompose")
    traces = run_pipeline("decompose_solve", PROBLEMS, {"decomposer": decomposer, "solver": solver}, decompose,
                          Settings(max_new_tokens=24))
    for problem, trace in zip(PROBLEMS, traces):
        assert [stage for stage, _ in trace.replies] == ["decomposer", "solver"]
        plan, solution = trace.replies[0][1], trace.replies[1][1]
        first, second = trace.stages["decomposer"], trace.stages["solver"]
        assert (first.calls, second.calls) == (1, 1)
        assert first.prompt_tokens == prompt_tokens(decomposer, decompose.student_messages(problem))
        parsed = {"subquestions": decompose.parse(plan, problem).fields.get("subquestions", [])}
        assert second.prompt_tokens == prompt_tokens(solver, decompose.solver_messages(problem, parsed))
        encoded = len(solver.tokenizer(solution, add_special_tokens=False)["input_ids"])
        assert 0 <= second.completion_tokens - encoded <= 1  # + the end-of-sequence token, if it stopped
        assert 0 < first.completion_tokens <= 24  # the random tiny model's bytes do not round-trip through text
        for model, cost in ((decomposer, first), (solver, second)):
            assert cost.flops == pytest.approx(model.flops(cost.prompt_tokens + cost.completion_tokens))
        assert trace.text == solution
    assert solver.flops(1) > 100 * decomposer.flops(1)  # the two stages really ran different models


def test_socratic_loop_asks_the_solver_once_per_sub_question(tiny_model):
    model = LocalModel(str(tiny_model))
    [trace] = run_pipeline("socratic", PROBLEMS[:1], {"qg": model, "qa": model}, get_method("socratic"),
                           Settings(max_new_tokens=8))
    assert trace.replies[0][0] == "qg" and trace.stages["qg"].calls == 1
    assert trace.stages["qa"].calls == len(trace.replies) - 1 >= 1


def test_bad_pipeline_requests_are_one_clear_error(tiny_model):
    model, cot = LocalModel(str(tiny_model)), get_method("cot")
    with pytest.raises(CotdistillError, match="method cot answers by pipeline single, not 'tree'"):
        run_pipeline("tree", PROBLEMS, {"model": model}, cot)
    with pytest.raises(CotdistillError, match="needs a model for stage.s. decomposer: pass --model decomposer=MODEL"):
        run_pipeline("decompose_solve", PROBLEMS, {"solver": model}, get_method("decompose"))
    with pytest.raises(CotdistillError, match="has no stage.s. planner"):
        run_pipeline("single", PROBLEMS, {"model": model, "planner": model}, cot)


def test_self_consistency_vote():
    traces = [Trace("", a) for a in ("12", None, "12.0", "7", "7")]
    assert vote(traces, "number") == "12"  # 12 and 12.0 are one answer; ties go to the earliest
    assert vote([Trace("", None)], "number") is None


def test_eval_runs_a_two_stage_pipeline_and_stores_cost_per_stage(tmp_path, tiny_model):
    from cotdistill.evaluate import evaluate
    from cotdistill.report import report

    metrics = evaluate(tmp_path, task="arith", limit=4, method="decompose", pipeline="decompose_solve", max_new_tokens=6,
                       models={"decomposer": str(tiny_model), "solver": str(tiny_model)})
    assert metrics["n"] == 4 and metrics["calls_per_problem"] == 2.0
    assert metrics["stage:decomposer:calls_per_problem"] == metrics["stage:solver:calls_per_problem"] == 1.0
    assert metrics["flops_per_problem"] > 0 and metrics["usd_per_problem"] == 0.0
    voted = evaluate(tmp_path, task="arith", limit=4, model=str(tiny_model), samples=3, temperature=1.0,
                     max_new_tokens=4, name="sc")
    assert voted["n"] == 4 and voted["samples"] == 3.0 and voted["calls_per_problem"] == 3.0
    from cotdistill.store import Store

    with Store(tmp_path) as store:  # the copies of a prompt, sampled in one call, are samples apart
        texts: dict[str, set[str]] = {}
        for prediction in store.predictions("sc"):
            texts.setdefault(prediction.problem_key, set()).add(prediction.text)
    assert max(len(t) for t in texts.values()) > 1
    markdown = report(tmp_path)
    assert "decompose_solve" in markdown and "single x3" in markdown


def test_program_pipeline_through_an_api_model_is_executed_and_priced(tmp_path):
    from cotdistill.evaluate import evaluate
    from cotdistill.testing import StubServer

    answers = {p.question: p.answer for p in get_task("arith").load(split="test", limit=5)}

    def programmer(messages):
        question = messages[-1]["content"].split("\n")[0]
        return f"```python\nanswer = {answers[question]} * 2 // 2\n```"

    server = StubServer(programmer)
    server.start()
    try:
        metrics = evaluate(tmp_path, task="arith", limit=5, method="pot", model="openai:coder",
                           api={"base_url": server.base_url, "price_input": 1.0, "price_output": 2.0})
    finally:
        server.stop()
    assert metrics["accuracy_strict"] == 1.0 and metrics["usd_per_problem"] > 0 and metrics["flops_per_problem"] == 0


def test_kpdd_three_stages_each_called_once(tiny_model):
    model = LocalModel(str(tiny_model))
    traces = run_pipeline("kpdd", PROBLEMS[:2], {"core": model, "info": model, "solution": model},
                          get_method("kpdd_cot"), Settings(max_new_tokens=6))
    for trace in traces:
        assert [stage for stage, _ in trace.replies] == ["core", "info", "solution"]
        assert all(cost.calls == 1 for cost in trace.stages.values())
    with pytest.raises(CotdistillError, match="method cot answers by pipeline single, not 'kpdd'"):
        run_pipeline("kpdd", PROBLEMS, {"core": model, "info": model, "solution": model}, get_method("cot"))
