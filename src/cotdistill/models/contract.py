"""The one model contract, torch-free: what every backend is sent (`Messages`), what it
returns (`Completion`), and the protocol every model implements (a local transformers
model, an OpenAI-compatible server). Annotation, evaluation and pipelines talk to this
alone, so API-only work and `cotdistill methods` never import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string), "length", "error", or a server's reason (e.g. "content_filter")
    seconds: float  # this row's share of its batch's wall time
    cost: float = 0.0  # money, for priced API teachers
    logprobs: list[Any] | None = None  # [[token, logprob, [[top token, logprob], ...]], ...] when asked for
    failure: str | None = None  # why a request failed (finish_reason "error"): never an answer


class Backend(Protocol):
    """A model that answers batches of chat requests, in order, one completion each."""

    name: str

    def generate(self, requests: Sequence[Messages], max_new_tokens: int, temperature: float,
                 stop: Sequence[str], seed: int, progress: str | None = None) -> list[Completion]: ...

    def flops(self, tokens: int) -> float: ...
