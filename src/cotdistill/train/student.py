"""train: fine-tune a student on the kept annotations of one method, with one objective.

Checkpoints go to `RUN_DIR/students/NAME/checkpoints` (TensorBoard logs under its `runs/`);
a rerun resumes from the last one (transformers restores weights, optimizer, scheduler, RNG
and data position), and a finished student is not trained again. The final model (LoRA
adapter or full weights; the best dev checkpoint's when a dev set is given) plus its
tokenizer and a `cotdistill.json` of what produced it land in `RUN_DIR/students/NAME`.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from cotdistill.errors import CotdistillError
from cotdistill.methods import METHODS, Method, get_method, stored_examples
from cotdistill.models import ALIASES, LocalModel, load_model, stack_adapter
from cotdistill.store import Annotation, Store, model_in_run, student_dir
from cotdistill.tasks import Problem, get_task
from cotdistill.train.config import TrainConfig
from cotdistill.train import memory
from cotdistill.train.data import TokenMap, check_teacher_tokens, fit_example
from cotdistill.train.fields import default_learning_rate
from cotdistill.train.formats import format_examples
from cotdistill.train.objectives import OBJECTIVES
from cotdistill.train.trainer import check_finite_weights, load_critic, make_trainer


def train(
    run_dir: str | Path,
    name: str = "student",
    student: str = "smollm2-135m",
    method: str = "cot",
    task: str | None = None,
    split: str | None = "train",
    roles: list[str] | None = None,
    teacher: str | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    **config: Any,
) -> Path:
    """Train `student` on the store's kept `method` annotations; returns the student's directory.

    `roles` picks which of the method's students this is (e.g. socratic `qg`, `qa` or
    `unified`; decompose `decomposer` or `solver`); default: the method's `train_roles`.
    `config` takes any `TrainConfig` field: the objective (sft, multitask, mi, kd) and its
    weights, formats to mix, a dev set, LoRA, and every TrainingArguments field.
    `teacher` takes only that teacher's annotations; without it, every teacher's, and the
    summary counts each one's (`teachers`), which the report shows.
    """
    output = student_dir(run_dir, name)
    if name in ALIASES:  # `eval --model NAME` would run this student where the report says the base model
        raise CotdistillError(f"student name {name!r} is a model alias ({', '.join(ALIASES)}): give the student "
                              "another name")
    try:  # bad settings fail before anything is opened or registered
        args = TrainConfig(output_dir=str(output / "checkpoints"), **config)
    except (TypeError, ValueError) as error:
        raise CotdistillError(f"train: {error}") from None
    run_name = f"train:{name}"
    the_method = get_method(method)
    settings, defaults = _recorded(args, config, student=student, method=method, task=task, split=split, roles=roles,
                                   teacher=teacher)
    roles = list(roles or the_method.train_roles)
    produced = any((output / "checkpoints").glob("checkpoint-*"))
    main = PartialState().is_main_process  # under `accelerate launch`, one process keeps the records
    # One training of a name at a time (its other processes under `accelerate launch` are the same training).
    held = f"train {name}", "two trainings would write one student's checkpoints: wait for it to finish, then rerun"
    with Store(run_dir) as store, store.lease(*held) if main else nullcontext():
        store.check_settings(run_name, settings, produced, defaults)
        previous = store.run(run_name)
        if previous and previous["status"] == "done":
            broken = unloadable(output)
            if broken is None:
                return output
            print(f"note: student {name} is recorded as done, but {broken}: rebuilding it from its last "
                  "checkpoint", file=sys.stderr)
        _check_objective(args, the_method, roles)
        dev, pairs = _setup_data(args, store, the_method, roles, task, split, teacher)
        teachers = dict(Counter(a.teacher for a in {a.key: a for a, _ in pairs}.values()).most_common())
        if len(teachers) > 1:  # allowed (more data), but never silent: the report shows it too
            print(f"train {name}: annotations of {len(teachers)} teachers mixed ("
                  + ", ".join(f"{t} {n}" for t, n in teachers.items()) + "); --teacher NAME takes one", file=sys.stderr)
        start = model_in_run(run_dir, student)  # a student of this run warm-starts
        model, tokenizer = _setup_model(args, start)
        kd_model = _kd_teacher(args, tokenizer) if OBJECTIVES[args.objective].teacher_model and args.kd_teacher else None
        items, logprobs, groups = _items(args, store, the_method, pairs, tokenizer, kd_model)
        memory.check(model, args, _longest(items, model, tokenizer, args), len(OBJECTIVES[args.objective].tasks) or 1)
        if main:
            store.start_run(run_name, "train", {**settings, "examples": len(items)}, produced, defaults)
        trainer = make_trainer(model, tokenizer, args, items, logprobs, kd_model, groups,
                               _dev_evaluator(dev, the_method, tokenizer, args) if dev else None, store)
        last, loss, seconds = _fit(trainer, args, callbacks)
        check_finite_weights(trainer.model, "after training")
        # A LoRA student continuing a LoRA student learnt its adapter on the start's merged
        # weights: saved aside, it reaches the student's folder only stacked on the start's.
        stacks_on = Path(start) if args.lora and (Path(start) / "adapter_config.json").is_file() else None
        saved = output / ".own-adapter" if stacks_on else output
        trainer.save_model(str(saved))  # every process takes part: ZeRO-3 / FSDP gather the weights here
        if main:
            if stacks_on:
                stack_adapter(saved, stacks_on, output)
                shutil.rmtree(saved)
            tokenizer.save_pretrained(output)
            summary = _summary(trainer, loss, seconds, last, len(dev), student=student, method=method, roles=roles,
                               objective=args.objective, examples=len(items), lora=args.lora,
                               examples_shortened=trainer.shortened, teachers=teachers,
                               **trainer.objective.summary())
            (output / "cotdistill.json").write_text(json.dumps(summary, indent=2))
            store.finish_run(run_name, summary)
    return output


def unloadable(output: Path) -> str | None:
    """Why a trained student's directory would not load (a file missing, or a weights or
    config file that is cut short or not what it claims), or None. Reads each file's header
    only (safetensors checks that the file covers every tensor), so it is fast at any size."""
    from safetensors import safe_open

    lora = (output / "adapter_config.json").is_file()
    needed = ["cotdistill.json", "tokenizer_config.json",
              *(["adapter_config.json", "adapter_model.safetensors"] if lora else ["config.json"])]
    weights = sorted(output.glob("model*.safetensors")) if not lora else [output / "adapter_model.safetensors"]
    if not lora and not weights:
        return f"{output} holds no model.safetensors"
    for file in [*(output / n for n in needed), *weights]:
        if not file.is_file():
            return f"{file} is missing"
        try:
            if file.suffix == ".json":
                json.loads(file.read_text())
            else:
                with safe_open(str(file), "pt"):
                    pass
        except Exception as error:  # SafetensorError, ValueError, UnicodeDecodeError: all "does not load"
            return f"{file} does not load ({' '.join(str(error).split())[:120]})"
    return None


def _setup_model(args: TrainConfig, student: str) -> tuple[Any, Any]:
    """The student and its tokenizer. Full fine-tuning keeps fp32 master weights (`bf16`
    autocasts the compute); a LoRA base is frozen, so it may sit in bf16. A LoRA student
    arrives merged, so new adapters never nest; the one learnt on it is stacked on its
    adapter when saved (`stack_adapter`)."""
    model, tokenizer = load_model(student, device=str(args.device), dtype=None if args.lora else torch.float32)
    _check_model_type(args, student, model)
    if not args.lora:  # a merged LoRA start keeps peft's frozen flags
        model.requires_grad_(True)
    return model, tokenizer


def _recorded(args: TrainConfig, config: dict[str, Any], **run: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's settings as given (one left out stands for its TrainConfig default, the
    store's rule), with the learning rate the mode resolved; and those defaults."""
    settings = {**run, "roles": run["roles"] or None, **config, "learning_rate": args.learning_rate}
    defaults = {"roles": None, "teacher": None, **{f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING},
                "learning_rate": default_learning_rate(args.lora)}
    return settings, defaults


def _setup_data(args: TrainConfig, store: Store, method: Method, roles: list[str], task: str | None,
                split: str | None, teacher: str | None = None) -> tuple[list[Problem], list[tuple[Annotation, Any]]]:
    """The dev problems (if any) and the stored (annotation, example) pairs to train on,
    without a dev question among them (by its text: whichever file or split it was annotated
    from, GSM8K's original or its Socratic copy)."""
    dev = _dev_problems(args)
    pairs = stored_examples(store, method, roles, task, split, teacher,
                            **({"gold_label": True} if args.gold_label else {}))
    if not dev:
        return dev, pairs
    questions = {p.question for p in dev}
    problems = store.problems(a.problem_key for a, _ in pairs)
    return dev, [(a, e) for a, e in pairs if problems[a.problem_key].question not in questions]


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest checkpoint that is whole. One cut short (killed, or the disk full, while it was
    written: transformers writes trainer_state.json last, and not atomically) would make every
    resume fail, so it is removed with a note and the one before it is taken."""
    from safetensors import safe_open

    while (last := get_last_checkpoint(str(folder)) if Path(folder).is_dir() else None) is not None:
        try:
            state = json.loads((Path(last) / "trainer_state.json").read_text())
            if not isinstance(state, dict) or "global_step" not in state:
                raise ValueError("no global_step")
            for weights in Path(last).glob("*.safetensors"):
                with safe_open(str(weights), "pt"):
                    pass
            return last
        except Exception as error:  # missing, cut short or unreadable: all mean "not a checkpoint"
            why = f"{type(error).__name__}: {' '.join(str(error).split())[:120]}"
            print(f"note: {last} is incomplete ({why}); removed, resuming from the one before it", file=sys.stderr)
            shutil.rmtree(last)
    return None


def _fit(trainer: Any, args: TrainConfig, callbacks: Sequence[TrainerCallback]) -> tuple[str | None, float, float]:
    """Train from the last complete checkpoint, if any; returns it, the training loss and the seconds taken."""
    for callback in [*callbacks, *([EarlyStoppingCallback(args.early_stopping_patience)]
                                   if args.early_stopping_patience else [])]:
        trainer.add_callback(callback)
    last = last_complete_checkpoint(args.output_dir)
    if trainer.critic is not None:
        load_critic(trainer.critic, last)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    return last, result.training_loss, time.perf_counter() - started


def _summary(trainer: Any, train_loss: float, seconds: float, last: str | None, dev_problems: int,
             **run: Any) -> dict[str, Any]:
    """What the run's record and the student's cotdistill.json say about the training."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {**run, "steps": trainer.state.global_step, "train_loss": train_loss,
               "first_logged_loss": losses[0] if losses else None, "last_logged_loss": losses[-1] if losses else None,
               "seconds": seconds, "resumed_from": Path(last).name if last else None}
    if dev_problems:
        summary.update(dev_problems=dev_problems, best_dev_accuracy=trainer.state.best_metric,
                       best_checkpoint=Path(trainer.state.best_model_checkpoint or "").name or None,
                       dev_history=[{"step": e["step"], "accuracy": e["eval_accuracy"]}
                                    for e in trainer.state.log_history if "eval_accuracy" in e])
    return summary


def _check_objective(args: TrainConfig, method: Method, roles: list[str]) -> None:
    objective = OBJECTIVES[args.objective]
    refusal = objective.check(roles)
    if refusal:
        paired = [name for name, cls in METHODS.items() if set(objective.tasks) <= set(cls.train_roles)]
        raise CotdistillError(f"{refusal}: use --method {' or '.join(paired)} (method {method.name} trains "
                              f"{', '.join(roles)})")
    if args.format_list and (not method.specializes or objective.tasks):
        raise CotdistillError("--formats mixes model specialization's formats of one rationale per annotation: use "
                              f"--method {' or '.join(_declaring('specializes'))} with objective sft or kd")
    stage_roles = sorted(set(roles) - set(method.answering_roles))
    if args.dev_task and stage_roles:
        raise CotdistillError(f"--dev-task scores a student that answers on its own; {method.name} role(s) "
                              f"{', '.join(stage_roles)} answer only beside another model: train without it and "
                              "compare checkpoints with `cotdistill eval --pipeline ...`")
    if args.gold_label and not method.supports_gold_label:
        raise CotdistillError(f"--gold-label teaches the dataset's answer in place of the teacher's; method {method.name} "
                              f"has no such target (methods that do: {', '.join(_declaring('supports_gold_label'))})")


def _declaring(declaration: str) -> list[str]:
    """The methods that declare `declaration`, for an error message."""
    return [name for name, cls in METHODS.items() if getattr(cls, declaration)]


def _check_model_type(args: TrainConfig, name: str, model: Any) -> None:
    actual = "seq2seq" if model.config.is_encoder_decoder else "causal"
    if args.model_type not in ("auto", actual):
        example = "an encoder-decoder such as google/flan-t5-base" if args.model_type == "seq2seq" else \
            "a decoder-only model such as HuggingFaceTB/SmolLM2-135M-Instruct"
        raise CotdistillError(f"model_type={args.model_type} asks for a {args.model_type} student, but {name} is a "
                              f"{actual} model ({type(model).__name__}): pick {example}, or set model_type=auto")


def _kd_teacher(args: TrainConfig, tokenizer: Any) -> Any:
    teacher, teacher_tokenizer = load_model(args.kd_teacher, device=str(args.device))
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise CotdistillError(f"--kd-teacher {args.kd_teacher}: its tokenizer differs from the student's; white-box "
                              "distribution matching compares the two models token by token, so it needs one "
                              "tokenizer: pick a teacher of the student's family, or distil its text with --objective sft")
    return teacher


def _items(args: TrainConfig, store: Store, method: Method, pairs: list[tuple[Annotation, Any]], tokenizer: Any,
           teacher: Any) -> tuple[list[Any], list[Any] | None, list[int] | None]:
    """What the trainer learns from: examples, label/rationale pairs for multitask objectives,
    or format-mixed examples; with stored teacher log-probs for black-box kd."""
    if not pairs:
        raise CotdistillError(f"{store.path}: no training examples left for method {method.name} "
                              "(all kept annotations' problems are in the dev set?)")
    groups = None
    objective = OBJECTIVES[args.objective]
    if objective.tasks:
        by_annotation: dict[str, dict[str, Any]] = {}
        for annotation, example in pairs:
            by_annotation.setdefault(annotation.key, {})[example.role] = example
        items: list[Any] = [pair for pair in by_annotation.values() if set(pair) == set(objective.tasks)]
        annotations = None
    elif args.format_list:
        problems = store.problems(a.problem_key for a, _ in pairs)
        mixed = format_examples([(problems[a.problem_key], e.completion) for a, e in pairs],
                                args.format_list, args.demonstrations, args.seed)
        groups = [group for group, _ in mixed]
        items = [example for _, example in mixed]
        annotations = [pairs[i // len(args.format_list)][0] for i in range(len(mixed))]
    else:
        items = [example for _, example in pairs]
        annotations = [annotation for annotation, _ in pairs]
    logprobs = None
    if objective.uses_stored_logprobs(white_box_teacher=teacher is not None):
        logprobs = [a.logprobs for a in annotations]
        _check_finite_logprobs(annotations, str(store.path))
        check_teacher_tokens(TokenMap(tokenizer), logprobs, str(store.path))
    return items, logprobs, groups


def _check_finite_logprobs(annotations: list[Annotation], source: str) -> None:
    """Refuse stored teacher log-probs that are NaN or above 0 (a server's or a store's fault):
    the kd loss masks what it cannot read, so they would train to `done` with a kd loss of 0."""
    for annotation in annotations:
        for token in annotation.logprobs or []:
            for logprob in [token[1], *(top[1] for top in token[2] or [])]:
                if not isinstance(logprob, (int, float)) or math.isnan(logprob) or logprob > 1e-3:
                    raise CotdistillError(f"{source}: annotation {annotation.key} ({annotation.task} "
                                          f"{annotation.problem_id}) holds teacher log-prob {logprob!r} for token "
                                          f"{token[0]!r}; log-probs are numbers <= 0: annotate it again")


def _longest(items: list[Any], model: Any, tokenizer: Any, args: TrainConfig) -> int:
    """Tokens in the longest training sequence as fitted to max_length: what the largest padded
    batch holds (the 50 longest by characters are tokenized, the rest cannot be longer by much;
    one that cannot fit is refused with a count when the trainer tokenizes them all)."""
    examples = [e for item in items for e in (item.values() if isinstance(item, dict) else [item])]
    longest = sorted(examples, key=lambda e: len(e.completion) + sum(len(m["content"]) for m in e.messages))[-50:]
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    fitted = [fit_example(tokenizer, e, args.max_length, seq2seq)[0] for e in longest]
    return max((f["length"] for f in fitted if f is not None), default=1)


def _dev_problems(args: TrainConfig) -> list[Problem]:
    """The dev set's problems, if one is asked for."""
    if not args.dev_task:
        return []
    problems = get_task(args.dev_task).load(args.dev_data, args.dev_split, args.dev_limit)
    if not problems:
        raise CotdistillError(f"dev task {args.dev_task} ({args.dev_split}) has no problems")
    return problems


def _dev_evaluator(problems: list[Problem], method: Method, tokenizer: Any, args: TrainConfig) -> Any:
    """model -> {"accuracy", "no_answer"} on the dev problems, by the method's one-call pipeline."""
    from cotdistill.answers import is_correct
    from cotdistill.pipeline import Settings, run_pipeline

    def evaluate(model: Any) -> dict[str, float]:
        was_training = model.training
        backend = LocalModel("student", loaded=(model, tokenizer), batch_size=args.per_device_eval_batch_size)
        traces = run_pipeline("single", problems, {"model": backend}, method,
                              Settings(max_new_tokens=args.dev_max_new_tokens))
        model.train(was_training)
        correct = sum(is_correct(t.answer, p.answer, p.kind) for t, p in zip(traces, problems))
        return {"accuracy": correct / len(problems), "no_answer": sum(t.answer is None for t in traces) / len(problems)}

    return evaluate
