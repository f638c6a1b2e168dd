"""Each objective's loss on tiny config-built models, checked against a value computed
another way, plus the data formats, seq2seq students, dev-set selection and bad input."""

import copy
import dataclasses
import json

import pytest
import torch
from transformers import AutoTokenizer

from cotdistill.annotate import annotate
from cotdistill.errors import CotdistillError
from cotdistill.methods import Example, get_method
from cotdistill.models import LocalModel, load_model
from cotdistill.store import Store
from cotdistill.tasks import get_task
from cotdistill.train import TrainConfig, train
from cotdistill.train.data import tokenize_example
from cotdistill.train.trainer import make_trainer

QUIET = dict(report_to="none", disable_tqdm=True)
DSS = get_method("dss")


def config(**fields):
    return TrainConfig(output_dir="/tmp/unused", lora=False, **QUIET, **fields)


def dss_pairs(n=4):
    problems = get_task("arith").load(split="train", limit=n)
    pairs = []
    for p in problems:
        label, rationale = DSS.training_examples(p, DSS.parse(p.gold["cot"], p).fields)
        pairs.append({"label": label, "rationale": rationale})
    return pairs


def test_multitask_loss_is_the_weighted_sum_of_the_two_tasks_losses(tiny_model):
    model, tokenizer = load_model(str(tiny_model))
    pairs = dss_pairs()
    trainer = make_trainer(model, tokenizer, config(objective="multitask", alpha=0.3), pairs)
    batch = trainer.data_collator(trainer.train_dataset)
    with torch.no_grad():
        ours = trainer.compute_loss(model, batch)
        by_hand = 0.3 * model(**batch["label"]).loss + 0.7 * model(**batch["rationale"]).loss
    assert torch.allclose(ours, by_hand, atol=1e-5)
    assert DSS.student_messages(get_task("arith").load(split="test", limit=1)[0])[0]["content"].startswith("predict: ")


@pytest.mark.parametrize("estimator", ["learned", "soft-ce"])
def test_mi_term_adds_to_the_multitask_loss_and_has_gradient(tiny_model, estimator):
    model, tokenizer = load_model(str(tiny_model))
    trainer = make_trainer(model, tokenizer, config(objective="mi", beta=0.1, mi_estimator=estimator), dss_pairs())
    batch = trainer.data_collator(trainer.train_dataset)
    loss = trainer.compute_loss(model, batch)
    parts = {name: values[-1] for name, values in trainer.parts.items()}
    assert loss.item() == pytest.approx(0.5 * parts["label_loss"] + 0.5 * parts["rationale_loss"]
                                        + 0.1 * parts["mi_loss"], rel=1e-5)
    assert parts["mi_loss"] > 0
    # the MI term alone moves the student (and the learned critic)
    from cotdistill.train import objectives

    label = objectives.targets(model, batch["label"], hidden=True)
    rationale = objectives.targets(model, batch["rationale"], hidden=True)
    term = (trainer.critic(objectives.pooled(label), objectives.pooled(rationale)) if estimator == "learned"
            else objectives.soft_ce_mi(label, rationale))
    model.zero_grad()
    term.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    if estimator == "learned":
        assert trainer.critic.label.weight.grad.abs().sum() > 0
        optimizer = trainer.create_optimizer()
        assert any(p is trainer.critic.label.weight for g in optimizer.param_groups for p in g["params"])


def _top_k(model, tokenizer, feature, k=5):
    """The model's own top-k over a tokenized example's completion, in the stored API layout."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([feature["input_ids"]])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    out = []
    start = feature["completion_start"]
    for position in range(start, len(feature["input_ids"])):
        top = logprobs[position - 1].topk(k)
        token = tokenizer.convert_ids_to_tokens(feature["input_ids"][position])
        out.append([token, float(logprobs[position - 1, feature["input_ids"][position]]),
                    [[tokenizer.convert_ids_to_tokens(i), float(v)] for v, i in zip(top.values, top.indices.tolist())]])
    return out


def _cot_examples(n=4):
    cot = get_method("cot")
    return [Example("student", cot.student_messages(p), p.gold["cot"])
            for p in get_task("arith").load(split="train", limit=n)]


def test_kd_on_stored_top_k_is_zero_for_the_teacher_itself_and_positive_for_another_model(tiny_model):
    teacher, tokenizer = load_model(str(tiny_model))
    examples = _cot_examples()
    stored = [_top_k(teacher, tokenizer, tokenize_example(tokenizer, e.messages, e.completion)) for e in examples]
    trainer = make_trainer(teacher, tokenizer, config(objective="kd"), examples, teacher_logprobs=stored)
    batch = trainer.data_collator(trainer.train_dataset)
    assert batch["kd_ids"].shape[-1] == 5 and torch.isfinite(batch["kd_logprobs"]).any()
    with torch.no_grad():
        trainer.compute_loss(teacher, batch)
    assert trainer.parts["kd_loss"][-1] == pytest.approx(0.0, abs=1e-5)

    student = copy.deepcopy(teacher)
    torch.nn.init.normal_(student.model.layers[0].mlp.up_proj.weight, std=0.5)
    with torch.no_grad():
        trainer.compute_loss(student, batch)
    assert trainer.parts["kd_loss"][-1] > 1e-3


def test_white_box_kd_is_zero_for_the_same_model_and_mixes_with_nll_by_weight(tiny_model):
    teacher, tokenizer = load_model(str(tiny_model))
    student = copy.deepcopy(teacher)
    trainer = make_trainer(student, tokenizer, config(objective="kd", kd_weight=0.25), _cot_examples(),
                           teacher=teacher)
    batch = trainer.data_collator(trainer.train_dataset)
    with torch.no_grad():
        loss = trainer.compute_loss(student, batch)
        assert trainer.parts["kd_loss"][-1] == pytest.approx(0.0, abs=1e-6)
        torch.nn.init.normal_(student.model.layers[1].mlp.down_proj.weight, std=0.5)
        loss = trainer.compute_loss(student, batch)
        nll = student(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss
    kd = trainer.parts["kd_loss"][-1]
    assert kd > 1e-3
    assert loss.item() == pytest.approx(0.75 * nll.item() + 0.25 * kd, rel=1e-4)


def _store_with_logprobs(run_dir, model_dir, tokens_from=None):
    """A run whose kept CoT annotations carry top-k log-probs (from `tokens_from`'s model)."""
    annotate(run_dir, "arith", limit=4)
    store = Store(run_dir)
    model, tokenizer = load_model(str(tokens_from or model_dir))
    cot = get_method("cot")
    problems = store.problems(a.problem_key for a in store.annotations("cot"))
    rows = []
    for a in store.annotations("cot"):
        feature = tokenize_example(tokenizer, cot.student_messages(problems[a.problem_key]), a.parsed["rationale"])
        rows.append(dataclasses.replace(a, key=a.key + "-lp", teacher="recorded", logprobs=_top_k(model, tokenizer, feature)))
    store.db.execute("DELETE FROM annotations")
    store.add_annotations(rows)
    store.close()


def test_kd_trains_from_the_stores_log_probs(tmp_path, tiny_model):
    _store_with_logprobs(tmp_path, tiny_model)
    output = train(tmp_path, student=str(tiny_model), objective="kd", max_steps=2, **QUIET)
    summary = json.loads((output / "cotdistill.json").read_text())
    assert summary["objective"] == "kd" and summary["steps"] == 2


def test_kd_refuses_a_teacher_with_another_tokenizer(tmp_path, tiny_model, other_tokenizer_model):
    _store_with_logprobs(tmp_path, tiny_model, tokens_from=other_tokenizer_model)
    with pytest.raises(CotdistillError, match="tokenizer differs from the student's"):
        train(tmp_path, student=str(tiny_model), objective="kd", max_steps=1, **QUIET)
    with pytest.raises(CotdistillError, match="its tokenizer differs from the student's"):
        train(tmp_path, name="wb", student=str(tiny_model), objective="kd", kd_teacher=str(other_tokenizer_model),
              max_steps=1, **QUIET)


def test_kd_without_log_probs_says_how_to_get_them(tmp_path, tiny_model):
    annotate(tmp_path, "arith", limit=4)
    with pytest.raises(CotdistillError, match="--top-logprobs"):
        train(tmp_path, student=str(tiny_model), objective="kd", max_steps=1, **QUIET)


def test_format_mixing_builds_every_format_and_batches_one_format_each(tmp_path, tiny_model):
    from cotdistill.train.formats import format_examples

    formats = "zero-shot-cot,zero-shot-answer,few-shot-cot,few-shot-answer"
    annotate(tmp_path, "arith", limit=10)
    output = train(tmp_path, student=str(tiny_model), formats=formats, demonstrations=2, max_steps=1,
                   per_device_train_batch_size=4, **QUIET)
    assert json.loads((output / "cotdistill.json").read_text())["examples"] == 40

    problems = get_task("arith").load(split="train", limit=10)
    mixed = format_examples([(p, p.gold["cot"]) for p in problems], formats.split(","), 2, seed=0)
    few_shot_cot = next(e for _, e in mixed if e.role == "few-shot-cot")
    assert [m["role"] for m in few_shot_cot.messages] == ["user", "assistant"] * 2 + ["user"]
    assert next(e for _, e in mixed if e.role == "zero-shot-answer").completion.startswith("The answer is ")
    model, tokenizer = load_model(str(tiny_model))
    groups = [g for g, _ in mixed]
    trainer = make_trainer(model, tokenizer, config(formats=formats, per_device_train_batch_size=4),
                           [e for _, e in mixed], groups=groups)
    sampler = trainer.get_train_dataloader().batch_sampler
    batches = list(getattr(sampler, "batch_sampler", sampler))
    assert sorted(i for b in batches for i in b) == list(range(40))
    assert all(len({groups[i] for i in b}) == 1 for b in batches)  # one format per batch
    assert len(batches) == 12  # 10 examples per format in batches of 4: 3 per format


def test_seq2seq_student_trains_and_answers(tmp_path, tiny_t5):
    annotate(tmp_path, "arith", limit=16)
    output = train(tmp_path, student=str(tiny_t5), max_steps=30, learning_rate=3e-3, lora=False,
                   per_device_train_batch_size=8, logging_steps=5, warmup_steps=0, **QUIET)
    summary = json.loads((output / "cotdistill.json").read_text())
    assert summary["last_logged_loss"] < 0.8 * summary["first_logged_loss"]
    model = LocalModel(str(output), batch_size=4)
    assert model.model.config.is_encoder_decoder
    cot = get_method("cot")
    problems = get_task("arith").load(split="test", limit=3)
    completions = model.generate([cot.student_messages(p) for p in problems], max_new_tokens=12)
    assert all(c.completion_tokens > 0 for c in completions)
    lora = train(tmp_path, name="t5-lora", student=str(tiny_t5), max_steps=2, **QUIET)
    assert (lora / "adapter_config.json").is_file()
    assert LocalModel(str(lora)).model.config.is_encoder_decoder


def test_seq2seq_tokens_put_the_prompt_in_the_encoder_and_the_completion_in_the_labels(tiny_t5):
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    example = tokenize_example(tokenizer, [{"role": "user", "content": "predict: 2 + 2?"}], "The answer is 4.",
                               seq2seq=True)
    assert "predict: 2 + 2?" in tokenizer.decode(example["input_ids"])
    assert tokenizer.decode(example["labels"][:-1]) == "The answer is 4."
    assert example["labels"][-1] == tokenizer.eos_token_id and -100 not in example["labels"]


def test_dev_set_picks_the_best_checkpoint_and_early_stopping_ends_training(tmp_path, tiny_model):
    annotate(tmp_path, "arith", limit=8)
    output = train(tmp_path, student=str(tiny_model), max_steps=20, save_steps=2, dev_task="arith", dev_limit=4,
                   dev_max_new_tokens=8, early_stopping_patience=1, **QUIET)
    summary = json.loads((output / "cotdistill.json").read_text())
    # an untrained tiny model never answers: the first evaluation is the best and the next ends training
    assert [h["step"] for h in summary["dev_history"]] == [2, 4]
    assert summary["steps"] == 4 and summary["best_checkpoint"] == "checkpoint-2"
    assert summary["best_dev_accuracy"] == 0.0 and summary["dev_problems"] == 4
    from safetensors.torch import load_file

    best = load_file(output / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    final = load_file(output / "adapter_model.safetensors")
    assert all(torch.equal(best[k], final[k]) for k in best)  # the best checkpoint's weights were kept


def test_dev_problems_from_the_training_split_are_carved_out(tmp_path, tiny_model):
    annotate(tmp_path, "arith", limit=8)
    output = train(tmp_path, student=str(tiny_model), max_steps=2, save_steps=2, dev_task="arith", dev_split="train",
                   dev_limit=3, dev_max_new_tokens=4, **QUIET)
    assert json.loads((output / "cotdistill.json").read_text())["examples"] == 5


@pytest.mark.parametrize("arguments, message", [
    (dict(objective="multitask"), "use --method dss"),
    (dict(model_type="seq2seq"), "is a causal model"),
    (dict(objective="mixup"), "objective must be one of"),
    (dict(formats="zero-shot-cot,chatty"), "unknown format"),
    (dict(gold_label=True), "method cot has no such target"),
    (dict(method="socratic", roles=["qg"], dev_task="arith"), "role\\(s\\) qg answer only beside another model"),
])
def test_bad_training_settings_are_one_line_errors(tmp_path, tiny_model, arguments, message):
    annotate(tmp_path, "arith", limit=2)
    with pytest.raises(CotdistillError, match=message) as error:
        train(tmp_path, student=str(tiny_model), max_steps=1, **arguments, **QUIET)
    assert "\n" not in str(error.value)


def test_dss_trains_on_gold_or_teacher_labels(tmp_path, tiny_model):
    annotate(tmp_path, "arith", limit=4, method="dss")
    output = train(tmp_path, student=str(tiny_model), method="dss", objective="multitask", gold_label=True,
                   max_steps=1, **QUIET)
    assert json.loads((output / "cotdistill.json").read_text())["examples"] == 4  # pairs, one per annotation


def test_decompose_solver_can_learn_the_gold_final_answer():
    method = get_method("decompose")
    problem = get_task("arith").load(split="train", limit=1)[0]
    parsed = {"subquestions": ["How many?"], "solution": "First 2 + 2 = 4. The answer is 5."}
    solver = {e.role: e for e in method.training_examples(problem, parsed, gold_label=True)}["solver"]
    assert solver.completion == f"First 2 + 2 = 4. The answer is {problem.answer}."
    teacher = {e.role: e for e in method.training_examples(problem, parsed)}["solver"]
    assert teacher.completion.endswith("The answer is 5.")
