"""A teacher with another tokenizer: the byte alignment of two tokenizations (multibyte
characters, special tokens such as BOS, merged tokens), the text teacher's loss against
the white-box one where the tokenizers agree, and a different-tokenizer teacher training."""

import pytest
import torch
from transformers import AutoTokenizer

from cotdistill.methods import get_method
from cotdistill.models import encode_prompt, load_model
from cotdistill.tasks import get_task
from cotdistill.train.align import TextTeacher, completion_text, groups, spans, token_bytes
from cotdistill.train.onpolicy import Rollouts, TeacherScores, chunked_loss, states_at
from cotdistill.train.teachers import LocalTeacher, load_teacher


def test_a_multibyte_character_split_by_one_side_is_one_group():
    text = "héllo → 3".encode()
    student = [b"h", b"\xc3", b"\xa9", b"llo", b" ", b"\xe2\x86", b"\x92", b" 3"]
    teacher = [b"h\xc3\xa9", b"llo", b" \xe2\x86\x92", b" ", b"3"]
    assert b"".join(student) == b"".join(teacher) == text
    assert groups(spans(student), spans(teacher)) == [([0, 1, 2], [0]), ([3], [1]), ([4, 5, 6], [2]), ([7], [3, 4])]


def test_merged_tokens_group_and_special_tokens_have_no_bytes():
    bos, eos = b"", b""  # special tokens: nothing in the text
    student = [bos, b"12", b"+", b"3", eos]
    teacher = [b"1", b"2+", b"3"]
    assert groups(spans(student), spans(teacher)) == [([1, 2], [0, 1]), ([3], [2])]
    # a teacher whose first token also covers text before the completion starts later: no group there
    assert groups(spans([b"ab", b"c"]), [(1, 2), (2, 3)]) == [([1], [1])]


def test_token_bytes_of_byte_level_and_sentencepiece_vocabularies(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    pieces = token_bytes(tokenizer)
    ids = tokenizer("héllo → 3 × 4", add_special_tokens=False)["input_ids"]
    assert b"".join(pieces[i] for i in ids) == "héllo → 3 × 4".encode()
    assert pieces[tokenizer.eos_token_id] == b""
    text, covered = completion_text([b"ok ", b"\xe2\x86"])  # a sample cut mid-character
    assert (text, covered) == ("ok ", 1)


def _rollouts(tokenizer, n=3):
    cot = get_method("cot")
    problems = get_task("arith").load(split="train", limit=n)
    messages = [cot.student_messages(p) for p in problems]
    prompts = [encode_prompt(tokenizer, m) for m in messages]
    completions = [tokenizer(p.gold["cot"], add_special_tokens=False)["input_ids"] for p in problems]
    return Rollouts(prompts, completions, prompts, messages)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_the_text_teacher_with_the_students_tokenizer_maps_every_alternative_to_the_white_box_token(tiny_model, beta):
    """Same tokenizer, k = the vocabulary: the aligned top-k is the white-box distribution
    over the tokens that have text (the special tokens, which have none, are the tail)."""
    student, tokenizer = load_model(str(tiny_model))
    teacher, _ = load_model(str(tiny_model))
    torch.nn.init.normal_(teacher.model.layers[0].mlp.up_proj.weight, std=0.5)
    rollouts = _rollouts(tokenizer)
    white = LocalTeacher(teacher, tokenizer.pad_token_id).score(student, rollouts)
    text = TextTeacher.local(teacher, tokenizer, tokenizer, top_k=len(tokenizer)).score(student, rollouts)
    assert torch.equal(text.rows, white.rows) and torch.equal(text.positions, white.positions)
    assert text.uld is None  # every token is its own group
    spelled = torch.tensor([i for i, piece in enumerate(token_bytes(tokenizer)) if piece])
    full = white.full(0, len(white))
    expected = TeacherScores(white.rows, white.positions, ids=spelled.expand(len(white), -1),
                             logprobs=full[:, spelled])
    losses = []
    for scores in (expected, text):
        hidden = states_at(student, rollouts.prompts, rollouts.completions, scores.rows, scores.positions,
                           tokenizer.pad_token_id)
        losses.append(chunked_loss(hidden, student.get_output_embeddings(), scores, beta, 16).item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[0] > 1e-3
    assert text.logprobs.shape[1] == len(spelled)  # all of them mapped


def test_a_teacher_with_another_tokenizer_scores_through_the_alignment_and_teaches(tiny_model, other_tokenizer_model):
    student, tokenizer = load_model(str(tiny_model))
    teacher = load_teacher(str(other_tokenizer_model), tokenizer, "cpu")
    assert isinstance(teacher, TextTeacher)
    rollouts = _rollouts(tokenizer)
    scores = teacher.score(student, rollouts)
    total = sum(map(len, rollouts.completions))
    assert 0.5 * total < len(scores) <= total  # most tokens align one to one or in merged groups
    assert scores.uld is not None and (~torch.isnan(scores.uld[:, 0])).any()  # the two tokenizers split differently
    hidden = states_at(student, rollouts.prompts, rollouts.completions, scores.rows, scores.positions,
                       tokenizer.pad_token_id)
    loss = chunked_loss(hidden, student.get_output_embeddings(), scores, 0.5, 8)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert student.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_train_on_policy_with_a_teacher_of_another_tokenizer(tmp_path, tiny_model, other_tokenizer_model, capsys):
    import json

    from cotdistill.annotate import annotate
    from cotdistill.models import load_model
    from cotdistill.train import TrainConfig, train
    from cotdistill.train.objectives import OBJECTIVES

    annotate(tmp_path, "arith", limit=4)
    output = train(tmp_path, student=str(tiny_model), objective="on-policy", teacher_model=str(other_tokenizer_model),
                   lmbda=0.5, max_new_tokens=8, max_steps=2, per_device_train_batch_size=2, report_to="none",
                   disable_tqdm=True)
    record = json.loads((output / "cotdistill.json").read_text())
    assert record["steps"] == 2 and record["seconds_by_part"]["teacher"] > 0 and "teacher_cache" in record
    assert "end-of-turn" not in capsys.readouterr().err  # lmbda 0.5: the fixed sequences teach it
    config = TrainConfig(objective="on-policy", teacher_model=str(other_tokenizer_model), lmbda=1.0, report_to="none")
    OBJECTIVES["on-policy"].build(config, load_model(str(tiny_model))[1])
    assert "keep lmbda below 1" in capsys.readouterr().err
