"""The cost of a recipe before it runs (`cotdistill run NAME --dry-run`): per step, the
teacher's requests and tokens, the training tokens x epochs, the evaluation problems and
the tokens they may generate; with prices and a pace, dollars and hours. It reads the
recipe's data files (to count problems and measure prompts and gold replies) and writes
nothing: no run directory, no store.

How each figure is made, so a reader can judge it:
- tokens are counted with the student's tokenizer where it is a local directory, else with
  the embedded SmolLM2's (other tokenizers differ by some tens of percent); beyond 256 texts
  a step counts a spread sample and scales by bytes;
- a teacher's reply is estimated by the length of the gold reply in the method's format (a
  correct reply is about that long), and bounded by max_new_tokens per request;
- a training example is the student prompt plus the gold target, cut at max_length, one per
  role trained (socratic's `qa` student learns one per sub-question: more) and per format
  mixed, each kept annotation assumed kept;
- an evaluation is bounded by max_new_tokens per call (students stop earlier, untrained
  ones often do not); hours use that bound, so they are an upper estimate;
- hours divide by a pace in tokens per second: by default `CPU_PACE`, measured on the
  2-core development machine (benchmarks/README.md), not on yours: give `--pace` for a GPU.
  A served teacher's pace is unknown until given (`--pace teacher=TOKENS_PER_S`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.config import GOLD
from cotdistill.errors import CotdistillError
from cotdistill.methods import get_method
from cotdistill.models.embedded import embedded_model_dir
from cotdistill.models.backends import served
from cotdistill.models.openai_api import plain_prompt
from cotdistill.tasks import Problem, get_task
from cotdistill.train.fields import FIELDS


@dataclass(frozen=True)
class Pace:
    """Tokens per second for each kind of work, on the machine that will run the recipe."""

    train_lora: float = 140.0  # LoRA SFT of the 135M student, batch 8 (docs/results.md: ~10 s a step of 8)
    train_full: float = 63.9  # full fine-tuning, batch 8, max length 512 (benchmarks/README.md, 2026-11-24)
    generate: float = 116.0  # greedy decoding, 32 rows in flight (benchmarks/README.md, generation throughput)
    teacher: float | None = None  # a served teacher's generated tokens/s over all its slots: unknown until given


CPU_PACE = Pace()
PACE_SOURCE = ("pace: measured on the 2-core development CPU (benchmarks/README.md; train LoRA 140, full 63.9, "
               "generate 116 tokens/s), not on this machine; give --pace train_lora=..,train_full=..,generate=..,"
               "teacher=.. for yours")


@dataclass
class StepCost:
    step: int
    verb: str
    what: str
    teacher_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0  # estimated
    completion_bound: int = 0  # every request at max_new_tokens
    train_tokens: int = 0  # one epoch
    epochs: float = 0.0
    eval_problems: int = 0
    eval_calls: int = 0
    generated_bound: int = 0
    usd: float | None = 0.0
    hours: float | None = 0.0
    note: str = ""


SAMPLE = 256


class _Counter:
    """Token counts with one tokenizer (the `tokenizers` library: fast, no torch)."""

    def __init__(self, student: str):
        from tokenizers import Tokenizer

        local = Path(student) / "tokenizer.json"
        self.source = student if local.is_file() else "the embedded SmolLM2's"
        self.tokenizer = Tokenizer.from_file(str(local if local.is_file() else embedded_model_dir() / "tokenizer.json"))

    def __call__(self, texts: list[str]) -> list[int]:
        """Each text's tokens: counted for up to SAMPLE texts; beyond that, a spread sample of
        SAMPLE sets the tokens-per-byte ratio for the rest (a full-scale GSM8K dry run in seconds)."""
        if len(texts) <= SAMPLE:
            return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        sample = texts[:: len(texts) // SAMPLE][:SAMPLE]
        ratio = sum(self(sample)) / max(1, sum(len(s.encode()) for s in sample))
        return [round(len(text.encode()) * ratio) for text in texts]


def parse_price(text: str | None) -> tuple[float, float] | None:
    """`IN,OUT` (or IN/OUT): USD per million prompt and completion tokens."""
    if not text:
        return None
    parts = text.replace("/", ",").split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) < 0:
        raise CotdistillError(f"--price {text}: give USD per million input and output tokens, e.g. 0.15,0.60")
    return values[0], values[1]


def parse_pace(text: str | None) -> Pace:
    """`train_lora=N,train_full=N,generate=N,teacher=N` (tokens/s) over CPU_PACE."""
    if not text:
        return CPU_PACE
    names = [f.name for f in dataclasses.fields(Pace)]
    values: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if name.strip() not in names or number <= 0:
            raise CotdistillError(f"--pace {part!r}: give NAME=TOKENS_PER_SECOND with NAME one of {', '.join(names)}")
        values[name.strip()] = number
    return dataclasses.replace(CPU_PACE, **values)


def estimate_recipe(recipe: dict[str, Any], price: tuple[float, float] | None = None,
                    pace: Pace = CPU_PACE) -> tuple[list[StepCost], str]:
    """Every step's cost (see the module docstring for how), and which tokenizer counted."""
    students = [a.get("student") for s in recipe["steps"] for v, a in s.items() if v == "train" and a]
    count = _Counter(str(students[0]) if students else "smollm2-135m")
    loaded: dict[tuple[Any, ...], list[Problem]] = {}
    annotated: dict[str, list[Problem]] = {}  # method -> the problems its annotate steps cover
    costs = []
    for index, step in enumerate(recipe["steps"], start=1):
        verb, arguments = next(iter(step.items()))
        arguments = arguments or {}
        if verb == "annotate":
            costs.append(_annotate(index, arguments, count, loaded, annotated, price, pace))
        elif verb == "train":
            costs.append(_train(index, arguments, count, annotated, pace))
        elif verb == "eval":
            costs.append(_eval(index, arguments, count, loaded, pace))
        else:
            costs.append(StepCost(index, verb, "tables and plots", hours=0.0))
    return costs, count.source


def _problems(arguments: dict[str, Any], loaded: dict[tuple[Any, ...], list[Problem]], split: str) -> list[Problem]:
    key = (arguments.get("task", "arith"), str(arguments.get("data")), arguments.get("split", split),
           arguments.get("limit"), json.dumps(arguments.get("options"), sort_keys=True))
    if key not in loaded:
        task = get_task(key[0], arguments.get("fields"), arguments.get("options"))
        loaded[key] = task.load(arguments.get("data"), key[2], key[3])
    return loaded[key]


def _annotate(index: int, a: dict[str, Any], count: _Counter, loaded: dict[tuple[Any, ...], list[Problem]],
              annotated: dict[str, list[Problem]], price: tuple[float, float] | None, pace: Pace) -> StepCost:
    method = get_method(a.get("method", "cot"))
    problems = _problems(a, loaded, "train")
    annotated.setdefault(method.name, []).extend(problems)
    teacher, samples = a.get("teacher", GOLD), a.get("samples", 1)
    cost = StepCost(index, "annotate", f"{method.name} by {teacher}: {len(problems)} problems x {samples}")
    golds = count([method.gold_rationale(p) or "" for p in problems])
    if teacher == GOLD:
        cost.note = "gold: the dataset's replies, no requests"
        cost.usd = 0.0
        if a.get("verify_with"):
            cost.eval_calls = len(problems)
            cost.generated_bound = len(problems) * a.get("max_new_tokens", 256)
            cost.hours = cost.generated_bound / pace.generate / 3600
            cost.note += f"; {a['verify_with']} verifies each (bounded by max_new_tokens)"
        return cost
    completions = (a.get("api") or {}).get("endpoint", "chat") == "completions"
    prompts = count([plain_prompt(m) if completions else "\n".join(x["content"] for x in m)
                     for m in (method.teacher_messages(p) for p in problems)])
    cost.teacher_requests = len(problems) * samples
    cost.prompt_tokens = sum(prompts) * samples
    cost.completion_tokens = sum(golds) * samples
    cost.completion_bound = cost.teacher_requests * a.get("max_new_tokens", 256)
    if served(teacher):
        cost.usd = (cost.prompt_tokens * price[0] + cost.completion_tokens * price[1]) / 1e6 if price else None
        cost.hours = cost.completion_tokens / pace.teacher / 3600 if pace.teacher else None
        cost.note = "replies ~ gold length" + ("" if pace.teacher else "; hours need --pace teacher=N")
    else:  # a local model generates on this machine
        cost.hours = cost.completion_bound / pace.generate / 3600
        cost.note = "local teacher: hours at max_new_tokens per reply"
    return cost


def _train(index: int, a: dict[str, Any], count: _Counter, annotated: dict[str, list[Problem]],
           pace: Pace) -> StepCost:
    method = get_method(a.get("method", "cot"))
    problems = annotated.get(method.name, [])
    roles = a.get("roles") or method.train_roles
    formats = [f for f in str(a.get("formats") or "").split(",") if f]
    epochs = float(a.get("num_train_epochs", 2.0))
    max_length = int(a.get("max_length", FIELDS["max_length"][0]))
    lora = a.get("lora", FIELDS["lora"][0])
    cost = StepCost(index, "train", f"{a.get('name', 'student')}: {method.name}, {'LoRA' if lora else 'full'}",
                    epochs=epochs)
    if not problems:
        cost.note = "no annotate step of this method before it"
        return cost
    prompts = count(["\n".join(m["content"] for m in method.student_messages(p)) for p in problems])
    targets = count([method.gold_rationale(p) or "" for p in problems])
    per_problem = [min(max_length, p + t) for p, t in zip(prompts, targets)]
    copies = len(roles) * max(1, len(formats)) * (2 if a.get("objective") in ("multitask", "mi") else 1)
    demos = int(a.get("demonstrations", FIELDS["demonstrations"][0])) if any(f.startswith("few") for f in formats) else 0
    mean = sum(per_problem) / len(per_problem)
    few = sum(f.startswith("few") for f in formats)
    cost.train_tokens = int(sum(per_problem) * copies + few * len(problems) * min(max_length, demos * mean))
    examples = len(problems) * copies
    batch = int(a.get("per_device_train_batch_size", 8)) * int(a.get("gradient_accumulation_steps", 1))
    steps = int(a.get("max_steps") or 0)
    if steps > 0:  # max_steps overrides the epochs, as in transformers
        cost.epochs = epochs = steps * batch / examples
    steps = steps or math.ceil(examples * epochs / batch)
    rate = pace.train_lora if lora else pace.train_full
    cost.hours = cost.train_tokens * epochs / rate / 3600
    cost.note = f"{examples} examples" + (f" ({len(formats)} formats)" if formats else "")
    if a.get("objective") == "on-policy":  # each step also samples the batch's rollouts and has them scored
        rollouts = steps * batch * float(a.get("lmbda", FIELDS["lmbda"][0]))
        cost.generated_bound = int(rollouts * int(a.get("max_new_tokens", FIELDS["max_new_tokens"][0])))
        cost.hours += cost.generated_bound / pace.generate / 3600 + cost.train_tokens * epochs / rate / 3600 / 3
        cost.note += f", {int(rollouts)} rollouts (+ the teacher's forward)"
    return cost


def _eval(index: int, a: dict[str, Any], count: _Counter, loaded: dict[tuple[Any, ...], list[Problem]],
          pace: Pace) -> StepCost:
    problems = _problems(a, loaded, "test")
    samples = int(a.get("samples", 1))
    stages = len(a.get("models") or {"model": None})
    where = f"{a.get('task', 'arith')}:{a.get('split', 'test')}"
    cost = StepCost(index, "eval", str(a.get("name") or f"{a.get('model')} on {where}"))
    cost.eval_problems = len(problems)
    cost.eval_calls = len(problems) * samples * stages
    cost.generated_bound = cost.eval_calls * int(a.get("max_new_tokens", 256))
    cost.hours = cost.generated_bound / pace.generate / 3600
    if a.get("pipeline") == "socratic":
        cost.note = "qa answers once per sub-question: more calls than shown"
    return cost
