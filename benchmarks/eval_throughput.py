"""Eval throughput: `cotdistill eval` vs lm-evaluation-harness (`lm_eval --model hf`).

Same model (the embedded SmolLM2-135M-Instruct, from cotdistill's safetensors cache), the
same GSM8K problems, the same zero-shot chat prompt, the same stop string, the same
max new tokens, greedy. Both run as the CLI commands a user would type, timed end to end
(process start, model load, generation, scoring). lm-eval runs at its default batch size
(1) and at ours, so the ratio at equal batch size is shown too.

Reproduce (needs `pip install -e '.[bench]'` and ../shared/data):

    .venv/bin/python benchmarks/eval_throughput.py --n 50 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cotdistill.methods import get_method
from cotdistill.models import embedded_model_dir
from cotdistill.tasks import Problem

from _gsm8k_sample import arguments, write_sample

STRICT_REGEX = r"(?:####|[Tt]he (?:final )?answer is:?)\s*\$?(-?[0-9][0-9,]*(?:\.[0-9]+)?)"


def lm_eval_task(workdir: Path, data: Path, max_new_tokens: int) -> None:
    """A task YAML reading the same JSONL; the prompt text is built by the same function as ours."""
    [message] = get_method("cot").student_messages(Problem("", "{{question}}", ""))
    hint = message["content"].replace('"', '\\"').replace("\n", "\\n")
    (workdir / "gsm8k_cotdistill.yaml").write_text(f"""task: gsm8k_cotdistill
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{hint}"
doc_to_target: "{{{{answer.split('####')[-1].strip()}}}}"
generation_kwargs:
  until: ["\\nQuestion:"]
  do_sample: false
  max_gen_toks: {max_new_tokens}
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "{STRICT_REGEX.replace(chr(92), chr(92) * 2)}"
        group_select: -1
      - function: take_first
  - name: flexible-extract
    filter:
      - function: regex
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
        group_select: -1
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
""")


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"command failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def run_ours(workdir: Path, data: Path, args: argparse.Namespace) -> dict:
    run_dir = workdir / "ours"
    command = [str(Path(sys.executable).parent / "cotdistill"), "eval", "--run-dir", str(run_dir), "--task", "gsm8k",
               "--data", str(data), "--model", "smollm2-135m", "--max-new-tokens", str(args.max_new_tokens),
               "--batch-size", str(args.batch_size), "--name", "bench"]
    seconds = timed(command)
    from cotdistill.store import Store

    metrics = Store(run_dir).metrics("bench")
    return {"tool": "cotdistill eval", "batch": args.batch_size, "seconds": seconds,
            "strict": metrics["accuracy_strict"], "flexible": metrics["accuracy_flexible"]}


def run_lm_eval(workdir: Path, batch_size: int, args: argparse.Namespace) -> dict:
    output = workdir / f"lm_eval_b{batch_size}"
    command = [str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args",
               f"pretrained={embedded_model_dir()},dtype=float32", "--tasks", "gsm8k_cotdistill",
               "--include_path", str(workdir), "--batch_size", str(batch_size), "--apply_chat_template",
               "--output_path", str(output), "--device", "cpu"]
    seconds = timed(command)
    results = json.loads(next(output.rglob("results_*.json")).read_text())["results"]["gsm8k_cotdistill"]
    return {"tool": "lm_eval --model hf", "batch": batch_size, "seconds": seconds,
            "strict": results["exact_match,strict-match"], "flexible": results["exact_match,flexible-extract"]}


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--skip-lm-eval-batch-1", action="store_true", help="it is the slowest run")
    args = parser.parse_args()
    embedded_model_dir()  # convert once, outside the timings
    workdir = Path(tempfile.mkdtemp(prefix="cotdistill-bench-"))
    data = write_sample(args.data, args.n, args.seed, workdir / "gsm8k_sample.jsonl")
    lm_eval_task(workdir, data, args.max_new_tokens)
    rows = [run_ours(workdir, data, args), run_lm_eval(workdir, args.batch_size, args)]
    if not args.skip_lm_eval_batch_1:
        rows.append(run_lm_eval(workdir, 1, args))
    print(f"\n{args.n} GSM8K train problems (seed {args.seed}) from {args.data}, max_new_tokens={args.max_new_tokens}, "
          "greedy, SmolLM2-135M-Instruct fp32 on CPU\n")
    print("| tool | batch | wall s | problems/s | strict acc | flexible acc |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['tool']} | {row['batch']} | {row['seconds']:.1f} | {args.n / row['seconds']:.3f} | "
              f"{100 * row['strict']:.1f}% | {100 * row['flexible']:.1f}% |")
    for row in rows[1:]:
        print(f"\nours / lm_eval at batch {row['batch']}: {row['seconds'] / rows[0]['seconds']:.2f}x problems/s")
    print("\nreproduce: .venv/bin/python benchmarks/eval_throughput.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
