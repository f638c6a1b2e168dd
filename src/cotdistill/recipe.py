"""run: execute a YAML recipe's steps in the order written, torchtune-style.

A recipe is the whole experiment on one page: `run_dir`, then `steps`, each one verb
(annotate, train, eval, report) with the keyword arguments of its Python function.
Every step skips what the store says is done, so rerunning a recipe resumes it.
"""

from __future__ import annotations

import enum
import inspect
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from cotdistill.annotate import annotate
from cotdistill.errors import CotdistillError
from cotdistill.evaluate import evaluate
from cotdistill.report import report
from cotdistill.tasks.records import read_yaml
from cotdistill.train import TrainConfig, train

STEPS: dict[str, Callable[..., Any]] = {"annotate": annotate, "train": train, "eval": evaluate, "report": report}
BUNDLED = Path(__file__).parent / "recipes"


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file() and (BUNDLED / f"{path}.yaml").is_file():
        path = BUNDLED / f"{path}.yaml"
    if not path.is_file():
        raise CotdistillError(f"{path}: no such recipe (bundled: {', '.join(p.stem for p in BUNDLED.glob('*.yaml'))})")
    recipe = read_yaml(path)
    if not isinstance(recipe, dict) or not isinstance(recipe.get("steps"), list):
        raise CotdistillError(f"{path}: a recipe needs `run_dir` and a list of `steps`")
    if not isinstance(recipe.get("run_dir") or "", str):
        raise CotdistillError(f"{path}: run_dir must be a path, not {recipe['run_dir']!r}")
    for index, step in enumerate(recipe["steps"], start=1):
        if not isinstance(step, dict) or len(step) != 1 or next(iter(step)) not in STEPS:
            raise CotdistillError(f"{path}: step {index} must be one of {', '.join(STEPS)} with its arguments")
        verb, arguments = next(iter(step.items()))
        if not isinstance(arguments or {}, dict):
            raise CotdistillError(f"{path}: step {index} ({verb}): its arguments must be a mapping, not {arguments!r}")
        _check_arguments(path, index, verb, arguments or {})
    recipe["path"] = str(path)
    return recipe


def _check_arguments(path: Path, index: int, verb: str, arguments: dict[str, Any]) -> None:
    """Names and value types against the step function's own signature (and TrainConfig's
    fields for train), so a recipe fails on load, not hours into its run."""
    hints = _hints(STEPS[verb])
    if verb == "train":
        hints = {**_hints(TrainConfig), **hints}
    accepted = set(inspect.signature(STEPS[verb]).parameters) - {"run_dir", "config"}
    if verb == "train":
        accepted |= set(TrainConfig.__dataclass_fields__)
    unknown = set(arguments) - accepted
    if unknown:
        raise CotdistillError(f"{path}: step {index} ({verb}): unknown argument(s) {', '.join(sorted(unknown))}")
    for key, value in arguments.items():
        if key in hints and not _fits(value, hints[key]):
            raise CotdistillError(f"{path}: step {index} ({verb}): {key} must be {_type_name(hints[key])}, "
                                  f"not {value!r}")


def _hints(target: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target)
    except Exception:  # an annotation this Python cannot resolve: leave the check to the function
        return {}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value can stand for an argument of this type (paths as text, ints as floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if origin is not None:
        return isinstance(value, origin if isinstance(origin, type) else object)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type) and issubclass(hint, os.PathLike | enum.Enum):
        return isinstance(value, str | hint)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def run_recipe(path: str | Path, run_dir: str | Path | None = None, console: Console | None = None) -> Path:
    """Run every step of a recipe; returns the run directory."""
    console = console or Console(stderr=True)
    recipe = load_recipe(path)
    run_dir = Path(run_dir or recipe.get("run_dir") or Path("runs") / Path(recipe["path"]).stem)
    for index, step in enumerate(recipe["steps"], start=1):
        verb, arguments = next(iter(step.items()))
        console.rule(f"[bold]step {index}/{len(recipe['steps'])}: {verb}")
        result = STEPS[verb](run_dir, **(arguments or {}))
        console.print(result)
    return run_dir
