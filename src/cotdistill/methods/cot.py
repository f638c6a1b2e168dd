"""Plain chain of thought (CoT): the teacher writes step-by-step reasoning ending in
"The answer is X."; the student learns question -> that reasoning; inference is one call.

Everything about the format lives here: the teacher's few-shot prompt, parsing and
verifying a reply, the task's own gold rationale, the student's prompt and target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cotdistill.answers import extract_strict, is_correct, normalize
from cotdistill.models import Messages
from cotdistill.tasks import Problem

ANSWER_HINT = {
    "number": "a number",
    "yesno": "yes or no",
    "choice": "the letter of the choice",
    "text": "a short phrase",
}

# Few-shot demonstrations written for this project (not copied from any paper's prompt).
DEMONSTRATIONS = [
    ("A baker makes 24 rolls in the morning and 18 in the afternoon. He sells 30 rolls. "
     "How many rolls are left?",
     "The baker makes 24 + 18 = 42 rolls. After selling 30, 42 - 30 = 12 rolls are left. The answer is 12."),
    ("Each ticket costs $7. A class of 23 students and 2 teachers goes to the museum. "
     "How much do the tickets cost in total?",
     "There are 23 + 2 = 25 people. The tickets cost 25 * 7 = $175. The answer is 175."),
    ("A garden has 5 rows of 8 tulips. Half of the tulips are red. How many tulips are not red?",
     "The garden has 5 * 8 = 40 tulips. Half of them, 40 / 2 = 20, are red, so 40 - 20 = 20 are not red. "
     "The answer is 20."),
]


@dataclass(frozen=True)
class Parsed:
    answer: str | None
    fields: dict[str, Any]
    kept: bool
    reason: str  # "ok", or why the reply is rejected


def instruction(problem: Problem) -> str:
    return (f"{problem.question}\nSolve it step by step, then finish with "
            f"\"The answer is <{ANSWER_HINT[problem.kind]}>.\"")


class CoT:
    name = "cot"
    description = "chain of thought: step-by-step reasoning ending in 'The answer is X.'"
    stop: tuple[str, ...] = ("\nQuestion:",)  # base models without a chat template run on past their answer

    def teacher_messages(self, problem: Problem) -> Messages:
        messages: Messages = []
        for question, rationale in DEMONSTRATIONS:
            messages.append({"role": "user", "content": instruction(Problem("", question, ""))})
            messages.append({"role": "assistant", "content": rationale})
        messages.append({"role": "user", "content": instruction(problem)})
        return messages

    def student_messages(self, problem: Problem) -> Messages:
        return [{"role": "user", "content": instruction(problem)}]

    def gold_rationale(self, problem: Problem) -> str | None:
        """The task's own reasoning in this format: arith's CoT, GSM8K's solution steps."""
        if "cot" in problem.gold:
            return problem.gold["cot"]
        if problem.gold.get("solution"):
            return " ".join(problem.gold["solution"]) + f" The answer is {problem.answer}."
        return None

    def parse(self, text: str, problem: Problem) -> Parsed:
        """Keep a reply only if it states a final answer and that answer is the gold one."""
        answer = extract_strict(text, problem.kind)
        if answer is None:
            return Parsed(None, {}, False, "no final answer statement")
        rationale = _cut_after_answer(text)
        if not is_correct(answer, problem.answer, problem.kind):
            return Parsed(answer, {"rationale": rationale}, False, "wrong answer")
        return Parsed(normalize(answer, problem.kind), {"rationale": rationale}, True, "ok")

    def training_examples(self, problem: Problem, parsed: dict[str, Any]) -> list[tuple[Messages, str]]:
        return [(self.student_messages(problem), parsed["rationale"])]


def _cut_after_answer(text: str) -> str:
    """The reply up to the end of the line that states the answer: trailing chatter is not taught."""
    lower = text.lower()
    at = max(lower.rfind("the answer is"), lower.rfind("the final answer is"), text.rfind("####"))
    end = text.find("\n", at)
    return (text if end == -1 else text[:end]).strip()
