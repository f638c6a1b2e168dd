"""Inference pipelines: ordered stages, each with its own model, and what each stage cost.

A pipeline runs a batch of problems stage by stage (every stage is one batched generation
call, so local models stay batched), and returns one Trace per problem: the final text,
the answer, and per-stage calls, tokens, seconds and estimated cost (FLOPs ~ 2 x
parameters x tokens for local models, configured USD per million tokens for API models).

Which pipelines a method runs, and their stages, are the method's own declaration
(`Method.pipelines`, run by `Method.run`): every method answers in one call
(`single`), and a method whose paper splits answering across models adds its pipeline in
its own module: `decompose_solve` (decompose), `socratic` (socratic), `kpdd` (kpdd_*).
This module holds the mechanics they share and knows no method.

`vote` turns k sampled traces per problem into a self-consistency majority answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cotdistill.answers import normalize
from cotdistill.errors import CotdistillError
from cotdistill.models.contract import Backend, Completion, Messages
from cotdistill.tasks import Problem

if TYPE_CHECKING:
    from cotdistill.methods.base import Method


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
    shots: int = 0  # the single pipeline: demonstrations before the question (few-shot evaluation)


def call_stage(stage: str, backend: Backend, requests: list[Messages], traces: list[Trace], settings: Settings,
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


def check_pipeline(name: str, stages: Sequence[str], method: Method) -> None:
    """Refuse a pipeline the method does not run, an unknown stage, or a stage without a
    model: before any model is loaded."""
    if name not in method.pipelines:
        runs = ", ".join(method.pipelines)
        raise CotdistillError(f"method {method.name} answers by pipeline {runs}, not {name!r}: use --pipeline "
                              f"{next(iter(method.pipelines))}")
    needed = method.pipelines[name]
    unknown = set(stages) - set(needed)
    if unknown:
        raise CotdistillError(f"pipeline {name} has no stage(s) {', '.join(sorted(unknown))} (stages: {', '.join(needed)})")
    missing = [s for s in needed if s not in stages]
    if missing:
        raise CotdistillError(f"pipeline {name} needs a model for stage(s) {', '.join(missing)}: "
                              f"pass --model {missing[0]}=MODEL")


def run_pipeline(name: str, problems: Sequence[Problem], models: dict[str, Backend], method: Method,
                 settings: Settings = Settings()) -> list[Trace]:
    """Run the method's pipeline `name` with one backend per stage (`models`: stage -> backend)."""
    check_pipeline(name, list(models), method)
    return method.run(name, problems, models, settings)


def vote(traces: Sequence[Trace], kind: Any) -> str | None:
    """Self-consistency: the most common answer among samples (ties: the earliest sample's)."""
    answers = [normalize(t.answer, kind) for t in traces if t.answer is not None]
    return Counter(answers).most_common(1)[0][0] if answers else None
