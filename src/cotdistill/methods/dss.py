"""Distilling Step-by-Step (Hsieh et al. 2023): the teacher's CoT reply is split into a
rationale and a label, and the student learns two tasks on the same question, told apart
by a prefix: `predict:` -> label and `explain:` -> rationale. Inference runs `predict:`
only, so the rationale costs nothing at test time.

The label target is written "The answer is X." so every method is scored by the same
strict extraction.
"""

from __future__ import annotations

from typing import Any

from cotdistill.methods.base import Example, Parsed, answer_statement, without_answer
from cotdistill.methods.cot import CoT
from cotdistill.models.contract import Messages
from cotdistill.tasks import Problem

PREDICT, EXPLAIN = "predict: ", "explain: "


class DSS(CoT):
    name = "dss"
    gold_stands_in = ("the dataset's human-written solutions stand in for the teacher's rationales (the paper: PaLM 540B's)")
    description = "distilling step-by-step: rationale + label, two prefixed tasks; label-only inference"
    roles = ("label", "rationale")
    train_roles = ("label", "rationale")
    answering_roles = ("label", "rationale")  # one student: inference runs its label task
    supports_gold_label = True
    specializes = False  # its targets are two prefixed tasks, not one rationale

    def parse(self, text: str, problem: Problem) -> Parsed:
        parsed = super().parse(text, problem)
        fields = {"rationale": without_answer(text), "label": parsed.answer}
        if parsed.kept and not fields["rationale"]:
            return Parsed(parsed.answer, fields, False, "no rationale before the answer")
        return Parsed(parsed.answer, fields, parsed.kept, parsed.reason)

    def student_messages(self, problem: Problem) -> Messages:
        """The inference prompt: the label task."""
        return [{"role": "user", "content": PREDICT + problem.question}]

    def training_examples(self, problem: Problem, parsed: dict[str, Any], gold_label: bool = False) -> list[Example]:
        """Both tasks; `gold_label` teaches the dataset's label instead of the teacher's."""
        label = problem.answer if gold_label else parsed["label"]
        return [
            Example("label", self.student_messages(problem), answer_statement(label)),
            Example("rationale", [{"role": "user", "content": EXPLAIN + problem.question}], parsed["rationale"]),
        ]
