"""The teacher log-prob cache: a teacher's top-k at every token of a fixed (gold or teacher)
sequence, kept in the run's store, so the steps that learn from fixed sequences (on-policy's
1 - lmbda share; all of them at lmbda 0, which is supervised KD) ask a served or closed
teacher once per sequence, and a second run pays nothing.

Per scored token it keeps the position (uint32), k student token ids (int32, -1 pads), k
fp16 log-probs and the fp16 tail mass, plus, for a teacher with another tokenizer, its k
sorted fp16 probabilities where the ULD term applies: 6k + 6 bytes a token (126 at k = 20),
next to ~4 bytes per vocabulary entry for full logits (600 kB a token at 150k). A white-box
teacher is cached as its top-k, so its cached loss is the top-k + tail one.

Sequences are keyed by the teacher, k, and the exact prompt and completion tokens; what is
scored is stored batch by batch, so a killed run resumes with what it had paid for. An
`openai:` teacher's `max_tokens` / `max_cost` cap what the cache has sent in all (prompt
tokens estimated as the student's, which a teacher's tokenizer rarely exceeds by much):
a batch that would pass it stops the run before it is sent.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import torch

from cotdistill.errors import EnvironmentProblem
from cotdistill.store import Store, request_key
from cotdistill.train.onpolicy import Rollouts, TeacherScores

HEADER = struct.Struct("<III")  # tokens, k, ULD width


def encode(positions: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor, tail: torch.Tensor,
           uld: torch.Tensor | None) -> bytes:
    """One sequence's scored tokens as bytes (see the module)."""
    n, k = ids.shape
    width = uld.shape[1] if uld is not None else 0
    parts = [HEADER.pack(n, k, width), positions.numpy().astype("<u4").tobytes(),
             ids.masked_fill(~torch.isfinite(logprobs), -1).numpy().astype("<i4").tobytes(),
             logprobs.numpy().astype("<f2").tobytes(), tail.exp().numpy().astype("<f2").tobytes()]
    if uld is not None:
        parts.append(uld.numpy().astype("<f2").tobytes())
    return b"".join(parts)


def decode(blob: bytes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(positions, ids, log-probs with -inf where no entry, tail log-mass, ULD probs or None)."""
    n, k, width = HEADER.unpack_from(blob)
    at = HEADER.size

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal at
        array = np.frombuffer(blob, dtype=dtype, count=count, offset=at)
        at += array.nbytes
        return array

    positions = torch.from_numpy(take("<u4", n).astype(np.int64))
    ids = torch.from_numpy(take("<i4", n * k).astype(np.int64)).reshape(n, k)
    logprobs = torch.from_numpy(take("<f2", n * k).astype(np.float32)).reshape(n, k)
    logprobs = logprobs.masked_fill(ids < 0, float("-inf"))
    tail = torch.from_numpy(take("<f2", n).astype(np.float32)).log()
    uld = torch.from_numpy(take("<f2", n * width).astype(np.float32)).reshape(n, width) if width else None
    return positions, ids.clamp(min=0), logprobs, tail, uld


def _top_k(scores: TeacherScores, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scores as (ids, log-probs, tail log-mass) of at most k entries per token."""
    if scores.full is not None:
        full = scores.full(0, len(scores)).float()
        top = full.topk(min(k, full.shape[-1]), dim=-1)
        ids, logprobs = top.indices, top.values
    else:
        ids, logprobs = scores.ids, scores.logprobs.float()
    tail = scores.tail if scores.tail is not None else torch.log1p(
        -torch.logsumexp(logprobs, -1).exp().clamp(max=1.0))
    return ids.cpu(), logprobs.cpu(), tail.cpu()


class CachedTeacher:
    """A teacher whose scores of fixed sequences come from, and go to, the run's store."""

    def __init__(self, teacher: Any, store: Store, name: str, top_k: int, api: Any = None):
        self.teacher, self.store, self.name, self.top_k, self.api = teacher, store, name, top_k, api
        self.hits = self.misses = 0

    def _key(self, rollouts: Rollouts, row: int) -> str:
        return request_key("teacher-logprobs", self.name, self.top_k, rollouts.teacher_prompts[row],
                           rollouts.completions[row])

    def score(self, student: Any, rollouts: Rollouts) -> TeacherScores:
        keys = [self._key(rollouts, row) for row in range(len(rollouts.prompts))]
        cached = self.store.teacher_logprobs(keys)
        missing = [row for row, key in enumerate(keys) if key not in cached]
        self.hits, self.misses = self.hits + len(keys) - len(missing), self.misses + len(missing)
        if missing:
            cached.update(self._fill(student, rollouts, missing, [keys[r] for r in missing]))
        pieces = [decode(cached[key]) for key in keys]
        k = max(p[1].shape[1] for p in pieces)
        width = max((p[4].shape[1] for p in pieces if p[4] is not None), default=0)
        rows, positions, ids, logprobs, tails, ulds = [], [], [], [], [], []
        for row, (pos, i, lp, tail, uld) in enumerate(pieces):
            rows.append(torch.full((len(pos),), row, dtype=torch.long))
            positions.append(pos)
            ids.append(torch.nn.functional.pad(i, (0, k - i.shape[1])))
            logprobs.append(torch.nn.functional.pad(lp, (0, k - lp.shape[1]), value=float("-inf")))
            tails.append(tail)
            if width:
                u = uld if uld is not None else torch.full((len(pos), 1), float("nan"))
                ulds.append(torch.nn.functional.pad(u, (0, width - u.shape[1]), value=0.0))
        return TeacherScores(torch.cat(rows), torch.cat(positions), ids=torch.cat(ids), logprobs=torch.cat(logprobs),
                             tail=torch.cat(tails), uld=torch.cat(ulds) if width else None)

    def _fill(self, student: Any, rollouts: Rollouts, missing: list[int], keys: list[str]) -> dict[str, bytes]:
        sub = Rollouts(*([getattr(rollouts, f)[r] for r in missing] for f in
                         ("prompts", "completions", "teacher_prompts", "messages")))
        sent = [len(p) + len(c) for p, c in zip(sub.teacher_prompts, sub.completions)]
        costs = [self.api.cost(n, 1) if self.api else 0.0 for n in sent]
        if self.api is not None:
            spent = self.store.teacher_logprob_spend(self.name)
            over_tokens = self.api.max_tokens is not None and spent["prompt_tokens"] + sum(sent) > self.api.max_tokens
            over_cost = self.api.max_cost is not None and spent["cost"] + sum(costs) > self.api.max_cost
            if over_tokens or over_cost:
                raise EnvironmentProblem(
                    f"teacher {self.name}: scoring {len(sub.prompts)} more sequences would pass the budget "
                    f"(sent so far: {spent['prompt_tokens']} tokens, ${spent['cost']:.4f}); raise max_tokens/max_cost "
                    "in teacher_api and rerun to go on from the last checkpoint")
        scores = self.teacher.score(student, sub)
        ids, logprobs, tail = _top_k(scores, self.top_k)
        blobs, rows = {}, []
        for index, key in enumerate(keys):
            mine = scores.rows.cpu() == index
            uld = scores.uld[mine].cpu() if scores.uld is not None else None
            blob = encode(scores.positions.cpu()[mine], ids[mine], logprobs[mine], tail[mine], uld)
            blobs[key] = blob
            rows.append((key, int(mine.sum()), blob, sent[index], costs[index]))
        self.store.add_teacher_logprobs(self.name, rows)
        return blobs
