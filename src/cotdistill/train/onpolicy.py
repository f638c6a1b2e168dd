"""On-policy distillation (the GKD family: Agarwal et al. 2024, MiniLLM, Qwen3's strong-to-
weak stage): each step the student samples completions of its own training prompts, a
teacher gives its distribution at every token of them, and the loss is the generalized
Jensen-Shannon divergence per token. With probability 1 - `lmbda` a step learns from the
fixed (gold or teacher) sequences instead, so `lmbda=0` is supervised KD.

`beta` follows TRL's GKDTrainer: 0 is the forward KL(teacher || student), 1 the reverse
KL(student || teacher), and in between JSD_beta = beta * KL(T || M) + (1 - beta) *
KL(S || M) with M = beta * T + (1 - beta) * S. Written here rather than taken from TRL
(not a dependency, and its `generalized_jsd_loss` takes two full logit tensors): our
teachers may give a top-k plus a tail bucket, and the loss must run in chunks of positions
so batch x length x vocabulary is never held at once (150k-token vocabularies): each
chunk's student logits are made from its hidden states inside `torch.utils.checkpoint`, so
only the hidden states wait for the backward pass, and the logits are made again then.

Rollouts go through `models/decode.py` (continuous batching, one prefill of what the
prompts share) with the student's current weights, without gradient; a rollout is seeded
by the optimizer step, so a resumed run samples what the uninterrupted one did.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils.checkpoint import checkpoint

from cotdistill.models.contract import Messages

TAIL_FLOOR = math.log(1e-12)  # a tail bucket's log-mass never drops below this (0 * log 0 stays finite)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim from log-probs; entries where p is 0 (-inf) add nothing,
    and give no NaN gradient."""
    present = torch.isfinite(p)
    p0, q0 = p.masked_fill(~present, 0.0), q.masked_fill(~present, 0.0)
    return torch.where(present, p0.exp() * (p0 - q0), 0.0).sum(-1)


def generalized_jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-row generalized JSD between two log-prob tensors [n, buckets] (see the module)."""
    if beta == 0:
        return _kl(teacher, student)
    if beta == 1:
        return _kl(student, teacher)
    mixture = torch.logsumexp(torch.stack([student + math.log(1 - beta), teacher + math.log(beta)]), dim=0)
    return beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, floored at TAIL_FLOOR."""
    return torch.log((-torch.expm1(x.clamp(max=0))).clamp(min=math.exp(TAIL_FLOOR)))


def top_k_buckets(student: torch.Tensor, ids: torch.Tensor, teacher: torch.Tensor,
                  tail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both distributions over the teacher's k ids plus one bucket for the rest of the
    vocabulary: student log-probs [n, V]; teacher ids and log-probs [n, k] (-inf: no entry);
    `tail` the teacher's log-mass outside its ids (default: 1 - the sum of its top-k)."""
    present = torch.isfinite(teacher)
    picked = torch.gather(student, -1, ids).masked_fill(~present, float("-inf"))
    covered = torch.zeros_like(student).scatter_add_(-1, ids, present.to(student.dtype)) > 0
    rest = student.masked_fill(covered, float("-inf"))
    empty = ~torch.isfinite(rest).any(-1, keepdim=True)  # k covers the vocabulary
    student_tail = torch.logsumexp(rest.masked_fill(empty, 0.0), -1, keepdim=True).clamp(min=TAIL_FLOOR)
    student_tail = torch.where(empty, TAIL_FLOOR, student_tail)
    if tail is None:
        tail = _log1mexp(torch.logsumexp(teacher, -1))
    teacher_tail = tail.reshape(-1, 1).clamp(min=TAIL_FLOOR)
    return torch.cat([picked, student_tail], -1), torch.cat([teacher, teacher_tail], -1)


def uld(student: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Universal logit distillation (Boizard et al. 2024) per row: the L1 distance between the
    student's and the teacher's probabilities sorted high to low, over the teacher's k
    entries; it needs no shared vocabulary, so it stands in where tokens do not align."""
    k = teacher_probs.shape[-1]
    return (student.exp().topk(k, dim=-1).values - teacher_probs).abs().sum(-1)


@dataclass
class TeacherScores:
    """The teacher's distribution at scored student tokens, flattened: `rows[i]`, `positions[i]`
    name the batch row and the completion token. Either the whole vocabulary
    (`full(start, end)` -> log-probs [end - start, V], made a chunk at a time) or top-k ids
    and log-probs [N, k] (-inf: no entry) with an optional tail log-mass [N]; `uld` [N, k]
    the teacher's sorted probabilities (zero-padded) where the ULD term applies, NaN rows elsewhere."""

    rows: torch.Tensor
    positions: torch.Tensor
    full: Callable[[int, int], torch.Tensor] | None = None
    ids: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    tail: torch.Tensor | None = None
    uld: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Rollouts:
    """A batch to score: the student's prompts and the completion tokens (sampled or fixed),
    the teacher's prompts in the student's tokens (the privileged ones for self-distillation),
    and the chat messages (text teachers render them their own way)."""

    prompts: list[list[int]]
    completions: list[list[int]]
    teacher_prompts: list[list[int]]
    messages: list[Messages]


class Teacher(Protocol):
    def score(self, student: Any, rollouts: Rollouts) -> TeacherScores:
        """The teacher's distributions at the rollouts' completion tokens. `student`: the
        model in training (the self-distillation teacher is the student)."""


def _chunk_loss(hidden: torch.Tensor, head: torch.nn.Module, teacher: torch.Tensor, ids: torch.Tensor | None,
                tail: torch.Tensor | None, uld_probs: torch.Tensor | None, beta: float) -> torch.Tensor:
    student = torch.log_softmax(head(hidden).float(), dim=-1)
    if ids is None:
        loss = generalized_jsd(student, teacher, beta)
    else:
        loss = generalized_jsd(*top_k_buckets(student, ids, teacher, tail), beta)
    if uld_probs is not None:  # NaN rows: no ULD term
        applies = ~torch.isnan(uld_probs[:, 0])
        loss = loss + torch.where(applies, uld(student, uld_probs.nan_to_num(0.0)), 0.0)
    return loss.sum()


def chunked_loss(hidden: torch.Tensor, head: torch.nn.Module, scores: TeacherScores, beta: float,
                 chunk: int) -> torch.Tensor:
    """Mean over the scored tokens of the per-token loss; `hidden` [N, H] the student's states
    at the scored tokens (the ones predicting them). `chunk` positions at a time (0: all)."""
    if not len(scores):
        return hidden.sum() * 0.0
    chunk = chunk or len(scores)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(scores), chunk):
        end = min(start + chunk, len(scores))
        if scores.full is not None:
            with torch.no_grad():
                teacher, ids = scores.full(start, end).float(), None
        else:
            teacher, ids = scores.logprobs[start:end], scores.ids[start:end]
        tail = scores.tail[start:end] if scores.tail is not None else None
        uld_probs = scores.uld[start:end] if scores.uld is not None else None
        args = (hidden[start:end], head, teacher, ids, tail, uld_probs, beta)
        total = total + (checkpoint(_chunk_loss, *args, use_reentrant=False) if torch.is_grad_enabled()
                         else _chunk_loss(*args))
    return total / len(scores)


def padded(sequences: Sequence[list[int]], pad: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask."""
    width = max(map(len, sequences))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
    return ids, mask


def states_at(model: Any, prompts: Sequence[list[int]], completions: Sequence[list[int]], rows: torch.Tensor,
              positions: torch.Tensor, pad: int) -> torch.Tensor:
    """The model's last hidden states (after its final norm: what its output layer reads)
    that predict completion token `positions[i]` of row `rows[i]`; [N, H]. Through the
    model's own forward (so DDP and peft wrappers act), with logits for one position only."""
    ids, mask = padded([p + c for p, c in zip(prompts, completions)], pad, rows.device)
    out = model(input_ids=ids, attention_mask=mask, logits_to_keep=1, output_hidden_states=True)
    starts = torch.tensor([len(p) for p in prompts], device=rows.device)
    return out.hidden_states[-1][rows, starts[rows] + positions - 1]


def all_positions(completions: Sequence[list[int]], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, positions) of every completion token."""
    rows = [r for r, c in enumerate(completions) for _ in c]
    positions = [j for c in completions for j in range(len(c))]
    return torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(positions, dtype=torch.long, device=device)


def privileged_messages(messages: Messages, rationale: str) -> Messages:
    """The student's chat with a reference solution put into its last user turn: what the
    self-distillation teacher sees, and the student does not."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    hint = (f"{messages[last]['content']}\n\nA correct worked solution, for reference:\n{rationale}\n\n"
            "Now write the solution in your own words.")
    return [*messages[:last], {**messages[last], "content": hint}, *messages[last + 1:]]


def rollout(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, temperature: float,
            seed: int) -> list[list[int]]:
    """The student's sampled completion tokens (ending in EOS where it stopped), by the
    shared decode engine with the current weights; dropout off while sampling."""
    from cotdistill.models.decode import decode
    from cotdistill.models.local import _eos_ids

    eos = _eos_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    try:
        rows = decode(model, prompts, len(prompts), max_new_tokens, temperature, lambda tokens: tokens[-1] in eos,
                      tokenizer.pad_token_id, seed)
    finally:
        model.train(was_training)
    return [r.tokens for r in rows]


@dataclass
class OnPolicySettings:
    beta: float = 0.5
    lmbda: float = 1.0
    temperature: float = 1.0
    max_new_tokens: int = 128
    chunk: int = 256
    seed: int = 0


class OnPolicyLoss:
    """One step of on-policy distillation: choose on-policy or fixed sequences, roll out,
    score with the teacher, and the chunked generalized JSD; times each part."""

    def __init__(self, settings: OnPolicySettings, teacher: Teacher, tokenizer: Any,
                 fixed_teacher: Teacher | None = None):
        """`fixed_teacher`: scores the fixed sequences (the teacher behind the store's cache), if not `teacher`."""
        self.settings, self.teacher, self.tokenizer = settings, teacher, tokenizer
        self.fixed_teacher = fixed_teacher or teacher
        self.seconds = {"rollout": 0.0, "teacher": 0.0, "student_loss": 0.0}  # this process's totals

    def on_policy(self, step: int) -> bool:
        """Whether this optimizer step learns from the student's own samples (prob. lmbda)."""
        return random.Random(self.settings.seed * 1_000_003 + step).random() < self.settings.lmbda

    def __call__(self, model: Any, inputs: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        s = self.settings
        prompts = inputs["prompt_ids"]
        started = time.perf_counter()
        on_policy = self.on_policy(step)
        if on_policy:
            unwrapped = getattr(model, "module", model)
            completions = rollout(unwrapped, self.tokenizer, prompts, s.max_new_tokens, s.temperature,
                                  s.seed * 1_000_003 + step)
        else:
            completions = inputs["completion_ids"]
        rollout_done = time.perf_counter()
        batch = Rollouts(prompts, completions, inputs["teacher_prompt_ids"], inputs["messages"])
        teacher = self.teacher if on_policy else self.fixed_teacher
        scores = teacher.score(getattr(model, "module", model), batch)
        teacher_done = time.perf_counter()
        device = next(model.parameters()).device
        hidden = states_at(model, prompts, completions, scores.rows.to(device), scores.positions.to(device),
                           self.tokenizer.pad_token_id)
        head = getattr(model, "module", model).get_output_embeddings()
        loss = chunked_loss(hidden, head, scores, s.beta, s.chunk)
        for name, seconds in (("rollout", rollout_done - started), ("teacher", teacher_done - rollout_done),
                              ("student_loss", time.perf_counter() - teacher_done)):
            self.seconds[name] += seconds
        parts = {"on_policy": float(on_policy), "rollout_seconds": rollout_done - started,
                 "teacher_seconds": teacher_done - rollout_done,
                 "completion_tokens": sum(map(len, completions)) / max(1, len(completions)),
                 "scored_tokens": float(len(scores))}
        return loss, parts
