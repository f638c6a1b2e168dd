"""TrainConfig: transformers' TrainingArguments (same names, so users who know transformers
or TRL guess them right) plus the student, objective, data-format and dev-set knobs.

One config for every objective, as TRL pairs one config with one trainer: the objective is
a field naming one of `objectives.OBJECTIVES`, whose object brings its check, data and loss.
Our fields' defaults and help live in `fields.py`, which the CLI reads without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from cotdistill.config import check_types
from cotdistill.errors import SEED_RANGE, at_least, in_range
from cotdistill.train.fields import FORMATS, default_learning_rate, option
from cotdistill.train.objectives import OBJECTIVES

MI_ESTIMATORS = ("learned", "soft-ce")


def _bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class TrainConfig(TrainingArguments):
    output_dir: str | None = None
    # the student
    model_type: str = option("model_type")
    lora: bool = option("lora")
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"
    max_length: int = option("max_length")
    check_memory: bool = option("check_memory")
    # the objective
    objective: str = option("objective")
    alpha: float = option("alpha")
    gold_label: bool = option("gold_label")
    beta: float = option("beta")
    mi_estimator: str = option("mi_estimator")
    kd_weight: float = option("kd_weight")
    kd_teacher: str | None = option("kd_teacher")
    teacher_model: str = option("teacher_model")
    teacher_api: dict | None = option("teacher_api")
    jsd_beta: float = option("jsd_beta")
    lmbda: float = option("lmbda")
    rollout_temperature: float = option("rollout_temperature")
    max_new_tokens: int = option("max_new_tokens")
    loss_chunk: int = option("loss_chunk")
    formats: str | None = option("formats")
    demonstrations: int = option("demonstrations")
    # model selection on a dev set
    dev_task: str | None = option("dev_task")
    dev_data: str | None = option("dev_data")
    dev_split: str = option("dev_split")
    dev_limit: int | None = option("dev_limit")
    dev_max_new_tokens: int = 256
    early_stopping_patience: int | None = option("early_stopping_patience")
    # transformers defaults that suit distillation better
    learning_rate: float | None = option("learning_rate")  # None: by `lora` (fields.LEARNING_RATE)
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 32  # dev generation: batching is the lever
    num_train_epochs: float = 2.0
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.1  # a float below 1 is a share of all steps
    logging_steps: float = 10  # a float below 1 is a share of all steps, as in TrainingArguments
    logging_first_step: bool = True  # so even a run shorter than logging_steps reports a first and a last loss
    save_strategy: str = "steps"
    save_steps: float = 50
    save_total_limit: int | None = 2
    train_sampling_strategy: str = "group_by_length"  # batches of similar length waste little compute on padding
    remove_unused_columns: bool = False
    report_to: str | list[str] | None = "tensorboard"
    bf16: bool = field(default_factory=_bf16_available)  # bf16 on GPUs that have it; fp32 on CPU (bf16 training there unmeasured)
    seed: int = 0
    disable_tqdm: bool = False
    dataloader_pin_memory: bool = torch.cuda.is_available()  # pinning is for GPU copies only

    def __post_init__(self) -> None:
        """Every setting checked before any work, here, so the CLI, the Python API and recipes
        share one check: types first (a `--set` value is YAML), then ranges."""
        if self.learning_rate is None:  # one default per mode, wherever the config is built
            self.learning_rate = default_learning_rate(self.lora)
        check_types(self, "train")
        for name, value, allowed in (("objective", self.objective, tuple(OBJECTIVES)),
                                     ("mi_estimator", self.mi_estimator, MI_ESTIMATORS),
                                     ("model_type", self.model_type, ("auto", "causal", "seq2seq"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        for setting, value, low in (("batch size", self.per_device_train_batch_size, 1), ("max_length", self.max_length, 1),
                                   ("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)):
            at_least(setting, value, low)
        at_least("learning_rate", self.learning_rate, 0, strictly=True)
        in_range("learning_rate", self.learning_rate, 0, float("inf"), high_open=True)  # and not inf
        for setting, value, low in (("lora_r", self.lora_r, 1), ("lora_alpha", self.lora_alpha, 1),
                                    ("dataloader_num_workers", self.dataloader_num_workers, 0),
                                    ("save_total_limit", self.save_total_limit, 1),
                                    ("demonstrations", self.demonstrations, 0),
                                    ("max_grad_norm", self.max_grad_norm, 0), ("weight_decay", self.weight_decay, 0),
                                    ("warmup_steps", self.warmup_steps, 0)):
            at_least(setting, value, low)
        in_range("lora_dropout", self.lora_dropout, 0, 1, high_open=True)
        for setting, value in (("seed", self.seed), ("data_seed", self.data_seed)):
            in_range(setting, value, *SEED_RANGE)
        for setting, value in (("alpha", self.alpha), ("kd_weight", self.kd_weight)):
            in_range(setting, value, 0, 1)
        for setting, value in (("beta", self.beta), ("num_train_epochs", self.num_train_epochs)):
            in_range(setting, value, 0, float("inf"), high_open=True)
        _on_policy_ranges(self)
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


def _on_policy_ranges(config: TrainConfig) -> None:
    for name in ("jsd_beta", "lmbda"):
        if not 0 <= getattr(config, name) <= 1:
            raise ValueError(f"{name} must be within [0, 1], not {getattr(config, name):g}")
    at_least("rollout_temperature", config.rollout_temperature, 0, strictly=True)
    at_least("max_new_tokens", config.max_new_tokens, 1)
    at_least("loss_chunk", config.loss_chunk, 0)
