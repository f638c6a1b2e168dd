"""Model backends: where completions come from.

The contract (`Messages`, `Completion`, `Backend`) and the embedded model's location are
torch-free; the local transformers backend imports torch, so it is loaded on first use.
"""

from typing import Any

from cotdistill.models.contract import Backend, Completion, Messages
from cotdistill.models.embedded import ALIASES, embedded_model_dir

_LOCAL = ("LocalModel", "encode_prompt", "load_model", "render_completion", "render_prompt", "resolve_model",
          "stack_adapter")


def __getattr__(name: str) -> Any:
    if name in _LOCAL:
        from cotdistill.models import local

        return getattr(local, name)
    raise AttributeError(f"module 'cotdistill.models' has no attribute {name!r}")


__all__ = ["ALIASES", "Backend", "Completion", "Messages", "embedded_model_dir", *_LOCAL]
