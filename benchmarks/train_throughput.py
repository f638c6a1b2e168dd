"""Training throughput: cotdistill's trainer vs TRL's `SFTTrainer`, SFT of SmolLM2-135M.

The same 256 GSM8K training problems with their gold CoT rationales (the `cot` method's
prompt and target), full fine-tuning, the same batch size and max length, TRL's default
optimiser settings for both (lr 2e-5, linear schedule, no warmup, 1 epoch); fp32 weights,
with bf16 autocast for both on a GPU that has it (fp32 compute on CPU).
TRL runs with its defaults otherwise (conversational prompt-completion data, completion-only
loss, no packing). Activation (gradient) checkpointing is on in TRL's defaults and off in
ours, so each trainer runs both ways and the speed-up compares like with like: cotdistill
against TRL with the same checkpointing setting.

Each trainer runs in its own process (so peak RSS is its own). Throughput is the real
(non-pad) tokens of the training set divided by the wall time of `trainer.train()`. The
final loss of every trained model is measured the same way afterwards: mean completion-
token NLL over the 256 examples.

Reproduce (needs `pip install -e '.[bench]'` and ../shared/data):

    .venv/bin/python benchmarks/train_throughput.py --n 256
    # trainers: cotdistill, cotdistill-checkpointing, trl (checkpointing on, its default), trl-no-checkpointing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
BF16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
COMMON = dict(bf16=BF16, learning_rate=2e-5, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, num_train_epochs=1,
              logging_steps=4, logging_first_step=True, save_strategy="no", report_to="none", seed=0, disable_tqdm=True)


def accepted(config_class: type, **settings: object) -> dict:
    """The settings this installed version's config takes, under the names it knows:
    activation checkpointing is `activation_checkpointing` in recent transformers and
    `gradient_checkpointing` before it; anything else it lacks is dropped with a note."""
    names = {f.name for f in dataclasses.fields(config_class)}
    if "activation_checkpointing" in settings and "activation_checkpointing" not in names:
        settings["gradient_checkpointing"] = settings.pop("activation_checkpointing")
    dropped = sorted(set(settings) - names)
    if dropped:
        print(f"note: {config_class.__name__} here has no {', '.join(dropped)}; left out", file=sys.stderr)
    return {k: v for k, v in settings.items() if k in names}


def examples(n: int, data: Path, seed: int = 0) -> list:
    from cotdistill.methods import Example, get_method
    from cotdistill.tasks import get_task

    problems = get_task("gsm8k").load(data, "train")
    problems = random.Random(seed).sample(problems, n)
    cot = get_method("cot")
    return [Example("student", cot.student_messages(p), cot.gold_rationale(p)) for p in problems]


def final_loss(model, tokenizer, items, max_length: int) -> float:
    """Mean completion-token NLL of the trained model, the same code for every trainer."""
    from cotdistill.train.data import Collator, fit_examples
    from cotdistill.train.objectives import targets

    model.eval()
    features = fit_examples(tokenizer, items, max_length)[0]
    total = count = 0.0
    with torch.no_grad():
        for start in range(0, len(features), 16):
            batch = Collator(tokenizer.pad_token_id)(features[start : start + 16])
            t = targets(model, {k: v.to(model.device) for k, v in batch.items()})
            total += torch.nn.functional.cross_entropy(t.logits.reshape(-1, t.logits.shape[-1]), t.labels.reshape(-1),
                                                       ignore_index=-100, reduction="sum").item()
            count += int(t.mask.sum())
    return total / count


def run_one(which: str, n: int, batch_size: int, max_length: int, data: Path, workdir: Path) -> dict:
    from cotdistill.models import load_model
    from cotdistill.train import TrainConfig
    from cotdistill.train.data import fit_examples
    from cotdistill.train.trainer import make_trainer

    items = examples(n, data)
    model, tokenizer = load_model("smollm2-135m", dtype=torch.float32)  # master weights; bf16 only autocasts
    real_tokens = sum(len(f["input_ids"]) for f in fit_examples(tokenizer, items, max_length)[0])
    checkpointing = which in ("cotdistill-checkpointing", "trl")  # TRL's default is on, ours off
    if which.startswith("cotdistill"):
        config = TrainConfig(**accepted(TrainConfig, output_dir=str(workdir / which), lora=False,
                                        per_device_train_batch_size=batch_size, max_length=max_length,
                                        activation_checkpointing=checkpointing, **COMMON))
        trainer = make_trainer(model, tokenizer, config, items)
    else:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        rows = [{"prompt": e.messages, "completion": [{"role": "assistant", "content": e.completion}]} for e in items]
        config = SFTConfig(**accepted(SFTConfig, output_dir=str(workdir / which), per_device_train_batch_size=batch_size,
                                      max_length=max_length, activation_checkpointing=checkpointing, **COMMON))
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        trl_tokens = sum(len(r["input_ids"]) for r in trainer.train_dataset)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {"trainer": which, "examples": n, "real_tokens": real_tokens, "seconds": seconds,
              "tokens_per_second": real_tokens / seconds, "steps": trainer.state.global_step,
              "first_logged_loss": losses[0] if losses else None, "last_logged_loss": losses[-1] if losses else None,
              "final_loss": final_loss(trainer.model, tokenizer, items, max_length),
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}
    result["checkpointing"] = checkpointing
    if which.startswith("trl"):
        result["trl_tokens"] = trl_tokens
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--data", type=Path, default=DATA, help="GSM8K train.jsonl")
    parser.add_argument("--trainers", default="cotdistill,cotdistill-checkpointing,trl,trl-no-checkpointing")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one trainer in this process
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as workdir:
            print(json.dumps(run_one(args.one, args.n, args.batch_size, args.max_length, args.data, Path(workdir))))
        return
    results = []
    for which in args.trainers.split(","):
        output = subprocess.run([sys.executable, __file__, "--one", which, "--n", str(args.n), "--batch-size",
                                 str(args.batch_size), "--max-length", str(args.max_length), "--data", str(args.data)],
                                check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    ours = {r["checkpointing"]: r for r in results if r["trainer"].startswith("cotdistill")}
    where = f"{torch.cuda.get_device_name()}, bf16 autocast" if BF16 else f"CPU, fp32, {torch.get_num_threads()} threads"
    print(f"\nSFT of SmolLM2-135M (full), {args.n} GSM8K CoT examples, batch {args.batch_size}, "
          f"max length {args.max_length}, {where}")
    memory = "peak GPU GiB" if BF16 else "peak RSS GiB"
    print(f"| trainer | checkpointing | tokens/s | train s | final loss | first / last logged loss | {memory} | "
          "cotdistill's speed-up, same checkpointing |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        logged = " / ".join("-" if r[k] is None else f"{r[k]:.4f}" for k in ("first_logged_loss", "last_logged_loss"))
        like = ours.get(r["checkpointing"])
        speedup = f"{like['tokens_per_second'] / r['tokens_per_second']:.2f}x" if like else "- (not run)"
        print(f"| {r['trainer']} | {'on' if r['checkpointing'] else 'off'} | {r['tokens_per_second']:.1f} | "
              f"{r['seconds']:.1f} | {r['final_loss']:.4f} | {logged} | "
              f"{r['peak_gpu_gib'] if BF16 else r['peak_rss_gib']:.2f} | {speedup} |")
    print(f"\nreproduce: .venv/bin/python benchmarks/train_throughput.py --n {args.n} --batch-size {args.batch_size} "
          f"--max-length {args.max_length} --trainers {args.trainers} --data {args.data}")


if __name__ == "__main__":
    main()
