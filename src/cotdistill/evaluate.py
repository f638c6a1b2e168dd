"""eval: a pipeline (one model, or a model per stage) answers a task's problems; answers
are extracted (strict and flexible), scored, and stored with their cost per stage (calls,
tokens, seconds, FLOPs, USD).

Predictions are committed chunk by chunk under the eval run's name, so a rerun continues
where an interrupted one stopped and a finished one costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cotdistill.answers import extract_flexible, is_correct
from cotdistill.errors import CotdistillError, EnvironmentProblem, check_generation_options
from cotdistill.methods import Method, get_method, pipeline_owners
from cotdistill.models.openai_api import load_backend
from cotdistill.pipeline import Settings, Trace, check_pipeline, run_pipeline, vote
from cotdistill.sandbox import require_sandbox
from cotdistill.store import Prediction, Store, model_in_run
from cotdistill.tasks import Problem, get_task


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval for a proportion; honest at small n and near 0 or 1."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(
    run_dir: str | Path,
    model: str = "smollm2-135m",
    task: str = "arith",
    data: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    method: str = "cot",
    name: str | None = None,
    temperature: float = 0.0,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    fields: dict[str, str] | None = None,
    options: dict[str, str] | None = None,
    pipeline: str = "single",
    models: dict[str, str] | None = None,
    samples: int = 1,
    api: dict[str, Any] | None = None,
    weak_sandbox: bool = False,
) -> dict[str, float]:
    """Evaluate a pipeline on a task: `model` for the single-stage pipeline, or `models`
    (stage -> model: a student of this run by name, an alias, a directory, a hub id or
    openai:MODEL). `samples` > 1 with temperature > 0 adds self-consistency voting.
    `api` sets the OpenAI-compatible backend (APIConfig fields: base_url, prices, ...).
    `weak_sandbox` lets the model's programs run where the kernel sandbox is incomplete."""
    check_generation_options(samples, max_new_tokens, batch_size, limit, temperature)
    the_task = get_task(task, fields, options)
    the_method = get_method(method)  # an unknown method fails here, before any data or model is loaded
    stages = dict(models or {"model": model})
    owners = pipeline_owners(pipeline)
    if pipeline != "single" and pipeline not in the_method.pipelines and owners:  # a chosen pipeline names its method
        raise CotdistillError(f"pipeline {pipeline} runs method {' or '.join(owners)}, not {method}: "
                              f"add --method {owners[0]}")
    check_pipeline(pipeline, list(stages), the_method)
    if the_method.runs_programs:  # a sandbox that cannot run stops here, before the run is registered
        require_sandbox(model_written=True, accept_weak=weak_sandbox)
    problems = the_task.load(data, split, limit)
    paths = {stage: model_in_run(run_dir, name_) for stage, name_ in stages.items()}
    label = model if stages == {"model": model} else ",".join(f"{k}={v}" for k, v in stages.items())
    run = name or f"eval:{label}:{the_task.name}:{split}" + ("" if pipeline == "single" else f":{pipeline}")
    config: dict[str, Any] = {"model": label, "model_path": paths.get("model", ""), "task": the_task.name,
                              "split": split, "method": method, "temperature": temperature,
                              "max_new_tokens": max_new_tokens, "problems": len(problems)}
    if pipeline != "single" or models or samples != 1:  # recorded only when used, so older runs still resume
        config.update(pipeline=pipeline, models=stages, samples=samples)
    with Store(run_dir) as store:
        store.add_problems(the_task.name, split, problems)
        done = store.predicted(run)
        store.start_run(run, "eval", config, produced=bool(done))
        pending = [p for p in problems if any((p.id, s) not in done for s in range(samples))]
        if pending:
            backends = {path: load_backend(path, api, batch_size) for path in dict.fromkeys(paths.values())}
            failed, sent, reason = _predict(store, run, pending, {stage: backends[path] for stage, path in paths.items()},
                                            pipeline, the_method, samples, Settings(max_new_tokens, temperature, seed),
                                            batch_size * 4)
            if failed:
                raise EnvironmentProblem(
                    f"eval {run}: {failed} of {sent} requests failed ({reason}); their problems are not scored and "
                    "no accuracy was recorded: run the same command again to ask them again")
        metrics = score(store, run, problems)
        store.set_metrics(run, metrics)
        store.finish_run(run, metrics)
    return metrics


def _predict(store: Store, run: str, pending: Sequence[Problem], by_stage: dict[str, Any], pipeline: str, method: Method,
             samples: int, settings: Settings, chunk: int) -> tuple[int, int, str | None]:
    """Answer the pending problems chunk by chunk, storing every trace that succeeded. A
    trace whose request failed is not stored, so the next run asks it again; a chunk that
    mostly failed stops the loop (a server that is down is not sent the rest). Returns
    (failed, sent, the first failure's reason)."""
    failed = sent = 0
    reason = None
    for start in range(0, len(pending), chunk):
        batch = pending[start : start + chunk]
        failed_here = 0
        for sample in range(samples):
            traces = run_pipeline(pipeline, batch, by_stage, method,
                                  replace(settings, seed=settings.seed + start + 1000 * sample))
            answered = [(p, t) for p, t in zip(batch, traces) if t.failure is None]
            store.add_predictions(_prediction(run, p, sample, t) for p, t in answered)
            store.add_stage_costs(run, [(p.id, sample, t.stages) for p, t in answered])
            failed_here += len(batch) - len(answered)
            reason = reason or next((t.failure for t in traces if t.failure), None)
        sent += len(batch) * samples
        failed += failed_here
        if failed_here * 2 >= len(batch) * samples:
            break
    return failed, sent, reason


def _prediction(run: str, problem: Any, sample: int, trace: Trace) -> Prediction:
    flexible = extract_flexible(trace.text, problem.kind)
    costs = trace.stages.values()
    return Prediction(run, problem.id, sample, trace.text, trace.answer, flexible,
                      is_correct(trace.answer, problem.answer, problem.kind),
                      is_correct(flexible, problem.answer, problem.kind),
                      sum(c.prompt_tokens for c in costs), sum(c.completion_tokens for c in costs),
                      sum(c.seconds for c in costs))


def score(store: Store, run: str, problems: Sequence[Problem]) -> dict[str, float]:
    """Metrics over this call's problems only, however many the run has predicted before.
    With several samples per problem, the strict answer is their majority vote
    (self-consistency) and costs add up over the samples."""
    wanted = {p.id: p for p in problems}
    by_problem: dict[str, list[Prediction]] = {}
    for prediction in store.predictions(run):
        if prediction.problem_id in wanted:
            by_problem.setdefault(prediction.problem_id, []).append(prediction)
    n = len(by_problem)
    strict = flexible = no_answer = 0
    for problem_id, predictions in by_problem.items():
        problem = wanted[problem_id]
        answer = vote([Trace(p.text, p.strict) for p in predictions], problem.kind)
        strict += is_correct(answer, problem.answer, problem.kind)
        flexible += is_correct(vote([Trace(p.text, p.flexible) for p in predictions], problem.kind),
                               problem.answer, problem.kind)
        no_answer += answer is None
    low, high = wilson_interval(strict, n)
    everything = [p for predictions in by_problem.values() for p in predictions]
    costs = store.stage_costs(run, set(by_problem))
    per = (lambda total: total / n) if n else (lambda total: 0.0)
    metrics = {
        "n": n,
        "samples": len(everything) / n if n else 0.0,
        "correct_strict": strict,
        "accuracy_strict": strict / n if n else 0.0,
        "ci95_low": low,
        "ci95_high": high,
        "accuracy_flexible": flexible / n if n else 0.0,
        "no_answer_strict": no_answer,
        "prompt_tokens_per_problem": per(sum(p.prompt_tokens for p in everything)),
        "completion_tokens_per_problem": per(sum(p.completion_tokens for p in everything)),
        "seconds_per_problem": per(sum(p.seconds for p in everything)),
        "calls_per_problem": per(sum(c["calls"] for c in costs.values())),
        "flops_per_problem": per(sum(c["flops"] for c in costs.values())),
        "usd_per_problem": per(sum(c["usd"] for c in costs.values())),
    }
    for stage, cost in costs.items():
        for key in ("calls", "prompt_tokens", "completion_tokens", "seconds", "flops", "usd"):
            metrics[f"stage:{stage}:{key}_per_problem"] = per(cost[key])
    return metrics
