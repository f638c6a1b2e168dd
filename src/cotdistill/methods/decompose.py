"""Divide-or-Conquer (Wu et al. 2024): a decomposer writes at most N sub-questions (or
"No decomposition") without answering them; a solver answers the original question with
those sub-questions as hints. The paper's advice is to distil the decomposer.

A decomposition states no answer, so the teacher's reply is checked for form only; the
optional rejection filter (`annotate --verify-with SOLVER`) keeps a decomposition only
if a solver reaches the gold answer with it, and stores that solver's solution.
Solver examples use that solution, or else the task's gold reasoning (the paper's
"final answer replaced by gold" variant).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from cotdistill.methods.base import (
    ANSWER_HINT, DEMO_QUESTIONS, Example, Method, Parsed, Prompts, answer_statement, gold_cot, without_answer,
)
from cotdistill.models.contract import Backend, Messages
from cotdistill.pipeline import Settings, Trace, call_stage
from cotdistill.tasks import Problem

MAX_SUBQUESTIONS = 5
NONE = "No decomposition"
PROMPTS = Prompts(
    instruction="{question}\nDo not solve the problem. Break it into at most "
    f"{MAX_SUBQUESTIONS} simpler sub-questions, one per line, numbered \"1.\", \"2.\", ... "
    f'If it needs no breaking down, write "{NONE}".',
    demonstrations=tuple(zip(DEMO_QUESTIONS, (
        "1. How many rolls does the baker make in all?\n2. How many rolls are left after he sells 30?",
        "1. How many people go to the museum?\n2. How much do 25 tickets cost?",
        "1. How many tulips are in the garden?\n2. How many of them are red?\n3. How many are not red?",
    ))),
)
SOLVER_INSTRUCTION = ("{question}\nThese sub-questions may help:\n{subquestions}\n"
                      'Answer them, then finish with "The answer is <{answer_hint}>."')
_NUMBERED = re.compile(r"^\s*(\d+)[.)]\s*(.+?)\s*$")


def numbered(subquestions: list[str]) -> str:
    return "\n".join(f"{i}. {q}" for i, q in enumerate(subquestions, 1)) or NONE


class Decompose(Method):
    name = "decompose"
    gold_stands_in = ("the GSM8K Socratic file's human-written sub-questions stand in for the teacher's decompositions")
    description = "divide-or-conquer: sub-questions only (decomposer), answered by a separate solver"
    prompts = PROMPTS
    roles = ("decomposer", "solver")
    train_roles = ("decomposer",)
    answering_roles = ()  # the decomposer and the solver answer only as a pipeline's two stages
    pipelines = {"decompose_solve": ("decomposer", "solver")}
    supports_gold_label = True
    solver_verifies = True  # Divide-or-Conquer's rejection filter: kept if a solver reaches the gold answer with it

    def gold_rationale(self, problem: Problem) -> str | None:
        steps = problem.gold.get("subquestions")
        return numbered([q for q, _ in steps]) if steps else None

    def parse(self, text: str, problem: Problem) -> Parsed:
        text = text.strip()
        if text.lower().startswith(NONE.lower()):
            return Parsed(None, {"subquestions": []}, True, "ok")
        subquestions: list[str] = []
        for line in text.splitlines():
            match = _NUMBERED.match(line)
            if match and int(match.group(1)) == len(subquestions) + 1:
                subquestions.append(match.group(2))
            elif line.strip() and subquestions:
                break  # anything after the list is not part of the decomposition
        if not subquestions:
            return Parsed(None, {}, False, "no numbered sub-questions")
        if len(subquestions) > MAX_SUBQUESTIONS:
            return Parsed(None, {"subquestions": subquestions}, False, f"more than {MAX_SUBQUESTIONS} sub-questions")
        return Parsed(None, {"subquestions": subquestions}, True, "ok")

    def solver_messages(self, problem: Problem, parsed: dict[str, Any]) -> Messages:
        """The solver's prompt: the problem and a decomposition's sub-questions."""
        content = SOLVER_INSTRUCTION.format(question=problem.question, subquestions=numbered(parsed["subquestions"]),
                                            answer_hint=ANSWER_HINT[problem.kind])
        return [{"role": "user", "content": content}]

    def run(self, pipeline: str, problems: Sequence[Problem], models: dict[str, Backend],
            settings: Settings) -> list[Trace]:
        """`decompose_solve`: the decomposer writes sub-questions, the solver answers with them."""
        traces = [Trace("", None) for _ in problems]
        plans = call_stage("decomposer", models["decomposer"], [self.student_messages(p) for p in problems], traces,
                           settings, self.stop)
        parsed = [{"subquestions": self.parse(c.text, p).fields.get("subquestions", [])} for c, p in zip(plans, problems)]
        requests = [self.solver_messages(p, fields) for p, fields in zip(problems, parsed)]
        self.finish(traces, problems, call_stage("solver", models["solver"], requests, traces, settings, self.stop))
        return traces

    def training_examples(self, problem: Problem, parsed: dict[str, Any], gold_label: bool = False) -> list[Example]:
        """`gold_label`: the solver's final answer replaced by the gold one (a Divide-or-Conquer
        solver variant)."""
        subquestions = parsed["subquestions"]
        examples = [Example("decomposer", self.student_messages(problem), numbered(subquestions))]
        solution = parsed.get("solution") or gold_cot(problem)
        if solution and gold_label:
            solution = f"{without_answer(solution)} {answer_statement(problem.answer)}".strip()
        if solution:
            examples.append(Example("solver", self.solver_messages(problem, parsed), solution))
        return examples
