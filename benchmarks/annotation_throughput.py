"""Annotation throughput against an OpenAI-compatible server: cotdistill vs distilabel.

The server is `cotdistill.testing` in its own process, answering every request after a
fixed latency, so its capacity is exactly concurrency / latency and what differs between
the two clients is client overhead. Both send the same GSM8K few-shot CoT chat requests
(one per question) at the same concurrency; both are timed end to end as a user runs
them (cotdistill: `annotate()`, parsing and storing included; distilabel: a Pipeline with
one ChatGeneration step whose input_batch_size is the concurrency).

    .venv/bin/python benchmarks/annotation_throughput.py --n 7473 --latency 0.25 --concurrency 64
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gsm8k" / "train.jsonl"


def wait_for_port(port: int) -> None:
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("stub server did not start")


def run_cotdistill(base_url: str, n: int, concurrency: int) -> float:
    from cotdistill.annotate import annotate

    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        summary = annotate(run_dir, "gsm8k", data=DATA, limit=n, teacher="openai:stub",
                           api={"base_url": base_url, "concurrency": concurrency})
        seconds = time.perf_counter() - started
    assert summary["done"] == n, summary
    return seconds


def run_distilabel(base_url: str, n: int, concurrency: int) -> float:
    from distilabel.models.llms import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import ChatGeneration

    from cotdistill.methods import get_method
    from cotdistill.tasks import get_task

    cot = get_method("cot")
    rows = [{"messages": cot.teacher_messages(p)} for p in get_task("gsm8k").load(DATA, limit=n)]
    with Pipeline(name="throughput") as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=concurrency)
        generate = ChatGeneration(
            llm=OpenAILLM(model="stub", base_url=base_url, api_key="EMPTY",
                          generation_kwargs={"max_new_tokens": 256, "temperature": 0.7}),
            input_batch_size=concurrency,
        )
        load >> generate
    started = time.perf_counter()
    distiset = pipeline.run(use_cache=False)
    seconds = time.perf_counter() - started
    produced = len(distiset["default"]["train"])
    assert produced == n, produced
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=7473, help="requests (GSM8K train has 7,473 questions)")
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--skip-distilabel", action="store_true")
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "cotdistill.testing", "--port", str(args.port),
                               "--latency", str(args.latency)], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(args.port)
        base_url = f"http://127.0.0.1:{args.port}/v1"
        capacity = args.concurrency / args.latency
        results = {"cotdistill": run_cotdistill(base_url, args.n, args.concurrency)}
        if not args.skip_distilabel:
            results["distilabel"] = run_distilabel(base_url, args.n, args.concurrency)
    finally:
        server.terminate()
    print(f"\n{args.n} requests, server latency {args.latency} s, concurrency {args.concurrency}: "
          f"capacity {capacity:.1f} req/s")
    print("| client | wall s | requests/s | share of server capacity |")
    print("|---|---|---|---|")
    for name, seconds in results.items():
        rate = args.n / seconds
        print(f"| {name} | {seconds:.1f} | {rate:.1f} | {rate / capacity:.1%} |")
    if "distilabel" in results:
        print(f"cotdistill / distilabel: {results['distilabel'] / results['cotdistill']:.2f}x")
    print(f"command: python benchmarks/annotation_throughput.py --n {args.n} --latency {args.latency} "
          f"--concurrency {args.concurrency}")


if __name__ == "__main__":
    main()
