"""A teacher with another tokenizer, local or served: its top-k on the text, aligned to the
student's tokens on byte offsets.

Both tokenizations of the completion's UTF-8 bytes are cut into groups at the byte offsets
where both have a token boundary. A group of one student and one teacher token (the common
case: most words are one token in both) gets the teacher's top-k, each alternative mapped to
the student token with the same bytes; alternatives the student has no token for fall into
the tail bucket. A group where the two split differently (merged tokens, a multibyte
character split in two) has one probability both sides can state: the span's, the product
of its tokens' probabilities; each student token of the group is taught the teacher's span
log-probability split evenly (a geometric mean, so the student's product matches it), and
the group's first student token, whose distribution and the teacher's first token's both
predict the text from the same byte on, also gets the universal-logit (ULD, sorted
probabilities) term, which needs no shared vocabulary. Special tokens (BOS, end of turn)
have no bytes in the text, and tokens past the last shared boundary have no counterpart:
neither is scored. Written here: transformers and TRL align nothing across tokenizers
(trl #4562, #2215).
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cotdistill.models import render_prompt
from cotdistill.train.onpolicy import Rollouts, TeacherScores

DEFAULT_TOP_K = 20


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes)}


def token_bytes(tokenizer: Any) -> list[bytes]:
    """Each token id's bytes in the text (b"" for special tokens): byte-level BPE (GPT-2,
    Llama 3, SmolLM) and SentencePiece-style vocabularies (the "▁" space, <0xNN> byte fallback)."""
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    byte_level = decoder.get("type") == "ByteLevel" or any(
        d.get("type") == "ByteLevel" for d in decoder.get("decoders", []))
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    table = _byte_decoder() if byte_level else {}
    out = []
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if token_id in special or token is None:
            out.append(b"")
        elif byte_level:
            out.append(bytes(table[c] for c in token) if all(c in table for c in token) else token.encode())
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            out.append(bytes([int(token[3:5], 16)]))
        else:
            out.append(token.replace("▁", " ").encode())
    return out


@dataclass
class TextToken:
    """A teacher token on the completion text: its byte span, its log-prob, and its top-k
    alternatives as text pieces (bytes) with log-probs."""

    start: int
    end: int
    logprob: float
    top: dict[bytes, float] = field(default_factory=dict)


def spans(pieces: Sequence[bytes]) -> list[tuple[int, int]]:
    """Consecutive byte spans of token pieces."""
    out, at = [], 0
    for piece in pieces:
        out.append((at, at + len(piece)))
        at += len(piece)
    return out


def groups(student: Sequence[tuple[int, int]], teacher: Sequence[tuple[int, int]]) -> list[tuple[list[int], list[int]]]:
    """(student token indices, teacher token indices) per group between shared boundaries,
    both sides non-empty and starting at the same byte; tokens after the last shared boundary
    and empty student tokens belong to none."""
    shared = sorted({e for s, e in student if e > s} & {e for _, e in teacher})
    found: dict[int, tuple[list[int], list[int]]] = {}
    for side, items in ((0, student), (1, teacher)):
        for index, (start, end) in enumerate(items):
            if side == 0 and end == start:
                continue
            g = bisect.bisect_left(shared, end)
            if g < len(shared):
                found.setdefault(g, ([], []))[side].append(index)
    out = []
    for g in sorted(found):
        s_idx, t_idx = found[g]
        begin = shared[g - 1] if g else 0
        if s_idx and t_idx and student[s_idx[0]][0] == begin and min(teacher[i][0] for i in t_idx) == begin:
            out.append((s_idx, t_idx))
    return out


def completion_text(pieces: Sequence[bytes]) -> tuple[str, int]:
    """The completion's text and how many of its tokens it covers: up to the first token
    whose bytes do not complete valid UTF-8 with what follows (a sample cut mid-character)."""
    data = b"".join(pieces)
    try:
        return data.decode("utf-8"), len(pieces)
    except UnicodeDecodeError as error:
        valid = data[: error.start]
        ends = [e for _, e in spans(pieces)]
        return valid.decode("utf-8"), bisect.bisect_right(ends, len(valid))


class TextTeacher:
    """A teacher scored on the text: `score_text(rows)` gives, per row of (messages,
    completion text), its `TextToken`s; `score` aligns them to the student's tokens."""

    scores_text = True  # not special tokens (no bytes): the end of turn is learnt from the fixed sequences

    def __init__(self, student_tokenizer: Any, score_text: Any, top_k: int = DEFAULT_TOP_K):
        self.tokenizer, self.score_text, self.top_k = student_tokenizer, score_text, top_k
        self.pieces = token_bytes(student_tokenizer)
        self.by_bytes: dict[bytes, int] = {}
        for token_id in range(len(self.pieces) - 1, -1, -1):  # the lowest id wins a shared spelling
            if self.pieces[token_id]:
                self.by_bytes[self.pieces[token_id]] = token_id

    @classmethod
    def local(cls, model: Any, teacher_tokenizer: Any, student_tokenizer: Any,
              top_k: int = DEFAULT_TOP_K) -> TextTeacher:
        return cls(student_tokenizer, LocalTextScorer(model, teacher_tokenizer, top_k), top_k)

    @classmethod
    def served(cls, spec: str, student_tokenizer: Any, options: dict[str, Any]) -> TextTeacher:
        from cotdistill.models.backends import api_config

        options = {"top_logprobs": DEFAULT_TOP_K, **options}
        config = api_config(spec, options)
        return cls(student_tokenizer, ServedTextScorer(config, student_tokenizer), config.top_logprobs)

    def score(self, student: Any, rollouts: Rollouts) -> TeacherScores:
        texts, covered = [], []
        for completion in rollouts.completions:
            text, n = completion_text([self.pieces[i] for i in completion])
            texts.append(text)
            covered.append(n)
        scored = self.score_text(list(zip(rollouts.messages, texts)))
        rows: list[int] = []
        positions: list[int] = []
        entries: list[dict[int, float]] = []
        uld_rows: dict[int, list[float]] = {}
        for row, (completion, n, teacher) in enumerate(zip(rollouts.completions, covered, scored)):
            student_spans = spans([self.pieces[i] for i in completion[:n]])
            for s_idx, t_idx in groups(student_spans, [(t.start, t.end) for t in teacher]):
                if len(s_idx) == 1 and len(t_idx) == 1:
                    token = teacher[t_idx[0]]
                    mapped = {self.by_bytes[b]: lp for b, lp in token.top.items() if b in self.by_bytes}
                    mapped[completion[s_idx[0]]] = token.logprob
                    rows.append(row), positions.append(s_idx[0]), entries.append(mapped)
                    continue
                span = sum(teacher[i].logprob for i in t_idx) / len(s_idx)
                first = teacher[t_idx[0]]
                uld_rows[len(rows)] = sorted((math.exp(lp) for lp in first.top.values()), reverse=True)[: self.top_k]
                for j in s_idx:
                    rows.append(row), positions.append(j), entries.append({completion[j]: span})
        return self._scores(rows, positions, entries, uld_rows)

    def _scores(self, rows: list[int], positions: list[int], entries: list[dict[int, float]],
                uld_rows: dict[int, list[float]]) -> TeacherScores:
        k = max((len(e) for e in entries), default=1)
        ids = torch.zeros(len(entries), k, dtype=torch.long)
        logprobs = torch.full((len(entries), k), float("-inf"))
        for r, entry in enumerate(entries):
            ids[r, : len(entry)] = torch.tensor(list(entry))
            logprobs[r, : len(entry)] = torch.tensor(list(entry.values()))
        logprobs = logprobs.clamp(max=0.0)  # a server's rounding never makes a probability above 1
        width = max((len(v) for v in uld_rows.values()), default=0)
        uld = None
        if width:
            uld = torch.full((len(entries), width), float("nan"))
            for r, probs in uld_rows.items():
                if probs:
                    uld[r, : len(probs)] = torch.tensor(probs)
                    uld[r, len(probs):] = 0.0
        return TeacherScores(torch.tensor(rows, dtype=torch.long), torch.tensor(positions, dtype=torch.long),
                             ids=ids, logprobs=logprobs, uld=uld)


class LocalTextScorer:
    """A local model with its own tokenizer: its chat template around the messages, the
    completion text tokenized its way, and its top-k at every completion token."""

    def __init__(self, model: Any, tokenizer: Any, top_k: int):
        self.model, self.tokenizer, self.top_k = model.eval().requires_grad_(False), tokenizer, top_k
        self.pieces = token_bytes(tokenizer)

    @torch.no_grad()
    def __call__(self, rows: Sequence[tuple[Any, str]]) -> list[list[TextToken]]:
        from cotdistill.models import encode_prompt

        out = []
        for messages, text in rows:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            pieces = [self.pieces[i] for i in ids]
            if not ids or b"".join(pieces).lstrip(b" ") != text.encode().lstrip(b" "):
                out.append([])  # this tokenizer does not spell the text back byte for byte: nothing aligns
                continue
            shift = len(b"".join(pieces)) - len(text.encode())  # a SentencePiece dummy-prefix space
            prompt = encode_prompt(self.tokenizer, messages)
            logits = self.model(input_ids=torch.tensor([prompt + ids], device=self.model.device),
                                logits_to_keep=len(ids) + 1).logits[0, :-1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            top = logprobs.topk(min(self.top_k, logprobs.shape[-1]), dim=-1)
            tokens = []
            for j, (start, end) in enumerate(spans(pieces)):
                alternatives = {self.pieces[i]: float(v) for v, i in zip(top.values[j], top.indices[j].tolist())
                                if self.pieces[i]}
                tokens.append(TextToken(max(0, start - shift), max(0, end - shift), float(logprobs[j, ids[j]]),
                                        alternatives))
            out.append(tokens)
        return out


class ServedTextScorer:
    """A served teacher: the prompt (rendered with the student's chat template) and the
    completion sent to /v1/completions with `echo` and `logprobs`, the OpenAI legacy route
    that vLLM and llama-cpp-python both serve with the prompt's own log-probs."""

    def __init__(self, config: Any, tokenizer: Any):
        self.config, self.tokenizer = config, tokenizer

    def __call__(self, rows: Sequence[tuple[Any, str]]) -> list[list[TextToken]]:
        from cotdistill.models.openai_api import echo_logprobs

        prompts = [render_prompt(self.tokenizer, messages) for messages, _ in rows]
        replies = echo_logprobs(self.config, [p + text for p, (_, text) in zip(prompts, rows)])
        return [_served_tokens(reply, text) if text else [] for reply, (_, text) in zip(replies, rows)]


def _served_tokens(reply: dict[str, Any], text: str) -> list[TextToken]:
    """The completion's tokens from an echoed /v1/completions reply, with byte offsets in the
    completion. Servers count `text_offset` in their own detokenized text (llama-cpp-python
    leaves special tokens out of it), so the completion is located from the end: it is the
    last len(text) characters before the one token the server generated. A reply whose
    tokens there do not spell the text is not used (nothing of that row is scored)."""
    offsets, pieces = reply["text_offset"], reply["tokens"]
    end = offsets[-1]  # where the generated token begins: the end of the echoed text
    begin = end - len(text)
    chosen = [i for i in range(len(offsets) - 1) if begin <= offsets[i] < end]
    if not chosen or offsets[chosen[0]] != begin or "".join(pieces[i] for i in chosen) != text:
        return []
    byte_at = [0]
    for ch in text:
        byte_at.append(byte_at[-1] + len(ch.encode()))
    tokens = []
    for n, i in enumerate(chosen):
        stop = offsets[chosen[n + 1]] if n + 1 < len(chosen) else end
        top = {piece.encode(): lp for piece, lp in (reply["top_logprobs"][i] or {}).items() if piece}
        tokens.append(TextToken(byte_at[offsets[i] - begin], byte_at[stop - begin], reply["token_logprobs"][i], top))
    return tokens
