"""The teachers of on-policy distillation, one interface (`onpolicy.Teacher.score`):

- `LocalTeacher`: a Hugging Face model with the student's tokenizer, its whole vocabulary
  (white-box), made a chunk of positions at a time;
- `SelfTeacher`: the student itself shown a reference rationale in its prompt (the gold one
  or a teacher's from the store): self-distillation with privileged information, which needs
  no other model. With LoRA it is the frozen start (the base with its adapters disabled);
  a fully fine-tuned student teaches with its current weights, without gradient;
- `TextTeacher` (teachers/text in `align.py`): a model with another tokenizer, local or
  served over the OpenAI-compatible API, whose top-k on the text is aligned to the
  student's tokens.

`load_teacher` turns the `teacher` setting into one of them.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from cotdistill.errors import CotdistillError
from cotdistill.models.backends import served
from cotdistill.train.onpolicy import Rollouts, TeacherScores, all_positions, states_at


class LocalTeacher:
    """A local model with the student's tokenizer: the full distribution at every token."""

    def __init__(self, model: Any, pad_token_id: int):
        self.model, self.pad = model.eval().requires_grad_(False), pad_token_id

    def _context(self, student: Any) -> Any:
        return contextlib.nullcontext()

    def _model(self, student: Any) -> Any:
        return self.model

    def _prompts(self, rollouts: Rollouts) -> list[list[int]]:
        return rollouts.prompts

    def score(self, student: Any, rollouts: Rollouts) -> TeacherScores:
        model = self._model(student)
        device = next(model.parameters()).device
        rows, positions = all_positions(rollouts.completions, device)
        with torch.no_grad(), self._context(student):
            hidden = states_at(model, self._prompts(rollouts), rollouts.completions, rows, positions, self.pad)
        head = model.get_output_embeddings()

        def full(start: int, end: int) -> torch.Tensor:
            with torch.no_grad(), self._context(student):
                return torch.log_softmax(head(hidden[start:end]).float(), dim=-1)

        return TeacherScores(rows, positions, full=full)


class SelfTeacher(LocalTeacher):
    """The student, shown the rationale (`Rollouts.teacher_prompts`), teaching itself without it."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def _model(self, student: Any) -> Any:
        return student

    def _context(self, student: Any) -> Any:
        # the frozen start: LoRA adapters off; a fully fine-tuned student has none to disable
        return student.disable_adapter() if hasattr(student, "disable_adapter") else contextlib.nullcontext()

    def _prompts(self, rollouts: Rollouts) -> list[list[int]]:
        return rollouts.teacher_prompts


def load_teacher(spec: str | None, tokenizer: Any, device: str, api: dict[str, Any] | None = None) -> Any:
    """`self`, `openai:MODEL` (served), or a local model: with the student's tokenizer a
    white-box `LocalTeacher`, with another a `TextTeacher` aligned on the text."""
    if not spec:
        raise CotdistillError("objective on-policy needs --teacher-model: self (the student shown the rationale), "
                              "openai:MODEL (a served teacher) or a local model")
    if spec == "self":
        return SelfTeacher(tokenizer.pad_token_id)
    if served(spec):
        from cotdistill.train.align import TextTeacher

        return TextTeacher.served(spec, tokenizer, api or {})
    from cotdistill.models import load_model

    model, teacher_tokenizer = load_model(spec, device=device)
    if teacher_tokenizer.get_vocab() == tokenizer.get_vocab():
        return LocalTeacher(model, tokenizer.pad_token_id)
    from cotdistill.train.align import TextTeacher

    return TextTeacher.local(model, teacher_tokenizer, tokenizer)
