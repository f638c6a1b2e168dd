"""Supervised fine-tuning with a completion-only loss, on top of transformers' Trainer.

The prompt is masked out of the labels (-100), so the student learns the teacher's
reasoning, not to echo questions. Tokenizing prompt and completion separately (rather
than searching the joint string for a response template) makes that mask exact.

Logits are computed only from the batch's first completion position on: with a 49k
vocabulary the output layer is a fifth of the model's compute, and prompts are more than
half of each example, so this skips work whose result the loss would discard.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from cotdistill.methods.base import Example
from cotdistill.models import Messages, render_completion, render_prompt
from cotdistill.train.sft_config import SFTConfig


def tokenize_example(tokenizer: Any, messages: Messages, completion: str, max_length: int) -> dict[str, list[int]]:
    add_special = not tokenizer.chat_template
    prompt_ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=add_special)["input_ids"]
    completion_ids = tokenizer(render_completion(tokenizer, messages, completion), add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + completion_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels, "length": len(input_ids)}


class CompletionCollator:
    """Right-pads a batch to its longest example; padding never counts in the loss."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        def pad(values: list[int], fill: int) -> list[int]:
            return values + [fill] * (width - len(values))
        return {
            "input_ids": torch.tensor([pad(f["input_ids"], self.pad_token_id) for f in features]),
            "attention_mask": torch.tensor([pad([1] * len(f["input_ids"]), 0) for f in features]),
            "labels": torch.tensor([pad(f["labels"], -100) for f in features]),
        }


class CompletionTrainer(Trainer):
    """transformers' Trainer with the completion-only loss computed on completion logits alone."""

    def compute_loss(self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        labels = inputs["labels"]
        first = max(1, int((labels != -100).int().argmax(dim=1).min()))  # earliest completion token in the batch
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        logits_to_keep=labels.shape[1] - first + 1)
        logits = outputs.logits[:, :-1]  # the logits at position t predict token t + 1
        targets = labels[:, first:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=-100, reduction="sum")
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum())
        return (loss, outputs) if return_outputs else loss


def make_trainer(model: Any, tokenizer: Any, config: SFTConfig, examples: Sequence[Example]) -> CompletionTrainer:
    """A Trainer over (prompt messages, completion) examples; LoRA-wrapped when `config.lora`."""
    from datasets import Dataset

    if config.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout, target_modules=config.lora_target_modules,
        ))
    dataset = Dataset.from_list([tokenize_example(tokenizer, e.messages, e.completion, config.max_length)
                                    for e in examples])
    return CompletionTrainer(model=model, args=config, train_dataset=dataset,
                   data_collator=CompletionCollator(tokenizer.pad_token_id))
