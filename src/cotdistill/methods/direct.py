"""Answer only (the direct baseline of model specialization and Divide-or-Conquer): the
reply is "The answer is X." with no reasoning; the student learns question -> answer.
"""

from __future__ import annotations

from typing import Any

from cotdistill.methods.base import (
    DEMO_ANSWERS,
    DEMO_QUESTIONS,
    Example,
    Method,
    Parsed,
    Prompts,
    answer_statement,
    check_answer,
    cut_after_answer,
)
from cotdistill.tasks import Problem


class Direct(Method):
    name = "direct"
    description = "answer only: 'The answer is X.' with no reasoning (baseline)"
    prompts = Prompts(
        instruction='{question}\nReply with only "The answer is <{answer_hint}>."',
        demonstrations=tuple((q, answer_statement(a)) for q, a in zip(DEMO_QUESTIONS, DEMO_ANSWERS)),
    )

    def gold_rationale(self, problem: Problem) -> str | None:
        return answer_statement(problem.answer)

    def parse(self, text: str, problem: Problem) -> Parsed:
        return check_answer(cut_after_answer(text), problem, {})

    def training_examples(self, problem: Problem, parsed: dict[str, Any], gold_label: bool = False) -> list[Example]:
        return [Example("student", self.student_messages(problem), answer_statement(problem.answer))]
