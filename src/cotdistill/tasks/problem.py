"""The unit of data everything else passes around."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cotdistill.answers import AnswerKind


@dataclass(frozen=True)
class Problem:
    """One question with its gold answer.

    `gold` holds the task's own reference reasoning in structured form, so methods can be
    distilled from human annotations with no LLM: e.g. `solution` (text steps),
    `calculations` ([expression, value] pairs), `subquestions` ([question, step] pairs),
    `program` (Python that sets `answer`).

    `id` says where the problem is in its source (`jsonl-3`, SVAMP's `chal-1`), for people;
    `key` is what the store knows it by (see `key`).
    """

    id: str
    question: str
    answer: str
    kind: AnswerKind = "number"
    gold: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    repeat: int = 0  # earlier problems of its source with the very same content (a dataset's duplicate rows)

    @cached_property
    def key(self) -> str:
        """The problem's identity: a hash of its task and of everything anything reads from it
        (question, gold answer, answer kind, gold reasoning). Not its position: ids such as
        `jsonl-0` name a line of some file, and two files' line 0 are different problems, so
        keying by id let a second file's problems overwrite the first's under annotations made
        from the first. A content key cannot: an annotation, a training example or a
        prediction points at exactly the text it was made from, whichever files share a run.
        Not the file's hash either: the same problem read from a file that gained a line, or
        was reordered, is still the same problem, and its paid annotations and predictions
        still hold. `repeat` keeps a dataset's duplicate rows two problems, as they are
        counted."""
        content = [self.task, self.question, self.answer, self.kind, self.gold, self.repeat]
        # ensure_ascii: a lone surrogate in a question still hashes; default=str: any gold value does
        text = json.dumps(content, sort_keys=True, ensure_ascii=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]
