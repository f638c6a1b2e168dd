"""The teacher log-prob cache: compact rows that decode to what the teacher said, a second
pass (and a second run) that asks the teacher nothing, and the budget that stops before it
is passed."""

import json

import pytest
import torch

from cotdistill.errors import EnvironmentProblem
from cotdistill.models import load_model
from cotdistill.models.openai_api import APIConfig
from cotdistill.store import Store
from cotdistill.train.cache import CachedTeacher, decode, encode
from cotdistill.train.onpolicy import chunked_loss, states_at
from cotdistill.train.teachers import LocalTeacher
from test_onpolicy_align import _rollouts  # the same three arithmetic rollouts

QUIET = dict(report_to="none", disable_tqdm=True)


class CountingTeacher(LocalTeacher):
    """A real local teacher that counts the sequences it is asked to score."""

    scored = 0

    def score(self, student, rollouts):
        self.scored += len(rollouts.prompts)
        return super().score(student, rollouts)


def test_a_row_round_trips_in_6k_plus_6_bytes_a_token():
    ids = torch.tensor([[5, 7, 0], [1, 2, 3]])
    logprobs = torch.tensor([[-0.5, -1.25, float("-inf")], [-0.1, -3.0, -4.0]])
    tail = torch.log(torch.tensor([0.1, 0.02]))
    blob = encode(torch.tensor([0, 1]), ids, logprobs, tail, None)
    assert len(blob) == 12 + 2 * (6 * 3 + 6)
    positions, ids2, logprobs2, tail2, uld = decode(blob)
    assert positions.tolist() == [0, 1] and uld is None
    assert torch.equal(ids2[1], ids[1]) and torch.isinf(logprobs2[0, 2])
    assert torch.allclose(logprobs2[torch.isfinite(logprobs2)], logprobs[torch.isfinite(logprobs)], atol=2e-3)
    assert torch.allclose(tail2.exp(), tail.exp(), rtol=1e-3)


def test_the_cache_asks_the_teacher_once_and_gives_its_top_k(tmp_path, tiny_model):
    student, tokenizer = load_model(str(tiny_model))
    model, _ = load_model(str(tiny_model))
    torch.nn.init.normal_(model.model.layers[0].mlp.up_proj.weight, std=0.5)
    teacher = CountingTeacher(model, tokenizer.pad_token_id)
    rollouts = _rollouts(tokenizer)
    with Store(tmp_path) as store:
        cache = CachedTeacher(teacher, store, "tiny", top_k=len(tokenizer))
        first = cache.score(student, rollouts)
        second = cache.score(student, rollouts)
        spent = store.teacher_logprob_spend("tiny")
    assert teacher.scored == 3 and (cache.hits, cache.misses) == (3, 3)
    assert spent["sequences"] == 3 and spent["tokens"] == sum(map(len, rollouts.completions))
    white = teacher.score(student, rollouts)
    losses = []
    for scores in (white, first, second):
        hidden = states_at(student, rollouts.prompts, rollouts.completions, scores.rows, scores.positions,
                           tokenizer.pad_token_id)
        losses.append(chunked_loss(hidden, student.get_output_embeddings(), scores, 0.5, 16).item())
    assert losses[1] == losses[2] and losses[1] == pytest.approx(losses[0], rel=2e-3)  # fp16 log-probs


def test_the_budget_stops_before_a_batch_that_would_pass_it(tmp_path, tiny_model):
    student, tokenizer = load_model(str(tiny_model))
    teacher = CountingTeacher(load_model(str(tiny_model))[0], tokenizer.pad_token_id)
    api = APIConfig(model="m", base_url="http://127.0.0.1:9/v1", max_tokens=50)
    with Store(tmp_path) as store:
        with pytest.raises(EnvironmentProblem, match="would pass the budget"):
            CachedTeacher(teacher, store, "openai:m", 5, api).score(student, _rollouts(tokenizer))
    assert teacher.scored == 0


def test_kd_at_lmbda_0_fills_the_cache_and_a_second_run_pays_nothing(tmp_path, tiny_model):
    from cotdistill.annotate import annotate
    from cotdistill.train import train

    annotate(tmp_path, "arith", limit=4)
    settings = dict(student=str(tiny_model), objective="on-policy", teacher_model=str(tiny_model), lmbda=0.0,
                    max_steps=2, per_device_train_batch_size=2, **QUIET)
    first = json.loads((train(tmp_path, name="a", **settings) / "cotdistill.json").read_text())["teacher_cache"]
    second = json.loads((train(tmp_path, name="b", **settings) / "cotdistill.json").read_text())["teacher_cache"]
    assert first["misses"] == 4 and first["hits"] == 0
    assert second["misses"] == 0 and second["hits"] == 4 and second["sequences"] == 4
    assert 0 < second["bytes_per_token"] < 6 * 20 + 6 + 12
