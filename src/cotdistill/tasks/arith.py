"""`arith`: multi-step arithmetic word problems generated from a seed.

Known answers plus every gold format (CoT text, Socratic sub-question/answer pairs, a
Python program) make it the offline quickstart's data and the tests' ground truth.
Train and test never overlap: a problem's split is a hash of its text.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from cotdistill.tasks.problem import Problem

NAMES = [("Tom", "he", "his"), ("Mia", "she", "her"), ("Omar", "he", "his"), ("Sara", "she", "her"),
         ("Ken", "he", "his"), ("Lena", "she", "her"), ("Ali", "he", "his"), ("Ivy", "she", "her")]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "shells"]
TEST_SHARE = 5  # one problem in five goes to the test split


@dataclass
class _Step:
    sentence: str
    subquestion: str
    explanation: str  # e.g. "After buying 5 more, Tom has 12 + 5 = 17 apples."
    code: list[str]
    value: int


def _next_step(rng: random.Random, value: int, name: str, he: str, his: str, item: str, last: bool) -> _Step:
    op = rng.choice(["add", "sub", "mul", "bags"] + (["share"] if last else []))
    divisors = [d for d in range(2, 7) if value % d == 0 and value // d > 1]
    if (op == "sub" and value < 4) or (op == "share" and not divisors):
        op = "add"
    if op == "add":
        b = rng.randint(2, 12)
        return _Step(f"{he.capitalize()} buys {b} more {item}.",
                     f"How many {item} does {name} have after buying {b} more?",
                     f"After buying {b} more, {name} has {value} + {b} = {value + b} {item}.",
                     [f"{item} = {item} + {b}"], value + b)
    if op == "sub":
        b = rng.randint(2, value - 1)
        return _Step(f"{he.capitalize()} gives {b} {item} to a friend.",
                     f"How many {item} does {name} have after giving {b} away?",
                     f"After giving {b} away, {name} has {value} - {b} = {value - b} {item}.",
                     [f"{item} = {item} - {b}"], value - b)
    if op == "mul":
        b, word = rng.choice([(2, "doubles"), (3, "triples")])
        return _Step(f"Then {name} {word} the number of {item} {he} has.",
                     f"How many {item} does {name} have after {word[:-2]}ing them?",
                     f"After {word[:-2]}ing them, {name} has {value} * {b} = {value * b} {item}.",
                     [f"{item} = {item} * {b}"], value * b)
    if op == "bags":
        bags, each = rng.randint(2, 5), rng.randint(2, 6)
        extra = bags * each
        return _Step(f"{he.capitalize()} gets {bags} bags with {each} {item} in each bag.",
                     f"How many {item} does {name} have after getting the bags?",
                     f"The bags hold {bags} * {each} = {extra} {item}, so {name} has {value} + {extra} = {value + extra} {item}.",
                     [f"bags = {bags} * {each}", f"{item} = {item} + bags"], value + extra)
    d = rng.choice(divisors)
    return _Step(f"{he.capitalize()} shares all {his} {item} equally among {d} friends.",
                 f"How many {item} does each friend get?",
                 f"Each friend gets {value} / {d} = {value // d} {item}.", [f"{item} = {item} // {d}"], value // d)


def make_problem(rng: random.Random, steps: int = 2, max_start: int = 20) -> Problem:
    """One problem of `steps` operations; the id is left for the caller to assign."""
    name, he, his = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    start = value = rng.randint(2, max_start)
    chain: list[_Step] = []
    for index in range(steps):
        step = _next_step(rng, value, name, he, his, item, last=index == steps - 1 and steps > 1)
        chain.append(step)
        value = step.value
    ends_in_share = chain[-1].subquestion.endswith("each friend get?")
    final_question = chain[-1].subquestion if ends_in_share else f"How many {item} does {name} have now?"
    question = " ".join([f"{name} has {start} {item}."] + [s.sentence for s in chain] + [final_question])
    cot = " ".join(
        [f"{name} starts with {start} {item}."]
        + [s.explanation for s in chain]
        + [f"The answer is {value}."]
    )
    program = "\n".join([f"{item} = {start}"] + [line for s in chain for line in s.code] + [f"answer = {item}"])
    return Problem(
        id="",
        question=question,
        answer=str(value),
        gold={
            "cot": cot,
            "subquestions": [[s.subquestion, s.explanation] for s in chain],
            "program": program,
        },
    )


def _split_of(question: str) -> str:
    digest = int(hashlib.sha1(question.encode()).hexdigest(), 16)
    return "test" if digest % TEST_SHARE == 0 else "train"


def generate(split: str, n: int, seed: int = 0, steps: int = 2, max_start: int = 20) -> list[Problem]:
    """`n` distinct problems of one split. Same seed, same problems; splits are disjoint."""
    if split not in ("train", "test"):
        raise ValueError(f"arith has splits 'train' and 'test', not {split!r}")
    rng = random.Random(seed)
    seen: set[str] = set()
    problems: list[Problem] = []
    for _ in range(200 * n + 1000):
        if len(problems) == n:
            break
        problem = make_problem(rng, steps=steps, max_start=max_start)
        if problem.question in seen or _split_of(problem.question) != split:
            continue
        seen.add(problem.question)
        problems.append(Problem(f"arith-{split}-{len(problems)}", problem.question, problem.answer, "number", problem.gold))
    if len(problems) < n:
        raise ValueError(f"arith could only make {len(problems)} distinct {split} problems; ask for fewer or more steps")
    return problems
