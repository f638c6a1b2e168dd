"""Sandbox throughput: programs executed per second for typical GSM8K programs.

The programs are the gold PoT programs built from GSM8K train's calculator annotations (the
first N that convert); each runs in its own forked child of a warm worker, under every
limit and check, exactly as annotation and evaluation run them.

    .venv/bin/python benchmarks/sandbox_throughput.py --n 1000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from cotdistill.methods import get_method
from cotdistill.methods.pot import extract_program
from cotdistill.sandbox import Sandbox
from cotdistill.tasks import get_task

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gsm8k" / "train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--data", type=Path, default=DATA, help="GSM8K train.jsonl (default: the shared data dir)")
    args = parser.parse_args()
    pot = get_method("pot")
    programs = []
    for problem in get_task("gsm8k").load(args.data):
        text = pot.gold_rationale(problem)
        if text:
            programs.append(extract_program(text))
        if len(programs) == args.n:
            break
    started = time.perf_counter()
    with Sandbox(args.workers) as sandbox:
        ready = time.perf_counter()
        outcomes = sandbox.run_many(programs)
        ran = time.perf_counter()
    ok = sum(o.ok for o in outcomes)
    print(f"{len(programs)} GSM8K programs, {args.workers} workers on {os.cpu_count()} cores: "
          f"{len(programs) / (ran - ready):.0f} programs/s ({ran - ready:.2f} s; worker start {ready - started:.2f} s); "
          f"{ok} ran to an answer, errors: { {e: sum(o.error == e for o in outcomes) for e in {o.error for o in outcomes} if e} }")
    print(f"command: python benchmarks/sandbox_throughput.py --n {args.n}")


if __name__ == "__main__":
    main()
