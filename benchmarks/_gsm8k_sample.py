"""The problems and options the generation benchmarks share, so their figures are on the
same prompts: `n` GSM8K training rows drawn with `seed` from the raw file (the draw the
first eval_throughput figures used), and the arguments that fix a run's size."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from cotdistill.tasks.records import read_records

ROOT = Path(__file__).resolve().parents[1]


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/gsm8k/train.jsonl")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    return parser


def write_sample(source: Path, n: int, seed: int, target: Path) -> Path:
    """`n` seeded rows of `source`, written to `target` as JSONL (a file both tools read)."""
    rows = [record for _, record in read_records(source)]  # the project's reader: a bad line is one clear error
    target.write_text("".join(json.dumps(row) + "\n" for row in random.Random(seed).sample(rows, n)))
    return target
