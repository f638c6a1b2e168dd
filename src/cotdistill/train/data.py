"""Training data: examples -> token ids with exact completion-only labels, padded batches,
teacher top-k distributions aligned to the student's tokens, and batches of one format.

Prompt and completion are tokenized separately (rather than searching the joint string for
a response template), so the mask is exact. Features are plain dicts in a list: paired
tasks (multitask) and ragged teacher distributions (kd) need no Arrow schema.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from cotdistill.errors import CotdistillError
from cotdistill.methods import Example
from cotdistill.models import Messages, encode_prompt, render_completion
from cotdistill.models.local import cut_text


def tokenize_example(tokenizer: Any, messages: Messages, completion: str, seq2seq: bool = False) -> dict[str, Any]:
    """input_ids and labels (-100 where no loss is taken), uncut. Causal: one sequence, prompt
    masked. Seq2seq: the prompt is the encoder's input, the completion (+ EOS) the decoder's
    labels (`fit_example` holds each side within max_length)."""
    prompt_ids = encode_prompt(tokenizer, messages)  # exactly what generation is prompted with
    if seq2seq:
        labels = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return {"input_ids": prompt_ids, "labels": labels, "length": len(prompt_ids) + len(labels),
                "completion_start": 0}
    completion_ids = tokenizer(render_completion(tokenizer, messages, completion), add_special_tokens=False)["input_ids"]
    return {"input_ids": prompt_ids + completion_ids, "labels": [-100] * len(prompt_ids) + completion_ids,
            "length": len(prompt_ids) + len(completion_ids), "completion_start": len(prompt_ids)}


def fit_example(tokenizer: Any, example: Example, max_length: int,
                seq2seq: bool = False) -> tuple[dict[str, Any] | None, int]:
    """The example tokenized within `max_length`, and how many demonstrations it dropped.

    Nothing is ever cut from the end: a cut causal sequence loses its target (a few-shot
    prompt of 4 GSM8K demonstrations fills 512 tokens before the target starts) and a cut
    target teaches a reply that never reaches its answer. An example too long drops its
    in-context demonstrations, farthest from the question first, until it fits; one that
    does not fit without any is returned as None, for the caller to refuse with a count."""
    messages, completion = _bounded(tokenizer, example, max_length)
    for dropped in range(example.demonstrations + 1):
        feature = tokenize_example(tokenizer, messages[2 * dropped:], completion, seq2seq)
        if _needs(feature) <= max_length:
            return feature, dropped
    return None, example.demonstrations


def _bounded(tokenizer: Any, example: Example, max_length: int) -> tuple[Messages, str]:
    """Each text cut by characters before it is tokenized (a 50 MB line would otherwise cost
    gigabytes to tokenize): a text past the cut holds more than max_length tokens, so the
    cut changes no example that fits, only the work of finding out that one does not."""
    messages = [{**m, "content": cut_text(tokenizer, m["content"], max_length)} for m in example.messages]
    return messages, cut_text(tokenizer, example.completion, max_length)


def _needs(feature: dict[str, Any]) -> int:
    """The max_length an example needs: its sequence (causal), its longer side (seq2seq)."""
    return max(len(feature["input_ids"]), len(feature["labels"]))


def fit_examples(tokenizer: Any, examples: Sequence[Example], max_length: int,
                 seq2seq: bool = False) -> tuple[list[dict[str, Any]], int]:
    """Every example fitted (see `fit_example`), and how many dropped demonstrations to fit;
    if any cannot fit, one error with their count and the length that would hold them all."""
    features, shortened, too_long = [], 0, []
    for example in examples:
        feature, dropped = fit_example(tokenizer, example, max_length, seq2seq)
        if feature is None:
            messages, completion = _bounded(tokenizer, example, max_length)
            too_long.append(_needs(tokenize_example(tokenizer, messages[2 * example.demonstrations:], completion,
                                                    seq2seq)))
            continue
        features.append(feature)
        shortened += dropped > 0
    if too_long:
        raise CotdistillError(
            f"{len(too_long)} of {len(examples)} training examples do not fit max_length={max_length} tokens even "
            f"without demonstrations (the longest needs {max(too_long)}); examples are never cut, since a cut one "
            f"loses its target: raise max_length to {max(too_long)}, or train on shorter rationales")
    return features, shortened


def _pad(rows: Sequence[Sequence[Any]], fill: Any) -> list[list[Any]]:
    width = max(len(r) for r in rows)
    return [list(r) + [fill] * (width - len(r)) for r in rows]


class Collator:
    """Right-pads a batch to its longest example; padding never counts in the loss.
    Features of an objective with `tasks` ({task: feature, ...}) become one padded batch per
    task; teacher distributions become [batch, labels, k] tensors aligned with `labels`; the
    objective's declared `fields` come through as one list per field."""

    def __init__(self, pad_token_id: int, fields: Sequence[str] = (), tasks: Sequence[str] = ()):
        self.pad_token_id = pad_token_id
        self.fields = tuple(fields)  # the objective's own per-example fields, passed through as lists
        self.tasks = tuple(tasks)  # the objective's tasks, when an item holds one example of each

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if self.tasks:
            return {task: self.batch([f[task] for f in features]) for task in self.tasks}
        return self.batch(features)

    def batch(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """One padded batch of single examples."""
        batch: dict[str, Any] = {
            "input_ids": torch.tensor(_pad([f["input_ids"] for f in features], self.pad_token_id)),
            "attention_mask": torch.tensor(_pad([[1] * len(f["input_ids"]) for f in features], 0)),
            "labels": torch.tensor(_pad([f["labels"] for f in features], -100)),
        }
        if "kd_positions" in features[0]:
            batch["kd_ids"], batch["kd_logprobs"] = _teacher_tensors(features, batch["labels"].shape[1])
        batch.update({name: [f[name] for f in features] for name in self.fields})
        return batch


def _teacher_tensors(features: Sequence[dict[str, Any]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[batch, width, k] token ids and log-probs; -inf log-prob marks "no teacher entry"."""
    k = max((len(ids) for f in features for ids in f["kd_ids"]), default=1)
    ids = torch.zeros(len(features), width, k, dtype=torch.long)
    logprobs = torch.full((len(features), width, k), float("-inf"))
    for row, f in enumerate(features):
        for position, top_ids, top_logprobs in zip(f["kd_positions"], f["kd_ids"], f["kd_logprobs"]):
            if position < width:
                ids[row, position, : len(top_ids)] = torch.tensor(top_ids)
                logprobs[row, position, : len(top_logprobs)] = torch.tensor(top_logprobs)
    return ids, logprobs


class TokenMap:
    """Teacher token strings -> student token ids. API teachers return decoded text pieces
    (" the"), local ones vocabulary entries ("Ġthe"); both are looked up."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.vocab = tokenizer.get_vocab()
        self.decoded: dict[str, int] = {}
        for token_id in sorted(self.vocab.values(), reverse=True):  # the lowest id wins a shared spelling
            self.decoded[tokenizer.decode([token_id])] = token_id

    def __call__(self, token: str) -> int | None:
        return self.vocab.get(token, self.decoded.get(token))


def align_teacher(token_map: TokenMap, logprobs: list[Any], completion_ids: Sequence[int]) -> list[tuple[list[int], list[float]]]:
    """The teacher's top-k (ids, log-probs) for the leading completion tokens the teacher wrote
    the same way; alignment stops at the first token that differs (e.g. where the target was
    cut after its answer, or at the chat template's end-of-turn)."""
    aligned = []
    for (token, _, top), student_id in zip(logprobs, completion_ids):
        if token_map(token) != student_id:
            break
        pairs = [(token_map(t), lp) for t, lp in top]
        pairs = [(i, lp) for i, lp in pairs if i is not None]
        aligned.append(([i for i, _ in pairs], [lp for _, lp in pairs]))
    return aligned


def add_teacher_distribution(feature: dict[str, Any], token_map: TokenMap, logprobs: list[Any] | None) -> int:
    """Attach the aligned teacher top-k to a tokenized example; returns how many tokens aligned."""
    start = feature["completion_start"]
    aligned = align_teacher(token_map, logprobs or [], feature["labels"][start:]) if logprobs else []
    feature["kd_positions"] = [start + j for j in range(len(aligned))]
    feature["kd_ids"] = [ids for ids, _ in aligned]
    feature["kd_logprobs"] = [lps for _, lps in aligned]
    return len(aligned)


def check_teacher_tokens(token_map: TokenMap, annotations_logprobs: Sequence[list[Any] | None], source: str) -> None:
    """Refuse KD against a teacher whose tokens are not the student's: tokens the student lacks,
    or replies the student's tokenizer would split otherwise (e.g. a smaller merge table)."""
    replies = [logprobs for logprobs in annotations_logprobs if logprobs][:200]
    if not replies:
        raise CotdistillError(f"{source}: the kept annotations carry no teacher log-probs; annotate with "
                              "--top-logprobs K from a teacher that returns them, or pass --kd-teacher MODEL (white-box)")
    advice = ("distribution matching needs one tokenizer: pick a student of the teacher's family, "
              "or train with --objective sft")
    tokens = [entry[0] for logprobs in replies for entry in logprobs]
    missing = [t for t in tokens if token_map(t) is None]
    if len(missing) > 0.01 * len(tokens):
        raise CotdistillError(f"{source}: the teacher's tokenizer differs from the student's ({len(missing)} of "
                              f"{len(tokens)} teacher tokens, e.g. {missing[0]!r}, are not student tokens); {advice}")
    tokenizer = token_map.tokenizer
    split_alike = 0
    for logprobs in replies:
        ids = [token_map(entry[0]) for entry in logprobs]
        split_alike += tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"] == ids
    if split_alike < 0.5 * len(replies):
        raise CotdistillError(f"{source}: the teacher's tokenizer differs from the student's (only {split_alike} of "
                              f"{len(replies)} teacher replies are split into the tokens the student would use); {advice}")


class FormatBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches that share one format (model specialization mixes formats one per batch).
    Within a format, batches come from length-sorted windows, so they waste little padding;
    batch order is shuffled, seeded by epoch, so a resumed run sees the batches an
    uninterrupted one would."""

    def __init__(self, groups: Sequence[int], lengths: Sequence[int], batch_size: int, seed: int):
        self.groups, self.lengths, self.batch_size, self.seed = list(groups), list(lengths), batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        batches = []
        for group in sorted(set(self.groups)):
            members = [i for i, g in enumerate(self.groups) if g == group]
            rng.shuffle(members)
            window = self.batch_size * 50
            for start in range(0, len(members), window):
                chunk = sorted(members[start : start + window], key=lambda i: -self.lengths[i])
                batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return sum(-(-self.groups.count(g) // self.batch_size) for g in set(self.groups))
