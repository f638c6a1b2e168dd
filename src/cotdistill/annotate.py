"""annotate: a teacher writes rationales for a task's problems; each is parsed, its answer
checked, and stored kept or rejected (with the reason).

Resumable by construction: every request is keyed by a hash of (teacher, method, prompt,
sampling, sample index); a rerun asks the store which keys exist and sends only the rest,
and results are committed chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cotdistill.errors import CotdistillError
from cotdistill.methods import get_method
from cotdistill.models import Completion, LocalModel
from cotdistill.store import Annotation, Store, request_key
from cotdistill.tasks import Problem, get_task

GOLD = "gold"


@dataclass(frozen=True)
class Request:
    key: str
    problem: Problem
    sample: int
    messages: list[dict[str, str]]


def annotate(
    run_dir: str | Path,
    task: str,
    data: str | Path | None = None,
    split: str = "train",
    limit: int | None = None,
    method: str = "cot",
    teacher: str = GOLD,
    samples: int = 1,
    temperature: float = 0.7,
    max_new_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 32,
    fields: dict[str, str] | None = None,
    options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Annotate `limit` problems with `samples` teacher replies each; returns kept/rejected counts.

    `teacher` is "gold" (the task's own reference rationales, replayed: no model needed) or
    any model name `LocalModel` accepts (the embedded alias, a local directory, a hub id).
    """
    if teacher == GOLD and samples != 1:
        raise CotdistillError("the gold teacher has one rationale per problem: use --samples 1")
    the_task = get_task(task, fields, options)
    the_method = get_method(method)
    problems = the_task.load(data, split, limit)
    store = Store(run_dir)
    store.add_problems(the_task.name, split, problems)
    sampling = {"temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed}
    requests = []
    for problem in problems:
        messages = the_method.teacher_messages(problem)
        for sample in range(samples):
            key = request_key(teacher, the_method.name, messages, sampling if teacher != GOLD else {}, sample)
            requests.append(Request(key, problem, sample, messages))
    done = store.annotation_keys(r.key for r in requests)
    pending = [r for r in requests if r.key not in done]
    model = LocalModel(teacher, batch_size=batch_size) if pending and teacher != GOLD else None
    chunk = max(batch_size, 1) * 4
    with tqdm(total=len(requests), initial=len(requests) - len(pending), desc=f"annotate {method}", unit="req") as bar:
        for start in range(0, len(pending), chunk):
            batch = pending[start : start + chunk]
            if model is None:
                completions = [_gold_completion(the_method, r.problem) for r in batch]
            else:
                completions = model.generate([r.messages for r in batch], max_new_tokens, temperature,
                                             the_method.stop, seed + start)
            store.add_annotations(_annotation(the_task.name, split, the_method, teacher, request, completion)
                                  for request, completion in zip(batch, completions))
            bar.update(len(batch))
    kept = len(store.annotations(the_method.name, the_task.name, split))
    summary = {"problems": len(problems), "requests": len(requests), "new": len(pending), "kept": kept,
               "rejected": store.rejection_reasons(the_method.name)}
    store.close()
    return summary


def _gold_completion(method: Any, problem: Problem) -> Completion:
    text = method.gold_rationale(problem)
    return Completion(text or "", 0, 0, "stop" if text else "missing", 0.0)


def _annotation(task: str, split: str, method: Any, teacher: str, request: Request, completion: Completion) -> Annotation:
    if completion.finish_reason == "missing":
        kept, reason, answer, fields = False, "task has no gold rationale for this method", None, {}
    elif completion.finish_reason == "length":
        kept, reason, answer, fields = False, "cut off at max_new_tokens", None, {}
    else:
        parsed = method.parse(completion.text, request.problem)
        kept, reason, answer, fields = parsed.kept, parsed.reason, parsed.answer, parsed.fields
    return Annotation(
        key=request.key, task=task, split=split, problem_id=request.problem.id, method=method.name,
        teacher=teacher, sample=request.sample, prompt=_prompt_text(request.messages), text=completion.text,
        parsed=fields, answer=answer, kept=kept, reason=reason,
        prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
    )


def _prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n\n".join(f"[{m['role']}] {m['content']}" for m in messages)
