"""Local transformers models: finding them, loading them, and generating in batches.

Batching is the lever on every device (12 tok/s at batch 1 vs 120 tok/s at batch 32 on
2 CPU cores for the 135M model), so generation sorts prompts by length and runs them in
left-padded batches; each row leaves its batch at EOS or a stop string.
"""

from __future__ import annotations

import json
import re
import time
import types
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cotdistill.errors import CotdistillError
from cotdistill.models.contract import Completion, Messages
from cotdistill.models.decode import decode, reservable
from cotdistill.models.embedded import ALIASES, embedded_model_dir

def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_dtype(device: str) -> torch.dtype:
    """bf16 on GPUs that run it fast; fp32 on CPU, where bf16's speed depends on the CPU
    (benchmarks/cpu_bf16.py) and the decode loop packs fp32 weights."""
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_model(name: str) -> str:
    """An alias, a local model directory, or a Hugging Face model id, as a path/id transformers loads."""
    if name in ALIASES:
        return str(embedded_model_dir(name))
    path = Path(name).expanduser()
    if path.exists():
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise CotdistillError(f"{path}: not a model directory (no config.json or adapter_config.json)")
        return str(path)
    import logging

    from transformers import AutoConfig

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.CRITICAL)  # its retry warnings would bury the one-line error
    try:
        AutoConfig.from_pretrained(name)
    except Exception:  # OSError, HTTP errors, offline errors: all mean "cannot be had"
        raise CotdistillError(
            f"unknown model {name!r}: not an alias ({', '.join(ALIASES)}), not a local directory, "
            "and not a Hugging Face model id reachable from here"
        ) from None
    finally:
        hub_logger.setLevel(level)
    return name


def _model_class(path: str) -> Any:
    """Causal LM or, for encoder-decoder configs (T5, Flan-T5), seq2seq LM."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if AutoConfig.from_pretrained(path).is_encoder_decoder else AutoModelForCausalLM


def load_model(name: str, device: str | None = None, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """(model, tokenizer). A LoRA checkpoint loads onto its base model, merged for fast inference.
    Files that do not load (cut short, random bytes, an unknown model_type, an adapter gone)
    are one line naming the model, whatever the library raised."""
    path = resolve_model(name)
    try:
        return _load(path, device, dtype)
    except CotdistillError:
        raise
    except Exception as error:  # SafetensorError, OSError, ValueError (HFValidationError), KeyError, ...
        hint = "; `cotdistill train` with its settings rebuilds a student" if "students" in Path(path).parts else ""
        message = " ".join(str(error).split())[:200]
        label = path if name == path else f"{name} ({path})"
        raise CotdistillError(f"model {label} does not load ({type(error).__name__}: {message}){hint}") from None


def _load(path: str, device: str | None, dtype: torch.dtype | None) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    device = device or default_device()
    dtype = dtype or default_dtype(device)
    adapter_config = Path(path) / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel

        if not any((Path(path) / f"adapter_model.{kind}").is_file() for kind in ("safetensors", "bin")):
            raise FileNotFoundError(f"{path}: adapter_config.json without adapter_model.safetensors")
        base = resolve_model(json.loads(adapter_config.read_text())["base_model_name_or_path"])
        model = _model_class(base).from_pretrained(base, dtype=dtype)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    else:
        model = _model_class(path).from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def stack_adapter(own: Path, parent: Path, out: Path) -> None:
    """Write to `out` one LoRA adapter holding `parent`'s and `own` (one learnt on the
    parent's merged weights: a LoRA student warm-starts merged). peft saves an adapter against
    the original base, so `own` alone loads as base + its update and loses everything the
    parent learnt (an arithmetic student at 44% continued for 20 steps scored 2%). Side by
    side, A = [A_parent * s_parent; A_own * s_own], B = [B_parent, B_own], rank r_parent +
    r_own, scaling 1: base + stacked = base + both updates, exactly (peft's `cat` combination;
    written by hand because peft's needs the base model loaded, 28 GB in fp32 for a 7B base,
    to concatenate megabytes, and refuses a list of target modules beside a regex). A module
    only one adapter has gets zeros in the other's rows. The files are replaced only once
    written."""
    from safetensors.torch import load_file, save_file

    configs = [json.loads((d / "adapter_config.json").read_text()) for d in (parent, own)]
    unsupported = [key for c in configs for key in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern",
                                                    "layers_to_transform", "modules_to_save") if c.get(key)]
    if unsupported or any(c.get("peft_type") != "LORA" for c in configs):
        raise CotdistillError(f"{own} continues {parent}, whose adapters cannot be stacked "
                              f"({', '.join(sorted(set(unsupported))) or 'not LoRA'}): train from the base model")
    weights = [load_file(str(d / "adapter_model.safetensors")) for d in (parent, own)]
    strange = sorted({k for w in weights for k in w if not k.endswith((".lora_A.weight", ".lora_B.weight"))})
    if strange:
        raise CotdistillError(f"{own}: adapter tensors other than LoRA A/B ({strange[0]}, ...) cannot be stacked")
    ranks = [c["r"] for c in configs]
    scales = [c["lora_alpha"] / c["r"] for c in configs]
    stacked = {}
    for module in sorted({k[: -len(".lora_A.weight")] for w in weights for k in w if k.endswith(".lora_A.weight")}):
        a_key, b_key = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        a_any, b_any = next((w[a_key], w[b_key]) for w in weights if a_key in w)  # the module's shapes
        a_parts, b_parts = [], []
        for w, rank, scale in zip(weights, ranks, scales):
            present = a_key in w
            a_parts.append(w[a_key].float() * scale if present else a_any.new_zeros(rank, a_any.shape[1]))
            b_parts.append(w[b_key].float() if present else b_any.new_zeros(b_any.shape[0], rank))
        stacked[a_key], stacked[b_key] = torch.cat(a_parts, 0).contiguous(), torch.cat(b_parts, 1).contiguous()
    config = {**configs[1], "r": sum(ranks), "lora_alpha": sum(ranks),
              "target_modules": _joined_targets([c["target_modules"] for c in configs])}
    save_file(stacked, str(out / "adapter_model.safetensors.part"), metadata={"format": "pt"})
    (out / "adapter_config.json.part").write_text(json.dumps(config, indent=2))
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (out / f"{name}.part").replace(out / name)


def _joined_targets(targets: list[list[str] | str]) -> list[str] | str:
    """Both adapters' target modules in one peft value: a list if both are lists, else one
    regex (peft matches a regex on the whole module name, a list entry on its last parts)."""
    if all(isinstance(t, list) for t in targets):
        return sorted({name for t in targets for name in t})
    return "|".join(f"(?:{t})" if isinstance(t, str) else rf"(?:(?:.*\.)?(?:{'|'.join(map(re.escape, t))}))"
                    for t in targets)


def pack_linear_weights(model: torch.nn.Module) -> None:
    """CPU fp32 inference: every Linear's weight reordered once into oneDNN's blocked layout,
    as inductor's weight freezing does for a compiled model, so the small products of a
    decode step skip the per-call packing of the weight that a plain `F.linear` does: a 135M
    model's greedy decoding at 32 rows 1.17x faster, its products 1.4x at 1 row and 1.6x at 8
    (benchmarks/README.md). Written by hand because neither transformers nor torch offers it
    short of torch.compile, whose whole-model compile fails on CPU here. The packed weight
    replaces the dense one, so memory stays the same, except where the weight is tied (the
    output layer that shares the input embedding keeps both). For inference only: packed
    weights take no gradient."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for module in model.modules():
        if type(module) is not torch.nn.Linear or module.weight.device.type != "cpu" \
                or module.weight.dtype != torch.float32:
            continue
        module.packed_weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach())
        if uses[id(module.weight)] == 1:
            module.weight = torch.nn.Parameter(module.packed_weight, requires_grad=False)
        module.forward = types.MethodType(_packed_linear, module)


def _packed_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def render_prompt(tokenizer: Any, messages: Messages) -> str:
    """The text a model sees: its chat template when it has one (instruct models answer
    nonsense without it), else a plain `Question:`/`Answer:` layout for base models."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    parts = []
    for message in messages:
        if message["role"] == "assistant":
            parts.append(f" {message['content']}\n\n")
        else:
            parts.append(f"{message['content']}\n")
    return "".join(parts) + "Answer:"


def encode_prompt(tokenizer: Any, messages: Messages) -> list[int]:
    """The token ids a model is prompted with, in generation and in training alike: the
    rendered prompt, with the tokenizer's own special tokens (BOS) only where no chat
    template writes its own. One function, so training and eval prompts cannot drift apart."""
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=not tokenizer.chat_template)["input_ids"]


def longest_token(tokenizer: Any) -> int:
    """Characters in the tokenizer's longest vocabulary entry (a byte-level entry has a character
    per byte, so no decoded token is longer): a text of more than N times this many characters
    is more than N tokens, known before tokenizing it. Computed once per tokenizer."""
    cached = getattr(tokenizer, "_cotdistill_longest_token", None)
    if cached is None:
        cached = max((len(token) for token in tokenizer.get_vocab()), default=1)
        tokenizer._cotdistill_longest_token = cached
    return cached


def cut_text(tokenizer: Any, text: str, tokens: int) -> str:
    """`text` cut where it certainly still holds its first `tokens` tokens (with a margin, since
    the tokens at a cut may merge otherwise), so a 50 MB line costs no more to tokenize than what
    is kept of it (tokenizing it whole, then truncating, peaked at 8.6 GB)."""
    limit = (tokens + 64) * longest_token(tokenizer)
    return text if len(text) <= limit else text[:limit]


def context_length(model: Any) -> int | None:
    """The positions a decoder-only model attends over (None where unknown or not a hard limit:
    encoder-decoders such as T5 use relative positions)."""
    if model.config.is_encoder_decoder:
        return None
    value = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def render_completion(tokenizer: Any, messages: Messages, completion: str) -> str:
    """The target text after `render_prompt(messages)`, ending the way the model must learn to stop."""
    if tokenizer.chat_template:
        prompt = render_prompt(tokenizer, messages)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}], tokenize=False)
        if not full.startswith(prompt):
            raise CotdistillError("this model's chat template does not extend the prompt with the reply; "
                                  "use a model whose template does, or one without a template")
        return full[len(prompt):]
    return f" {completion}{tokenizer.eos_token or ''}"


class LocalModel:
    """A loaded causal or seq2seq LM that turns chat requests into completions, batch by batch."""

    def __init__(self, name: str, device: str | None = None, dtype: torch.dtype | None = None, batch_size: int = 32,
                 loaded: tuple[Any, Any] | None = None):
        """`loaded`: an already loaded (model, tokenizer), e.g. a student in training."""
        self.name = name
        self.model, self.tokenizer = loaded or load_model(name, device, dtype)
        self.model.eval()
        if loaded is None:  # a model of its own, never trained further
            pack_linear_weights(self.model)
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    def flops(self, tokens: int) -> float:
        """Estimated inference compute: 2 x parameters per token processed."""
        if not hasattr(self, "_parameter_count"):
            self._parameter_count = sum(p.numel() for p in self.model.parameters())
        return 2.0 * self._parameter_count * tokens

    def generate(self, requests: Sequence[Messages], max_new_tokens: int = 256, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int = 0, progress: str | None = None) -> list[Completion]:
        """Completions in request order. Greedy at temperature 0; sampling is seeded per call.
        A prompt beyond the model's context is refused before anything is allocated for it, and
        replies are bounded by what the context leaves (`--max-new-tokens 1000000000` asked for
        768 GB of cache)."""
        context = context_length(self.model)
        if context:
            for messages in requests:  # counted in characters first: tokenizing 50 MB costs gigabytes
                if sum(len(m["content"]) for m in messages) > context * longest_token(self.tokenizer):
                    self._refuse(messages, "characters", sum(len(m["content"]) for m in messages), context)
        encoded = [encode_prompt(self.tokenizer, messages) for messages in requests]
        if context and encoded:
            longest = max(range(len(encoded)), key=lambda i: len(encoded[i]))
            if len(encoded[longest]) >= context:
                self._refuse(requests[longest], "tokens", len(encoded[longest]), context)
            max_new_tokens = min(max_new_tokens, context - len(encoded[longest]))
        started = time.perf_counter()
        if self.model.config.is_encoder_decoder or not reservable(self.model):
            return self._generate_batched(encoded, max_new_tokens, temperature, stop, seed, progress)
        eos = _eos_ids(self.model, self.tokenizer)
        window = max((len(s) for s in stop), default=0)  # a token has at least one character

        def finished(tokens: list[int]) -> bool:
            return tokens[-1] in eos or bool(stop) and _ends_in_stop(self.tokenizer, tokens, stop, window)

        with tqdm(total=len(encoded), desc=progress, disable=progress is None, unit="req") as bar:
            rows = decode(self.model, encoded, self.batch_size, max_new_tokens, temperature, finished,
                          self.tokenizer.pad_token_id, seed, done=bar.update)
        return self._completions(encoded, [r.tokens for r in rows], [r.finish for r in rows], stop, started)

    def _refuse(self, messages: Messages, unit: str, size: int, context: int) -> None:
        start = " ".join(messages[-1]["content"].split())[:60]
        raise CotdistillError(f"{self.name}: a prompt of {size:,} {unit} ({start!r}...) is beyond the model's context "
                              f"of {context:,} tokens: shorten the question, or leave that problem out")

    def _generate_batched(self, encoded: list[list[int]], max_new_tokens: int, temperature: float,
                          stop: Sequence[str], seed: int, progress: str | None) -> list[Completion]:
        """Encoder-decoder and sliding-window models: transformers' `generate`, batch by batch
        (sorted by length, so a batch pads little)."""
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[Completion | None] = [None] * len(encoded)
        for batch_index, start in enumerate(tqdm(range(0, len(order), self.batch_size), desc=progress,
                                                 disable=progress is None, unit="batch")):
            rows = order[start : start + self.batch_size]
            for row, completion in zip(rows, self._generate_with_transformers(
                    [encoded[i] for i in rows], max_new_tokens, temperature, stop, seed + batch_index)):
                results[row] = completion
        return results  # type: ignore[return-value]

    def _generate_with_transformers(self, batch: list[list[int]], max_new_tokens: int, temperature: float,
                                    stop: Sequence[str], seed: int) -> list[Completion]:
        """One batch through transformers' `generate`: encoder-decoder models (whose decoder
        input is only the reply, so rows that finish early waste little) and models with
        sliding-window layers."""
        started = time.perf_counter()
        pad = self.tokenizer.pad_token_id
        width = max(len(ids) for ids in batch)
        seq2seq = self.model.config.is_encoder_decoder
        padded = [(ids + [pad] * (width - len(ids)), [1] * len(ids) + [0] * (width - len(ids))) if seq2seq else
                  ([pad] * (width - len(ids)) + ids, [0] * (width - len(ids)) + [1] * len(ids)) for ids in batch]
        input_ids = torch.tensor([ids for ids, _ in padded], device=self.device)
        mask = torch.tensor([m for _, m in padded], device=self.device)
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        output = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     stop_strings=list(stop) or None, tokenizer=self.tokenizer, pad_token_id=pad,
                                     **sampling)
        eos = _eos_ids(self.model, self.tokenizer)
        generated, finish = [], []
        for row in output[:, 1 if seq2seq else width:].tolist():  # seq2seq: column 0 is the decoder start token
            ids = []
            for token in row:
                if token in eos or token == pad:
                    break
                ids.append(token)
            generated.append(ids)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            finish.append("stop" if len(ids) < len(row) or any(s in text for s in stop) else "length")
        return self._completions(batch, generated, finish, stop, started)

    def _completions(self, batch: list[list[int]], generated: list[list[int]], finish: list[str],
                     stop: Sequence[str], started: float) -> list[Completion]:
        seconds = (time.perf_counter() - started) / len(batch)
        completions = []
        for ids, tokens_out, reason in zip(batch, generated, finish):
            text = self.tokenizer.decode(tokens_out, skip_special_tokens=True)
            cut = min((text.index(s) for s in stop if s in text), default=len(text))
            completions.append(Completion(text[:cut].strip(), len(ids), len(tokens_out), reason, seconds))
        return completions


def _ends_in_stop(tokenizer: Any, tokens: list[int], stop: Sequence[str], window: int) -> bool:
    tail = tokenizer.decode(tokens[-window:], skip_special_tokens=True)
    return any(s in tail for s in stop)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
