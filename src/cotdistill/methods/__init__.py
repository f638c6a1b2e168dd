"""Methods: one reasoning format each, all of it in one module; `register_method` adds one
from outside the package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cotdistill.errors import CotdistillError
from cotdistill.store import Annotation, Store
from cotdistill.methods.base import Example, Method, Parsed, Prompts, load_prompts
from cotdistill.methods.cot import CoT
from cotdistill.methods.decompose import Decompose
from cotdistill.methods.direct import Direct
from cotdistill.methods.dss import DSS
from cotdistill.methods.kpdd import KPDDCoT, KPDDPoT
from cotdistill.methods.pot import PoT
from cotdistill.methods.socratic import Socratic

METHODS: dict[str, type[Method]] = {m.name: m for m in (CoT, Direct, DSS, Socratic, Decompose, KPDDCoT, KPDDPoT, PoT)}


def register_method(cls: type[Method]) -> type[Method]:
    """Add a method (usable as a class decorator): annotate, train, eval and the CLI take it
    by name, and read what it declares (roles, pipelines, gold labels, programs)."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise CotdistillError(f"a method named {cls.name!r} exists already")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, prompts: str | Path | None = None) -> Method:
    """A method by name; `prompts` is a YAML file overriding its instruction and/or demonstrations."""
    if name not in METHODS:
        raise CotdistillError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    cls = METHODS[name]
    return cls(load_prompts(prompts, cls.prompts) if prompts else None)


def pipeline_owners(pipeline: str) -> list[str]:
    """The methods that answer by `pipeline`, for an error that says which to pick."""
    return [name for name, cls in METHODS.items() if pipeline in cls.pipelines]


def stored_examples(store: Store, method: Method, roles: list[str], task: str | None = None,
                    split: str | None = None, teacher: str | None = None,
                    **options: Any) -> list[tuple[Annotation, Example]]:
    """The training examples of the `roles` students, from the store's kept annotations (of
    one `teacher`, or all); `options` go to the method's `training_examples` (e.g. dss `gold_label`)."""
    unknown = set(roles) - set(method.roles)
    if unknown:
        raise CotdistillError(f"method {method.name} has no role(s) {', '.join(sorted(unknown))} "
                              f"(roles: {', '.join(method.roles)})")
    annotations = store.annotations(method.name, task, split, teacher=teacher)
    if not annotations:
        where = (f" for task {task}" if task else "") + (f" by teacher {teacher}" if teacher else "")
        raise CotdistillError(f"{store.path}: no kept {method.name} annotations{where}; "
                              + _rejections(store, method.name, task, teacher))
    problems = store.problems(a.problem_key for a in annotations)  # each annotation's own question, exactly
    pairs = []
    for a in annotations:
        for example in method.training_examples(problems[a.problem_key], a.parsed, **options):
            if example.role in roles:
                pairs.append((a, example))
    return pairs


def _rejections(store: Store, method: str, task: str | None, teacher: str | None) -> str:
    """Why nothing is kept: how many replies were rejected, and the commonest reasons; or
    that annotate never ran (or ran for other teachers)."""
    rows = [r for r in store.annotation_counts() if r["method"] == method and task in (None, r["task"])]
    mine = [r for r in rows if teacher in (None, r["teacher"])]
    if not mine:
        others = sorted({r["teacher"] for r in rows})
        return (f"the store has {method} annotations by {', '.join(others)} only: pick one with --teacher"
                if others else "run `cotdistill annotate` first")
    reasons: dict[str, int] = {}
    for r in mine:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + r["n"]
    top = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items(), key=lambda item: -item[1])[:3])
    return (f"all {sum(reasons.values())} replies were rejected ({top}): see "
            f"`cotdistill annotations -r {store.run_dir} --rejected`")


__all__ = ["METHODS", "Example", "Method", "Parsed", "Prompts", "get_method", "pipeline_owners", "register_method",
           "stored_examples"]
