"""export-model: a trained student as a standalone Hugging Face model directory.

What leaves the toolkit is what the field's tools take: LoRA merged into the base weights,
safetensors, the tokenizer with its chat template, a generation config that decodes as
`cotdistill eval` did (greedy, the method's stop strings), and a model card saying how the
student was made (method, teacher, data, training) and what it measured, read from the run's
store. `AutoModelForCausalLM.from_pretrained(DIR)`, `vllm serve DIR` and llama.cpp's
`convert_hf_to_gguf.py DIR` take the directory as it is.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from cotdistill.errors import CotdistillError, EnvironmentProblem
from cotdistill.methods import get_method
from cotdistill.models.embedded import ALIASES
from cotdistill.store import Store, student_dir
from cotdistill.tasks import Problem

DTYPES = ("float32", "bfloat16", "float16")


def export_model(run_dir: str | Path, student: str, out: str | Path, dtype: str = "float32",
                 max_new_tokens: int = 256, push_to_hub: str | None = None) -> dict[str, Any]:
    """Write student `student` of the run to `out` (a new or empty directory); returns what
    was written. `push_to_hub` uploads the directory to that Hugging Face repo as well."""
    if dtype not in DTYPES:
        raise CotdistillError(f"--dtype {dtype}: one of {', '.join(DTYPES)}")
    source, out = student_dir(run_dir, student), Path(out)
    if not (source / "cotdistill.json").is_file():
        raise CotdistillError(f"{source}: no trained student {student!r} in this run (train it first, "
                              "or see `cotdistill report` for the run's students)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CotdistillError(f"--out {out}: exists and is not an empty directory")
    trained = json.loads((source / "cotdistill.json").read_text())
    method = get_method(trained["method"])
    with Store(run_dir) as store:
        card = _card(store, student, source, trained)

    import torch

    from cotdistill.models import load_model

    model, tokenizer = load_model(str(source), device="cpu", dtype=getattr(torch, dtype))  # LoRA arrives merged
    config = model.generation_config
    config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
    config.max_new_tokens = max_new_tokens
    config.eos_token_id = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.stop_strings = list(method.stop) or None
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(card)
    written = {"out": str(out), "student": student, "method": method.name, "merged_lora": trained.get("lora", False),
               "dtype": dtype, "files": sorted(p.name for p in out.iterdir())}
    if push_to_hub:
        written["hub"] = _push(out, push_to_hub)
    return written


def _card(store: Store, student: str, source: Path, trained: dict[str, Any]) -> str:
    """The model card: how the student was made and every eval of it in this run."""
    run = store.run(f"train:{student}") or {"config": {}}
    config = run["config"]
    base = trained["student"]
    teachers = Counter(a.teacher for a in store.annotations(trained["method"], config.get("task")))
    evals = [r for r in store.runs("eval") if r["status"] == "done"
             and (r["config"].get("model_path") == str(source) or student in (r["config"].get("models") or {}).values())]
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation",
        f"base_model: {'HuggingFaceTB/SmolLM2-135M-Instruct' if base in ALIASES else base}",
        "tags: [cotdistill, distillation, reasoning]", "---", "",
        f"# {student}", "",
        f"A student distilled with cotdistill by method `{trained['method']}`"
        + (f" (roles {', '.join(trained['roles'])})" if trained.get("roles") else "") + ".", "",
        "## How it was made", "",
        f"- base model: `{base}`" + (" (the embedded SmolLM2-135M-Instruct, dequantized from a Q4_1 GGUF: "
                                      "a 4-bit-noised start, not the original bf16 weights)" if base in ALIASES else ""),
        "- teacher(s): " + (", ".join(f"`{t}` ({n} kept rationales)" for t, n in teachers.most_common()) or "unknown"),
        f"- data: task `{config.get('task') or 'all'}`, split `{config.get('split') or 'all'}`, "
        f"{trained['examples']} training examples",
        f"- training: objective `{trained['objective']}`, {'LoRA (merged here)' if trained['lora'] else 'full fine-tuning'}, "
        f"{trained['steps']} steps, {trained['seconds'] / 60:.1f} minutes, "
        f"loss {_fmt(trained.get('first_logged_loss'))} -> {_fmt(trained.get('last_logged_loss'))}",
        "", "## Measured in its run", "",
    ]
    if evals:
        lines += ["| eval | task | split | n | strict accuracy | 95% CI |", "|---|---|---|---|---|---|"]
        for r in evals:
            m, c = r["result"], r["config"]
            lines.append(f"| {r['name']} | {c['task']} | {c['split']} | {int(m['n'])} | "
                         f"{100 * m['accuracy_strict']:.1f}% | {100 * m['ci95_low']:.1f}-{100 * m['ci95_high']:.1f}% |")
    else:
        lines.append("No evaluation of this student was run in its run directory.")
    messages = get_method(trained["method"]).student_messages(Problem("example", "QUESTION", "", "number"))
    lines += ["", "## Use", "", "The prompt it was trained on (QUESTION is yours):", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'model = AutoModelForCausalLM.from_pretrained("DIR")',
              'tokenizer = AutoTokenizer.from_pretrained("DIR")',
              f"messages = {json.dumps(messages)}",
              "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt', "
              "return_dict=True)",
              "output = model.generate(**inputs, tokenizer=tokenizer)  # greedy, as evaluated",
              "print(tokenizer.decode(output[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))",
              "```", "",
              "The generation config decodes greedily with the method's stop strings, as `cotdistill eval` did. "
              "For serving: `vllm serve DIR`, then `cotdistill eval --model openai:DIR --base-url http://HOST:8000/v1`.", ""]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _push(out: Path, repo: str) -> str:
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        return api.upload_folder(repo_id=repo, folder_path=str(out)).commit_url
    except Exception as error:  # offline, no token, no rights: the directory is written either way
        raise EnvironmentProblem(f"--push-to-hub {repo}: {type(error).__name__}: {str(error).splitlines()[0]} "
                                 f"(the model is written to {out})") from None
