"""From a model's name to the backend that runs it: the one table of name prefixes.

`openai:MODEL` is a model behind an OpenAI-compatible server (vLLM, llama.cpp, OpenAI), its
options `APIConfig`'s fields; any other name (an alias, a directory, a Hugging Face id) is a
local transformers model, its options `LocalOptions`'. Every verb asks here, so a new kind
of backend is a row in `PREFIXES` and a branch in `backend_options` / `load_backend`.
Torch-free: the CLI decides what a name is without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from cotdistill.config import check_types, setting
from cotdistill.errors import CotdistillError, at_least
from cotdistill.models.openai_api import PREFIX, APIConfig, APIModel

LOCAL = "local"
PREFIXES: dict[str, str] = {PREFIX: "openai"}  # a name's prefix -> its backend; no prefix: LOCAL


@dataclass(frozen=True)
class LocalOptions:
    device: str | None = setting(None, "cpu, cuda, cuda:1 ... (default: a GPU if there is one)")
    dtype: str | None = setting(None, "float32, bfloat16 or float16 (default: bfloat16 on a GPU that has it, else "
                                      "float32)")
    batch_size: int = setting(32, "sequences decoded at once")

    def __post_init__(self) -> None:
        check_types(self, "local model")
        at_least("batch_size", self.batch_size, 1)
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise CotdistillError(f"dtype {self.dtype!r}: float32, bfloat16 or float16")


def backend(name: str) -> str:
    """The backend that runs `name`: a `PREFIXES` value, or LOCAL."""
    return next((kind for prefix, kind in PREFIXES.items() if name.startswith(prefix)), LOCAL)


def served(name: str) -> bool:
    """Whether `name` is a model behind a server (it takes API options, costs requests)."""
    return backend(name) != LOCAL


def backend_options(name: str, options: dict[str, Any] | None) -> APIConfig | LocalOptions:
    """`name`'s backend settings from `options`, which must all be that backend's."""
    kind = backend(name)
    cls: Any = LocalOptions if kind == LOCAL else APIConfig
    known = {f.name for f in fields(cls)} - {"model"}
    unknown = set(options or {}) - known
    if unknown:
        raise CotdistillError(f"{name}: unknown {kind} backend option(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(known))})")
    if kind == LOCAL:
        return LocalOptions(**(options or {}))
    return APIConfig(model=name[len(PREFIX):], **(options or {}))


def api_config(name: str, options: dict[str, Any] | None) -> APIConfig | None:
    """The server settings of a served model; None for a local one."""
    return backend_options(name, options) if served(name) else None  # type: ignore[return-value]


def load_backend(name: str, options: dict[str, Any] | None = None) -> Any:
    """A model that generates for a pipeline stage, a solver or a local teacher."""
    config = backend_options(name, options)
    if isinstance(config, APIConfig):
        return APIModel(config)
    import torch

    from cotdistill.models.local import LocalModel  # torch: only for local models

    dtype = getattr(torch, config.dtype) if config.dtype else None
    return LocalModel(name, device=config.device, dtype=dtype, batch_size=config.batch_size)
