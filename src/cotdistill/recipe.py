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
out-of-distribution sets of a comparison written once. `help` (name -> text) documents the
variables, for `cotdistill recipes NAME`.

A served teacher's options are written flat in an annotate step, as the CLI spells them
(`base_url`, `api_key_env`, `concurrency`, `endpoint`, ...: any APIConfig field): they are
passed on as the step's `api` when its teacher (or verifier) is an `openai:` model, and
dropped when they are their defaults beside any other teacher (a bundled recipe always
writes them, so `--set teacher=openai:M --set base_url=URL` is all a user adds); set
beside a teacher that cannot use them, they are an error.
"""

from __future__ import annotations

import dataclasses
import difflib
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
from cotdistill.models.backends import served
from cotdistill.models.openai_api import APIConfig
from cotdistill.report import report
from cotdistill.tasks.records import read_yaml
from cotdistill.train import TrainConfig, train

STEPS: dict[str, Callable[..., Any]] = {"annotate": annotate, "train": train, "eval": evaluate, "report": report}
CONFIGS: dict[str, type] = {"annotate": AnnotateConfig, "train": TrainConfig, "eval": EvalConfig}
BUNDLED = Path(__file__).parent / "recipes"
API_KEYS = tuple(f.name for f in dataclasses.fields(APIConfig) if f.name != "model")


VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_recipe(path: str | Path, scale: str | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a recipe, fill its variables for `scale` (and `settings`, which override any
    variable), expand `sets:` evals, and check every step against its function's signature."""
    path, recipe = _read(path)
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
        if verb in ("annotate", "eval") and arguments:
            _fold_api(path, index, verb, arguments)
        _check_arguments(path, index, verb, arguments or {})
    recipe["path"], recipe["scale"] = str(path), variables.get("scale")
    return recipe


def _read(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A recipe file (or a bundled recipe's name) and its parsed YAML."""
    path = Path(path)
    if not path.is_file() and (BUNDLED / f"{path}.yaml").is_file():
        path = BUNDLED / f"{path}.yaml"
    if not path.is_file():
        raise CotdistillError(f"{path}: no such recipe (bundled: {', '.join(sorted(bundled_recipes()))})"
                              + _did_you_mean(str(path), bundled_recipes()))
    recipe = read_yaml(path)
    if not isinstance(recipe, dict) or not isinstance(recipe.get("steps"), list):
        raise CotdistillError(f"{path}: a recipe needs `run_dir` and a list of `steps`")
    return path, recipe


def _did_you_mean(name: str, known: Any) -> str:
    """`; did you mean X?` for the closest known name, as argparse and git suggest one."""
    close = difflib.get_close_matches(name, [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


@dataclasses.dataclass(frozen=True)
class Variable:
    """One variable of a recipe as `cotdistill recipes NAME` shows it: its help and its
    value at each scale (filled, so a path shows where it points)."""

    name: str
    help: str
    values: dict[str, Any]  # scale (or "" for a recipe of one size) -> value


def describe_recipe(path: str | Path) -> tuple[Path, list[Variable]]:
    """A recipe's variables, with their help and their value at every scale."""
    path, recipe = _read(path)
    base, scales, helps = _sizes(path, recipe)
    names = [n for n in dict.fromkeys([*base, *(n for values in scales.values() for n in values)]) if n != "scale"]
    values = {scale: _variables(path, recipe, scale or None, {}) for scale in (scales or [""])}
    return path, [Variable(name, helps.get(name, ""), {scale: filled.get(name, "(unset)")
                                                        for scale, filled in values.items()}) for name in names]


def copy_recipe(name: str | Path, folder: str | Path) -> list[Path]:
    """Write a recipe and every file it includes into `folder`, as editable files that run
    from there: `cotdistill run FOLDER/NAME.yaml`. Refuses to overwrite a different file."""
    path, recipe = _read(name)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CotdistillError(f"{folder}: not a directory")
    sources = [path, *_included_files(path, recipe)]
    clashes = [f"{folder / s.name}" for s in sources
               if (folder / s.name).exists() and (folder / s.name).read_bytes() != s.read_bytes()]
    if clashes:
        raise CotdistillError(f"{clashes[0]} exists and differs from the recipe's: remove it or copy elsewhere")
    folder.mkdir(parents=True, exist_ok=True)
    for source in sources:
        (folder / source.name).write_bytes(source.read_bytes())
    return [folder / s.name for s in sources]


def _included_files(path: Path, recipe: dict[str, Any]) -> list[Path]:
    found: list[Path] = []
    for name in recipe.get("include") or []:
        included = _include_path(path, name)
        found += [included, *_included_files(included, read_yaml(included))]
    return list(dict.fromkeys(found))


def _include_path(path: Path, name: str) -> Path:
    """An included file: beside the recipe first (a copy's own edited one), else bundled."""
    for folder in (path.parent, BUNDLED):
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    raise CotdistillError(f"{path}: include {name!r}: no file {path.parent / f'{name}.yaml'} "
                          f"and no bundled {name!r}")


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
    base, scales, _ = _sizes(path, recipe)
    if scale is not None and scale not in scales:
        raise CotdistillError(f"{path}: no scale {scale!r}{_did_you_mean(scale, scales)}"
                              + (f" (scales: {', '.join(scales)})" if scales else " (this recipe has one size)"))
    scale = scale if scale is not None else next(iter(scales), None)
    raw = {**base, **(scales[scale] if scale else {}), **settings}
    if scale:
        raw.setdefault("scale", scale)
    known = set(base) | {name for values in scales.values() for name in values}
    unknown = set(settings) - known
    if unknown:
        first = sorted(unknown)[0]
        raise CotdistillError(f"{path}: no variable(s) {', '.join(sorted(unknown))} to set"
                              f"{_did_you_mean(first, known)} (variables: {', '.join(sorted(known)) or 'none'}); "
                              f"`cotdistill recipes {path.stem if path.parent == BUNDLED else path}` explains them")
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


def _sizes(path: Path, recipe: dict[str, Any], chain: tuple[Path, ...] = ()
           ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, str]]:
    """A recipe's `variables`, `scales` and `help`, over those of the files it `include`s (a
    name of a file beside it, else of a bundled one), so what several recipes share is written once.
    `chain`: the recipes including this one, so one that includes itself is named, not recursed."""
    base: dict[str, Any] = {}
    scales: dict[str, dict[str, Any]] = {}
    helps: dict[str, str] = {}
    chain = (*chain, path.resolve())
    for name in recipe.get("include") or []:
        included = _include_path(path, name)
        if included.resolve() in chain:
            cycle = " -> ".join(p.stem for p in (*chain, included.resolve()))
            raise CotdistillError(f"{path}: include {name!r} includes itself ({cycle})")
        inner_base, inner_scales, inner_help = _sizes(included, read_yaml(included), chain)
        base.update(inner_base)
        helps.update(inner_help)
        for scale, values in inner_scales.items():
            scales.setdefault(scale, {}).update(values)
    own_base, own_scales, own_help = recipe.get("variables") or {}, recipe.get("scales") or {}, recipe.get("help") or {}
    if not isinstance(own_base, dict) or not isinstance(own_scales, dict) or not isinstance(own_help, dict) \
            or not all(isinstance(v, dict) for v in own_scales.values()):
        raise CotdistillError(f"{path}: `variables` and `help` must be mappings and `scales` a mapping of "
                              "name -> variables")
    base.update(own_base)
    helps.update({str(k): str(v) for k, v in own_help.items()})
    for scale, values in own_scales.items():
        scales.setdefault(scale, {}).update(values)
    return base, scales, helps


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
    raise CotdistillError(f"{path}: ${{{name}}} is not a variable of this recipe{scale}{_did_you_mean(name, variables)} "
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


def _fold_api(path: Path, index: int, verb: str, arguments: dict[str, Any]) -> None:
    """A step's flat server options (base_url, concurrency, ...) into its `api`, where a
    model of the step is an openai: one; dropped at their defaults beside any other model,
    an error when set there (a base_url beside teacher gold is a mistake to name)."""
    flat = {key: arguments.pop(key) for key in list(arguments) if key in API_KEYS}
    if not flat:
        return
    models = [arguments.get(key) for key in ("teacher", "verify_with", "model")]
    models += list((arguments.get("models") or {}).values()) if isinstance(arguments.get("models"), dict) else []
    if any(isinstance(model, str) and served(model) for model in models):
        given = {key: value for key, value in flat.items() if value is not None}
        arguments["api"] = {**given, **(arguments.get("api") or {})}
        return
    fields = {f.name: f.default for f in dataclasses.fields(APIConfig)}
    set_ = [key for key, value in flat.items() if value is not None and value != fields[key]]
    if set_:
        who = arguments.get("teacher") or arguments.get("model") or "its model"
        raise CotdistillError(f"{path}: step {index} ({verb}): {', '.join(set_)} configure an openai:MODEL "
                              f"teacher, and this step's is {who!r}: set teacher=openai:MODEL too")


def _check_arguments(path: Path, index: int, verb: str, arguments: dict[str, Any]) -> None:
    """Names and value types against the step's config (AnnotateConfig, TrainConfig,
    EvalConfig) and its function's own keywords, so a recipe fails on load, not hours into its run."""
    function = inspect.signature(STEPS[verb]).parameters
    config = CONFIGS.get(verb)
    hints = {**(_hints(config) if config else {}), **_hints(STEPS[verb])}
    accepted = {name for name, p in function.items() if p.kind != p.VAR_KEYWORD} - {"run_dir", "config"}
    accepted |= {f.name for f in dataclasses.fields(config)} if config else set()
    unknown = sorted(map(str, set(arguments) - accepted))
    if unknown:
        raise CotdistillError(f"{path}: step {index} ({verb}): unknown argument(s) {', '.join(unknown)}"
                              f"{_did_you_mean(unknown[0], accepted | ({*API_KEYS} if verb != 'train' else set()))}")
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
