"""export: kept annotations as training data for other tools.

Formats follow TRL's dataset conventions, so `SFTTrainer` takes the files as they are:
- `prompt-completion`: JSONL of {"prompt": [messages], "completion": [assistant message]}
  (TRL's conversational prompt-completion; the loss falls on the completion only);
- `messages`: JSONL of {"messages": [..., assistant message]} (TRL's conversational);
- `dataset`: a Hugging Face `datasets` directory (`load_from_disk`) with the
  prompt-completion columns.
Every row also carries role, task, split, problem_id, problem_key (the problem's content key:
one per question, whichever file it came from), teacher and sample, so a multi-student method
(socratic `qg`/`qa`, dss `label`/`rationale`) can be split downstream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cotdistill.errors import CotdistillError
from cotdistill.methods import get_method, stored_examples
from cotdistill.store import Store

FORMATS = ("prompt-completion", "messages", "dataset")


def export(run_dir: str | Path, out: str | Path, method: str = "cot", format: str = "prompt-completion",
           task: str | None = None, split: str | None = None, roles: list[str] | None = None) -> dict[str, Any]:
    """Write the kept `method` annotations' training examples to `out`; returns the row count."""
    if format not in FORMATS:
        raise CotdistillError(f"unknown export format {format!r} (known: {', '.join(FORMATS)})")
    the_method = get_method(method)
    if format != "dataset" and Path(out).is_dir():
        raise CotdistillError(f"--out {out}: is a directory; give a .jsonl file path (a directory is for --format dataset)")
    store = Store(run_dir, create=False)  # an export reads: a mistyped --run-dir is an error, not a new run
    try:
        pairs = stored_examples(store, the_method, list(roles or the_method.roles), task, split)
    finally:
        store.close()
    rows = []
    for a, example in pairs:
        meta = {"role": example.role, "task": a.task, "split": a.split, "problem_id": a.problem_id,
                "problem_key": a.problem_key, "teacher": a.teacher, "sample": a.sample}
        completion = {"role": "assistant", "content": example.completion}
        if format == "messages":
            rows.append({"messages": [*example.messages, completion], **meta})
        else:
            rows.append({"prompt": example.messages, "completion": [completion], **meta})
    out = Path(out)
    if format == "dataset":
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(out))
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"rows": len(rows), "annotations": len({a.key for a, _ in pairs}), "path": str(out), "format": format}
