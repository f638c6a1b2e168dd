"""Generation throughput: cotdistill's decode loop vs transformers `generate`, greedy and
self-consistency (K sampled replies per problem), on the same prompts in one process.

Same model (the embedded SmolLM2-135M-Instruct unless --model), the same GSM8K problems
(the seeded sample of train eval_throughput.py scores), the `cot` student prompt every eval
uses, the same stop string, max new tokens and batch (rows in flight); one model load,
timings exclude it; `--no-pack` keeps transformers' own dense Linear weights (no
`pack_linear_weights`), and the digest of the greedy texts printed at the end tells whether
two runs wrote the same replies. transformers runs length-sorted, left-padded batches through
`model.generate` (self-consistency: `num_return_sequences=K`, batch / K prompts at a time).
lm-evaluation-harness end to end, as a CLI, is benchmarks/eval_throughput.py.

    .venv/bin/python benchmarks/generation_throughput.py --n 50 --max-new-tokens 256 --samples 8
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from cotdistill.methods import get_method
from cotdistill.models import LocalModel
from cotdistill.models.local import encode_prompt, load_model
from cotdistill.tasks import get_task

from _gsm8k_sample import arguments, write_sample


def transformers_generate(model: LocalModel, requests: list, max_new_tokens: int, stop: list[str], batch: int,
                          samples: int) -> int:
    """Generated tokens (up to EOS) of `generate` over all requests, `samples` each."""
    tokenizer, eos = model.tokenizer, model.tokenizer.eos_token_id
    encoded = sorted((encode_prompt(tokenizer, r) for r in requests), key=len, reverse=True)
    per_call = max(1, batch // samples)
    generated = 0
    for start in range(0, len(encoded), per_call):
        rows = encoded[start : start + per_call]
        width = max(map(len, rows))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows], device=model.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
        sampling = {"do_sample": True, "temperature": 0.7, "num_return_sequences": samples} if samples > 1 else \
            {"do_sample": False}
        with torch.inference_mode():
            out = model.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       stop_strings=stop, tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id,
                                       **sampling)
        for row in out[:, width:].tolist():
            generated += next((i + 1 for i, t in enumerate(row) if t == eos), len(row))
    return generated


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--samples", type=int, default=8, help="K for self-consistency (1: greedy only)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default=None, help="cpu, cuda (default: the best there is)")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--no-pack", action="store_true", help="dense Linear weights, as transformers loads them")
    args = parser.parse_args()
    sample = Path(tempfile.mkdtemp(prefix="cotdistill-bench-")) / "gsm8k.jsonl"
    problems = get_task("gsm8k").load(write_sample(args.data, args.n, args.seed, sample), split="test")
    method = get_method("cot")
    requests = [method.student_messages(p) for p in problems]
    model = LocalModel(args.model, device=args.device, batch_size=args.batch_size,
                       loaded=load_model(args.model, args.device) if args.no_pack else None)
    model.generate(requests[:2], 4)  # warm-up: first-call allocations and kernel choices
    rows = []
    for samples in sorted({1, args.samples}):
        temperature = 0.0 if samples == 1 else 0.7
        started = time.perf_counter()
        out = model.generate([r for r in requests for _ in range(samples)], args.max_new_tokens, temperature,
                             method.stop, args.seed)
        seconds = time.perf_counter() - started
        correct = sum(method.parse(c.text, p).kept for c, p in zip(out[::samples], problems))
        if samples == 1:
            digest = hashlib.sha256("\x00".join(c.text for c in out).encode()).hexdigest()[:16]
        rows.append(("cotdistill", samples, seconds, sum(c.completion_tokens for c in out), correct))
        if not args.skip_transformers:
            started = time.perf_counter()
            tokens = transformers_generate(model, requests, args.max_new_tokens, list(method.stop), args.batch_size,
                                           samples)
            rows.append(("transformers generate", samples, time.perf_counter() - started, tokens, None))
    device = str(model.device) + (f" ({torch.cuda.get_device_name()})" if model.device.type == "cuda" else
                                  f" ({torch.get_num_threads()} threads)")
    print(f"\n{args.n} GSM8K train problems (seed {args.seed}), {args.model}, {device}, batch {args.batch_size} rows, "
          f"max_new_tokens {args.max_new_tokens}\n")
    print("| decoder | samples per problem | wall s | problems/s | generated tokens/s |")
    print("|---|---|---|---|---|")
    for name, samples, seconds, tokens, _ in rows:
        print(f"| {name} | {samples} | {seconds:.1f} | {args.n / seconds:.3f} | {tokens / seconds:.0f} |")
    ours = [r for r in rows if r[0] == "cotdistill"]
    if len(ours) == 2:
        print(f"\nself-consistency K={args.samples} / greedy, ours: {ours[1][2] / ours[0][2]:.2f}x the wall time")
    print(f"greedy first-sample strict correct: {ours[0][4]}/{args.n}; greedy texts' sha256 {digest}")
    print("\nreproduce: .venv/bin/python benchmarks/generation_throughput.py " + " ".join(sys.argv[1:]))
    json.dump([dict(zip(("decoder", "samples", "seconds", "tokens", "correct"), r)) for r in rows],
              sys.stderr)


if __name__ == "__main__":
    main()
