"""On-policy distillation on tiny config-built models: the generalized JSD against KLs computed
directly, top-k + tail against the full loss, chunked against unchunked, lmbda 0 against
supervised KD, what the self-distillation teacher and the student each see, and training."""

import json

import pytest
import torch

from cotdistill.methods import Example, get_method
from cotdistill.models import load_model
from cotdistill.tasks import get_task
from cotdistill.train import TrainConfig
from cotdistill.train.objectives import kl_full, targets
from cotdistill.train.onpolicy import (Rollouts, TeacherScores, all_positions, chunked_loss, generalized_jsd,
                                       states_at, top_k_buckets)
from cotdistill.train.teachers import LocalTeacher, SelfTeacher
from cotdistill.train.trainer import make_trainer

QUIET = dict(report_to="none", disable_tqdm=True)


def logprobs(n, vocab, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, vocab, generator=generator) * 2, dim=-1)


def kl(p, q):
    return (p.exp() * (p - q)).sum(-1)


def test_beta_0_and_1_are_the_forward_and_reverse_kl_and_between_them_the_jsd():
    student, teacher = logprobs(6, 11, 0), logprobs(6, 11, 1)
    assert torch.allclose(generalized_jsd(student, teacher, 0.0), kl(teacher, student), atol=1e-6)
    assert torch.allclose(generalized_jsd(student, teacher, 1.0), kl(student, teacher), atol=1e-6)
    beta = 0.3
    mixture = torch.log(beta * teacher.exp() + (1 - beta) * student.exp())
    expected = beta * kl(teacher, mixture) + (1 - beta) * kl(student, mixture)
    assert torch.allclose(generalized_jsd(student, teacher, beta), expected, atol=1e-6)
    assert (generalized_jsd(student, student, beta).abs() < 1e-6).all()


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_top_k_plus_tail_is_the_full_loss_when_k_covers_the_vocabulary_and_the_collapsed_loss_otherwise(beta):
    student, teacher = logprobs(5, 9, 2), logprobs(5, 9, 3)
    order = torch.stack([torch.randperm(9, generator=torch.Generator().manual_seed(r)) for r in range(5)])
    covered = generalized_jsd(*top_k_buckets(student, order, teacher.gather(-1, order)), beta)
    assert torch.allclose(covered, generalized_jsd(student, teacher, beta), atol=1e-5)

    ids = order[:, :3]  # k = 3: the other six tokens are one bucket on both sides
    s_top, t_top = student.gather(-1, ids), teacher.gather(-1, ids)
    by_hand = generalized_jsd(torch.cat([s_top, torch.log1p(-s_top.exp().sum(-1, keepdim=True))], -1),
                              torch.cat([t_top, torch.log1p(-t_top.exp().sum(-1, keepdim=True))], -1), beta)
    assert torch.allclose(generalized_jsd(*top_k_buckets(student, ids, t_top), beta), by_hand, atol=1e-5)


def _rollouts(tokenizer, n=3):
    cot = get_method("cot")
    problems = get_task("arith").load(split="train", limit=n)
    from cotdistill.models import encode_prompt

    prompts = [encode_prompt(tokenizer, cot.student_messages(p)) for p in problems]
    completions = [tokenizer(p.gold["cot"], add_special_tokens=False)["input_ids"] for p in problems]
    return Rollouts(prompts, completions, prompts, [cot.student_messages(p) for p in problems])


def test_the_chunked_loss_and_its_gradient_equal_the_unchunked(tiny_model):
    student, tokenizer = load_model(str(tiny_model))
    teacher, _ = load_model(str(tiny_model))
    torch.nn.init.normal_(teacher.model.layers[0].mlp.up_proj.weight, std=0.5)
    rollouts = _rollouts(tokenizer)
    scores = LocalTeacher(teacher, tokenizer.pad_token_id).score(student, rollouts)
    results = []
    for chunk in (0, 7):
        student.zero_grad()
        hidden = states_at(student, rollouts.prompts, rollouts.completions, scores.rows, scores.positions,
                           tokenizer.pad_token_id)
        loss = chunked_loss(hidden, student.get_output_embeddings(), scores, 0.5, chunk)
        loss.backward()
        results.append((loss.detach(), student.model.layers[1].self_attn.q_proj.weight.grad.clone()))
    assert len(scores) > 20 and results[0][0] > 1e-3
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def _examples(n=4):
    cot = get_method("cot")
    return [Example("student", cot.student_messages(p), p.gold["cot"])
            for p in get_task("arith").load(split="train", limit=n)]


def config(**fields):
    return TrainConfig(output_dir="/tmp/unused", lora=False, objective="on-policy", **QUIET, **fields)


def test_lmbda_0_is_supervised_kd_on_the_fixed_sequences(tiny_model):
    student, tokenizer = load_model(str(tiny_model))
    teacher, _ = load_model(str(tiny_model))
    torch.nn.init.normal_(teacher.model.layers[1].mlp.down_proj.weight, std=0.5)
    trainer = make_trainer(student, tokenizer, config(lmbda=0.0, jsd_beta=0.0, teacher_model=str(tiny_model)), _examples())
    step = trainer.objective.step  # its teacher of both kinds of step: the perturbed model
    step.teacher = step.fixed_teacher = LocalTeacher(teacher, tokenizer.pad_token_id)
    batch = trainer.data_collator(trainer.train_dataset)
    with torch.no_grad():
        ours = trainer.compute_loss(student, batch)
        t = targets(student, batch)
        kd = kl_full(t, targets(teacher, batch).logits)
    assert trainer.parts["on_policy"][-1] == 0.0
    assert ours.item() == pytest.approx(kd.item(), rel=1e-5) and kd > 1e-3


def test_the_self_teacher_sees_the_rationale_and_the_student_does_not(tiny_model):
    student, tokenizer = load_model(str(tiny_model))
    examples = _examples(2)
    trainer = make_trainer(student, tokenizer, config(teacher_model="self", max_new_tokens=6), examples)
    batch = trainer.data_collator(trainer.train_dataset)
    seen = []
    hook = student.get_input_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        trainer.compute_loss(student, batch)
    finally:
        hook.remove()
    texts = [[tokenizer.decode(row) for row in ids.tolist()] for ids in seen]
    teacher_call = next(i for i, rows in enumerate(texts) if "for reference" in rows[0])
    for row, example in zip(texts[teacher_call], examples):  # the teacher's forward: rationale in the prompt
        assert example.completion in row and example.messages[-1]["content"] in row
    student_calls = [rows for rows in texts[teacher_call + 1:]]  # the student's forward, with gradient
    assert student_calls and all("for reference" not in r and not any(e.completion in r for e in examples)
                                 for rows in student_calls for r in rows)
    assert all("for reference" not in r for rows in texts[:teacher_call] for r in rows)  # rollouts: no rationale
    assert trainer.parts["on_policy"][-1] == 1.0 and trainer.parts["completion_tokens"][-1] > 0


def test_the_lora_self_teacher_is_the_frozen_start(tiny_model):
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load_model(str(tiny_model))
    reference, _ = load_model(str(tiny_model))
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    rollouts = _rollouts(tokenizer, 2)
    scores = SelfTeacher(tokenizer.pad_token_id).score(model, rollouts)
    frozen = LocalTeacher(reference, tokenizer.pad_token_id).score(reference, rollouts)
    assert torch.allclose(scores.full(0, len(scores)), frozen.full(0, len(frozen)), atol=1e-5)
    with torch.no_grad():
        adapted = states_at(model, rollouts.prompts, rollouts.completions, scores.rows, scores.positions,
                            tokenizer.pad_token_id)
    assert not torch.allclose(torch.log_softmax(model.get_output_embeddings()(adapted), -1),
                              frozen.full(0, len(frozen)), atol=1e-3)


def test_on_policy_trains_a_student_from_the_cli_settings(tmp_path, tiny_model):
    from cotdistill.annotate import annotate
    from cotdistill.train import train

    annotate(tmp_path, "arith", limit=4)
    output = train(tmp_path, student=str(tiny_model), objective="on-policy", teacher_model="self", max_new_tokens=8,
                   max_steps=2, per_device_train_batch_size=2, logging_steps=1, **QUIET)
    summary = json.loads((output / "cotdistill.json").read_text())
    assert summary["objective"] == "on-policy" and summary["steps"] == 2 and summary["train_loss"] >= 0
    parts = summary["seconds_by_part"]
    assert set(parts) == {"rollout", "teacher", "student_loss"} and parts["rollout"] > 0
    assert sum(parts.values()) < summary["seconds"]


@pytest.mark.parametrize("settings, message", [(dict(jsd_beta=1.5), "jsd_beta must be within"),
                                               (dict(lmbda=-0.1), "lmbda must be within"),
                                               (dict(max_new_tokens=0), "max_new_tokens must be")])
def test_bad_on_policy_settings_are_one_line_errors(tmp_path, tiny_model, settings, message):
    from cotdistill.errors import CotdistillError
    from cotdistill.train import train

    with pytest.raises(CotdistillError, match=message):
        train(tmp_path, student=str(tiny_model), objective="on-policy", max_steps=1, **settings, **QUIET)


def test_no_scored_token_gives_a_zero_loss_with_a_gradient_path():
    hidden = torch.zeros(0, 4, requires_grad=True)
    empty = TeacherScores(*all_positions([[]], "cpu"))
    assert chunked_loss(hidden, torch.nn.Linear(4, 5), empty, 0.5, 8).item() == 0.0


def test_the_on_policy_recipe_runs_end_to_end_sized_down(tmp_path, tiny_model):
    from cotdistill.recipe import run_recipe

    sizes = {"student": str(tiny_model), "train_limit": 8, "eval_limit": 2, "extra_steps": 2, "batch_size": 4,
             "max_new_tokens": 6, "eval_tokens": 6}
    run_dir = run_recipe("on-policy", tmp_path / "run", settings=sizes, scale="small")
    record = json.loads((run_dir / "students" / "on-policy" / "cotdistill.json").read_text())
    assert record["objective"] == "on-policy" and record["steps"] == 2
    assert "| on-policy |" in (run_dir / "report.md").read_text()
