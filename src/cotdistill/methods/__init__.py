"""Methods: one reasoning format each, all of it in one module."""

from __future__ import annotations

from pathlib import Path

from cotdistill.errors import CotdistillError
from cotdistill.methods.base import Example, Method, Parsed, Prompts, load_prompts
from cotdistill.methods.cot import CoT
from cotdistill.methods.decompose import Decompose
from cotdistill.methods.dss import DSS
from cotdistill.methods.kpdd import KPDDCoT, KPDDPoT
from cotdistill.methods.pot import PoT
from cotdistill.methods.socratic import Socratic

METHODS: dict[str, type[Method]] = {m.name: m for m in (CoT, DSS, Socratic, Decompose, KPDDCoT, KPDDPoT, PoT)}


def get_method(name: str, prompts: str | Path | None = None) -> Method:
    """A method by name; `prompts` is a YAML file overriding its instruction and/or demonstrations."""
    if name not in METHODS:
        raise CotdistillError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    cls = METHODS[name]
    return cls(load_prompts(prompts, cls.prompts) if prompts else None)


__all__ = ["METHODS", "Example", "Method", "Parsed", "Prompts", "get_method"]
