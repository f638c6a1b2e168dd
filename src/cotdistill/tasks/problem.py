"""The unit of data everything else passes around."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cotdistill.answers import AnswerKind


@dataclass(frozen=True)
class Problem:
    """One question with its gold answer.

    `gold` holds the task's own reference reasoning in structured form, so methods can be
    distilled from human annotations with no LLM: e.g. `solution` (text steps),
    `calculations` ([expression, value] pairs), `subquestions` ([question, step] pairs),
    `program` (Python that sets `answer`).
    """

    id: str
    question: str
    answer: str
    kind: AnswerKind = "number"
    gold: dict[str, Any] = field(default_factory=dict)
