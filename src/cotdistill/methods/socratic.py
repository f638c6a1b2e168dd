"""Socratic CoT (Shridhar et al. 2023): the teacher decomposes a problem into sub-question /
sub-answer pairs (q_j, s_j); chains whose final answer is wrong are dropped.

Three students can learn from a chain:
- `qg`, the question generator: P -> q_1 ... q_n, one example per problem, so its loss is
  exactly the paper's  -sum_j log p(q_j | P, q_<j);
- `qa`, the sub-problem solver: one example per step, P + (q, s)_<j + q_j -> s_j, i.e.
  -sum_j log p(s_j | P, (q, s)_<j, q_j); the last answer carries "The answer is X.";
- `unified`, one model writing the interleaved chain (the cheaper variant).
Inference alternates QG and QA until the last sub-question; the last answer is final.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from cotdistill.answers import extract_strict
from cotdistill.methods.base import (
    DEMO_QUESTIONS, Example, Method, Parsed, Prompts, answer_statement, check_answer, cut_after_answer,
    without_answer,
)
from cotdistill.models.contract import Backend, Messages
from cotdistill.pipeline import Settings, Trace, call_stage
from cotdistill.tasks import Problem

PROMPTS = Prompts(
    instruction="{question}\nBreak the problem into sub-questions and answer them in turn, writing "
    '"Q1: ...", "A1: ...", "Q2: ...", "A2: ..." on separate lines. '
    'Finish with "The answer is <{answer_hint}>."',
    demonstrations=tuple(zip(DEMO_QUESTIONS, (
        "Q1: How many rolls does the baker make in all?\nA1: He makes 24 + 18 = 42 rolls.\n"
        "Q2: How many rolls are left after he sells 30?\nA2: 42 - 30 = 12 rolls are left.\nThe answer is 12.",
        "Q1: How many people go to the museum?\nA1: 23 + 2 = 25 people go.\n"
        "Q2: How much do the tickets cost in total?\nA2: 25 * 7 = $175.\nThe answer is 175.",
        "Q1: How many tulips are in the garden?\nA1: There are 5 * 8 = 40 tulips.\n"
        "Q2: How many tulips are red?\nA2: Half of 40 is 40 / 2 = 20.\n"
        "Q3: How many tulips are not red?\nA3: 40 - 20 = 20 tulips are not red.\nThe answer is 20.",
    ))),
)
QG_INSTRUCTION = "{question}\nWhich sub-questions lead to the answer? Write them as \"Q1: ...\", \"Q2: ...\" on separate lines."
QA_INSTRUCTION = "{question}\nAnswer the last sub-question; if it is the final one, finish with \"The answer is X.\""
_LINE = re.compile(r"^\s*([QA])(\d+)\s*[:.]\s*(.*)$")


def chain_text(steps: list[list[str]]) -> str:
    return "\n".join(f"Q{i}: {q}\nA{i}: {a}" for i, (q, a) in enumerate(steps, 1))


def parse_chain(text: str) -> list[list[str]] | None:
    """[[q, a], ...] from "Q1: ... / A1: ..." lines, or None if they do not alternate in order."""
    steps: list[list[str]] = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        kind, number, content = match.group(1), int(match.group(2)), match.group(3).strip()
        if kind == "Q" and number == len(steps) + 1:
            steps.append([content, ""])
        elif kind == "A" and number == len(steps) and steps and not steps[-1][1]:
            steps[-1][1] = content
        else:
            return None
    if not steps or not all(a for _, a in steps):
        return None
    return [[q, without_answer(a) or a] for q, a in steps]  # the final statement is added back once


def parse_questions(text: str) -> list[str]:
    """The sub-questions a question generator wrote, "Q1: ..." lines in order, up to the
    first one it repeats: a small generator that loops writes the same questions until its
    token limit, and each one would cost the solver a round that adds nothing."""
    questions: list[str] = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and match.group(1) == "Q" and int(match.group(2)) == len(questions) + 1:
            question = match.group(3).strip()
            if question in questions:
                break
            questions.append(question)
    return questions


class Socratic(Method):
    name = "socratic"
    gold_stands_in = ("the GSM8K Socratic file's human-written sub-question chains stand in for the teacher's")
    description = "Socratic CoT: sub-question/sub-answer chain; question generator, solver or unified student"
    prompts = PROMPTS
    roles = ("unified", "qg", "qa")
    train_roles = ("unified",)
    answering_roles = ("unified",)  # qg and qa answer only in the question-answer loop
    pipelines = {"single": ("model",), "socratic": ("qg", "qa")}

    def gold_rationale(self, problem: Problem) -> str | None:
        """GSM8K Socratic's `sub-question ** step` pairs, or arith's sub-questions."""
        steps = problem.gold.get("subquestions")
        if not steps:
            return None
        return chain_text(steps) + "\n" + answer_statement(problem.answer)

    def parse(self, text: str, problem: Problem) -> Parsed:
        text = cut_after_answer(text)
        steps = parse_chain(text)
        if steps is None:
            return Parsed(None, {}, False, "no Q1/A1 sub-question chain")
        return check_answer(text, problem, {"steps": steps})

    def qg_messages(self, problem: Problem) -> Messages:
        return [{"role": "user", "content": QG_INSTRUCTION.format(question=problem.question)}]

    def qa_messages(self, problem: Problem, steps: list[list[str]], question: str) -> Messages:
        """The solver's prompt: the problem, the chain so far, and the sub-question to answer."""
        lines = [QA_INSTRUCTION.format(question=problem.question), chain_text(steps), f"Q{len(steps) + 1}: {question}"]
        return [{"role": "user", "content": "\n".join(line for line in lines if line)}]

    def run(self, pipeline: str, problems: Sequence[Problem], models: dict[str, Backend],
            settings: Settings) -> list[Trace]:
        """`socratic`: a question generator writes the sub-questions, and a solver answers them
        one by one with the chain so far; the last answer is final. `single`: the unified student."""
        if pipeline == "single":
            return super().run(pipeline, problems, models, settings)
        traces = [Trace("", None) for _ in problems]
        plans = call_stage("qg", models["qg"], [self.qg_messages(p) for p in problems], traces, settings, self.stop)
        questions = [parse_questions(c.text) or [p.question] for c, p in zip(plans, problems)]
        steps: list[list[list[str]]] = [[] for _ in problems]
        for j in range(max(len(q) for q in questions)):
            active = [i for i, q in enumerate(questions) if j < len(q)]
            requests = [self.qa_messages(problems[i], steps[i], questions[i][j]) for i in active]
            replies = call_stage("qa", models["qa"], requests, [traces[i] for i in active], settings, self.stop)
            for i, reply in zip(active, replies):
                steps[i].append([questions[i][j], reply.text])
        for trace, problem, chain_steps in zip(traces, problems, steps):
            trace.text = chain_steps[-1][1]
            trace.answer = extract_strict(trace.text, problem.kind)
        return traces

    def training_examples(self, problem: Problem, parsed: dict[str, Any], gold_label: bool = False) -> list[Example]:
        steps = parsed["steps"]
        final = answer_statement(problem.answer)
        examples = [
            Example("unified", self.student_messages(problem), chain_text(steps) + "\n" + final),
            Example("qg", self.qg_messages(problem), "\n".join(f"Q{i}: {q}" for i, (q, _) in enumerate(steps, 1))),
        ]
        for j, (question, answer) in enumerate(steps):
            target = f"{answer} {final}" if j == len(steps) - 1 else answer
            examples.append(Example("qa", self.qa_messages(problem, steps[:j], question), target))
        return examples
