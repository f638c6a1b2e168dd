"""Plain chain of thought (CoT): the teacher writes step-by-step reasoning ending in
"The answer is X."; the student learns question -> that reasoning; inference is one call.
"""

from __future__ import annotations

from typing import Any

from cotdistill.methods.base import (
    DEMO_QUESTIONS, Example, Method, Parsed, Prompts, check_answer, cut_after_answer, gold_cot,
)
from cotdistill.tasks import Problem

PROMPTS = Prompts(
    instruction='{question}\nSolve it step by step, then finish with "The answer is <{answer_hint}>."',
    demonstrations=tuple(zip(DEMO_QUESTIONS, (
        "The baker makes 24 + 18 = 42 rolls. After selling 30, 42 - 30 = 12 rolls are left. The answer is 12.",
        "There are 23 + 2 = 25 people. The tickets cost 25 * 7 = $175. The answer is 175.",
        "The garden has 5 * 8 = 40 tulips. Half of them, 40 / 2 = 20, are red, so 40 - 20 = 20 are not red. "
        "The answer is 20.",
    ))),
)


class CoT(Method):
    name = "cot"
    gold_stands_in = ("the dataset's human-written solutions stand in for the teacher's sampled rationales")
    description = "chain of thought: step-by-step reasoning ending in 'The answer is X.'"
    prompts = PROMPTS
    specializes = True

    def gold_rationale(self, problem: Problem) -> str | None:
        return gold_cot(problem)

    def parse(self, text: str, problem: Problem) -> Parsed:
        """Keep a reply only if it states a final answer and that answer is the gold one."""
        return check_answer(text, problem, {"rationale": cut_after_answer(text)})

    def training_examples(self, problem: Problem, parsed: dict[str, Any], gold_label: bool = False) -> list[Example]:
        return [Example("student", self.student_messages(problem), parsed["rationale"])]
