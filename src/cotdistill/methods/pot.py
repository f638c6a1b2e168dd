"""Program of Thought (PoTD baseline of Zhu et al. 2024): the teacher writes a Python program
that stores the answer in `answer`; it is kept only if it runs, in the sandbox, to the
gold answer. The student learns question -> program; at inference the program is run, so
arithmetic slips disappear.

Gold programs come from GSM8K's calculator annotations (`<<48/2=24>>`): each call becomes
an assignment, earlier results are referred to by name, and the last one is the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from cotdistill.answers import is_correct, normalize, out_of_bounds, parse_number
from cotdistill.methods.base import DEMO_QUESTIONS, Example, Method, Parsed, Prompts
from cotdistill.sandbox import shared_sandbox
from cotdistill.tasks import Problem

PROMPTS = Prompts(
    instruction="{question}\nWrite a Python program that computes the answer and stores it in a variable "
    "named `answer`. Reply with the program only, in a ```python block.",
    demonstrations=tuple(zip(DEMO_QUESTIONS, (
        "```python\nmorning = 24\nafternoon = 18\nsold = 30\nanswer = morning + afternoon - sold\n```",
        "```python\nprice = 7\npeople = 23 + 2\nanswer = people * price\n```",
        "```python\ntulips = 5 * 8\nred = tulips / 2\nanswer = tulips - red\n```",
    ))),
)
_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
_LITERAL = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def extract_program(text: str) -> str | None:
    """The first fenced code block, or the whole reply if it is bare code assigning `answer`."""
    match = _BLOCK.search(text)
    if match:
        return match.group(1).strip() or None
    return text.strip() if re.search(r"^\s*answer\s*=", text, re.MULTILINE) else None


def fenced(program: str) -> str:
    return f"```python\n{program}\n```"


def program_from_calculations(calculations: list[list[str]], answer: str | None = None) -> str | None:
    """GSM8K calculator calls as a program: `step2 = 48 + step1`, ..., `answer = stepK`.

    A literal equal to an earlier result is replaced by that result's name, so the program
    shows the data flow rather than repeating numbers. The answer is the last step whose
    annotated result is `answer` (solutions often end with a restating or checking step),
    else the last step.
    """
    lines: list[str] = []
    results: list[tuple[Fraction, str]] = []
    for index, (expression, value) in enumerate(calculations, 1):
        expression = expression.replace(",", "").replace("$", "").replace("^", "**")
        expression = re.sub(r"(?<=\d)\s*[x×]\s*(?=\d)", " * ", expression)
        expression = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", expression)

        def name_of(match: re.Match[str]) -> str:
            number = parse_number(match.group(0))
            if number is None:
                return match.group(0)
            return next((name for result, name in reversed(results) if result == number), match.group(0))

        lines.append(f"step{index} = {_LITERAL.sub(name_of, expression)}")
        result = parse_number(value)
        if result is not None:
            results.append((result, f"step{index}"))
    if not lines:
        return None
    gold = parse_number(answer) if answer is not None else None
    final = next((name for result, name in reversed(results) if result == gold), f"step{len(lines)}")
    return "\n".join(lines + [f"answer = {final}"])


def check_programs(programs: Sequence[str | None], problems: Sequence[Problem],
                   fields: Sequence[dict[str, Any]]) -> list[Parsed]:
    """Run every program in the sandbox (in parallel) and compare its answer with the gold one."""
    runnable = [(i, p) for i, p in enumerate(programs) if p]
    outcomes = {}
    if runnable:
        outcomes = dict(zip((i for i, _ in runnable), shared_sandbox().run_many([p for _, p in runnable])))
    results = []
    for i, problem in enumerate(problems):
        outcome = outcomes.get(i)
        if outcome is None:
            results.append(Parsed(None, fields[i], False, "no program"))
        elif not outcome.ok:
            results.append(Parsed(None, fields[i], False, f"program {outcome.error}"))
        elif problem.kind == "number" and (why := out_of_bounds(outcome.answer or "")):
            results.append(Parsed(None, fields[i], False, f"answer out of bounds: {why}"))
        elif not is_correct(outcome.answer or "", problem.answer, problem.kind):
            results.append(Parsed(outcome.answer, fields[i], False, "wrong answer"))
        else:
            results.append(Parsed(normalize(outcome.answer or "", problem.kind), fields[i], True, "ok"))
    return results


class PoT(Method):
    name = "pot"
    gold_stands_in = ("programs built from the dataset's calculator annotations stand in for the teacher's programs")
    description = "program of thought: a Python program computing `answer`, run in the sandbox"
    prompts = PROMPTS
    runs_programs = True

    def answers(self, texts: Sequence[str], problems: Sequence[Problem]) -> list[str | None]:
        """What each reply's program computes, run in the sandbox (None if it does not run)."""
        outcomes = shared_sandbox().run_many([extract_program(text) or "" for text in texts])
        return [o.answer if o.ok else None for o in outcomes]

    def gold_rationale(self, problem: Problem) -> str | None:
        if "program" in problem.gold:
            return fenced(problem.gold["program"])
        program = program_from_calculations(problem.gold.get("calculations") or [], problem.answer)
        return fenced(program) if program else None

    def parse(self, text: str, problem: Problem) -> Parsed:
        return self.parse_many([text], [problem])[0]

    def parse_many(self, texts: Sequence[str], problems: Sequence[Problem]) -> list[Parsed]:
        programs = [extract_program(text) for text in texts]
        return check_programs(programs, problems, [{"program": p} if p else {} for p in programs])

    def training_examples(self, problem: Problem, parsed: dict[str, Any], gold_label: bool = False) -> list[Example]:
        return [Example("student", self.student_messages(problem), fenced(parsed["program"]))]
