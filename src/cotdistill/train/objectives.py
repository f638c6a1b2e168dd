"""The losses of every objective, on the logits of target tokens only.

`targets()` runs the student and returns logits aligned with the tokens they predict, for
causal and seq2seq models alike; each objective (combined in `DistillTrainer.compute_loss`)
is a few lines on top:

- sft:       token NLL of the completion;
- multitask: alpha * NLL(label task) + (1 - alpha) * NLL(rationale task) (DSS), each task
             averaged over its own tokens, as the paper's code does;
- mi:        multitask + beta * L_MI, L_MI from a learned InfoNCE critic (a variational lower
             bound on the mutual information of the two tasks' representations) or the
             public code's soft cross-entropy between max-over-time distributions;
- kd:        (1 - w) * NLL + w * KL(p_teacher || p_student) per token, over the teacher's
             stored top-k renormalised, or over the whole vocabulary of a local teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Targets:
    logits: torch.Tensor  # [batch, L, vocab]; logits[:, j] predicts labels[:, j]
    labels: torch.Tensor  # [batch, L], -100 where no loss is taken
    start: int  # the sequence position of column 0 (causal: the batch's first completion token)
    hidden: torch.Tensor | None = None  # [batch, L, hidden]: the states the logits came from

    @property
    def mask(self) -> torch.Tensor:
        return self.labels != -100


def targets(model: Any, batch: dict[str, torch.Tensor], hidden: bool = False) -> Targets:
    """The student's logits for the target tokens. Causal models compute logits only from the
    batch's first completion position on: with a 49k vocabulary the output layer is a fifth
    of the model's compute and prompts are over half of each example."""
    labels = batch["labels"]
    if getattr(model, "module", model).config.is_encoder_decoder:  # DDP and DeepSpeed wrap the model in .module
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    output_hidden_states=hidden)
        return Targets(out.logits, labels, 0, out.decoder_hidden_states[-1] if hidden else None)
    first = max(1, int((labels != -100).int().argmax(dim=1).min()))
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                logits_to_keep=labels.shape[1] - first + 1, output_hidden_states=hidden)
    states = out.hidden_states[-1][:, first - 1 : -1] if hidden else None
    return Targets(out.logits[:, :-1], labels[:, first:], first, states)


def nll(t: Targets, normalizer: torch.Tensor | int | None = None) -> torch.Tensor:
    """Summed token cross-entropy over `normalizer` (default: this batch's target tokens)."""
    total = F.cross_entropy(t.logits.reshape(-1, t.logits.shape[-1]).float(), t.labels.reshape(-1),
                            ignore_index=-100, reduction="sum")
    return total / (normalizer if normalizer is not None else t.mask.sum().clamp(min=1))


def soft_ce_mi(label: Targets, rationale: Targets) -> torch.Tensor:
    """The MI paper's public code: cross-entropy from each example's max-over-time token
    distribution of the label task (detached) to the rationale task's. Its quirk is kept:
    the rationale side's probabilities are passed through log-softmax as logits."""
    def max_over_time(t: Targets) -> torch.Tensor:
        probs = t.logits.float().softmax(-1) * t.mask[..., None]
        return probs.max(dim=1).values
    target = max_over_time(label).detach()
    return -(target * F.log_softmax(max_over_time(rationale), dim=-1)).sum(-1).mean()


def pooled(t: Targets) -> torch.Tensor:
    """Mean of the target positions' hidden states: one vector per example."""
    mask = t.mask[..., None].to(t.hidden.dtype)
    return (t.hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class InfoNCECritic(nn.Module):
    """A learned critic f(z, v) = <g(z), h(v)> / tau; the InfoNCE loss over the batch's pairs
    (each label-task representation against every rationale-task one) is a variational
    bound: I(Z; V) >= log(batch) - loss. Minimising it maximises that bound. Needs batches
    of 2 or more (with one pair the bound is 0 and the term has no gradient)."""

    def __init__(self, hidden_size: int, dim: int = 128):
        super().__init__()
        self.label = nn.Linear(hidden_size, dim)
        self.rationale = nn.Linear(hidden_size, dim)
        self.log_temperature = nn.Parameter(torch.tensor(-2.0))

    def forward(self, label: torch.Tensor, rationale: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.label(label.float()), dim=-1)
        v = F.normalize(self.rationale(rationale.float()), dim=-1)
        scores = z @ v.T / self.log_temperature.exp()
        truth = torch.arange(len(scores), device=scores.device)
        return (F.cross_entropy(scores, truth) + F.cross_entropy(scores.T, truth)) / 2


def kl_top_k(t: Targets, ids: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens that have a teacher distribution of KL(p_T || p_S), both
    renormalised over the teacher's top-k ids. `ids`, `logprobs`: [batch, seq, k] aligned
    with the full label sequence (-inf log-prob: no entry)."""
    ids, logprobs = ids[:, t.start :], logprobs[:, t.start :].to(t.logits.device)
    present = torch.isfinite(logprobs)
    rows = present.any(-1)
    if not rows.any():
        return t.logits.sum() * 0.0
    teacher = torch.log_softmax(logprobs[rows], dim=-1)  # renormalise over the top-k
    student_logits = torch.gather(t.logits[rows].float(), -1, ids[rows].to(t.logits.device))
    student = torch.log_softmax(student_logits.masked_fill(~present[rows], float("-inf")), dim=-1)
    kl = torch.where(present[rows], teacher.exp() * (teacher - student), 0.0).sum(-1)
    return kl.mean()


def kl_full(t: Targets, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over target tokens of KL(p_T || p_S) over the whole vocabulary (white-box)."""
    mask = t.mask
    teacher = torch.log_softmax(teacher_logits[mask].float(), dim=-1)
    student = torch.log_softmax(t.logits[mask].float(), dim=-1)
    return (teacher.exp() * (teacher - student)).sum(-1).mean()
