"""Inference pipelines: ordered stages, each with its own model, and what each stage cost.

A pipeline runs a batch of problems stage by stage (every stage is one batched generation
call, so local models stay batched), and returns one Trace per problem: the final text,
the answer, and per-stage calls, tokens, seconds and estimated cost (FLOPs ~ 2 x
parameters x tokens for local models, configured USD per million tokens for API models).

    single           one call with the method's student prompt (cot, direct answer-only,
                     dss label-only, socratic unified, kpdd_cot; pot and kpdd_pot run the program)
    decompose_solve  Divide-or-Conquer: a decomposer writes sub-questions, a solver answers
    socratic         a question generator writes the sub-questions, a solver answers them
                     one by one with the chain so far; the last answer is final

`vote` turns k sampled traces per problem into a self-consistency majority answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cotdistill.answers import extract_strict, normalize
from cotdistill.errors import CotdistillError
from cotdistill.methods import Method, get_method
from cotdistill.methods.kpdd import core_messages, info_messages, parse_core
from cotdistill.methods.pot import extract_program
from cotdistill.methods.socratic import parse_questions
from cotdistill.models import Completion, Messages
from cotdistill.sandbox import shared_sandbox
from cotdistill.tasks import Problem


class Backend(Protocol):
    name: str

    def generate(self, requests: Sequence[Messages], max_new_tokens: int, temperature: float,
                 stop: Sequence[str], seed: int, progress: str | None = None) -> list[Completion]: ...

    def flops(self, tokens: int) -> float: ...


@dataclass
class StageCost:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    flops: float = 0.0
    usd: float = 0.0

    def add(self, completion: Completion, backend: Backend) -> None:
        self.calls += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.seconds += completion.seconds
        self.flops += backend.flops(completion.prompt_tokens + completion.completion_tokens)
        self.usd += completion.cost


@dataclass
class Trace:
    text: str  # what the answer was read from (the last stage's reply)
    answer: str | None
    stages: dict[str, StageCost] = field(default_factory=dict)
    replies: list[tuple[str, str]] = field(default_factory=list)  # (stage, reply) in order, to inspect
    failure: str | None = None  # a stage's request failed: this trace is no answer, and no result


@dataclass(frozen=True)
class Settings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0


def _call(stage: str, backend: Backend, requests: list[Messages], traces: list[Trace], settings: Settings,
          stop: Sequence[str]) -> list[Completion]:
    """One batched stage call for the given traces, its cost added to each trace."""
    completions = backend.generate(requests, settings.max_new_tokens, settings.temperature, stop, settings.seed,
                                   progress=f"{stage} ({backend.name.rstrip('/').rsplit('/', 1)[-1]})")
    for trace, completion in zip(traces, completions):
        trace.stages.setdefault(stage, StageCost()).add(completion, backend)
        trace.replies.append((stage, completion.text))
        if completion.finish_reason == "error" and trace.failure is None:
            trace.failure = f"stage {stage}: {completion.failure or 'request failed'}"
    return completions


def _finish(traces: list[Trace], problems: Sequence[Problem], completions: list[Completion], programs: bool) -> None:
    """Read each final reply's answer: its "The answer is" statement, or what its program
    computes in the sandbox (pot, kpdd_pot)."""
    if programs:
        outcomes = shared_sandbox().run_many([extract_program(c.text) or "" for c in completions])
        answers = [o.answer if o.ok else None for o in outcomes]
    else:
        answers = [extract_strict(c.text, p.kind) for c, p in zip(completions, problems)]
    for trace, completion, answer in zip(traces, completions, answers):
        trace.text, trace.answer = completion.text, answer


def single(problems: Sequence[Problem], models: dict[str, Backend], method: Method, settings: Settings) -> list[Trace]:
    traces = [Trace("", None) for _ in problems]
    completions = _call("model", models["model"], [method.student_messages(p) for p in problems], traces, settings,
                        method.stop)
    _finish(traces, problems, completions, programs=method.runs_programs)
    return traces


def kpdd(problems: Sequence[Problem], models: dict[str, Backend], method: Method, settings: Settings) -> list[Trace]:
    """The three KPDD stages as three calls: core question, problem-solving information,
    then the solution (text for kpdd_cot, a program for kpdd_pot)."""
    traces = [Trace("", None) for _ in problems]
    cores = [parse_core(c.text) for c in _call("core", models["core"], [core_messages(p) for p in problems], traces,
                                                   settings, method.stop)]
    infos = [c.text for c in _call("info", models["info"], [info_messages(p, core) for p, core in zip(problems, cores)],
                                   traces, settings, method.stop)]
    requests = [method.solution_messages(p, core, info) for p, core, info in zip(problems, cores, infos)]  # type: ignore[attr-defined]
    _finish(traces, problems, _call("solution", models["solution"], requests, traces, settings, method.stop),
            programs=method.runs_programs)
    return traces


def decompose_solve(problems: Sequence[Problem], models: dict[str, Backend], method: Method,
                    settings: Settings) -> list[Trace]:
    decompose = get_method("decompose")
    traces = [Trace("", None) for _ in problems]
    plans = _call("decomposer", models["decomposer"], [decompose.student_messages(p) for p in problems], traces,
                  settings, decompose.stop)
    subquestions = [decompose.parse(c.text, p).fields.get("subquestions", []) for c, p in zip(plans, problems)]
    requests = [decompose.solver_messages(p, s) for p, s in zip(problems, subquestions)]  # type: ignore[attr-defined]
    _finish(traces, problems, _call("solver", models["solver"], requests, traces, settings, decompose.stop),
            programs=False)
    return traces


def socratic(problems: Sequence[Problem], models: dict[str, Backend], method: Method, settings: Settings) -> list[Trace]:
    chain = get_method("socratic")
    traces = [Trace("", None) for _ in problems]
    plans = _call("qg", models["qg"], [chain.qg_messages(p) for p in problems], traces, settings,  # type: ignore[attr-defined]
                  chain.stop)
    questions = [parse_questions(c.text) or [p.question] for c, p in zip(plans, problems)]
    steps: list[list[list[str]]] = [[] for _ in problems]
    for j in range(max(len(q) for q in questions)):
        active = [i for i, q in enumerate(questions) if j < len(q)]
        requests = [chain.qa_messages(problems[i], steps[i], questions[i][j]) for i in active]  # type: ignore[attr-defined]
        replies = _call("qa", models["qa"], requests, [traces[i] for i in active], settings, chain.stop)
        for i, reply in zip(active, replies):
            steps[i].append([questions[i][j], reply.text])
    for trace, problem, chain_steps in zip(traces, problems, steps):
        trace.text = chain_steps[-1][1]
        trace.answer = extract_strict(trace.text, problem.kind)
    return traces


PIPELINES: dict[str, tuple[tuple[str, ...], Callable[..., list[Trace]]]] = {
    "single": (("model",), single),
    "decompose_solve": (("decomposer", "solver"), decompose_solve),
    "socratic": (("qg", "qa"), socratic),
    "kpdd": (("core", "info", "solution"), kpdd),
}


def check_pipeline(name: str, stages: Sequence[str], method: str = "cot") -> None:
    """Refuse an unknown pipeline, a method it cannot run, an unknown stage, or a stage
    without a model: before any model is loaded."""
    if name not in PIPELINES:
        raise CotdistillError(f"unknown pipeline {name!r} (known: {', '.join(PIPELINES)})")
    if name == "single" and method == "decompose":
        raise CotdistillError("method decompose answers in two stages: use --pipeline decompose_solve")
    if name == "kpdd" and method not in ("kpdd_cot", "kpdd_pot"):
        raise CotdistillError(f"pipeline kpdd runs method kpdd_cot or kpdd_pot, not {method}")
    needed = PIPELINES[name][0]
    unknown = set(stages) - set(needed)
    if unknown:
        raise CotdistillError(f"pipeline {name} has no stage(s) {', '.join(sorted(unknown))} (stages: {', '.join(needed)})")
    missing = [s for s in needed if s not in stages]
    if missing:
        raise CotdistillError(f"pipeline {name} needs a model for stage(s) {', '.join(missing)}: "
                              f"pass --model {missing[0]}=MODEL")


def run_pipeline(name: str, problems: Sequence[Problem], models: dict[str, Backend], method: str = "cot",
                 settings: Settings = Settings()) -> list[Trace]:
    """Run pipeline `name` with one backend per stage (`models`: stage -> backend)."""
    check_pipeline(name, list(models), method)
    return PIPELINES[name][1](problems, models, get_method(method), settings)


def vote(traces: Sequence[Trace], kind: Any) -> str | None:
    """Self-consistency: the most common answer among samples (ties: the earliest sample's)."""
    answers = [normalize(t.answer, kind) for t in traces if t.answer is not None]
    return Counter(answers).most_common(1)[0][0] if answers else None
