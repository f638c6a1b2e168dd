"""TrainConfig: transformers' TrainingArguments (same names, so users who know transformers
or TRL guess them right) plus the student, objective, data-format and dev-set knobs.

One config for every objective, as TRL pairs one config with one trainer: the objective is
a field, not a class, because the objectives share everything but the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from cotdistill.errors import at_least

OBJECTIVES = ("sft", "multitask", "mi", "kd")
MI_ESTIMATORS = ("learned", "soft-ce")
FORMATS = ("zero-shot-cot", "zero-shot-answer", "few-shot-cot", "few-shot-answer")


def _bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class TrainConfig(TrainingArguments):
    output_dir: str | None = None
    # the student
    model_type: str = field(default="auto", metadata={
        "help": "auto (from the model's config), causal or seq2seq; a recipe written for one refuses the other"})
    lora: bool = field(default=True, metadata={"help": "train LoRA adapters (peft) instead of all weights"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"
    max_length: int = 512  # prompt + completion tokens (each side for seq2seq); longer examples are cut from the end
    check_memory: bool = field(default=True, metadata={
        "help": "refuse, before the first step, a run whose estimated peak memory exceeds what is available"})
    # the objective
    objective: str = field(default="sft", metadata={"help": "sft | multitask | mi | kd"})
    alpha: float = field(default=0.5, metadata={"help": "multitask/mi: L = alpha*L_label + (1-alpha)*L_rationale"})
    gold_label: bool = field(default=False, metadata={
        "help": "dss label task / decompose solver: teach the dataset's answer, not the teacher's"})
    beta: float = field(default=0.1, metadata={"help": "mi: weight of the mutual-information term"})
    mi_estimator: str = field(default="learned", metadata={
        "help": "mi: learned (InfoNCE critic, a variational lower bound) or soft-ce (the public code's simplification)"})
    kd_weight: float = field(default=0.5, metadata={"help": "kd: L = kd_weight*KL + (1-kd_weight)*NLL"})
    kd_teacher: str | None = field(default=None, metadata={
        "help": "kd: a local teacher model with the student's tokenizer (white-box, full vocabulary); "
                "without it, the teacher top-k log-probs stored at annotation"})
    formats: str | None = field(default=None, metadata={
        "help": f"model specialization: comma-separated formats to mix, one per batch ({', '.join(FORMATS)})"})
    demonstrations: int = field(default=4, metadata={"help": "in-context examples in few-shot formats"})
    # model selection on a dev set
    dev_task: str | None = field(default=None, metadata={"help": "evaluate checkpoints on this task; keep the best"})
    dev_data: str | None = None
    dev_split: str = "test"
    dev_limit: int | None = 100
    dev_max_new_tokens: int = 256
    early_stopping_patience: int | None = field(default=None, metadata={
        "help": "stop after this many dev evaluations without improvement"})
    # transformers defaults that suit distillation better
    learning_rate: float = 1e-3  # LoRA on small models; use ~5e-5 for full fine-tuning
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 32  # dev generation: batching is the lever
    num_train_epochs: float = 2.0
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.1  # a float below 1 is a share of all steps
    logging_steps: int = 10
    logging_first_step: bool = True  # so even a run shorter than logging_steps reports a first and a last loss
    save_strategy: str = "steps"
    save_steps: int = 50
    save_total_limit: int = 2
    train_sampling_strategy: str = "group_by_length"  # batches of similar length waste little compute on padding
    remove_unused_columns: bool = False
    report_to: str | list[str] = "tensorboard"
    bf16: bool = field(default_factory=_bf16_available)  # bf16 on GPUs that have it; fp32 on CPU (bf16 is ~80x slower)
    seed: int = 0
    disable_tqdm: bool = False
    dataloader_pin_memory: bool = torch.cuda.is_available()  # pinning is for GPU copies only

    def __post_init__(self) -> None:
        for name, value, allowed in (("objective", self.objective, OBJECTIVES),
                                     ("mi_estimator", self.mi_estimator, MI_ESTIMATORS),
                                     ("model_type", self.model_type, ("auto", "causal", "seq2seq"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        for option, value, low in (("batch size", self.per_device_train_batch_size, 1), ("max_length", self.max_length, 1),
                                   ("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)):
            at_least(option, value, low)
        at_least("learning_rate", self.learning_rate, 0, strictly=True)
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ValueError("epochs must be > 0 (or max_steps set): a student trained for no step is not trained")
        unknown = set(self.format_list) - set(FORMATS)
        if unknown:
            raise ValueError(f"unknown format(s) {', '.join(sorted(unknown))} (formats: {', '.join(FORMATS)})")
        if self.dev_task:  # checkpoints are compared by dev accuracy, at every save
            self.eval_strategy = self.save_strategy
            self.eval_steps = self.save_steps
            self.load_best_model_at_end = True
            self.metric_for_best_model = "accuracy"
            self.greater_is_better = True
        super().__post_init__()

    @property
    def format_list(self) -> list[str]:
        if not self.formats:
            return []
        return [f.strip() for f in self.formats.split(",")] if isinstance(self.formats, str) else list(self.formats)
