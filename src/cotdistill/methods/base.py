"""What every method shares: the parsed-reply and training-example records, the few-shot
prompt built from an instruction template and demonstrations, prompt overrides, and the
declarations the rest of the toolkit reads instead of a method's name.

A method's own module holds everything specific to its format, its pipelines included;
this module holds only the mechanics, so reading `cot.py` or `pot.py` tells the whole
story of that format, and adding a method touches one file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cotdistill.answers import extract_strict, is_correct, normalize, out_of_bounds
from cotdistill.errors import CotdistillError
from cotdistill.models.contract import Backend, Completion, Messages
from cotdistill.pipeline import Settings, Trace, call_stage
from cotdistill.tasks import Problem
from cotdistill.tasks.records import read_yaml

ANSWER_HINT = {
    "number": "a number",
    "yesno": "yes or no",
    "choice": "the letter of the choice",
    "text": "a short phrase",
}

# The questions of every method's few-shot demonstrations (written for this project, not
# copied from any paper); each method writes its own replies to them.
DEMO_QUESTIONS = (
    "A baker makes 24 rolls in the morning and 18 in the afternoon. He sells 30 rolls. How many rolls are left?",
    "Each ticket costs $7. A class of 23 students and 2 teachers goes to the museum. "
    "How much do the tickets cost in total?",
    "A garden has 5 rows of 8 tulips. Half of the tulips are red. How many tulips are not red?",
)
DEMO_ANSWERS = ("12", "175", "20")


@dataclass(frozen=True)
class Parsed:
    answer: str | None
    fields: dict[str, Any]
    kept: bool
    reason: str  # "ok", or why the reply is rejected


@dataclass(frozen=True)
class Example:
    """One supervised example: which student learns it (`role`), its prompt and its target.
    `demonstrations`: how many leading (user, assistant) turn pairs of `messages` are
    in-context demonstrations, the only part training may drop to fit its token limit
    (other earlier turns, e.g. a Socratic QA's answered sub-questions, are the problem)."""

    role: str
    messages: Messages
    completion: str
    demonstrations: int = 0


@dataclass(frozen=True)
class Prompts:
    """A teacher prompt: `instruction` is a template with {question} and {answer_hint}."""

    instruction: str
    demonstrations: tuple[tuple[str, str], ...]  # (question, reply in the method's format)


def load_prompts(path: str | Path, default: Prompts) -> Prompts:
    """Prompts from a YAML file with `instruction` and/or `demonstrations: [{question, reply}]`."""
    path = Path(path)
    if not path.is_file():
        raise CotdistillError(f"{path}: no such prompts file")
    spec = read_yaml(path) or {}
    if not isinstance(spec, dict) or set(spec) - {"instruction", "demonstrations"}:
        raise CotdistillError(f"{path}: a prompts file holds only 'instruction' and 'demonstrations'")
    prompts = default
    if "instruction" in spec:
        instruction = str(spec["instruction"])
        if "{question}" not in instruction:
            raise CotdistillError(f"{path}: field 'instruction' must contain {{question}}")
        try:  # the placeholders the methods fill in; braces meant literally are written {{ }}
            instruction.format(question="", answer_hint="")
        except (KeyError, IndexError, ValueError) as error:
            raise CotdistillError(f"{path}: field 'instruction' has {error!s} where only {{question}} and "
                                  "{answer_hint} are filled in (write literal braces as {{ }})") from None
        prompts = replace(prompts, instruction=instruction)
    if "demonstrations" in spec:
        demos = []
        for index, demo in enumerate(spec["demonstrations"] or []):
            if not isinstance(demo, dict) or not {"question", "reply"} <= set(demo):
                raise CotdistillError(f"{path}: demonstrations[{index}] needs 'question' and 'reply'")
            demos.append((str(demo["question"]), str(demo["reply"])))
        prompts = replace(prompts, demonstrations=tuple(demos))
    return prompts


class Method:
    """Base of every method. Subclasses set `name`, `description`, `prompts`, `roles` and
    implement `gold_rationale`, `parse` and `training_examples`; the class attributes
    below declare what else they do, and are all that annotate, train and eval consult."""

    name: str
    description: str
    prompts: Prompts
    roles: tuple[str, ...] = ("student",)  # the students its examples can train
    train_roles: tuple[str, ...] = ("student",)  # the ones `train` uses by default
    answering_roles: tuple[str, ...] = ("student",)  # the ones that answer on their own (what a dev set scores)
    stop: tuple[str, ...] = ("\nQuestion:",)  # base models without a chat template run on past their answer
    runs_programs: bool = False  # its answer is what the reply's program computes, run in the sandbox
    pipelines: dict[str, tuple[str, ...]] = {"single": ("model",)}  # eval --pipeline NAME -> its stages, by `run`
    supports_gold_label: bool = False  # train --gold-label: the dataset's answer replaces the teacher's in targets
    specializes: bool = False  # its rationales can be taught in model specialization's formats (train --formats)
    solver_verifies: bool = False  # annotate --verify-with: a solver answers with each reply (`solver_messages`)
    gold_stands_in: str = ""  # what the gold teacher's replies are, where they stand in for an LLM teacher's

    def __init__(self, prompts: Prompts | None = None):
        if prompts is not None:
            self.prompts = prompts

    def instruction(self, problem: Problem) -> str:
        return self.prompts.instruction.format(question=problem.question, answer_hint=ANSWER_HINT[problem.kind])

    def teacher_messages(self, problem: Problem) -> Messages:
        return self.demonstration_turns(len(self.prompts.demonstrations)) + [
            {"role": "user", "content": self.instruction(problem)}]

    def demonstration_turns(self, shots: int) -> Messages:
        """The first `shots` demonstrations as earlier chat turns: the teacher's prompt, and a
        student's few-shot evaluation (eval `shots`, model specialization's in-context test)."""
        if shots > len(self.prompts.demonstrations):
            raise CotdistillError(f"method {self.name} has {len(self.prompts.demonstrations)} demonstrations, not "
                                  f"{shots}: ask for fewer shots, or write more in a prompts file (--prompts)")
        messages: Messages = []
        for question, reply in self.prompts.demonstrations[:shots]:
            messages.append({"role": "user", "content": self.instruction(Problem("", question, ""))})
            messages.append({"role": "assistant", "content": reply})
        return messages

    def student_messages(self, problem: Problem) -> Messages:
        return [{"role": "user", "content": self.instruction(problem)}]

    def gold_rationale(self, problem: Problem) -> str | None:
        """The task's own reference reasoning written in this method's format, if it has one."""
        raise NotImplementedError

    def parse(self, text: str, problem: Problem) -> Parsed:
        raise NotImplementedError

    def parse_many(self, texts: Sequence[str], problems: Sequence[Problem]) -> list[Parsed]:
        """Parse a batch; methods that execute programs override this to run them in parallel."""
        return [self.parse(text, problem) for text, problem in zip(texts, problems)]

    def training_examples(self, problem: Problem, parsed: dict[str, Any], gold_label: bool = False) -> list[Example]:
        """The examples one kept annotation teaches; `gold_label` only where `supports_gold_label`."""
        raise NotImplementedError

    def solver_messages(self, problem: Problem, parsed: dict[str, Any]) -> Messages:
        """Where `solver_verifies`: the prompt that asks a solver to answer with this reply."""
        raise NotImplementedError(f"method {self.name} has no solver stage")

    def answers(self, texts: Sequence[str], problems: Sequence[Problem]) -> list[str | None]:
        """What a student's final replies answer: their "The answer is" statement."""
        return [extract_strict(text, problem.kind) for text, problem in zip(texts, problems)]

    def run(self, pipeline: str, problems: Sequence[Problem], models: dict[str, Backend],
            settings: Settings) -> list[Trace]:
        """Answer by one of `pipelines` (already checked); here `single`: one call with the
        student prompt, after `settings.shots` demonstrations. A method with more pipelines
        extends this in its own module."""
        traces = [Trace("", None) for _ in problems]
        shots = self.demonstration_turns(settings.shots)
        completions = call_stage("model", models["model"], [shots + self.student_messages(p) for p in problems], traces,
                                 settings, self.stop)
        self.finish(traces, problems, completions)
        return traces

    def finish(self, traces: Sequence[Trace], problems: Sequence[Problem], completions: Sequence[Completion]) -> None:
        """The last stage's replies become the traces' texts and answers."""
        for trace, completion, answer in zip(traces, completions, self.answers([c.text for c in completions], problems)):
            trace.text, trace.answer = completion.text, answer


def check_answer(text: str, problem: Problem, fields: dict[str, Any]) -> Parsed:
    """Verify the final answer stated in `text` against the gold one."""
    answer = extract_strict(text, problem.kind)
    if answer is None:
        return Parsed(None, fields, False, "no final answer statement")
    if problem.kind == "number" and (why := out_of_bounds(answer)):
        return Parsed(None, fields, False, f"answer out of bounds: {why}")
    if not is_correct(answer, problem.answer, problem.kind):
        return Parsed(answer, fields, False, "wrong answer")
    return Parsed(normalize(answer, problem.kind), fields, True, "ok")


def cut_after_answer(text: str) -> str:
    """The reply up to the end of the line that states the answer: trailing chatter is not taught."""
    lower = text.lower()
    at = max(lower.rfind("the answer is"), lower.rfind("the final answer is"), text.rfind("####"))
    end = text.find("\n", at)
    return (text if end == -1 else text[:end]).strip()


_FINAL_SENTENCE = re.compile(r"\s*(?:the (?:final )?answer is|####)[^\n]*$", re.IGNORECASE)


def without_answer(text: str) -> str:
    """The reasoning with its closing answer statement removed (a rationale, not a label)."""
    return _FINAL_SENTENCE.sub("", cut_after_answer(text)).strip()


def answer_statement(answer: str) -> str:
    return f"The answer is {answer}."


def gold_cot(problem: Problem) -> str | None:
    """The task's reference reasoning as prose: arith's CoT, GSM8K's solution steps."""
    if "cot" in problem.gold:
        return problem.gold["cot"]
    if problem.gold.get("solution"):
        return " ".join(problem.gold["solution"]) + " " + answer_statement(problem.answer)
    return None
