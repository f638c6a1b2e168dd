"""eval: a pipeline (one model, or a model per stage) answers a task's problems; answers
are extracted (strict and flexible), scored, and stored with their cost per stage (calls,
tokens, seconds, FLOPs, USD).

Predictions are committed chunk by chunk under the eval run's name and each problem's content
key, so a rerun continues where an interrupted one stopped and a finished one costs nothing,
and a prediction is only ever scored against the question it answered. A name stands for one
eval: its data (content hash), models, method, pipeline and sampling; the same name asked
for other data is refused in one line naming both. One process at a time runs a name.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cotdistill import provenance
from cotdistill.answers import extract_flexible, is_correct
from cotdistill.config import EvalConfig, configure, default_of
from cotdistill.errors import CotdistillError, EnvironmentProblem
from cotdistill.methods import Method, get_method, pipeline_owners
from cotdistill.models.backends import load_backend, served
from cotdistill.pipeline import Settings, Trace, check_pipeline, run_pipeline, vote
from cotdistill.sandbox import require_sandbox
from cotdistill.store import Prediction, Store, model_in_run
from cotdistill.tasks import Problem, data_identity, get_task


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval for a proportion; honest at small n and near 0 or 1."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(run_dir: str | Path, config: EvalConfig | str | None = None, *, scale: str | None = None,
             **settings: Any) -> dict[str, float]:
    """Evaluate a pipeline on a task: `model` for the single-stage pipeline, or `models`
    (stage -> model: a student of this run by name, an alias, a directory, a hub id or
    openai:MODEL). `samples` > 1 with temperature > 0 adds self-consistency voting.

    `config` is an EvalConfig or a task name, and `settings` set its fields, so
    `evaluate(run, "gsm8k", split="dev", model="cot")` reads as the CLI does. The run's
    record also keeps the commit, the machine and the recipe's `scale`, for the report's rows."""
    c = configure(EvalConfig, "eval", config, settings)
    the_task = get_task(c.task, c.fields, c.options)
    the_method = get_method(c.method)  # an unknown method fails here, before any data or model is loaded
    the_method.demonstration_turns(c.shots)  # as do more shots than it has demonstrations
    owners = pipeline_owners(c.pipeline)
    if c.pipeline != "single" and c.pipeline not in the_method.pipelines and owners:  # a pipeline names its method
        raise CotdistillError(f"pipeline {c.pipeline} runs method {' or '.join(owners)}, not {c.method}: "
                              f"add --method {owners[0]}")
    check_pipeline(c.pipeline, list(c.stages), the_method)
    if the_method.runs_programs:  # a sandbox that cannot run stops here, before the run is registered
        require_sandbox(model_written=True, accept_weak=c.weak_sandbox)
    problems = the_task.load(c.data, c.split, c.limit)
    if not problems:  # an accuracy over nothing is no result
        raise CotdistillError(f"eval: task {the_task.name} has no problems in {c.data or f'split {c.split}'}")
    source, data = data_identity(the_task, c.data)
    paths = {stage: model_in_run(run_dir, name) for stage, name in c.stages.items()}
    if c.api and not any(served(path) for path in paths.values()):
        raise CotdistillError(f"API options ({', '.join(c.api)}) apply to openai:MODEL models, and no stage runs one")
    label = c.model if c.stages == {"model": c.model} else ",".join(f"{k}={v}" for k, v in c.stages.items())
    run = c.name or f"eval:{label}:{the_task.name}:{c.split}" + ("" if c.pipeline == "single" else f":{c.pipeline}")
    # Everything that makes its answers, so a name never stands for two evals: the data scored,
    # the models (and which training of a student), the method, pipeline and sampling.
    recorded = {"model": label, "model_path": paths.get("model", ""), "task": the_task.name, "split": c.split,
                "data": data, "data_source": source, "model_versions": _versions(paths),
                "method": c.method, "temperature": c.temperature, "seed": c.seed, "max_new_tokens": c.max_new_tokens,
                "pipeline": c.pipeline, "models": c.stages, "samples": c.samples, "shots": c.shots,
                "problems": len(problems)}
    unknown_before = {key: recorded[key] for key in ("data", "model_versions", "seed")}  # records of schema 0 lack them
    with Store(run_dir) as store, store.lease(f"eval {run}", "wait for it to finish, then rerun to score what it left"):
        store.add_problems(problems)
        done = store.predicted(run)
        store.start_run(run, "eval", recorded, produced=bool(done),
                        defaults={"pipeline": default_of(EvalConfig, "pipeline"), "models": {"model": label},
                                  "samples": default_of(EvalConfig, "samples"), "shots": 0, **unknown_before})
        pending = [p for p in problems if any((p.key, s) not in done for s in range(c.samples))]
        if pending:
            backends = {path: load_backend(path, c.api if served(path) else {"batch_size": c.batch_size})
                        for path in dict.fromkeys(paths.values())}
            failed, sent, reason = _predict(store, run, pending, {stage: backends[path] for stage, path in paths.items()},
                                            c.pipeline, the_method, c.samples,
                                            Settings(c.max_new_tokens, c.temperature, c.seed, c.shots), c.batch_size * 4)
            if failed:
                raise EnvironmentProblem(
                    f"eval {run}: {failed} of {sent} requests failed ({reason}); their problems are not scored and "
                    "no accuracy was recorded: run the same command again to ask them again")
        metrics = score(store, run, problems)
        store.set_metrics(run, metrics)
        store.finish_run(run, {**metrics, "commit": provenance.commit(), "machine": provenance.machine(),
                               "scale": scale})
    return metrics


def _predict(store: Store, run: str, pending: Sequence[Problem], by_stage: dict[str, Any], pipeline: str, method: Method,
             samples: int, settings: Settings, chunk: int) -> tuple[int, int, str | None]:
    """Answer the pending problems chunk by chunk, storing every trace that succeeded. A
    trace whose request failed is not stored, so the next run asks it again; a chunk that
    mostly failed stops the loop (a server that is down is not sent the rest). Returns
    (failed, sent, the first failure's reason)."""
    failed = sent = 0
    reason = None
    per_call = max(1, chunk // samples)  # problems per call: each is asked `samples` times in the same call,
    for start in range(0, len(pending), per_call):  # so self-consistency's copies share their prompt's prefill
        repeated = [p for p in pending[start : start + per_call] for _ in range(samples)]
        traces = run_pipeline(pipeline, repeated, by_stage, method, replace(settings, seed=settings.seed + start))
        answered = [(i % samples, p, t) for i, (p, t) in enumerate(zip(repeated, traces)) if t.failure is None]
        store.add_predictions(_prediction(run, p, sample, t) for sample, p, t in answered)
        store.add_stage_costs(run, [(p.key, sample, t.stages) for sample, p, t in answered])
        sent += len(repeated)
        failed += len(repeated) - len(answered)
        reason = reason or next((t.failure for t in traces if t.failure), None)
        if (len(repeated) - len(answered)) * 2 >= len(repeated):
            break
    return failed, sent, reason


def _versions(paths: dict[str, str]) -> dict[str, str]:
    """Which build of each stage's model: a directory's (a student of this run, a local model)
    is a hash of its small files (configs, a student's `cotdistill.json`, which a new training
    rewrites) and its weight files' sizes, so a student trained again under its old name is not
    taken for the one an eval's predictions came from. Names (aliases, hub ids, openai:MODEL)
    stand for themselves."""
    versions = {}
    for stage, path in paths.items():
        directory = Path(path)
        if not directory.is_dir():
            continue
        digest = hashlib.sha256()
        for file in sorted(p for p in directory.glob("*") if p.is_file()):
            size = file.stat().st_size
            digest.update(f"{file.name}:{size}\n".encode())
            if file.suffix == ".json" and size < 1 << 20:
                digest.update(file.read_bytes())
        versions[stage] = digest.hexdigest()[:16]
    return versions


def _prediction(run: str, problem: Any, sample: int, trace: Trace) -> Prediction:
    flexible = extract_flexible(trace.text, problem.kind)
    costs = trace.stages.values()
    return Prediction(run, problem.key, sample, trace.text, trace.answer, flexible,
                      is_correct(trace.answer, problem.answer, problem.kind),
                      is_correct(flexible, problem.answer, problem.kind),
                      sum(c.prompt_tokens for c in costs), sum(c.completion_tokens for c in costs),
                      sum(c.seconds for c in costs))


def _by_problem(store: Store, run: str, problems: Sequence[Problem]) -> dict[str, list[Prediction]]:
    wanted = {p.key for p in problems}
    by_problem: dict[str, list[Prediction]] = {}
    for prediction in store.predictions(run):
        if prediction.problem_key in wanted:
            by_problem.setdefault(prediction.problem_key, []).append(prediction)
    return by_problem


def outcomes(store: Store, run: str, problems: Sequence[Problem]) -> dict[str, tuple[str | None, bool, bool]]:
    """Per predicted problem: (strict answer, strict correct, flexible correct), by majority
    vote over its samples: what `score` counts, and what the report's paired test pairs."""
    return _judged(_by_problem(store, run, problems), problems)


def _judged(by_problem: dict[str, list[Prediction]],
            problems: Sequence[Problem]) -> dict[str, tuple[str | None, bool, bool]]:
    wanted = {p.key: p for p in problems}
    result = {}
    for problem_key, predictions in by_problem.items():
        problem = wanted[problem_key]
        answer = vote([Trace(p.text, p.strict) for p in predictions], problem.kind)
        flexible = vote([Trace(p.text, p.flexible) for p in predictions], problem.kind)
        result[problem_key] = (answer, is_correct(answer, problem.answer, problem.kind),
                              is_correct(flexible, problem.answer, problem.kind))
    return result


def score(store: Store, run: str, problems: Sequence[Problem]) -> dict[str, float]:
    """Metrics over this call's problems only, however many the run has predicted before.
    With several samples per problem, the strict answer is their majority vote
    (self-consistency) and costs add up over the samples."""
    by_problem = _by_problem(store, run, problems)
    per_problem = _judged(by_problem, problems)
    n = len(by_problem)
    strict = sum(correct for _, correct, _ in per_problem.values())
    flexible = sum(correct for _, _, correct in per_problem.values())
    no_answer = sum(answer is None for answer, _, _ in per_problem.values())
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
