"""eval: a model answers a task's problems; answers are extracted (strict and flexible),
scored, and stored with their token counts and time.

Predictions are committed chunk by chunk under the eval run's name, so a rerun continues
where an interrupted one stopped and a finished one costs nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cotdistill.answers import extract_flexible, extract_strict, is_correct
from cotdistill.errors import CotdistillError
from cotdistill.methods import get_method
from cotdistill.models import LocalModel
from cotdistill.store import Prediction, Store
from cotdistill.tasks import get_task
from cotdistill.train import student_dir


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
) -> dict[str, float]:
    """Evaluate `model` (a student of this run by name, an alias, a directory or a hub id)."""
    the_task = get_task(task, fields, options)
    the_method = get_method(method)
    if not the_method.one_call:
        raise CotdistillError(f"eval runs methods whose student answers in one reply (cot, dss, socratic, kpdd_cot); "
                              f"{method} needs program execution or a second stage, which eval does not run yet")
    problems = the_task.load(data, split, limit)
    store = Store(run_dir)
    store.add_problems(the_task.name, split, problems)
    trained = student_dir(run_dir, model)
    model_path = str(trained) if trained.is_dir() else model
    run = name or f"eval:{model}:{the_task.name}:{split}"
    config = {"model": model, "model_path": model_path, "task": the_task.name, "split": split, "method": method,
              "temperature": temperature, "max_new_tokens": max_new_tokens, "problems": len(problems)}
    store.start_run(run, "eval", config)
    done = store.predicted(run)
    pending = [p for p in problems if (p.id, 0) not in done]
    if pending:
        backend = LocalModel(model_path, batch_size=batch_size)
        chunk = batch_size * 4
        for start in range(0, len(pending), chunk):
            batch = pending[start : start + chunk]
            completions = backend.generate([the_method.student_messages(p) for p in batch], max_new_tokens,
                                           temperature, the_method.stop, seed + start,
                                           progress=f"eval {model} [{start + len(batch)}/{len(pending)}]")
            store.add_predictions(_prediction(run, p, c) for p, c in zip(batch, completions))
    metrics = score(store, run, {p.id for p in problems})
    store.set_metrics(run, metrics)
    store.finish_run(run, metrics)
    store.close()
    return metrics


def _prediction(run: str, problem: Any, completion: Any) -> Prediction:
    strict = extract_strict(completion.text, problem.kind)
    flexible = extract_flexible(completion.text, problem.kind)
    return Prediction(run, problem.id, 0, completion.text, strict, flexible,
                      is_correct(strict, problem.answer, problem.kind), is_correct(flexible, problem.answer, problem.kind),
                      completion.prompt_tokens, completion.completion_tokens, completion.seconds)


def score(store: Store, run: str, problem_ids: set[str]) -> dict[str, float]:
    """Metrics over this call's problems only, however many the run has predicted before."""
    predictions = [p for p in store.predictions(run) if p.problem_id in problem_ids]
    n = len(predictions)
    strict = sum(p.correct_strict for p in predictions)
    flexible = sum(p.correct_flexible for p in predictions)
    low, high = wilson_interval(strict, n)
    seconds = sum(p.seconds for p in predictions)
    return {
        "n": n,
        "correct_strict": strict,
        "accuracy_strict": strict / n if n else 0.0,
        "ci95_low": low,
        "ci95_high": high,
        "accuracy_flexible": flexible / n if n else 0.0,
        "no_answer_strict": sum(p.strict is None for p in predictions),
        "prompt_tokens_per_problem": sum(p.prompt_tokens for p in predictions) / n if n else 0.0,
        "completion_tokens_per_problem": sum(p.completion_tokens for p in predictions) / n if n else 0.0,
        "seconds_per_problem": seconds / n if n else 0.0,
    }
