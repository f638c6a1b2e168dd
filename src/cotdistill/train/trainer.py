"""DistillTrainer: transformers' Trainer with the objectives' losses, batches of one format,
a learned MI critic trained beside the student, and checkpoints chosen by dev accuracy.

Everything else (optimizer, schedule, checkpoints, resume, logging, `accelerate launch`
with DDP / DeepSpeed / FSDP) is the Trainer's own; nothing here is distributed code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, set_seed

from cotdistill.errors import CotdistillError
from cotdistill.methods import Example
from cotdistill.train import objectives
from cotdistill.train.config import TrainConfig
from cotdistill.train.data import Collator, FormatBatchSampler, TokenMap, add_teacher_distribution, fit_examples

CRITIC_FILE = "mi_critic.pt"


class DistillTrainer(Trainer):
    def __init__(self, *args: Any, teacher: Any = None, critic: torch.nn.Module | None = None,
                 groups: Sequence[int] | None = None, dev: Any = None, objective: objectives.Objective,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.teacher, self.critic, self.groups, self.dev = teacher, critic, groups, dev
        self.parts: dict[str, list[float]] = {}
        self.objective = objective  # built with its settings (Objective.build)
        # Only plain SFT normalises by the tokens of all accumulated batches; the others
        # average per batch (per task), so the Trainer scales them for accumulation.
        self.model_accepts_loss_kwargs = isinstance(self.objective, objectives.SFT)
        if critic is not None:
            self.add_callback(_CriticCallback(critic, self.accelerator))
        self.add_callback(_FiniteWeightsCallback())

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        loss, parts = self.objective.loss(self, model, inputs, num_items_in_batch)
        if not torch.isfinite(loss.detach()).all():  # one sync per step, as the parts below already take
            where = ", ".join(f"{name} {float(value.detach()):g}" for name, value in parts.items())
            raise NonFinite(f"train: the loss is {float(loss.detach()):g} at step {self.state.global_step + 1}"
                            f"{f' ({where})' if where else ''}: {NONFINITE_ADVICE}")
        for name, value in parts.items():
            self.parts.setdefault(name, []).append(float(value.detach()))
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds each objective's parts (label/rationale/mi/kd losses), averaged since the last log."""
        if "loss" in logs:
            logs.update({name: sum(v) / len(v) for name, v in self.parts.items() if v})
            self.parts = {}
        super().log(logs, *args, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        from transformers.trainer_pt_utils import LengthGroupedSampler

        return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    lengths=[f["length"] for f in self.train_dataset])

    def get_train_dataloader(self) -> DataLoader:
        if self.groups is None:
            return super().get_train_dataloader()
        sampler = FormatBatchSampler(self.groups, [f["length"] for f in self.train_dataset],
                                     self.args.per_device_train_batch_size, self.args.seed)
        loader = DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.critic is not None and not any(p is self.critic.label.weight for g in optimizer.param_groups
                                               for p in g["params"]):
            optimizer.add_param_group({"params": list(self.critic.parameters()), "weight_decay": 0.0})
        return optimizer

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Dev accuracy of the current weights, by generation with the method's single-stage
        pipeline; the Trainer keeps the best checkpoint and early-stops on it."""
        if self.dev is None:
            return super().evaluate(*args, **kwargs)
        metrics = {f"eval_{k}": v for k, v in self.dev(self.accelerator.unwrap_model(self.model)).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


NONFINITE_ADVICE = ("training stopped, and nothing was saved as done (a learning rate too high for this model, "
                    "or non-finite values in the data, cause this)")


class NonFinite(CotdistillError):
    """Training diverged (a NaN or infinite loss or weight): stopped, never saved as done."""


def check_finite_weights(model: torch.nn.Module, when: str) -> None:
    """Refuse trained weights holding NaN or infinity (`--learning-rate inf` makes them so in one
    step while the loss that step reports is still finite): such a student answers nothing."""
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and not torch.isfinite(parameter.detach()).all():
            raise NonFinite(f"train: weight {name} is not finite {when}: {NONFINITE_ADVICE}")


class _FiniteWeightsCallback(TrainerCallback):
    """No checkpoint of diverged weights: checked on the step a checkpoint is about to be saved
    (on_step_end runs before the Trainer saves), so a rerun never resumes from one."""

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if control.should_save and model is not None:
            check_finite_weights(model, f"at step {state.global_step}")


class _CriticCallback(TrainerCallback):
    """The MI critic lives outside the model, so the Trainer neither averages its gradients
    across processes (DDP does that for the model only; done here with Accelerate's reduce)
    nor zeroes them after a step. Its weights go into each checkpoint (its optimizer state
    already does), so a resumed run continues it."""

    def __init__(self, critic: torch.nn.Module, accelerator: Any):
        self.critic, self.accelerator = critic, accelerator

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.accelerator.num_processes > 1:
            for p in self.critic.parameters():
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.critic.zero_grad(set_to_none=True)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            torch.save(self.critic.state_dict(), Path(args.output_dir) / f"checkpoint-{state.global_step}" / CRITIC_FILE)


def load_critic(critic: torch.nn.Module, checkpoint: str | None) -> None:
    if checkpoint and (Path(checkpoint) / CRITIC_FILE).is_file():
        critic.load_state_dict(torch.load(Path(checkpoint) / CRITIC_FILE, weights_only=True))


Item = Example | Mapping[str, Example]


def make_trainer(model: Any, tokenizer: Any, config: TrainConfig, items: Sequence[Item],
                 teacher_logprobs: Sequence[list[Any] | None] | None = None, teacher: Any = None,
                 groups: Sequence[int] | None = None, dev: Any = None, store: Any = None) -> DistillTrainer:
    """A trainer over `items`: examples, or {task: example} for an objective with `tasks`
    (multitask: label and rationale). `teacher_logprobs` (parallel to items) are stored top-k for kd;
    `teacher` a white-box kd teacher; `groups` a format index per item (one format per batch);
    `dev` a callable model -> metrics with "accuracy"; `store` the run's (the objective's cache)."""
    seq2seq = bool(model.config.is_encoder_decoder)
    objective = objectives.OBJECTIVES[config.objective].build(config, tokenizer, store)
    if seq2seq and isinstance(objective, objectives.OnPolicy):
        raise CotdistillError("objective on-policy samples from a decoder-only student; pick a causal model")
    if config.lora:
        from peft import LoraConfig, get_peft_model

        # The adapter's A matrices start random. The Trainer seeds only on construction,
        # after this, so without seeding here each arm of a recipe would start from the
        # random state the arms before it left (two arms differing only in their dev set
        # started 0.1 apart per weight).
        set_seed(config.seed)
        try:
            model = get_peft_model(model, LoraConfig(
                task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout, target_modules=config.lora_target_modules,
            ))
        except ValueError as error:  # peft: "Target modules {'x'} not found in the base model..."
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise CotdistillError(f"lora_target_modules={config.lora_target_modules!r}: {str(error).split('.')[0]} "
                                  f"(this model's linear layers: all-linear, {', '.join(linear)})") from None

    def with_fields(example: Example, feature: dict[str, Any]) -> dict[str, Any]:
        return {**feature, **objective.feature(tokenizer, example, feature)}  # what the objective needs beside

    tasks = objective.tasks
    examples = [e for item in items for e in ([item[task] for task in tasks] if tasks else [item])]
    fitted, shortened = fit_examples(tokenizer, examples, config.max_length, seq2seq)
    features: list[dict[str, Any]] = []
    stream = iter(fitted)
    for item in items:
        if not tasks:
            features.append(with_fields(item, next(stream)))
        else:
            pair = {task: with_fields(item[task], next(stream)) for task in tasks}  # fitted in this order
            features.append({**pair, "length": sum(pair[task]["length"] for task in tasks)})
    if teacher_logprobs is not None:
        token_map = TokenMap(tokenizer)
        for feature, logprobs in zip(features, teacher_logprobs):
            add_teacher_distribution(feature, token_map, logprobs)
    critic = objective.critic(config, model.config.get_text_config().hidden_size)
    if critic is not None:
        critic = critic.to(config.device)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    trainer = DistillTrainer(model=model, args=config, train_dataset=features,
                             data_collator=Collator(tokenizer.pad_token_id, objective.fields, tasks),
                             eval_dataset=[] if dev else None,  # evaluation generates on `dev`'s problems instead
                             teacher=teacher, critic=critic, groups=groups, dev=dev, objective=objective)
    trainer.shortened = shortened  # examples that dropped demonstrations to fit max_length: the run's record says so
    return trainer
