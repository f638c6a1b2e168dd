"""bf16 vs fp32 on this CPU: a 1024x1024 matmul (median of 5) and a forward pass of the embedded
SmolLM2-135M (batch 8 x 128 random tokens, median of 3), each after a warm-up. Under a minute.

Written to check the claim that bf16 is ~80x slower on CPUs: it depends on the CPU (those
with AVX512-BF16 or AMX run bf16 natively; others emulate it), so the script prints which
bf16 instructions the CPU has beside the times.

Reproduce (the embedded model's cache converted, e.g. by `cotdistill quickstart`):

    .venv/bin/python benchmarks/cpu_bf16.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from cotdistill.models.embedded import embedded_model_dir


def timed(fn: Callable[[], object], reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    native = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in cpuinfo]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 instructions: {', '.join(native) or 'none'}")
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        print(f"matmul 1024^3, {dtype}: {timed(lambda: a @ b) * 1e3:.1f} ms")
    ids = torch.randint(0, 49152, (8, 128))
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=dtype).eval()
        with torch.no_grad():
            print(f"SmolLM2-135M forward, batch 8 x 128, {dtype}: {timed(lambda: model(ids), reps=3) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
