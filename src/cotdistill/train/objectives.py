"""The objectives: each one object with its check, what it learns from and its loss, chosen
by name from `OBJECTIVES` (torchtune keeps its losses the same way), so the trainer
dispatches and never switches on a name. Adding one is a class here.

`targets()` runs the student and returns logits aligned with the tokens they predict, for
causal and seq2seq models alike; each objective's loss is a few lines on top:

- sft:       token NLL of the completion;
- multitask: alpha * NLL(label task) + (1 - alpha) * NLL(rationale task) (DSS), each task
             averaged over its own tokens, as the paper's code does;
- mi:        multitask + beta * L_MI, L_MI from a learned InfoNCE critic (a variational lower
             bound on the mutual information of the two tasks' representations) or the
             public code's soft cross-entropy between max-over-time distributions;
- kd:        (1 - w) * NLL + w * KL(p_teacher || p_student) per token, over the teacher's
             stored top-k renormalised, or over the whole vocabulary of a local teacher;
- on-policy: generalized JSD per token between the student and a teacher on the student's
             own samples (share `lmbda`) or the fixed sequences (train/onpolicy.py).

`OBJECTIVES` holds each objective unbuilt (what it is: its check, tasks and fields); `build`
gives the one that trains, with its settings taken from the config once, so a loss never
reads the trainer's arguments. What one training item is, the objective declares: a single
example, or one example per task of `tasks` (multitask: label and rationale); the data
fields it needs beyond input ids and labels are its `fields` (made by `feature`), and the
collator passes them through.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cotdistill.train.fields import FIELDS


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


class Objective:
    """A training objective. `tasks`: the roles one training item holds an example of, all
    made from one annotation (multitask's label and rationale; empty: single examples)."""

    name: str
    tasks: tuple[str, ...] = ()
    teacher_model: bool = False  # can learn from a local teacher model's logits (kd_teacher)
    fields: tuple[str, ...] = ()  # per-example fields beyond input_ids/labels that its loss reads

    def build(self, config: Any, tokenizer: Any, store: Any = None) -> Objective:
        """The objective with its settings (and whatever it loads, e.g. a teacher); `store`:
        the run's store, for what the objective caches."""
        return self

    def summary(self) -> dict[str, Any]:
        """What the objective adds to the student's record."""
        return {}

    def feature(self, tokenizer: Any, example: Any, tokenized: dict[str, Any]) -> dict[str, Any]:
        """The `fields` of one tokenized example."""
        return {}

    def check(self, roles: Sequence[str]) -> str | None:
        """Why the objective cannot train these roles of a method, or None."""
        if self.tasks and set(roles) != set(self.tasks):
            return f"objective {self.name} trains the tasks {' and '.join(self.tasks)} together"
        return None

    def uses_stored_logprobs(self, white_box_teacher: bool) -> bool:
        """Whether it learns from the teacher top-k log-probs stored with the annotations."""
        return False

    def critic(self, config: Any, hidden_size: int) -> nn.Module | None:
        """A module trained beside the student (the MI critic), or None."""
        return None

    def loss(self, trainer: Any, model: Any, inputs: dict[str, Any],
             num_items_in_batch: torch.Tensor | int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss to minimise, its named parts to log)."""
        raise NotImplementedError


class SFT(Objective):
    """Token NLL of the completion. The one objective normalised by the tokens of all
    accumulated batches (transformers' `num_items_in_batch`); the others average per batch."""

    name = "sft"

    def __init__(self, across_devices: bool = False):
        self.across_devices = across_devices  # num_items_in_batch counts every process's tokens

    def build(self, config: Any, tokenizer: Any, store: Any = None) -> Objective:
        return SFT(config.average_tokens_across_devices)

    def loss(self, trainer: Any, model: Any, inputs: dict[str, Any],
             num_items_in_batch: torch.Tensor | int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = nll(targets(model, inputs), num_items_in_batch)
        if num_items_in_batch is not None and self.across_devices:
            loss = loss * trainer.accelerator.num_processes  # num_items counts every process's tokens
        return loss, {}


class Multitask(Objective):
    """DSS: alpha * NLL(label task) + (1 - alpha) * NLL(rationale task)."""

    name = "multitask"
    tasks = ("label", "rationale")

    def __init__(self, alpha: float = FIELDS["alpha"][0]):
        self.alpha = alpha  # the label task's weight

    def build(self, config: Any, tokenizer: Any, store: Any = None) -> Objective:
        return Multitask(config.alpha)

    def parts(self, model: Any, inputs: dict[str, Any], hidden: bool = False) -> tuple[Targets, Targets]:
        return targets(model, inputs["label"], hidden=hidden), targets(model, inputs["rationale"], hidden=hidden)

    def loss(self, trainer: Any, model: Any, inputs: dict[str, Any],
             num_items_in_batch: torch.Tensor | int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.combined(*self.parts(model, inputs))

    def combined(self, label: Targets, rationale: Targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {"label_loss": nll(label), "rationale_loss": nll(rationale)}
        return self.alpha * parts["label_loss"] + (1 - self.alpha) * parts["rationale_loss"], parts


class MI(Multitask):
    """Multitask + beta * L_MI: a learned InfoNCE critic (`mi_estimator=learned`) or the
    public code's soft cross-entropy (`soft-ce`)."""

    name = "mi"

    def __init__(self, alpha: float = FIELDS["alpha"][0], beta: float = FIELDS["beta"][0]):
        super().__init__(alpha)
        self.beta = beta  # the MI term's weight

    def build(self, config: Any, tokenizer: Any, store: Any = None) -> Objective:
        return MI(config.alpha, config.beta)

    def critic(self, config: Any, hidden_size: int) -> nn.Module | None:
        if config.mi_estimator != "learned":
            return None
        with torch.random.fork_rng(devices=[]):  # seeded: a rerun starts from the same critic
            torch.manual_seed(config.seed)
            return InfoNCECritic(hidden_size)

    def loss(self, trainer: Any, model: Any, inputs: dict[str, Any],
             num_items_in_batch: torch.Tensor | int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        learned = trainer.critic is not None
        label, rationale = self.parts(model, inputs, hidden=learned)
        loss, parts = self.combined(label, rationale)
        parts["mi_loss"] = trainer.critic(pooled(label), pooled(rationale)) if learned else soft_ce_mi(label, rationale)
        return loss + self.beta * parts["mi_loss"], parts


class KD(Objective):
    """(1 - w) * NLL + w * KL(p_teacher || p_student) per token: over a local white-box
    teacher's whole vocabulary, or over the stored top-k log-probs of an API teacher."""

    name = "kd"
    teacher_model = True

    def __init__(self, weight: float = FIELDS["kd_weight"][0]):
        self.weight = weight  # the KL term's share

    def build(self, config: Any, tokenizer: Any, store: Any = None) -> Objective:
        return KD(config.kd_weight)

    def uses_stored_logprobs(self, white_box_teacher: bool) -> bool:
        return not white_box_teacher

    def loss(self, trainer: Any, model: Any, inputs: dict[str, Any],
             num_items_in_batch: torch.Tensor | int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = targets(model, inputs)
        parts = {"nll_loss": nll(t)}
        if trainer.teacher is not None:
            with torch.no_grad():
                teacher_logits = targets(trainer.teacher, inputs).logits
            parts["kd_loss"] = kl_full(t, teacher_logits)
        else:
            parts["kd_loss"] = kl_top_k(t, inputs["kd_ids"], inputs["kd_logprobs"])
        return (1 - self.weight) * parts["nll_loss"] + self.weight * parts["kd_loss"], parts


class OnPolicy(Objective):
    """On-policy distillation (GKD): generalized JSD per token between the student and a
    teacher, on the student's own samples with probability `lmbda`, else on the fixed
    sequences. Its settings and teacher come with `build`."""

    name = "on-policy"
    fields = ("prompt_ids", "completion_ids", "teacher_prompt_ids", "messages")

    def __init__(self, step: Any = None, privileged: bool = False, cache: Any = None):
        self.step = step  # an onpolicy.OnPolicyLoss once built
        self.privileged = privileged  # the teacher's prompt holds the rationale (self-distillation)
        self.cache = cache  # the teacher log-prob cache of the fixed sequences (train/cache.py), if any

    def build(self, config: Any, tokenizer: Any, store: Any = None) -> Objective:
        from cotdistill.train.onpolicy import OnPolicyLoss, OnPolicySettings
        from cotdistill.train.teachers import load_teacher

        settings = OnPolicySettings(beta=config.jsd_beta, lmbda=config.lmbda, temperature=config.rollout_temperature,
                                    max_new_tokens=config.max_new_tokens, chunk=config.loss_chunk, seed=config.seed)
        teacher = load_teacher(config.teacher_model, tokenizer, str(config.device), config.teacher_api)
        if getattr(teacher, "scores_text", False) and settings.lmbda >= 1:
            print(f"note: teacher {config.teacher_model} scores text, so it never scores the end-of-turn token; at lmbda "
                  f"{settings.lmbda:g} no step uses the fixed sequences that teach the student to stop: keep lmbda "
                  "below 1 (a Gemma-3-270M teacher at lmbda 1 left 59 of 100 replies without an answer)", file=sys.stderr)
        cached = None
        if store is not None and config.teacher_model != "self":  # the self teacher costs one local forward
            from cotdistill.models.backends import api_config
            from cotdistill.train.cache import CachedTeacher

            api = api_config(config.teacher_model, config.teacher_api)
            cached = CachedTeacher(teacher, store, config.teacher_model, api.top_logprobs if api else 20, api)
        return OnPolicy(OnPolicyLoss(settings, teacher, tokenizer, cached), config.teacher_model == "self", cached)

    def summary(self) -> dict[str, Any]:
        """Seconds spent in rollouts, teacher scoring and the student's forward + loss (the
        rest of `seconds` is the backward pass and the update), and the cache's figures."""
        out: dict[str, Any] = {"seconds_by_part": {k: round(v, 2) for k, v in self.step.seconds.items()}}
        if self.cache is not None:
            spent = self.cache.store.teacher_logprob_spend(self.cache.name)
            out["teacher_cache"] = {"hits": self.cache.hits, "misses": self.cache.misses, **spent,
                                    "bytes_per_token": spent["bytes"] / max(1, spent["tokens"])}
        return out

    def feature(self, tokenizer: Any, example: Any, tokenized: dict[str, Any]) -> dict[str, Any]:
        from cotdistill.models import encode_prompt
        from cotdistill.train.onpolicy import privileged_messages

        start = tokenized["completion_start"]
        prompt = tokenized["input_ids"][:start]
        teacher_prompt = (encode_prompt(tokenizer, privileged_messages(example.messages, example.completion))
                          if self.privileged else prompt)
        return {"prompt_ids": prompt, "completion_ids": tokenized["input_ids"][start:],
                "teacher_prompt_ids": teacher_prompt, "messages": example.messages}

    def loss(self, trainer: Any, model: Any, inputs: dict[str, Any],
             num_items_in_batch: torch.Tensor | int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.step is None:
            raise RuntimeError("objective on-policy is used unbuilt: "
                               "call OBJECTIVES['on-policy'].build(config, tokenizer)")
        loss, parts = self.step(model, inputs, trainer.state.global_step)
        return loss, {name: torch.tensor(value) for name, value in parts.items()}


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (SFT(), Multitask(), MI(), KD(), OnPolicy())}
