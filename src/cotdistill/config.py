"""What `annotate` and `eval` do, as TRL's config dataclasses: one field per setting with its
default and help, read by the Python functions, the CLI (each option's default and help)
and recipes (a step's keys and their types). `TrainConfig` is the same for `train`; its own
fields are declared in `train/fields.py` so that this module and the CLI stay torch-free.

A setting is declared here once; tests/test_config.py checks that every CLI option is one.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cotdistill.errors import CotdistillError, check_generation_options

GOLD = "gold"
SPLIT = "split name (hub datasets, arith, gsm8k's dev); a slice such as dev[400:] takes part of one"
C = TypeVar("C")


def setting(default: Any, help: str) -> Any:
    """A config field with its one default and help text."""
    return dataclasses.field(default=default, metadata={"help": help})


def _field(cls: type, name: str) -> dataclasses.Field[Any]:
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def help_of(cls: type, name: str) -> str:
    """A field's help, as the CLI shows it (typer adds the default)."""
    return str(_field(cls, name).metadata.get("help", ""))


def default_of(cls: type, name: str) -> Any:
    """A field's default, as the CLI's option takes it."""
    return _field(cls, name).default


def configure(cls: type[C], verb: str, base: C | str | None, settings: dict[str, Any]) -> C:
    """`base` (a config, a task name, or None for the defaults) with `settings` set, as the
    Python functions take them; an unknown name or a value out of range is one line naming it."""
    if isinstance(base, str):
        base, settings = None, {"task": base, **settings}
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise CotdistillError(f"{verb}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(known)})")
    try:
        return dataclasses.replace(base, **settings) if base is not None else cls(**settings)
    except TypeError as error:  # a value of the wrong type, compared with its range
        raise CotdistillError(f"{verb}: {error}") from None


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` is of the declared type `hint`, as far as a setting's value can be told
    at a glance: the outer type of a list or dict, an int for a float, a name for an enum (the
    library converts it); a hint it cannot read lets the value pass to the library's own check."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    kind = origin if isinstance(origin, type) else hint
    if not isinstance(kind, type):
        return True
    if issubclass(kind, enum.Enum):
        return isinstance(value, (kind, str))
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is Path:
        return isinstance(value, (str, Path))
    return isinstance(value, kind)


def check_types(config: Any, verb: str) -> None:
    """Refuse a setting whose value is not of its field's declared type, in one line naming it
    (`--set max_steps=abc` is not a number of steps), before any work: dataclasses do not check
    types, and a wrong one otherwise fails deep inside a library, or not at all. Fields still at
    their default are the library's own and pass."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.default is not dataclasses.MISSING and value is field.default:
            continue
        hint = hints.get(field.name, Any)
        if not _fits(value, hint):
            wanted = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            raise CotdistillError(f"{verb}: {field.name} must be {wanted}, not {value!r}")


@dataclass(frozen=True)
class _Generation:
    """The settings every verb that reads a task and generates shares."""

    task: str = setting("arith", "gsm8k (split dev: its 500 held-out train problems), svamp, asdiv, multiarith, "
                                 "addsub, singleeq, aqua, strategyqa, commonsenseqa, arith, jsonl, csv, or a task .yaml "
                                 "file (see `cotdistill tasks`)")
    data: str | Path | None = setting(None, "local JSONL/JSON/CSV file; without it, the task's Hugging Face dataset")
    split: str = setting("train", SPLIT)
    limit: int | None = setting(None, "use only the first N problems")
    method: str = setting("cot", "reasoning format (see `cotdistill methods`)")
    fields: dict[str, str] | None = setting(None, "map a record field: question=COL (A+B joins), answer=COL, id=COL")
    options: dict[str, str] | None = setting(None, "task knobs KEY=VALUE, e.g. steps=3 for arith, kind=yesno")
    samples: int = setting(1, "samples per problem (distinct seeds)")
    temperature: float = setting(0.7, "sampling temperature (0 = greedy)")
    max_new_tokens: int = setting(256, "longest reply, in tokens")
    seed: int = setting(0, "sampling seed")
    batch_size: int = setting(32, "local models: prompts per generation batch")
    api: dict[str, Any] | None = setting(None, "openai: models: any APIConfig field but model (base_url, "
                                               "concurrency, prices, ...)")
    weak_sandbox: bool = setting(False, "run model-written programs (pot, kpdd_pot) even where the kernel sandbox "
                                        "(Landlock, seccomp) is incomplete, under the Python-level filters only")

    def __post_init__(self) -> None:
        check_types(self, type(self).__name__.removesuffix("Config").lower())
        check_generation_options(self.samples, self.max_new_tokens, self.batch_size, self.limit, self.temperature,
                                 self.seed)


@dataclass(frozen=True)
class AnnotateConfig(_Generation):
    """A teacher writes rationales for a task's problems (`cotdistill annotate`)."""

    teacher: str = setting(GOLD, "'gold' (the task's reference rationales), openai:MODEL (any OpenAI-compatible "
                                 "server), smollm2-135m, a model directory or hub id")
    prompts: str | Path | None = setting(None, "YAML file overriding the method's instruction and/or demonstrations")
    verify_with: str | None = setting(None, "decompose: keep a decomposition only if this solver model reaches the "
                                            "gold answer with it (the paper's filter: the teacher itself; gold "
                                            "passes every gold decomposition)")
    stop: list[str] | None = setting(None, "stop strings added to the method's own, e.g. a blank line for a base "
                                           "model that runs on past its answer (on the command line \\n is a newline: "
                                           "--stop '\\n\\n')")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher == GOLD and self.samples != 1:
            raise CotdistillError("the gold teacher has one rationale per problem: use --samples 1")


@dataclass(frozen=True)
class EvalConfig(_Generation):
    """A pipeline answers a task's problems and is scored (`cotdistill eval`)."""

    split: str = setting("test", SPLIT)
    temperature: float = setting(0.0, "0 = greedy")
    samples: int = setting(1, "samples per problem; > 1 (with temperature > 0) votes on the answer: self-consistency")
    model: str = setting("smollm2-135m", "the single-stage pipeline's model: a student of this run by name, "
                                         "smollm2-135m, a directory, a hub id or openai:MODEL")
    models: dict[str, str] | None = setting(None, "a model per stage of the pipeline (STAGE=MODEL)")
    pipeline: str = setting("single", "single, or a pipeline of the method's own with a model per stage "
                                      "(see `cotdistill methods`)")
    name: str | None = setting(None, "name of this eval run in the store and report")
    shots: int = setting(0, "few-shot evaluation: the method's first N demonstrations as earlier chat turns "
                            "(single pipeline; 0 = zero-shot)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.shots < 0:
            raise CotdistillError(f"shots must be >= 0, not {self.shots}")
        if self.shots and self.pipeline != "single":
            raise CotdistillError(f"shots: few-shot prompts are for the single pipeline, not {self.pipeline}")

    @property
    def stages(self) -> dict[str, str]:
        return dict(self.models or {"model": self.model})
