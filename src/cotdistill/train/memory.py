"""Will this training run fit in memory? An estimate of its peak, checked before the first
step, so a run that cannot fit stops at once with what to change instead of being killed
by the kernel an hour in (exit 137, no message).

The estimate is deliberately simple and calibrated on this project's measurements (full
fine-tuning of SmolLM2-135M in fp32 on a 2-core CPU with 24 GiB; peak RSS by /usr/bin/time):
batch 16 x 473 tokens (GSM8K CoT, the longest batch first) peaked at 16.2 GiB; batch 32 x
512 was killed by the kernel at 23.5 GB; batch 8 x <=512 peaked at 8.2 GiB.
- weights, gradients and AdamW's two moments: 16 bytes a trainable parameter, 4 (2 in
  bf16) a frozen one, plus ~1 GiB of runtime;
- activations kept for the backward pass: about 108 bytes x layers x hidden size per token
  in fp32 (half under bf16 autocast); with gradient checkpointing, one layer's worth plus
  4 bytes x layers x hidden per token.
It gives 16.2 GiB for the first run, 30 GiB for the second (refused), and 10 GiB for the
third (2 GiB over: the safe side). Accelerate and DeepSpeed users who shard optimizer state
can switch the check off (`check_memory: false`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from cotdistill.errors import CotdistillError

GiB = 2**30
RUNTIME_BYTES = 1 * GiB
ACTIVATION_FLOATS = 27  # per token, per layer, per hidden unit (x4 bytes = 108)
HEADROOM = 0.9  # of the memory available, the share a run may plan to use


@dataclass(frozen=True)
class Estimate:
    static: float  # bytes: weights, gradients, optimizer state, runtime
    per_sequence: float  # bytes of activations for one sequence of the longest length
    sequences: int  # per optimizer micro-batch

    @property
    def peak(self) -> float:
        return self.static + self.per_sequence * self.sequences


def estimate(model: Any, args: Any, longest: int, per_item: int = 1) -> Estimate:
    """The peak for `model` trained with `args` on sequences up to `longest` tokens, `per_item`
    sequences to a training item (an objective's tasks: multitask's label and rationale)."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", 1)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", 1)
    parameters = sum(p.numel() for p in model.parameters())
    frozen_bytes = 2 if args.bf16 and args.lora else 4
    if args.lora:  # adapters are ~1% of a small model; the base stays frozen
        static = parameters * frozen_bytes + 0.01 * parameters * 16
    else:
        static = parameters * 16
    if args.gradient_checkpointing:  # every layer's input kept, one layer's activations recomputed at a time
        per_token = (layers + ACTIVATION_FLOATS) * hidden * 4
    else:
        per_token = ACTIVATION_FLOATS * layers * hidden * 4
    if args.bf16:
        per_token /= 2
    sequences = args.per_device_train_batch_size * per_item
    return Estimate(static + RUNTIME_BYTES, per_token * longest, sequences)


def available(device: str) -> float | None:
    """Bytes free for this process on `device`; None where it cannot be read."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return float(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check(model: Any, args: Any, longest: int, per_item: int = 1) -> Estimate:
    """Refuse, in one line with what to change, a run whose estimated peak does not fit."""
    guess = estimate(model, args, longest, per_item)
    free = available(str(args.device))
    if not args.check_memory or free is None or guess.peak <= HEADROOM * free:
        return guess
    budget = HEADROOM * free - guess.static
    batch = args.per_device_train_batch_size
    per_example = guess.per_sequence * guess.sequences / batch  # one sequence, or one per task
    fits = int(budget // per_example) if budget > 0 else 0
    advice = [] if args.lora else ["--lora"]
    if fits:
        steps = math.ceil(batch / fits)
        micro = math.ceil(batch / steps)
        advice.append(f"--batch-size {micro} --set gradient_accumulation_steps={steps * args.gradient_accumulation_steps}"
                      f" (the same {micro * steps} examples per step)")
    if not args.gradient_checkpointing:
        advice.append("--set gradient_checkpointing=true")
    advice.append(f"--max-length below {longest}")
    raise CotdistillError(
        f"train: this run needs about {guess.peak / GiB:.1f} GiB ({guess.static / GiB:.1f} for weights and optimizer, "
        f"{guess.per_sequence * guess.sequences / GiB:.1f} for a batch of {batch} x {longest} tokens) and "
        f"{free / GiB:.1f} GiB is available: try {'; or '.join(advice)} (check_memory=false to run anyway)")
