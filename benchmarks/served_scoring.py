"""What a served teacher costs on-policy: the seconds one `/v1/completions` request with
`echo` and `logprobs` takes to score one rollout-sized text (the `cot` student prompt of an
arithmetic problem and its gold solution, rendered with the student's chat template, as
the served teacher sends it), at two top-k sizes.

    python -m llama_cpp.server --model gemma-3-270m-q4_k_m.gguf --model_alias gemma \\
        --port 8765 --n_ctx 512 --n_threads 2 --logits_all true &
    .venv/bin/python benchmarks/served_scoring.py --base-url http://127.0.0.1:8765/v1 --model gemma
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request

from cotdistill.methods import get_method
from cotdistill.models import load_model, render_prompt
from cotdistill.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--student", default="smollm2-135m", help="whose chat template renders the text")
    args = parser.parse_args()
    _, tokenizer = load_model(args.student)
    problem = get_task("arith").load(split="train", limit=1)[0]
    text = render_prompt(tokenizer, get_method("cot").student_messages(problem)) + problem.gold["cot"]
    print(f"text: {len(tokenizer(text)['input_ids'])} {args.student} tokens")
    for k in (20, 1):
        body = json.dumps({"model": args.model, "prompt": text, "echo": True, "logprobs": k, "max_tokens": 1}).encode()
        request = urllib.request.Request(f"{args.base_url}/completions", body, {"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=3600) as reply:
            scored = len(json.load(reply)["choices"][0]["logprobs"]["tokens"])
        print(f"logprobs={k}: {time.perf_counter() - start:.1f} s for {scored} teacher tokens")


if __name__ == "__main__":
    main()
