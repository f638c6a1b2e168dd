"""Model backends: where completions come from."""

from cotdistill.models.embedded import ALIASES, embedded_model_dir
from cotdistill.models.local import Completion, LocalModel, Messages, load_model, render_completion, render_prompt, resolve_model

__all__ = ["ALIASES", "Completion", "LocalModel", "Messages", "embedded_model_dir", "load_model",
           "render_completion", "render_prompt", "resolve_model"]
