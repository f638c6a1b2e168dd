"""On-policy rollouts: the shared decode engine (what `--objective on-policy` samples with)
vs transformers `generate` (what TRL's GKD trainer samples with), on the same student.

The student as training holds it: a model with fresh LoRA adapters (peft), its weights not
packed (they change every step). The same prompts (the `cot` student prompt of arithmetic
training problems), batch (one step's rollouts), temperature and max new tokens, sampling;
tokens counted up to and including EOS. One process, one model load, warmed up once.

    .venv/bin/python benchmarks/onpolicy_rollouts.py --model runs/on-policy-small/students/sft
"""

from __future__ import annotations

import argparse
import time

import torch
from peft import LoraConfig, get_peft_model

from cotdistill.methods import get_method
from cotdistill.models import encode_prompt, load_model
from cotdistill.models.local import _eos_ids
from cotdistill.tasks import get_task
from cotdistill.train.onpolicy import rollout


def engine(model, tokenizer, batches, max_new_tokens, temperature) -> int:
    return sum(len(tokens) for step, prompts in enumerate(batches)
               for tokens in rollout(model, tokenizer, prompts, max_new_tokens, temperature, step))


def generate(model, tokenizer, batches, max_new_tokens, temperature) -> int:
    eos = sorted(_eos_ids(model, tokenizer))
    generated = 0
    for step, prompts in enumerate(batches):
        width = max(map(len, prompts))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        torch.manual_seed(step)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_k=0,
                                 max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        for row in out[:, width:].tolist():
            generated += next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
    return generated


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model, device="cpu", dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear"))
    cot = get_method("cot")
    prompts = [encode_prompt(tokenizer, cot.student_messages(p))
               for p in get_task("arith").load(split="train", limit=args.prompts)]
    batches = [prompts[i : i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    for name, sample in (("decode engine (on-policy rollouts)", engine), ("transformers generate", generate)):
        sample(model, tokenizer, batches[:1], 8, args.temperature)  # warm-up
        start = time.perf_counter()
        tokens = sample(model, tokenizer, batches, args.max_new_tokens, args.temperature)
        seconds = time.perf_counter() - start
        print(f"{name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s "
              f"({len(prompts)} prompts, batch {args.batch_size}, <= {args.max_new_tokens} new, T {args.temperature})")
    print(f"reproduce: .venv/bin/python benchmarks/onpolicy_rollouts.py --model {args.model} --prompts {args.prompts} "
          f"--batch-size {args.batch_size} --max-new-tokens {args.max_new_tokens}")


if __name__ == "__main__":
    main()
