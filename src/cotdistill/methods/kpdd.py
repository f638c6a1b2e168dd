"""Key-point-driven distillation (Zhu et al. 2024): the teacher first extracts the core
question, then the problem-solving information (the facts needed), then solves it step by
step, as text (KPDD-CoT) or as a Python program (KPDD-PoT, run in the sandbox). Replies
whose answer is wrong are dropped; the student learns all three parts in one output.

Gold rationales from a dataset: the question's last interrogative sentence is its core
question, its other sentences the information, its reference solution the solution.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from cotdistill.methods.base import (
    DEMO_QUESTIONS, Example, Method, Parsed, Prompts, check_answer, cut_after_answer, gold_cot,
)
from cotdistill.methods.pot import PoT, check_programs, extract_program, fenced
from cotdistill.models.contract import Backend, Messages
from cotdistill.pipeline import Settings, Trace, call_stage
from cotdistill.tasks import Problem

CORE, INFO, SOLUTION = "Core question:", "Problem-solving information:", "Solution:"
_HEADINGS = re.compile(rf"^\s*(?:\*\*)?({CORE}|{INFO}|{SOLUTION})(?:\*\*)?", re.IGNORECASE | re.MULTILINE)
_SENTENCE = re.compile(r"(?<=[.?!])\s+(?=[A-Z0-9$\"'])")
_ASKING_CLAUSE = re.compile(r",\s+(?=(?:how|what|which|who|when|where|calculate|find|determine)\b)", re.IGNORECASE)

_KEY_POINTS = (
    ("How many rolls are left?",
     ["The baker makes 24 rolls in the morning.", "He makes 18 rolls in the afternoon.", "He sells 30 rolls."]),
    ("How much do the tickets cost in total?",
     ["Each ticket costs $7.", "23 students and 2 teachers go."]),
    ("How many tulips are not red?", ["There are 5 rows of 8 tulips.", "Half of the tulips are red."]),
)
_INSTRUCTION = ("{question}\nFirst write the core question, then the problem-solving information (the facts "
                f'needed), then the solution, under the headings "{CORE}", "{INFO}" and "{SOLUTION}".')


def key_points(core: str, info: list[str]) -> str:
    return f"{CORE} {core}\n{INFO}\n" + "\n".join(f"{i}. {fact}" for i, fact in enumerate(info, 1))


def gold_key_points(question: str) -> str:
    """The last interrogative sentence is the core question, the other sentences the facts.

    One-sentence questions are split at the clause that asks: "If A, how many C?" and
    "How many C if A?" both give core "How many C?" and fact "A."; a question with no such
    clause is its own single fact.
    """
    sentences = [s.strip() for s in _SENTENCE.split(question.strip()) if s.strip()]
    if len(sentences) == 1:
        sentences = _split_clauses(sentences[0])
    asks = [i for i, s in enumerate(sentences) if s.endswith("?")]
    core = asks[-1] if asks else len(sentences) - 1
    facts = [s for i, s in enumerate(sentences) if i != core] or sentences
    return key_points(sentences[core], facts)


def _split_clauses(sentence: str) -> list[str]:
    parts = _ASKING_CLAUSE.split(sentence, maxsplit=1)
    if len(parts) == 2:
        condition, ask = parts
    else:
        ask, sep, condition = sentence.partition(" if ")
        if not sep:
            return [sentence]
        ask += "?"
    condition = re.sub(r"^if\s+", "", condition.rstrip("?."), flags=re.IGNORECASE)
    return [_capitalised(condition + "."), _capitalised(ask)]


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


CORE_STAGE = '{question}\nWhat is the core question of this problem? Reply with one line: "Core question: ..."'
INFO_STAGE = ("{question}\nCore question: {core}\nList the problem-solving information (the facts needed to "
              "answer the core question), one per line, numbered.")


def core_messages(problem: Problem) -> Messages:
    """Stage 1 of the three-stage KPDD pipeline: extract the core question."""
    return [{"role": "user", "content": CORE_STAGE.format(question=problem.question)}]


def info_messages(problem: Problem, core: str) -> Messages:
    """Stage 2: extract the problem-solving information for that core question."""
    return [{"role": "user", "content": INFO_STAGE.format(question=problem.question, core=core)}]


def parse_core(text: str) -> str:
    match = re.search(rf"{CORE}\s*(.+)", text, re.IGNORECASE)
    return (match.group(1) if match else text.strip().split("\n")[0]).strip()


def split_sections(text: str) -> dict[str, str] | None:
    """{core, info, solution} from the three headed sections, in order; None if one is missing."""
    marks = list(_HEADINGS.finditer(text))
    found = [m.group(1).lower() for m in marks]
    if found[:3] != [CORE.lower(), INFO.lower(), SOLUTION.lower()]:
        return None
    bodies = [text[m.end(): (marks[i + 1].start() if i + 1 < len(marks) else len(text))].strip()
              for i, m in enumerate(marks[:3])]
    return dict(zip(("core", "info", "solution"), bodies)) if all(bodies) else None


def joined(sections: dict[str, str], solution: str) -> str:
    return f"{CORE} {sections['core']}\n{INFO}\n{sections['info']}\n{SOLUTION}\n{solution}"


class _KeyPoints(Method):
    """What both KPDD formats share: the three-stage pipeline beside the one-call student."""

    pipelines = {"single": ("model",), "kpdd": ("core", "info", "solution")}

    def solution_messages(self, problem: Problem, core: str, info: str) -> Messages:
        """Stage 3: solve, given the key points the first two stages extracted."""
        return [{"role": "user", "content": f"{self.instruction(problem)}\n{CORE} {core}\n{INFO}\n{info}\n"
                                            f"Now write the {SOLUTION[:-1].lower()}."}]

    def run(self, pipeline: str, problems: Sequence[Problem], models: dict[str, Backend],
            settings: Settings) -> list[Trace]:
        """`kpdd`: the three stages as three calls: core question, problem-solving
        information, then the solution (text for kpdd_cot, a program for kpdd_pot)."""
        if pipeline == "single":
            return super().run(pipeline, problems, models, settings)
        traces = [Trace("", None) for _ in problems]
        cores = [parse_core(c.text) for c in call_stage("core", models["core"], [core_messages(p) for p in problems],
                                                         traces, settings, self.stop)]
        infos = [c.text for c in call_stage("info", models["info"],
                                            [info_messages(p, core) for p, core in zip(problems, cores)],
                                            traces, settings, self.stop)]
        requests = [self.solution_messages(p, core, info) for p, core, info in zip(problems, cores, infos)]
        self.finish(traces, problems, call_stage("solution", models["solution"], requests, traces, settings, self.stop))
        return traces


class KPDDCoT(_KeyPoints):
    name = "kpdd_cot"
    gold_stands_in = ("key points cut from the question's own sentences (its last is the core question) and the dataset's solutions stand in for the teacher's extracted key points and rationales")
    description = "key-point-driven CoT: core question, problem-solving information, step-by-step solution"
    prompts = Prompts(
        instruction=_INSTRUCTION + ' Finish with "The answer is <{answer_hint}>."',
        demonstrations=tuple(
            (question, f"{key_points(core, info)}\n{SOLUTION}\n{reply}")
            for question, (core, info), reply in zip(DEMO_QUESTIONS, _KEY_POINTS, (
                "The baker makes 24 + 18 = 42 rolls. After selling 30, 42 - 30 = 12 rolls are left. The answer is 12.",
                "There are 23 + 2 = 25 people. The tickets cost 25 * 7 = $175. The answer is 175.",
                "There are 5 * 8 = 40 tulips, 40 / 2 = 20 of them red, so 40 - 20 = 20 are not red. The answer is 20.",
            ))
        ),
    )

    def gold_rationale(self, problem: Problem) -> str | None:
        cot = gold_cot(problem)
        return f"{gold_key_points(problem.question)}\n{SOLUTION}\n{cot}" if cot else None

    def parse(self, text: str, problem: Problem) -> Parsed:
        sections = split_sections(cut_after_answer(text))
        if sections is None:
            return Parsed(None, {}, False, "missing core question, information or solution section")
        return check_answer(sections["solution"], problem, sections)

    def training_examples(self, problem: Problem, parsed: dict[str, Any], gold_label: bool = False) -> list[Example]:
        return [Example("student", self.student_messages(problem), joined(parsed, parsed["solution"]))]


class KPDDPoT(_KeyPoints):
    name = "kpdd_pot"
    gold_stands_in = ("key points cut from the question's own sentences and programs from the calculator annotations stand in for the teacher's key points and programs")
    runs_programs = True
    description = "key-point-driven PoT: core question, problem-solving information, then a Python program"
    prompts = Prompts(
        instruction=_INSTRUCTION + " The solution is a Python program, in a ```python block, that stores "
        "the answer in a variable named `answer`.",
        demonstrations=tuple(
            (question, f"{key_points(core, info)}\n{SOLUTION}\n{program}")
            for question, (core, info), (_, program) in zip(DEMO_QUESTIONS, _KEY_POINTS, PoT.prompts.demonstrations)
        ),
    )

    def gold_rationale(self, problem: Problem) -> str | None:
        program = PoT().gold_rationale(problem)
        return f"{gold_key_points(problem.question)}\n{SOLUTION}\n{program}" if program else None

    def parse(self, text: str, problem: Problem) -> Parsed:
        return self.parse_many([text], [problem])[0]

    def parse_many(self, texts: Sequence[str], problems: Sequence[Problem]) -> list[Parsed]:
        sections = [split_sections(text) for text in texts]
        programs = [extract_program(s["solution"]) if s else None for s in sections]
        fields = [{**s, "solution": p} if s and p else {} for s, p in zip(sections, programs)]
        parsed = check_programs(programs, problems, fields)
        return [Parsed(None, {}, False, "missing core question, information or solution section") if s is None else p
                for s, p in zip(sections, parsed)]

    def training_examples(self, problem: Problem, parsed: dict[str, Any], gold_label: bool = False) -> list[Example]:
        return [Example("student", self.student_messages(problem), joined(parsed, fenced(parsed["solution"])))]

    answers = PoT.answers  # the program in the solution section, run in the sandbox
