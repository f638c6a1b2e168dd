"""Tasks are data, not code: a name, where the data lives, which fields hold what.

As in lm-evaluation-harness, adding a dataset never touches the runner: write a YAML
file with the fields of `DatasetTask` (or pass `--field question=... --field answer=...`
to the generic `jsonl` / `csv` tasks). Only what cannot be declared is code: parsing
GSM8K's structured gold reasoning, and generating the synthetic `arith` problems.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from cotdistill.answers import AnswerKind, normalize
from cotdistill.errors import CotdistillError, at_least
from cotdistill.tasks import arith
from cotdistill.tasks.problem import Problem
from cotdistill.tasks.records import Record, read_records, read_yaml

ANSWER_KINDS = ("number", "yesno", "choice", "text")


class Task(Protocol):
    name: str
    description: str
    kind: AnswerKind

    def load(self, data: str | Path | None = None, split: str = "train", limit: int | None = None) -> list[Problem]: ...


@dataclass(frozen=True)
class DatasetTask:
    """A task read from records: a local file (`data`) or, with no file, a Hugging Face dataset."""

    name: str
    description: str
    question: tuple[str, ...] = ("question",)  # fields joined with a space, e.g. SVAMP's Body + Question
    answer: str = "answer"  # a field; dotted paths reach into lists and objects: lSolutions.0, question.stem
    kind: AnswerKind = "number"
    answer_pattern: str | None = None  # regex whose group 1 is the gold answer inside the field
    id_field: str | None = None
    hf_path: str | None = None
    hf_config: str | None = None
    choices: str | None = None  # options appended to the question: ["A)32400", ...] or [{"label", "text"}, ...]
    dev_size: int = 0  # problems carved out of `train` (seeded) into split `dev`, never trained on
    dev_seed: int = 0
    gold_fields: Callable[[Record], dict[str, Any]] | None = field(default=None, compare=False)

    def load(self, data: str | Path | None = None, split: str = "train", limit: int | None = None) -> list[Problem]:
        """`split` names the hub split; a local file is one split, except that with
        `dev_size` its `train` leaves out, and its `dev` is, the seeded dev problems. A
        slice as in `datasets` (`dev[400:]`, `test[:900]`) takes part of a split, so a
        checkpoint can be chosen on problems the report never scores."""
        split, part = _split_slice(split)
        if part != slice(None):
            return self.load(data, split)[part][:limit]
        carve = self.dev_size > 0 and split in ("train", "dev")
        rows = read_records(data) if data is not None else self._hub_records("train" if carve else split)
        if not carve:
            return _unique([(where, self._to_problem(where, index, record))
                            for index, (where, record) in islice(enumerate(rows), limit)])
        every = _unique([(where, self._to_problem(where, index, record)) for index, (where, record) in enumerate(rows)])
        if self.dev_size >= len(every):
            raise CotdistillError(f"task {self.name} keeps {self.dev_size} seeded training problems for its dev split, "
                                  f"and {data or 'the data'} has {len(every)}: pass --option dev_size=N (0: none)")
        dev = set(random.Random(self.dev_seed).sample(range(len(every)), self.dev_size))
        chosen = [p for index, p in enumerate(every) if (index in dev) == (split == "dev")]  # ids keep file numbering
        return chosen[:limit]

    def _to_problem(self, where: str, index: int, record: Record) -> Problem:
        def need(name: str) -> Any:
            value: Any = record
            for part in name.split("."):
                if isinstance(value, list) and part.isdigit() and int(part) < len(value):
                    value = value[int(part)]
                elif isinstance(value, dict) and value.get(part) is not None:
                    value = value[part]
                else:
                    raise CotdistillError(f"{where}: no field {name!r} for task {self.name} "
                                          f"(fields: {', '.join(record)})")
            return value

        question = " ".join(str(need(name)).strip() for name in self.question)
        if self.choices:
            question += "\nAnswer Choices: " + _choices(need(self.choices), where)
        raw_answer = str(need(self.answer))
        for name, text in (("question", question), ("answer", raw_answer)):  # SQLite and tokenizers take UTF-8 only
            bad = None if text.isascii() else next((i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff"), None)
            if bad is not None:
                raise CotdistillError(f"{where}: the {name} holds a lone surrogate {text[bad]!r} at character {bad}, "
                                      "which no UTF-8 text can hold (a \\u escape cut in half?)")
        answer = raw_answer
        if self.answer_pattern:
            match = re.search(self.answer_pattern, raw_answer)
            if not match:
                raise CotdistillError(f"{where}: field {self.answer!r} does not match {self.answer_pattern!r}")
            answer = match.group(1)
        answer = normalize(answer, self.kind)
        problem_id = str(need(self.id_field)) if self.id_field else f"{self.name}-{index}"
        gold = self.gold_fields(record) if self.gold_fields else {}
        return Problem(problem_id, question, answer, self.kind, gold, self.name)

    def _hub_records(self, split: str) -> Iterable[tuple[str, Record]]:
        if not self.hf_path:
            raise CotdistillError(f"task {self.name} has no Hugging Face dataset: pass --data PATH")
        import datasets

        try:
            dataset = datasets.load_dataset(self.hf_path, self.hf_config, split=split)
        except Exception as error:  # the hub raises many types; all mean "not available here"
            raise CotdistillError(
                f"task {self.name}: could not load {self.hf_path} split {split!r} from the Hugging Face hub "
                f"({type(error).__name__}); pass --data PATH to a local file"
            ) from None
        return ((f"{self.hf_path}[{split}][{i}]", dict(row)) for i, row in enumerate(dataset))


@dataclass(frozen=True)
class ArithTask:
    """The synthetic task: `data` is ignored; problems come from the seed and step count."""

    name: str = "arith"
    description: str = "synthetic multi-step arithmetic word problems with every gold format"
    kind: AnswerKind = "number"
    steps: int = 2
    seed: int = 0
    size: int = 500  # problems per split when no limit is given

    def load(self, data: str | Path | None = None, split: str = "train", limit: int | None = None) -> list[Problem]:
        if data is not None:
            raise CotdistillError("task arith is generated, it reads no --data; set its steps/seed with --option")
        at_least("--option steps", self.steps, 1)
        at_least("--option size", self.size, 1)
        try:
            problems = arith.generate(split, limit or self.size, seed=self.seed, steps=self.steps)
        except ValueError as error:
            raise CotdistillError(str(error)) from None
        return _unique([(p.id, dataclasses.replace(p, task=self.name)) for p in problems])


def data_identity(task: Task, data: str | Path | None) -> tuple[str, str]:
    """(where, what) of the problems a task reads: where, for people (the file as given, the
    hub dataset, or the generator); what, a hash of the file's bytes and of the task's settings
    that shape its problems (fields, answer pattern, options), so an eval can tell that it is
    asked to score other data under its name, whatever path the same file is reached by.
    Settings left at their defaults are left out: a setting added later changes no hash."""
    if dataclasses.is_dataclass(task):
        spec = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)
                if f.compare and f.name != "description" and getattr(task, f.name) != f.default}
    else:
        spec = {"task": task.name}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    if data is not None:
        try:
            with Path(data).open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as error:
            raise CotdistillError(f"{data}: {error.strerror}") from None
    hf_path = getattr(task, "hf_path", None)
    where = str(data) if data is not None else f"{hf_path} (hub)" if hf_path else f"{task.name} (generated)"
    return where, "sha256:" + digest.hexdigest()[:16]


SLICE = re.compile(r"(\w+)\[(-?\d*):(-?\d*)\]")


def _split_slice(split: str) -> tuple[str, slice]:
    """`dev[400:]` -> ("dev", slice(400, None)); a plain name -> (name, slice(None))."""
    match = SLICE.fullmatch(split)
    if not match:
        if "[" in split:
            raise CotdistillError(f"split {split!r}: a part of a split is written NAME[START:END], e.g. dev[400:]")
        return split, slice(None)
    name, start, end = match.groups()
    return name, slice(int(start) if start else None, int(end) if end else None)


def _unique(located: list[tuple[str, Problem]]) -> list[Problem]:
    """The problems, refusing a repeated id (a data file whose id field says two problems are
    one is wrong, and the user has to hear where), and numbering repeated content: a
    dataset's duplicate rows stay two problems under two keys, as they are counted."""
    first: dict[str, str] = {}
    seen: dict[str, int] = {}
    problems = []
    for where, problem in located:
        if problem.id in first:
            raise CotdistillError(f"{where}: id {problem.id!r} again (first at {first[problem.id]}); ids must be unique")
        first[problem.id] = where
        repeat = seen[problem.key] = seen.get(problem.key, -1) + 1
        problems.append(dataclasses.replace(problem, repeat=repeat) if repeat else problem)
    return problems


def _choices(options: Any, where: str) -> str:
    """Options as `(A) 32400 (B) 6000 ...`, from AQuA's "A)32400" strings or CommonsenseQA's
    {"label", "text"} objects."""
    if not isinstance(options, list) or not options:
        raise CotdistillError(f"{where}: the choices field is not a list of options")
    parts = []
    for option in options:
        if isinstance(option, dict) and "label" in option and "text" in option:
            parts.append(f"({option['label']}) {option['text']}")
        elif isinstance(option, str) and re.match(r"^\s*[A-Za-z]\s*\)", option):
            label, text = option.split(")", 1)
            parts.append(f"({label.strip()}) {text.strip()}")
        else:
            raise CotdistillError(f"{where}: choice {option!r} is neither 'A)text' nor {{label, text}}")
    return " ".join(parts)


def _fields(**paths: str) -> Callable[[Record], dict[str, Any]]:
    """Gold fields copied from the record (a missing one is left out)."""
    return lambda record: {name: record[key] for name, key in paths.items() if record.get(key) is not None}


_MAWPS = dict(question=("sQuestion",), answer="lSolutions.0", id_field="iIndex", gold_fields=_fields(equations="lEquations"))

_CALCULATION = re.compile(r"<<([^=<>]*)=([^<>]*)>>")


def gsm8k_gold(record: Record) -> dict[str, Any]:
    """GSM8K's solution as structured fields: steps, calculator calls, Socratic sub-questions.

    The Socratic variant writes each step as `sub-question ** step`; both files share this
    parser, so passing either one gives the fields it has.
    """
    body = str(record.get("answer", "")).rpartition("####")[0]
    lines = [line.strip() for line in body.strip().splitlines() if line.strip()]
    gold: dict[str, Any] = {"calculations": [[expr.strip(), value.strip()] for expr, value in _CALCULATION.findall(body)]}
    if lines and all(" ** " in line for line in lines):
        pairs = [line.split(" ** ", 1) for line in lines]
        gold["subquestions"] = [[q.strip(), _CALCULATION.sub("", step).strip()] for q, step in pairs]
        lines = [step for _, step in pairs]
    gold["solution"] = [_CALCULATION.sub("", line).strip() for line in lines]
    return gold


BUILTIN: dict[str, Task] = {
    "gsm8k": DatasetTask(
        "gsm8k", "grade-school math word problems (original or Socratic JSONL); split dev: 500 seeded train "
        "problems that train never sees",
        answer_pattern=r"####\s*(.+?)\s*$", hf_path="openai/gsm8k", hf_config="main", gold_fields=gsm8k_gold,
        dev_size=500,
    ),
    "svamp": DatasetTask(
        "svamp", "SVAMP arithmetic word problems (SVAMP.json: Body, Question, Equation, Answer)",
        question=("Body", "Question"), answer="Answer", id_field="ID", hf_path="ChilleD/SVAMP",
        gold_fields=lambda record: {"equation": str(record.get("Equation", "")).strip()},
    ),
    "asdiv": DatasetTask(
        "asdiv", "ASDiv math word problems (ASDiv.xml; the answer's unit in brackets is dropped; 213 of 2,305 "
        "answers are not one number: names, yes/no, times, ratios, several values)", question=("Body", "Question"), answer="Answer",
        answer_pattern=r"^\s*(.*?)\s*(?:\([^()]*\))?\s*$", id_field="ID",
        gold_fields=_fields(formula="Formula", solution_type="Solution-Type"),
    ),
    "multiarith": DatasetTask("multiarith", "MultiArith multi-step arithmetic (MultiArith.json, MAWPS layout)", **_MAWPS),
    "addsub": DatasetTask("addsub", "AddSub addition/subtraction word problems (AddSub.json, MAWPS layout)", **_MAWPS),
    "singleeq": DatasetTask("singleeq", "SingleEq single-equation word problems (questions.json, MAWPS layout)",
                            **_MAWPS),
    "aqua": DatasetTask(
        "aqua", "AQuA-RAT algebra, 5 options, letter answers (dev.json: question, options, rationale, correct)",
        answer="correct", kind="choice", choices="options", gold_fields=_fields(rationale="rationale"),
    ),
    "strategyqa": DatasetTask(
        "strategyqa", "StrategyQA yes/no questions needing implicit steps (strategyqa_train.json)",
        kind="yesno", id_field="qid", gold_fields=_fields(facts="facts", decomposition="decomposition"),
    ),
    "commonsenseqa": DatasetTask(
        "commonsenseqa", "CommonsenseQA, 5 options, letter answers (*_rand_split.jsonl)",
        question=("question.stem",), answer="answerKey", kind="choice", choices="question.choices", id_field="id",
    ),
    "jsonl": DatasetTask("jsonl", "any JSONL file; map its fields with --field question=... --field answer=..."),
    "csv": DatasetTask("csv", "any CSV/TSV file; map its columns with --field question=... --field answer=..."),
    "arith": ArithTask(),
}


def get_task(name: str, fields: dict[str, str] | None = None, options: dict[str, str] | None = None) -> Task:
    """A built-in task by name, or a task YAML file; `fields` remaps record fields, `options` sets task knobs."""
    if name.endswith((".yaml", ".yml")):
        task: Task = _task_from_yaml(Path(name))
    elif name in BUILTIN:
        task = BUILTIN[name]
    else:
        raise CotdistillError(f"unknown task {name!r} (known: {', '.join(BUILTIN)}, or a task .yaml file)")
    changes: dict[str, Any] = {}
    for key, value in (fields or {}).items():
        if not isinstance(task, DatasetTask) or key not in ("question", "answer", "id"):
            raise CotdistillError(f"--field {key}: task {task.name} maps only question, answer and id")
        changes["id_field" if key == "id" else key] = tuple(value.split("+")) if key == "question" else value
    for key, value in (options or {}).items():
        changes[key] = _option_value(task, key, value)
    return dataclasses.replace(task, **changes) if changes else task


def _option_value(task: Task, key: str, value: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(task)}  # type: ignore[arg-type]
    if key not in names or key in ("name", "description", "gold_fields", "question"):
        raise CotdistillError(f"--option {key}: unknown option for task {task.name}")
    if key == "kind" and value not in ANSWER_KINDS:
        raise CotdistillError(f"--option kind: {value!r} is not one of {', '.join(ANSWER_KINDS)}")
    current = getattr(task, key)
    if isinstance(current, int):
        try:
            return int(value)
        except ValueError:
            raise CotdistillError(f"--option {key}: expected an integer, got {value!r}") from None
    return value


def _task_from_yaml(path: Path) -> DatasetTask:
    if not path.is_file():
        raise CotdistillError(f"{path}: no such file")
    spec = read_yaml(path) or {}
    if not isinstance(spec, dict):
        raise CotdistillError(f"{path}: a task file is a mapping of DatasetTask fields")
    known = {f.name for f in dataclasses.fields(DatasetTask)} - {"gold_fields"}
    unknown = set(spec) - known
    if unknown:
        raise CotdistillError(f"{path}: unknown field(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    if "question" in spec:
        question = [spec["question"]] if isinstance(spec["question"], str) else spec["question"]
        if not isinstance(question, list) or not question or not all(isinstance(q, str) for q in question):
            raise CotdistillError(f"{path}: question must be a field name or a list of them, not {spec['question']!r}")
        spec["question"] = tuple(question)
    for key in ("answer", "answer_pattern", "id_field", "hf_path", "hf_config", "choices", "name", "description"):
        if key in spec and spec[key] is not None and not isinstance(spec[key], str):
            raise CotdistillError(f"{path}: {key} must be text, not {spec[key]!r}")
    for key in ("dev_size", "dev_seed"):
        if key in spec and (type(spec[key]) is not int or spec[key] < 0):
            raise CotdistillError(f"{path}: {key} must be a whole number >= 0, not {spec[key]!r}")
    try:
        re.compile(spec.get("answer_pattern") or "")
    except re.error as error:
        raise CotdistillError(f"{path}: answer_pattern is not a regular expression ({error})") from None
    if spec.get("kind", "number") not in ANSWER_KINDS:
        raise CotdistillError(f"{path}: kind {spec['kind']!r} is not one of {', '.join(ANSWER_KINDS)}")
    spec.setdefault("name", path.stem)
    spec.setdefault("description", f"task from {path}")
    return DatasetTask(**spec)
