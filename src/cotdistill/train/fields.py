"""TrainConfig's own fields, their defaults and help, torch-free: `TrainConfig` declares
them from here and the CLI builds its training options from here, so a default or a help
text is written once and `cotdistill --help` never imports torch.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

FORMATS = ("zero-shot-cot", "zero-shot-answer", "few-shot-cot", "few-shot-answer")
LEARNING_RATE = {True: 1e-3, False: 5e-5}  # LoRA on small models; full fine-tuning

FIELDS: dict[str, tuple[Any, str]] = {
    "model_type": ("auto", "auto (from the model's config), causal or seq2seq; a recipe written for one refuses the other"),
    "lora": (True, "train LoRA adapters (peft) instead of all weights"),
    "max_length": (512, "prompt + completion tokens (each side for seq2seq); a longer example drops in-context "
                          "demonstrations to fit, never its target, and one that cannot fit is an error"),
    "check_memory": (True, "refuse, before the first step, a run whose estimated peak memory exceeds what is available"),
    "learning_rate": (None, f"peak learning rate; default {LEARNING_RATE[True]:g} with LoRA, "
                            f"{LEARNING_RATE[False]:g} for full fine-tuning"),
    "objective": ("sft", "sft | multitask (dss: label + rationale tasks) | mi (multitask + mutual information) "
                         "| kd (distribution matching) | on-policy (the teacher scores the student's own samples)"),
    "alpha": (0.5, "multitask/mi: L = alpha*L_label + (1-alpha)*L_rationale"),
    "gold_label": (False, "teach the dataset's answer, not the teacher's (methods that support it: dss label task, "
                          "decompose solver)"),
    "beta": (0.1, "mi: weight of the mutual-information term"),
    "mi_estimator": ("learned", "mi: learned (InfoNCE critic, a variational lower bound) or soft-ce (the public "
                                "code's simplification)"),
    "kd_weight": (0.5, "kd: L = kd_weight*KL + (1-kd_weight)*NLL"),
    "kd_teacher": (None, "kd: a local teacher model with the student's tokenizer (white-box, full vocabulary); "
                         "without it, the teacher top-k log-probs stored at annotation"),
    "teacher_model": ("self", "on-policy: self (the student shown the reference rationale teaches itself), openai:MODEL "
                        "(served; options in teacher_api), or a local model (the student's tokenizer: white-box; "
                        "another: aligned on the text)"),
    "teacher_api": (None, "on-policy with an openai:MODEL teacher: its API options (base_url, top_logprobs, "
                          "max_tokens, max_cost, ...)"),
    "jsd_beta": (0.5, "on-policy: generalized JSD weight, 0 = forward KL(teacher||student), 1 = reverse KL "
                      "(TRL GKD's beta)"),
    "lmbda": (1.0, "on-policy: share of steps on the student's own samples; the rest learn from the fixed "
                   "(gold or teacher) sequences (TRL GKD's lmbda)"),
    "rollout_temperature": (1.0, "on-policy: the student's sampling temperature"),
    "max_new_tokens": (128, "on-policy: tokens per sampled completion"),
    "loss_chunk": (256, "on-policy: token positions per loss chunk (student logits held for this many at once)"),
    "formats": (None, f"model specialization: comma-separated formats to mix, one per batch ({', '.join(FORMATS)})"),
    "demonstrations": (4, "in-context examples in few-shot formats (fewer where max_length needs it)"),
    "dev_task": (None, "evaluate each checkpoint on this task and keep the best (its problems never train)"),
    "dev_data": (None, "local JSONL/JSON/CSV file of the dev task"),
    "dev_split": ("test", "split of the dev task; a slice such as dev[400:] takes part of one"),
    "dev_limit": (100, "dev problems"),
    "early_stopping_patience": (None, "with a dev task: stop after this many evaluations without improvement"),
}


def option(name: str) -> Any:
    """A TrainConfig field with its one default and help."""
    default, text = FIELDS[name]
    return field(default=default, metadata={"help": text})


def default_learning_rate(lora: bool) -> float:
    return LEARNING_RATE[lora]
