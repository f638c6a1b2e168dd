"""cotdistill: distil a teacher LLM's step-by-step reasoning into a small student model.

The Python API mirrors the CLI verbs: annotate (-> export) -> train -> evaluate -> report, with
`run_recipe` chaining them from a YAML file. Imports are lazy so that `cotdistill --help`
does not wait for torch.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "annotate": "cotdistill.annotate",
    "AnnotateConfig": "cotdistill.config",
    "EvalConfig": "cotdistill.config",
    "export": "cotdistill.export",
    "get_method": "cotdistill.methods",
    "train": "cotdistill.train",
    "TrainConfig": "cotdistill.train",
    "evaluate": "cotdistill.evaluate",
    "report": "cotdistill.report",
    "run_recipe": "cotdistill.recipe",
    "get_task": "cotdistill.tasks",
    "Problem": "cotdistill.tasks",
    "CotdistillError": "cotdistill.errors",
}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'cotdistill' has no attribute {name!r}")
    return getattr(import_module(_API[name]), name)
