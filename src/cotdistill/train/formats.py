"""Model specialization's data formats (Fu et al. 2023): every kept CoT annotation is
taught as zero-shot or in-context, with or without its reasoning; training mixes the
formats one per batch (see `FormatBatchSampler`).

Answer-only formats use the `direct` method's prompt and CoT formats the `cot` prompt, so
each prompt has one kind of target, and the trained student runs with either method.
In-context formats put `demonstrations` other training problems, in the same format, as
earlier chat turns.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cotdistill.methods import Example, get_method
from cotdistill.methods.base import answer_statement
from cotdistill.tasks import Problem

COT, DIRECT = get_method("cot"), get_method("direct")


def format_examples(items: Sequence[tuple[Problem, str]], formats: Sequence[str], demonstrations: int,
                    seed: int) -> list[tuple[int, Example]]:
    """(format index, example) for every (problem, rationale) in every format."""
    rng = random.Random(seed)
    out = []
    for index, (problem, rationale) in enumerate(items):
        others = [j for j in range(len(items)) if items[j][0].id != problem.id]
        demos = rng.sample(others, min(demonstrations, len(others)))
        for group, name in enumerate(formats):
            shots, kind = name.split("-shot-")
            turns = []
            if shots == "few":
                for j in demos:
                    messages, target = _one(items[j], kind)
                    turns += messages + [{"role": "assistant", "content": target}]
            messages, target = _one(items[index], kind)
            out.append((group, Example(name, turns + messages, target, demonstrations=len(turns) // 2)))
    return out


def _one(item: tuple[Problem, str], kind: str) -> tuple[list[dict[str, str]], str]:
    problem, rationale = item
    if kind == "answer":
        return DIRECT.student_messages(problem), answer_statement(problem.answer)
    return COT.student_messages(problem), rationale
