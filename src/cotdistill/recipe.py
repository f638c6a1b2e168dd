"""run: execute a YAML recipe's steps in the order written, torchtune-style.

A recipe is the whole experiment on one page: `run_dir`, then `steps`, each one verb
(annotate, train, eval, report) with the keyword arguments of its Python function.
Every step skips what the store says is done, so rerunning a recipe resumes it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from cotdistill.annotate import annotate
from cotdistill.errors import CotdistillError
from cotdistill.evaluate import evaluate
from cotdistill.report import report
from cotdistill.train import TrainConfig, train

STEPS: dict[str, Callable[..., Any]] = {"annotate": annotate, "train": train, "eval": evaluate, "report": report}
BUNDLED = Path(__file__).parent / "recipes"


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file() and (BUNDLED / f"{path}.yaml").is_file():
        path = BUNDLED / f"{path}.yaml"
    if not path.is_file():
        raise CotdistillError(f"{path}: no such recipe (bundled: {', '.join(p.stem for p in BUNDLED.glob('*.yaml'))})")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise CotdistillError(f"{path}: malformed YAML ({error})") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("steps"), list):
        raise CotdistillError(f"{path}: a recipe needs `run_dir` and a list of `steps`")
    for index, step in enumerate(recipe["steps"], start=1):
        if not isinstance(step, dict) or len(step) != 1 or next(iter(step)) not in STEPS:
            raise CotdistillError(f"{path}: step {index} must be one of {', '.join(STEPS)} with its arguments")
        verb, arguments = next(iter(step.items()))
        _check_arguments(path, index, verb, arguments or {})
    recipe["path"] = str(path)
    return recipe


def _check_arguments(path: Path, index: int, verb: str, arguments: dict[str, Any]) -> None:
    accepted = set(inspect.signature(STEPS[verb]).parameters) - {"run_dir", "config"}
    if verb == "train":
        accepted |= set(TrainConfig.__dataclass_fields__)
    unknown = set(arguments) - accepted
    if unknown:
        raise CotdistillError(f"{path}: step {index} ({verb}): unknown argument(s) {', '.join(sorted(unknown))}")


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
