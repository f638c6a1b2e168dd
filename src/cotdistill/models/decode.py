"""The decode loop of every local causal model: continuous batching over a KV cache with
reserved room, in plain transformers forward calls.

Why not `model.generate`: it computes every row of a batch until the longest is done, and
its `DynamicCache` grows by `torch.cat`, copying each layer's whole cache for every token;
with reasoning replies of very different lengths, on CPU, those two cost more than the
arithmetic. Here a batch is `batch_size` slots: a row that finishes (EOS, a stop string,
its token limit) frees its slot, and once a quarter of the slots are free the next prompts
are prefilled together and written into them, right-aligned with the cache's end (a slot's
earlier columns are masked out); when no prompt waits, finished rows leave the batch. Each
row sees exactly its own prompt at positions 0..n-1, so greedy output is token-identical
to `generate` on the row alone (tests/test_eval_and_report.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


MIN_SHARED = 8  # tokens: a shorter shared prefix is not worth its own forward call


class _ReservedLayer(DynamicLayer):
    """A transformers `DynamicLayer` that writes each new token into room reserved ahead
    (regrown, rarely, when it runs out) instead of copying the layer's cache per token.
    Reads are views of the room, columns `start:length`, so attention sees exactly the
    tensors `DynamicLayer` would hold; columns left of `start` are dropped for free."""

    def __init__(self, reserve: int):
        super().__init__()
        self.reserve, self.start, self.length = reserve, 0, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self.length == 0 or self.length + new > self.room_keys.shape[-2]:  # first call, or the reserve ran out
            held = self.length - self.start
            self.room_keys = _grown(self.keys if held else None, key_states, held + new + self.reserve)
            self.room_values = _grown(self.values if held else None, value_states, held + new + self.reserve)
            self.start, self.length = 0, held
        self.room_keys[:, :, self.length : self.length + new] = key_states
        self.room_values[:, :, self.length : self.length + new] = value_states
        self.length += new
        return self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length:
            self.room_keys, self.room_values = self.room_keys[indices], self.room_values[indices]
            self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self.room_keys = self.room_keys.repeat_interleave(repeats, dim=0)
            self.room_values = self.room_values.repeat_interleave(repeats, dim=0)
            self._views()

    def drop_left(self, columns: int) -> None:
        self.start += columns
        self._views()

    def write(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """A prefilled prompt's keys and values ([heads, columns, dim]) into `slot`, ending at the cache's end."""
        self.room_keys[slot, :, self.length - keys.shape[-2] : self.length] = keys
        self.room_values[slot, :, self.length - values.shape[-2] : self.length] = values

    def _views(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys = self.room_keys[:, :, self.start : self.length]
        self.values = self.room_values[:, :, self.start : self.length]
        return self.keys, self.values


def _grown(held: torch.Tensor | None, like: torch.Tensor, size: int) -> torch.Tensor:
    """A buffer of `size` positions starting with the `held` ones (none on the first call)."""
    room = like.new_empty(like.shape[0], like.shape[1], size, like.shape[3])
    if held is not None:
        room[:, :, : held.shape[-2]] = held
    return room


class ReservedCache(DynamicCache):
    """A `DynamicCache` whose layers reserve room for `reserve` more tokens (see _ReservedLayer)."""

    def __init__(self, reserve: int):
        super().__init__()
        self.layer_class_to_replicate = lambda: _ReservedLayer(reserve)


def cache_argument(model: Any) -> str:
    """The forward keyword that takes the KV cache: `cache` from transformers 5.2x, before it
    `past_key_values`; read off the model inside a peft wrapper (a student in training)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def reservable(model: Any) -> bool:
    """Whether every layer attends to all positions (the reserved cache keeps them all);
    models with sliding-window layers (Mistral, Gemma) decode with transformers' `generate`."""
    config = model.config
    return not getattr(config, "sliding_window", None) and not (
        set(getattr(config, "layer_types", None) or []) - {"full_attention"})


@dataclass
class Decoded:
    """One row's generated tokens and why it stopped ("stop" or "length")."""

    tokens: list[int] = field(default_factory=list)
    finish: str = "length"


@dataclass
class _Batch:
    """The slots being decoded: which prompt each holds (None: free), the shared cache and mask."""

    rows: list[int | None]
    cache: ReservedCache
    mask: torch.Tensor
    logits: torch.Tensor


@torch.inference_mode()
def decode(model: Any, prompts: Sequence[list[int]], batch_size: int, max_new_tokens: int, temperature: float,
           finished: Callable[[list[int]], bool], pad: int, seed: int,
           done: Callable[[int], Any] = lambda n: None) -> list[Decoded]:
    """Decode every prompt (token ids) with `batch_size` slots; `finished(tokens)` says
    whether a row's tokens end in EOS or a stop string. Prompts are scheduled longest first,
    so every waiting prompt fits before the cache's end. Sampling at temperature > 0 is
    seeded once for the whole call. `done(n)` hears of rows as they finish (a progress bar)."""
    out = [Decoded() for _ in prompts]
    if not prompts:
        return out
    generator = torch.Generator(device=model.device).manual_seed(seed)
    waiting = sorted(range(len(prompts)), key=lambda row: -len(prompts[row]))
    batch = _prefill(model, prompts, waiting[:batch_size], max_new_tokens, pad)
    del waiting[:batch_size]
    while True:
        logits = batch.logits.float()
        tokens = sample(logits, temperature, generator) if temperature > 0 else logits.argmax(dim=-1)
        for slot, (row, token) in enumerate(zip(batch.rows, tokens.tolist())):
            if row is None:
                continue
            out[row].tokens.append(token)
            if finished(out[row].tokens):
                out[row].finish = "stop"
            if out[row].finish == "stop" or len(out[row].tokens) == max_new_tokens:
                batch.rows[slot] = None
                done(1)
        free = [slot for slot, row in enumerate(batch.rows) if row is None]
        if not waiting and free:  # draining: finished rows leave the batch
            if len(free) == len(batch.rows):
                break
            index = torch.tensor([slot for slot, row in enumerate(batch.rows) if row is not None],
                                 dtype=torch.long, device=tokens.device)
            _select(batch, index)
            tokens = tokens[index]
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)
        batch.logits = model(input_ids=tokens[:, None], attention_mask=batch.mask, use_cache=True,
                             position_ids=batch.mask.sum(-1, keepdim=True) - 1,
                             **{cache_argument(model): batch.cache}).logits[:, -1]
        if waiting and free and (len(free) >= max(1, batch_size // 4) or len(waiting) <= len(free)):
            taken, waiting = waiting[: len(free)], waiting[len(free):]
            _refill(model, prompts, batch, list(zip(free, taken)), pad)
    return out


def sample(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row from softmax(logits / temperature), by inverse transform: one uniform
    draw per row, located in the row's cumulative probabilities. The same distribution as
    `torch.multinomial`, which on CPU draws an exponential variate for every entry of the
    vocabulary (35 ms a step for 32 rows x 49k tokens, a fifth of a 135M model's decode step);
    this takes ~1 ms. Tokens of probability zero are never drawn (`right=True` skips the flat
    stretches of the cumulative sum)."""
    cumulative = torch.softmax(logits / temperature, dim=-1).cumsum(dim=-1)
    total = cumulative[:, -1:]
    draws = torch.rand(total.shape, generator=generator, device=total.device) * total
    draws = torch.minimum(draws, total.nextafter(torch.zeros_like(total)))  # a draw rounded up to the total
    return torch.searchsorted(cumulative, draws, right=True)[:, 0]


def _prefill(model: Any, prompts: Sequence[list[int]], rows: list[int], reserve: int, pad: int) -> _Batch:
    """One forward over these rows' distinct prompts into a fresh cache with `reserve` room to
    spare; rows that ask the same prompt (self-consistency's K samples) get copies of its one
    computed row, which for K=8 takes seven in eight prompt tokens out of the prefill. What the
    distinct prompts all begin with (the system prompt and few-shot examples) is computed once
    too and copied to each: a row's columns are [shared prefix][padding, masked][its own
    suffix], so it still sees its prompt at positions 0..n-1."""
    keys = [tuple(prompts[row]) for row in rows]
    where: dict[tuple[int, ...], int] = {}
    for key in keys:
        where.setdefault(key, len(where))
    texts = [list(text) for text in where]
    shared = min(_common_prefix(texts), min(map(len, texts)) - 1)  # each row keeps >= 1 token of its own
    shared = shared if len(texts) > 1 and shared >= MIN_SHARED else 0
    suffixes = [t[shared:] for t in texts]
    width = max(map(len, suffixes))
    cache, argument = ReservedCache(reserve + width), cache_argument(model)
    if shared:
        model(input_ids=torch.tensor([texts[0][:shared]], device=model.device), use_cache=True, logits_to_keep=1,
              **{argument: cache})
        cache.batch_repeat_interleave(len(texts))
    input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in suffixes], device=model.device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=model.device)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, shared:],
                   use_cache=True, logits_to_keep=1, **{argument: cache}).logits[:, -1]
    batch = _Batch(list(range(len(texts))), cache, mask, logits)
    if len(texts) < len(rows):
        _select(batch, torch.tensor([where[key] for key in keys], device=model.device))
    batch.rows = list(rows)
    return batch


def _common_prefix(texts: list[list[int]]) -> int:
    first, last = min(texts), max(texts)  # the lexicographic extremes bound every common prefix
    return next((i for i, (a, b) in enumerate(zip(first, last)) if a != b), min(len(first), len(last)))


def _refill(model: Any, prompts: Sequence[list[int]], batch: _Batch, moves: list[tuple[int, int]], pad: int) -> None:
    """Prefill the `moves`' prompts together and write each (its columns and their mask) into
    its free slot, ending at the cache's end (no waiting prompt is longer than one a slot
    holds, so it fits); then drop the columns no slot attends to any more."""
    new = _prefill(model, prompts, [row for _, row in moves], 0, pad)
    width, written = batch.mask.shape[1], new.mask.shape[1]
    for index, (slot, row) in enumerate(moves):
        for ours, theirs in zip(batch.cache.layers, new.cache.layers):
            ours.write(slot, theirs.keys[index], theirs.values[index])
        batch.mask[slot] = 0
        batch.mask[slot, width - written:] = new.mask[index]
        batch.logits[slot] = new.logits[index]
        batch.rows[slot] = row
    unused = int((batch.mask.sum(0) > 0).int().argmax())  # leading columns every slot masks
    if unused:
        batch.mask = batch.mask[:, unused:]
        for layer in batch.cache.layers:
            layer.drop_left(unused)


def _select(batch: _Batch, index: torch.Tensor) -> None:
    """Keep only these slots."""
    batch.cache.batch_select_indices(index)
    batch.mask, batch.logits = batch.mask[index], batch.logits[index]
    batch.rows = [batch.rows[slot] for slot in index.tolist()]
