"""Gold-teacher conversion on GSM8K train: how many of the 7,473 human solutions become
kept annotations in each method's format, and why the rest are rejected.

It runs the real `annotate()` with `--teacher gold` into a temporary store: the original
file for cot, dss, pot, kpdd_cot and kpdd_pot, the Socratic file for socratic and
decompose (only it has sub-questions). PoT programs are built from the calculator
annotations and executed in the sandbox; kept means they print the gold answer.

    .venv/bin/python benchmarks/gold_conversion.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cotdistill.annotate import annotate
from cotdistill.methods import METHODS

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gsm8k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as run_dir:
        for method in args.methods:
            source = "train_socratic.jsonl" if method in ("socratic", "decompose") else "train.jsonl"
            started = time.perf_counter()
            summary = annotate(run_dir, "gsm8k", data=DATA / source, method=method, teacher="gold")
            rows.append((method, source, summary, time.perf_counter() - started))
    print("\n| method | source | kept / problems | kept % | rejected (reason: count) | seconds |")
    print("|---|---|---|---|---|---|")
    for method, source, s, seconds in rows:
        reasons = "; ".join(f"{reason}: {count}" for reason, count in sorted(s["rejected_by_reason"].items())) or "-"
        print(f"| {method} | {source} | {s['kept']:,} / {s['problems']:,} | {s['kept'] / s['problems']:.1%} "
              f"| {reasons} | {seconds:.1f} |")
    print("command: python benchmarks/gold_conversion.py")


if __name__ == "__main__":
    main()
