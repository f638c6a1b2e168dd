"""Methods: one reasoning format each, all of it in one module."""

from cotdistill.errors import CotdistillError
from cotdistill.methods.cot import CoT, Parsed

METHODS = {"cot": CoT()}


def get_method(name: str) -> CoT:
    if name not in METHODS:
        raise CotdistillError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name]


__all__ = ["METHODS", "CoT", "Parsed", "get_method"]
