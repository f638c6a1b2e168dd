"""Where a CPU decode step's matrix products go, and whether int8 weights would make them cheaper.

One decode step of a batch runs every Linear of the model once on `batch` rows. This times
those products alone, with the model's own shapes (from its config; the weights are random,
one tensor per layer, so they stream from memory as the real model's do) in three forms: fp32
`F.linear` (transformers' Linear), fp32 weights packed for oneDNN (`pack_linear_weights`,
what the engine runs on CPU) and int8 weights through `torch.ops.aten._weight_int8pack_mm`
(PyTorch's CPU weight-only int8 kernel, the one gpt-fast uses). Weight-only int8 quarters
the bytes a step streams, so it can only pay if the step is bound by those bytes and the
kernel keeps up with the memory it saves. (torchao 0.18's `Int8WeightOnlyConfig` is no
alternative on CPU: its linear casts the int8 weight back to the activation dtype on every
call, streaming more bytes than fp32, unless torch.compile fuses the cast.)

    .venv/bin/python benchmarks/decode_matmuls.py --batch 32
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import AutoConfig

from cotdistill.models import embedded_model_dir
from cotdistill.models.local import pack_linear_weights


def shapes(config) -> dict[str, tuple[int, int, int]]:
    """kind -> (out features, in features, how many per step) for a Llama-style decoder."""
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = hidden // config.num_attention_heads * config.num_key_value_heads
    return {"attention q,o": (hidden, hidden, 2 * layers), "attention k,v": (kv, hidden, 2 * layers),
            "mlp gate,up": (inter, hidden, 2 * layers), "mlp down": (hidden, inter, layers),
            "lm_head": (config.vocab_size, hidden, 1)}


def int8_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int8pack_mm(x, packed, scales)


def relative_error(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor) -> float:
    """Largest difference between the fp32 and int8 products, relative to the largest output."""
    exact = F.linear(x, weight)
    return ((exact - int8_linear(x, packed, scales)).abs().max() / exact.abs().max()).item()


def per_step_ms(run, repeats: int) -> float:
    run()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - started) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(embedded_model_dir("smollm2-135m")))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-int8", action="store_true", help="leave out the (slow) int8 column")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"threads {torch.get_num_threads()}, batch {args.batch}; ms per decode step")
    print("| matrices | count | fp32 F.linear | fp32 packed (oneDNN) | int8 (_weight_int8pack_mm) | max rel. error |")
    print("|---|---|---|---|---|---|")
    totals = [0.0, 0.0, 0.0]
    for kind, (out_features, in_features, count) in shapes(AutoConfig.from_pretrained(args.model)).items():
        x = torch.randn(args.batch, in_features)
        weights = [torch.randn(out_features, in_features) / in_features**0.5 for _ in range(count)]
        layers = [torch.nn.Linear(in_features, out_features, bias=False) for _ in weights]
        for layer, w in zip(layers, weights):
            layer.weight.data = w
            pack_linear_weights(layer)
        scales = [w.abs().amax(1) / 127 for w in weights]
        packed = [(w / s[:, None]).round().to(torch.int8) for w, s in zip(weights, scales)]
        fp32 = per_step_ms(lambda: [F.linear(x, w) for w in weights], args.repeats)
        onednn = per_step_ms(lambda: [layer(x) for layer in layers], args.repeats)
        int8 = error = "-"
        if not args.skip_int8:
            ms = per_step_ms(lambda: [int8_linear(x, q, s) for q, s in zip(packed, scales)], args.repeats)
            totals[2] += ms
            int8 = f"{ms:.1f}"
            error = f"{max(relative_error(x, w, q, s) for w, q, s in zip(weights[:2], packed, scales)):.4f}"
        totals[0] += fp32
        totals[1] += onednn
        print(f"| {kind} ({out_features}x{in_features}) | {count} | {fp32:.1f} | {onednn:.1f} | {int8} | {error} |")
    print(f"| all | | {totals[0]:.1f} | {totals[1]:.1f} | {'-' if args.skip_int8 else f'{totals[2]:.1f}'} | |")


if __name__ == "__main__":
    main()
