"""run: execute a YAML recipe's steps in the order written, torchtune-style.

A recipe is the whole experiment on one page: `run_dir`, then `steps`, each one verb
(annotate, train, eval, report) with the settings of its config (AnnotateConfig,
TrainConfig, EvalConfig), as its Python function takes them.
Every step skips what the store says is done, so rerunning a recipe resumes it.

Sizes are variables, so one recipe holds both the 2-core run and the paper-size one:
`variables` (defaults) and `scales` (named sets of overrides, the first is the default)
fill `${name}` anywhere in the steps: a value that is exactly `${name}` takes the
variable's value with its type (a number, a list), one inside longer text its string.
An eval step with `sets: [{task, data, split}, ...]` runs once per entry, the in- and
out-of-distribution sets of a comparison written once.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import os
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from cotdistill.annotate import annotate
from cotdistill.config import AnnotateConfig, EvalConfig
from cotdistill.errors import CotdistillError
from cotdistill.evaluate import evaluate
from cotdistill.report import report
from cotdistill.tasks.records import read_yaml
from cotdistill.train import TrainConfig, train

STEPS: dict[str, Callable[..., Any]] = {"annotate": annotate, "train": train, "eval": evaluate, "report": report}
CONFIGS: dict[str, type] = {"annotate": AnnotateConfig, "train": TrainConfig, "eval": EvalConfig}
BUNDLED = Path(__file__).parent / "recipes"


VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_recipe(path: str | Path, scale: str | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a recipe, fill its variables for `scale` (and `settings`, which override any
    variable), expand `sets:` evals, and check every step against its function's signature."""
    path = Path(path)
    if not path.is_file() and (BUNDLED / f"{path}.yaml").is_file():
        path = BUNDLED / f"{path}.yaml"
    if not path.is_file():
        raise CotdistillError(f"{path}: no such recipe (bundled: {', '.join(sorted(bundled_recipes()))})")
    recipe = read_yaml(path)
    if not isinstance(recipe, dict) or not isinstance(recipe.get("steps"), list):
        raise CotdistillError(f"{path}: a recipe needs `run_dir` and a list of `steps`")
    variables = _variables(path, recipe, scale, settings or {})
    recipe["steps"] = _expand_evals(path, _fill(path, recipe["steps"], variables))
    recipe["run_dir"] = _fill(path, recipe.get("run_dir"), variables)
    if not isinstance(recipe.get("run_dir") or "", str):
        raise CotdistillError(f"{path}: run_dir must be a path, not {recipe['run_dir']!r}")
    for index, step in enumerate(recipe["steps"], start=1):
        if not isinstance(step, dict) or len(step) != 1 or next(iter(step)) not in STEPS:
            raise CotdistillError(f"{path}: step {index} must be one of {', '.join(STEPS)} with its arguments")
        verb, arguments = next(iter(step.items()))
        if not isinstance(arguments or {}, dict):
            raise CotdistillError(f"{path}: step {index} ({verb}): its arguments must be a mapping, not {arguments!r}")
        _check_arguments(path, index, verb, arguments or {})
    recipe["path"], recipe["scale"] = str(path), variables.get("scale")
    return recipe


def bundled_recipes() -> dict[str, str]:
    """Bundled recipe names and the first sentence of their opening comment."""
    about = {}
    for path in sorted(BUNDLED.glob("*.yaml")):
        if path.stem.startswith("_"):  # _name.yaml: variables other recipes include
            continue
        lines = [line.lstrip("# ") for line in path.read_text().splitlines()]
        comment = " ".join(lines[: next((i for i, line in enumerate(lines) if not line), len(lines))])
        about[path.stem] = re.split(r"(?<=\.)\s+(?=[A-Z`])", comment, maxsplit=1)[0]
    return about


def _variables(path: Path, recipe: dict[str, Any], scale: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    base, scales = _sizes(path, recipe)
    if scale is not None and scale not in scales:
        raise CotdistillError(f"{path}: no scale {scale!r}" + (f" (scales: {', '.join(scales)})" if scales
                                                                else " (this recipe has one size)"))
    scale = scale if scale is not None else next(iter(scales), None)
    raw = {**base, **(scales[scale] if scale else {}), **settings}
    if scale:
        raw.setdefault("scale", scale)
    unknown = set(settings) - set(base) - {name for values in scales.values() for name in values}
    if unknown:
        raise CotdistillError(f"{path}: no variable(s) {', '.join(sorted(unknown))} to set "
                              f"(variables: {', '.join(sorted(set(raw) - unknown)) or 'none'})")
    resolved: dict[str, Any] = {}

    def resolve(name: str, chain: tuple[str, ...] = ()) -> Any:
        if name in chain:
            raise CotdistillError(f"{path}: variable {name} refers to itself ({' -> '.join((*chain, name))})")
        if name not in raw:
            _unknown(path, name, raw)
        if name not in resolved:
            resolved[name] = _fill(path, raw[name], lambda inner: resolve(inner, (*chain, name)))
        return resolved[name]

    for name in raw:
        resolve(name)
    return resolved


def _sizes(path: Path, recipe: dict[str, Any],
           chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A recipe's `variables` and `scales`, over those of the recipes it `include`s (a
    bundled name or a path beside it), so sets shared by several recipes are written once.
    `chain`: the recipes including this one, so one that includes itself is named, not recursed."""
    base: dict[str, Any] = {}
    scales: dict[str, dict[str, Any]] = {}
    chain = (*chain, path.resolve())
    for name in recipe.get("include") or []:
        included = path.parent / f"{name}.yaml"
        if not included.is_file():
            raise CotdistillError(f"{path}: include {name!r}: no file {included}")
        if included.resolve() in chain:
            cycle = " -> ".join(p.stem for p in (*chain, included.resolve()))
            raise CotdistillError(f"{path}: include {name!r} includes itself ({cycle})")
        inner_base, inner_scales = _sizes(included, read_yaml(included), chain)
        base.update(inner_base)
        for scale, values in inner_scales.items():
            scales.setdefault(scale, {}).update(values)
    own_base, own_scales = recipe.get("variables") or {}, recipe.get("scales") or {}
    if not isinstance(own_base, dict) or not isinstance(own_scales, dict) \
            or not all(isinstance(v, dict) for v in own_scales.values()):
        raise CotdistillError(f"{path}: `variables` must be a mapping and `scales` a mapping of name -> variables")
    base.update(own_base)
    for scale, values in own_scales.items():
        scales.setdefault(scale, {}).update(values)
    return base, scales


def _fill(path: Path, value: Any, variables: dict[str, Any] | Callable[[str], Any]) -> Any:
    """`${name}` replaced throughout a YAML value: typed where it is the whole value."""
    lookup = variables if callable(variables) else lambda name: _lookup(path, variables, name)
    if isinstance(value, dict):
        return {key: _fill(path, item, lookup) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(path, item, lookup) for item in value]
    if not isinstance(value, str):
        return value
    whole = VARIABLE.fullmatch(value)
    if whole:
        return lookup(whole.group(1))
    return VARIABLE.sub(lambda match: str(lookup(match.group(1))), value)


def _lookup(path: Path, variables: dict[str, Any], name: str) -> Any:
    if name not in variables:
        _unknown(path, name, variables)
    return variables[name]


def _unknown(path: Path, name: str, variables: dict[str, Any]) -> None:
    scale = f" at scale {variables['scale']}" if "scale" in variables else ""
    raise CotdistillError(f"{path}: ${{{name}}} is not a variable of this recipe{scale} "
                          f"(variables: {', '.join(sorted(variables)) or 'none'})")


def _expand_evals(path: Path, steps: list[Any]) -> list[Any]:
    """An eval step with `sets: [...]` becomes one eval per entry; a named one is named
    NAME:TASK:SPLIT per entry, so the report can set an arm's sets side by side."""
    expanded: list[Any] = []
    for index, step in enumerate(steps, start=1):
        arguments = step.get("eval") if isinstance(step, dict) and len(step) == 1 else None
        if not isinstance(arguments, dict) or "sets" not in arguments:
            expanded.append(step)
            continue
        common = {k: v for k, v in arguments.items() if k != "sets"}
        entries = arguments["sets"]
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) and "task" in e for e in entries):
            raise CotdistillError(f"{path}: step {index} (eval): `sets` must be a list of mappings, each with a task")
        for entry in entries:
            one = {**common, **entry}
            if "name" in common:
                one["name"] = f"{common['name']}:{one['task']}:{one.get('split', 'test')}"
            expanded.append({"eval": one})
    return expanded


def _check_arguments(path: Path, index: int, verb: str, arguments: dict[str, Any]) -> None:
    """Names and value types against the step's config (AnnotateConfig, TrainConfig,
    EvalConfig) and its function's own keywords, so a recipe fails on load, not hours into its run."""
    function = inspect.signature(STEPS[verb]).parameters
    config = CONFIGS.get(verb)
    hints = {**(_hints(config) if config else {}), **_hints(STEPS[verb])}
    accepted = {name for name, p in function.items() if p.kind != p.VAR_KEYWORD} - {"run_dir", "config"}
    accepted |= {f.name for f in dataclasses.fields(config)} if config else set()
    unknown = set(arguments) - accepted
    if unknown:
        raise CotdistillError(f"{path}: step {index} ({verb}): unknown argument(s) {', '.join(sorted(map(str, unknown)))}")
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


def run_recipe(path: str | Path, run_dir: str | Path | None = None, console: Console | None = None,
               scale: str | None = None, settings: dict[str, Any] | None = None) -> Path:
    """Run every step of a recipe at `scale` (its first by default), `settings` overriding
    its variables; returns the run directory."""
    console = console or Console(stderr=True)
    recipe = load_recipe(path, scale, settings)
    run_dir = Path(run_dir or recipe.get("run_dir") or Path("runs") / Path(recipe["path"]).stem)
    for index, step in enumerate(recipe["steps"], start=1):
        verb, arguments = next(iter(step.items()))
        console.rule(f"[bold]step {index}/{len(recipe['steps'])}: {verb}")
        scale_of = {"scale": recipe["scale"]} if verb == "eval" else {}  # each report row names its scale
        result = STEPS[verb](run_dir, **{**scale_of, **(arguments or {})})
        console.print(result)
    return run_dir
