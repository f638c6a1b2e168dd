"""train: fine-tune a student on the kept annotations of one method.

Checkpoints go to `RUN_DIR/students/NAME/checkpoints`; a rerun resumes from the last one
(transformers restores optimizer, scheduler, RNG and data order), and a finished student
is not trained again. The final model (LoRA adapter or full weights) plus its tokenizer
and a `cotdistill.json` of what produced it land in `RUN_DIR/students/NAME`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers.trainer_utils import get_last_checkpoint

from cotdistill.errors import CotdistillError
from cotdistill.methods import get_method, stored_examples
from cotdistill.models import load_model
from cotdistill.store import Store
from cotdistill.train.sft import make_trainer
from cotdistill.train.sft_config import SFTConfig


def student_dir(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / "students" / name


def train(
    run_dir: str | Path,
    name: str = "student",
    student: str = "smollm2-135m",
    method: str = "cot",
    task: str | None = None,
    split: str | None = "train",
    roles: list[str] | None = None,
    **config: Any,
) -> Path:
    """Train `student` on the store's kept `method` annotations; returns the student's directory.

    `roles` picks which of the method's students this is (e.g. socratic `qg`, `qa` or
    `unified`; decompose `decomposer` or `solver`); default: the method's `train_roles`.

    `config` takes any `SFTConfig` / TrainingArguments field (lora, learning_rate,
    num_train_epochs, max_steps, per_device_train_batch_size, ...).
    """
    output = student_dir(run_dir, name)
    store = Store(run_dir)
    run_name = f"train:{name}"
    the_method = get_method(method)
    chosen = {"roles": roles} if roles else {}  # recorded only when chosen, so older runs still resume
    roles = list(roles or the_method.train_roles)
    settings = {"student": student, "method": method, "task": task, "split": split, **chosen, **config}
    store.check_settings(run_name, settings)
    previous = store.run(run_name)
    if previous and previous["status"] == "done" and (output / "cotdistill.json").is_file():
        store.close()
        return output
    examples = [example for _, example in stored_examples(store, the_method, roles, task, split)]
    try:
        args = SFTConfig(output_dir=str(output / "checkpoints"), **config)
    except TypeError as error:
        raise CotdistillError(f"train: {error}") from None
    store.start_run(run_name, "train", {**settings, "examples": len(examples)})
    model, tokenizer = load_model(student)  # a LoRA student arrives merged, so new adapters never nest
    trainer = make_trainer(model, tokenizer, args, examples)
    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    trainer.model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "student": student, "method": method, "roles": roles, "examples": len(examples), "lora": args.lora,
        "steps": trainer.state.global_step, "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else None, "last_logged_loss": losses[-1] if losses else None,
        "seconds": time.perf_counter() - started, "resumed_from": Path(last).name if last else None,
    }
    (output / "cotdistill.json").write_text(json.dumps(summary, indent=2))
    store.finish_run(run_name, summary)
    store.close()
    return output
