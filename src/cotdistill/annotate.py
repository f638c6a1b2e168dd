"""annotate: a teacher writes rationales for a task's problems; each is parsed, its answer
checked, and stored kept or rejected (with the reason).

Resumable by construction: every request is keyed by a hash of the problem's content key and
(teacher, method, prompt, sampling, sample index); a rerun asks the store which keys exist and sends only the rest.
Results are committed every few dozen rows or half second (by a writer thread), so a
crash or kill -9 loses at most the requests in flight, which the next run sends again. A request that fails
every retry, or that the server refuses (4xx), is not stored: it stays pending, never
recorded as done. Refusals are counted in the summary with the first one's message; requests
that failed every retry (a server down or failing) end the command with exit code 1 and
the first failure's reason, so a recipe stops there.

A weak teacher should not be a black box: the progress bar shows kept and rejected replies
and each retry's cause as they happen; wrong replies that state a few-shot demonstration's
answer are counted (a base model copying its examples); the summary's `warnings` say when
most replies were cut at the token limit, many copied a demonstration, or none was kept,
with what to change. `cotdistill annotations` lists the replies and their reasons.

Teachers: `gold` (the task's own reference reasoning, replayed through the same parser),
`openai:MODEL` (any OpenAI-compatible server), or a local model (the embedded alias, a
directory, a hub id).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cotdistill.answers import normalize
from cotdistill.config import GOLD, AnnotateConfig, configure
from cotdistill.errors import CotdistillError, EnvironmentProblem
from cotdistill.methods import Method, get_method
from cotdistill.methods.base import check_answer
from cotdistill.models import Completion, Messages
from cotdistill.models.backends import api_config, load_backend, served
from cotdistill.models.openai_api import APIConfig, Budget, OpenAITeacher
from cotdistill.sandbox import require_sandbox
from cotdistill.store import Annotation, Store, model_in_run, request_key
from cotdistill.tasks import Problem, get_task

FLUSH_ROWS, FLUSH_SECONDS = 64, 0.5
CUT_OFF = "cut off at max_new_tokens"


@dataclass(frozen=True)
class Request:
    key: str
    problem: Problem
    sample: int
    messages: Messages


def annotate(run_dir: str | Path, config: AnnotateConfig | str | None = None, *, status: bool = False,
             **settings: Any) -> dict[str, Any]:
    """Have the teacher write `samples` rationales for each problem; returns counts and spend.

    `config` is an AnnotateConfig or a task name, and `settings` set its fields, so
    `annotate(run, "gsm8k", method="pot", teacher="openai:gpt-4o-mini")` reads as the CLI does.
    `status` only reports done / pending / spend.
    """
    c = configure(AnnotateConfig, "annotate", config, settings)
    the_task = get_task(c.task, c.fields, c.options)
    the_method = get_method(c.method, c.prompts)
    if c.verify_with and not the_method.solver_verifies:
        raise CotdistillError(f"--verify-with filters decompositions; method {c.method} has no solver stage")
    if c.verify_with == GOLD and c.teacher != GOLD:
        raise CotdistillError(f"--verify-with gold screens nothing (the gold solution reaches the answer whatever the "
                              f"decomposition): screen {c.teacher}'s decompositions with --verify-with {c.teacher}")
    if c.api and not any(served(name) for name in (c.teacher, c.verify_with or "")):
        raise CotdistillError(f"API options ({', '.join(c.api)}) apply to openai:MODEL teachers, not {c.teacher!r}")
    api = api_config(c.teacher, c.api)
    if the_method.runs_programs and not status:  # a sandbox that cannot run stops here, storing nothing
        require_sandbox(model_written=c.teacher != GOLD, accept_weak=c.weak_sandbox)
    problems = the_task.load(c.data, c.split, c.limit)
    sampling: dict[str, Any] = {} if c.teacher == GOLD else {
        "temperature": c.temperature, "max_new_tokens": c.max_new_tokens, "seed": c.seed}
    if api and api.top_logprobs:
        sampling["top_logprobs"] = api.top_logprobs
    # A request is what was asked (teacher, prompt, sampling, sample) for one problem exactly: its
    # verdict (kept, the answer's check) and a gold teacher's text depend on the problem, not the prompt.
    requests = [Request(request_key(problem.key, request_key(c.teacher, the_method.name, messages, sampling, sample)),
                        problem, sample, messages)
                for problem in problems for messages in [the_method.teacher_messages(problem)]
                for sample in range(c.samples)]
    keys = [r.key for r in requests]
    with Store(run_dir) as store:
        store.add_problems(problems)
        # A paid teacher's job is held by one process at a time (pending is read inside the lease,
        # and everything is written before it is let go): two would pay twice for the same requests.
        paid = api is not None and not status
        with store.lease(f"annotate {c.method} with {c.teacher}", "a second run would pay for the same requests "
                         "again: wait for it to finish, then rerun to send what it left") if paid else nullcontext():
            done = store.annotation_keys(keys)
            pending = [r for r in requests if r.key not in done]
            result: dict[str, Any] = {}
            if pending and not status:
                with tqdm(total=len(requests), initial=len(done), desc=f"annotate {c.method}", unit="req") as bar:
                    writer = _Writer(store, the_task.name, c.split, the_method, c.teacher, bar)
                    writer.count(store.annotation_status(keys))
                    try:  # what finished is stored even when the run is interrupted
                        result = _ask(c, api, the_method, pending, writer, store.annotation_spend(keys))
                    finally:
                        writer.close()
                    result["copied_a_demonstration"] = writer.copied
        # verify_with=gold (the paper's filter with the gold teacher as its solver) passes every
        # gold decomposition: the task's own solution reaches the oracle answer by construction
        if c.verify_with and c.verify_with != GOLD and not status:
            solver = model_in_run(run_dir, c.verify_with)
            solver = load_backend(solver, c.api if served(solver) else {"batch_size": c.batch_size})
            result["verified"] = _verify(store, the_method, requests, solver, c.max_new_tokens)
        summary = {"problems": len(problems), "requests": len(requests), "new": 0 if status else len(pending),
                   **store.annotation_status(keys), **result}
    summary["warnings"] = _warnings(summary, c, run_dir) + summary.pop("warnings", [])
    for warning in summary["warnings"] if not status else []:
        print(f"warning: {warning}", file=sys.stderr)
    if result.get("failed"):  # stored as nothing: a recipe must not go on as if they had been answered
        raise EnvironmentProblem(f"annotate: {result['failed']} of {len(pending)} requests failed "
                                 f"({result.get('first_failure')}); {summary['done']} of {len(requests)} are done and "
                                 "stored: run the same command again to send the rest")
    return summary


def _warnings(summary: dict[str, Any], c: AnnotateConfig, run_dir: str | Path) -> list[str]:
    """What the replies so far say about the teacher, and what to change: most cut at the
    token limit, many copying a demonstration, few or none kept."""
    done, reasons = summary["done"], summary["rejected_by_reason"]
    warnings = []
    cut, copied = reasons.get(CUT_OFF, 0), summary.get("copied_a_demonstration", 0)
    if done and cut > done / 2:
        warnings.append(f"{cut} of {done} replies were cut off at max_new_tokens ({c.max_new_tokens}): raise it, or, "
                        "for a base model that runs on past its answer, give --stop strings or --endpoint completions")
    if copied >= max(2, summary["new"] / 5):
        warnings.append(f"{copied} of {summary['new']} new replies gave a few-shot demonstration's answer, wrong here: "
                        "the teacher copies its examples (a base model?); try a stronger or instruction-tuned teacher")
    if done >= 10 and summary["kept"] < done / 10 or done and not summary["kept"]:
        top = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items(), key=lambda item: -item[1])[:3])
        warnings.append(f"only {summary['kept']} of {done} replies were kept ({top}): a teacher this weak teaches "
                        f"little; see `cotdistill annotations -r {run_dir} --rejected`")
    return warnings


def _ask(c: AnnotateConfig, api: APIConfig | None, method: Method, pending: Sequence[Request], writer: _Writer,
         spent: dict[str, Any]) -> dict[str, Any]:
    """Send the pending requests to the teacher (the dataset's gold rationales, a server, or
    a local model), handing each completion to the writer as it finishes; returns what the
    summary adds (failures, retries, budget)."""
    if c.teacher == GOLD:
        for request in pending:
            writer.add(request, _gold_completion(method, request.problem))
        return {}
    stop = [*method.stop, *(c.stop or [])]
    if api is not None:
        budget = Budget(api, spent["cost"], spent["prompt_tokens"] + spent["completion_tokens"])
        backend = OpenAITeacher(api, on_retry=lambda cause: writer.show())
        writer.retries = backend.retry_causes  # shown live beside kept / rejected
        counts = backend.run([(r.messages, c.seed + r.sample) for r in pending], c.max_new_tokens, c.temperature,
                             stop, budget, lambda i, completion: writer.add(pending[i], completion))
        result = {"failed": counts["failed"], "refused": counts["refused"], "retries": backend.retries,
                  "retry_causes": dict(backend.retry_causes), "stopped_by_budget": budget.exhausted,
                  "not_sent": counts["skipped"]}
        if backend.retry_hint():
            result["warnings"] = [backend.retry_hint()]
        if backend.refusal:
            result["first_refusal"] = backend.refusal
        if backend.failure:
            result["first_failure"] = backend.failure
        return result
    model = load_backend(c.teacher, {"batch_size": c.batch_size})  # a local model
    chunk = c.batch_size * 4
    for start in range(0, len(pending), chunk):
        batch = pending[start : start + chunk]
        completions = model.generate([r.messages for r in batch], c.max_new_tokens, c.temperature, stop,
                                     c.seed + start)
        for request, completion in zip(batch, completions):
            writer.add(request, completion)
    return {}


class _Writer:
    """Parses finished requests and commits them in small batches (by count or by time) on
    its own thread, so parsing (PoT runs programs) and SQLite never stall the requests."""

    def __init__(self, store: Store, task: str, split: str, method: Method, teacher: str, bar: Any):
        self.store, self.task, self.split, self.method, self.teacher, self.bar = store, task, split, method, teacher, bar
        self.queue: queue.Queue[tuple[Request, Completion] | None] = queue.Queue()
        self.error: BaseException | None = None
        self.kept = self.rejected = 0
        self.copied = 0  # wrong replies of this run that state a demonstration's answer
        self.retries: Counter[str] = Counter()  # a server teacher's retry causes
        self._demo_answers: set[str] | None = None
        self.thread = threading.Thread(target=self._run, name="annotation-writer", daemon=True)
        self.thread.start()

    def add(self, request: Request, completion: Completion) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((request, completion))

    def count(self, status: dict[str, Any]) -> None:
        """Start the kept / rejected counts from what earlier runs stored."""
        self.kept, self.rejected = status["kept"], status["rejected"]
        self.show()

    def show(self) -> None:
        """kept / rejected and the retry causes so far, on the progress bar (tqdm redraws it at
        its own pace). Called from the writer and the client threads: list() copies the
        counter in one step."""
        retries = ", ".join(f"{cause} x{n}" for cause, n in list(self.retries.items()))
        self.bar.set_postfix_str(f"kept {self.kept}, rejected {self.rejected}" + (f", retries: {retries}" if retries else ""),
                                 refresh=False)

    def close(self) -> None:
        """Write what is queued and stop; re-raises a failure of the writer thread."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        done = False
        while not done:
            batch: list[tuple[Request, Completion]] = []
            deadline = time.monotonic() + FLUSH_SECONDS
            while len(batch) < FLUSH_ROWS:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()) if batch else None)
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                batch.append(item)
            try:
                self._write(batch)
            except BaseException as error:  # handed to the main thread by add() / close()
                self.error = error
                return

    def _write(self, batch: list[tuple[Request, Completion]]) -> None:
        if not batch:
            return
        parseable = [i for i, (_, c) in enumerate(batch) if _failure(c) is None]
        parsed = dict(zip(parseable, self.method.parse_many([batch[i][1].text for i in parseable],
                                                            [batch[i][0].problem for i in parseable])))
        rows = []
        for i, (request, completion) in enumerate(batch):
            outcome = parsed.get(i)
            if outcome and outcome.reason == "wrong answer" and outcome.answer is not None \
                    and normalize(outcome.answer, request.problem.kind) in self._demonstration_answers(request.problem):
                self.copied += 1
            rows.append(Annotation(
                key=request.key, task=self.task, split=self.split, problem_id=request.problem.id,
                problem_key=request.problem.key,
                method=self.method.name, teacher=self.teacher, sample=request.sample,
                prompt=_prompt_text(request.messages), text=completion.text,
                parsed=outcome.fields if outcome else {}, answer=outcome.answer if outcome else None,
                kept=bool(outcome and outcome.kept), reason=outcome.reason if outcome else _failure(completion) or "",
                prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
                cost=completion.cost, finish_reason=completion.finish_reason, logprobs=completion.logprobs,
            ))
        self.store.add_annotations(rows)
        kept = sum(row.kept for row in rows)
        self.kept, self.rejected = self.kept + kept, self.rejected + len(rows) - kept
        self.show()
        self.bar.update(len(rows))

    def _demonstration_answers(self, problem: Problem) -> set[str]:
        """The answers the method's few-shot demonstrations state (a teacher that copies its
        examples gives one of them), read by the method's own parser: once per run."""
        if self._demo_answers is None:
            demos = self.method.prompts.demonstrations if self.teacher != GOLD else ()
            parsed = self.method.parse_many([reply for _, reply in demos],
                                            [Problem(f"demo{i}", question, "", problem.kind) for i, (question, _) in enumerate(demos)])
            self._demo_answers = {normalize(p.answer, problem.kind) for p in parsed if p.answer is not None}
        return self._demo_answers


def _failure(completion: Completion) -> str | None:
    """Why a completion cannot be parsed at all, or None."""
    reason = completion.finish_reason
    if reason == "missing":
        return "task has no gold rationale for this method"
    if reason == "length":
        return CUT_OFF
    if reason == "content_filter":
        return "blocked by the teacher's content filter"
    return None


def _gold_completion(method: Method, problem: Problem) -> Completion:
    text = method.gold_rationale(problem)
    return Completion(text or "", 0, 0, "stop" if text else "missing", 0.0)


def _prompt_text(messages: Messages) -> str:
    return "\n\n".join(f"[{m['role']}] {m['content']}" for m in messages)


def _verify(store: Store, method: Any, requests: Sequence[Request], solver: Any, max_new_tokens: int) -> int:
    """Divide-or-Conquer's rejection filter: a solver answers each kept, unverified
    decomposition; it stays kept only if the solver reaches the gold answer, and the
    solver's solution is stored for training a solver student; its tokens and cost join the
    row's. Resumable: verified rows carry `verified_by`."""
    by_key = {r.key: r for r in requests}
    todo = [a for a in store.annotations_by_key(list(by_key)) if a.kept and a.parsed.get("verified_by") != solver.name]
    if not todo:
        return 0
    jobs = [method.solver_messages(by_key[a.key].problem, a.parsed) for a in todo]
    updates = []
    for annotation, completion in zip(todo, solver.generate(jobs, max_new_tokens, 0.0, method.stop, 0)):
        if completion.finish_reason == "error":
            continue  # the solver request failed: stays unverified for the next run
        check = check_answer(completion.text, by_key[annotation.key].problem, {})
        fields = {**annotation.parsed, "verified_by": solver.name,
                  "solution": completion.text if check.kept else None}
        reason = "ok" if check.kept else f"solver {solver.name} missed the gold answer with it ({check.reason})"
        updates.append((annotation.key, fields, check.kept, reason, completion))
    store.update_annotations(updates)
    return len(updates)
