"""Configuration of supervised fine-tuning: transformers' TrainingArguments (same names,
so users who know transformers/TRL guess them right) plus the LoRA and length knobs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments


@dataclass
class SFTConfig(TrainingArguments):
    output_dir: str | None = None
    lora: bool = field(default=True, metadata={"help": "train LoRA adapters (peft) instead of all weights"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"
    max_length: int = 512  # prompt + completion tokens; longer examples are cut from the end
    learning_rate: float = 1e-3  # LoRA on small models; use ~5e-5 for full fine-tuning
    per_device_train_batch_size: int = 8
    num_train_epochs: float = 2.0
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.1  # a float below 1 is a share of all steps
    logging_steps: int = 10
    save_strategy: str = "steps"
    save_steps: int = 50
    save_total_limit: int = 2
    group_by_length: bool = True  # batches of similar length waste little compute on padding
    remove_unused_columns: bool = False
    report_to: str | list[str] = "none"
    seed: int = 0
    disable_tqdm: bool = False
    dataloader_pin_memory: bool = torch.cuda.is_available()  # pinning is for GPU copies only
