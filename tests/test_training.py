import json

import pytest
import torch
from transformers import AutoTokenizer

from cotdistill.annotate import annotate
from cotdistill.errors import CotdistillError
from cotdistill.methods import Example, get_method
from cotdistill.models import load_model, render_completion
from cotdistill.tasks import get_task
from cotdistill.train import TrainConfig, train
from cotdistill.train.data import tokenize_example
from cotdistill.train.trainer import make_trainer

COT = get_method("cot")


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_base_model"])
def test_prompt_tokens_are_masked_and_completion_ends_with_eos(fixture, request):
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    problem = get_task("arith").load(split="train", limit=1)[0]
    messages = COT.student_messages(problem)
    example = tokenize_example(tokenizer, messages, problem.gold["cot"])
    taught = [t for t in example["labels"] if t != -100]
    assert example["labels"][: len(example["labels"]) - len(taught)] == [-100] * (len(example["labels"]) - len(taught))
    assert tokenizer.decode(taught) == render_completion(tokenizer, messages, problem.gold["cot"])
    assert tokenizer.eos_token_id in taught


def test_completion_only_loss_equals_the_reference_loss(tiny_model):
    """Skipping prompt logits must not change the loss: compare with the model's own loss."""
    model, tokenizer = load_model(str(tiny_model))
    problems = get_task("arith").load(split="train", limit=6)
    examples = [Example("student", COT.student_messages(p), p.gold["cot"]) for p in problems]
    trainer = make_trainer(model, tokenizer, TrainConfig(output_dir="/tmp/unused", lora=False, report_to="none"), examples)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    with torch.no_grad():
        ours = trainer.compute_loss(model, batch)
        reference = model(**batch).loss
    assert torch.allclose(ours, reference, atol=1e-5)


def test_lora_adapters_start_from_the_configured_seed_whatever_ran_before(tiny_model):
    """Two arms of a recipe run in one process: the second's adapter must not depend on
    the random state the first left behind, and another seed must start elsewhere."""
    problems = get_task("arith").load(split="train", limit=2)
    examples = [Example("student", COT.student_messages(p), p.gold["cot"]) for p in problems]

    def adapter(seed: int) -> dict[str, torch.Tensor]:
        model, tokenizer = load_model(str(tiny_model))
        torch.rand(1000)  # what an earlier arm would have drawn
        config = TrainConfig(output_dir="/tmp/unused", lora=True, report_to="none", seed=seed)
        trainer = make_trainer(model, tokenizer, config, examples)
        return {k: v.clone() for k, v in trainer.model.named_parameters() if "lora_A" in k}

    first, second, other = adapter(0), adapter(0), adapter(1)
    assert first and all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


# LoRA adapters move a randomly initialised (near-uniform) tiny model slowly; full
# fine-tuning overfits 16 examples fast. Both must lower the loss by a clear margin.
@pytest.mark.parametrize("lora, learning_rate, ratio", [(True, 2e-2, 0.98), (False, 3e-3, 0.7)])
def test_training_lowers_the_loss_and_saves_a_loadable_student(tmp_path, tiny_model, lora, learning_rate, ratio):
    annotate(tmp_path, "arith", limit=16)
    output = train(tmp_path, student=str(tiny_model), lora=lora, max_steps=30, learning_rate=learning_rate,
                   per_device_train_batch_size=8, logging_steps=5, warmup_steps=0, disable_tqdm=True)
    summary = json.loads((output / "cotdistill.json").read_text())
    assert summary["steps"] == 30 and summary["examples"] == 16
    assert summary["last_logged_loss"] < ratio * summary["first_logged_loss"]
    assert (output / ("adapter_config.json" if lora else "model.safetensors")).is_file()
    model, _ = load_model(str(output))
    assert not hasattr(model, "peft_config")  # adapters are merged for inference
    assert list((output / "checkpoints" / "runs").rglob("events.out.tfevents.*"))  # TensorBoard logs by default


def test_a_lora_student_continued_from_a_lora_student_keeps_what_its_start_learnt(tmp_path, tiny_model):
    """The second student trains a new adapter on the first's merged weights; loaded, it must
    be base + the first's update + its own, not base + its own (the on-policy recipe's
    continued students scored 2% and 0% where their start had 44%)."""
    from peft import PeftModel

    annotate(tmp_path, "arith", limit=8)
    steps = dict(max_steps=3, save_steps=3, learning_rate=2e-2, per_device_train_batch_size=4, warmup_steps=0,
                 disable_tqdm=True)
    first = train(tmp_path, name="first", student=str(tiny_model), **steps)  # all-linear: peft saves a list
    second = train(tmp_path, name="second", student="first", lora_r=8, lora_target_modules=r".*\.(q_proj|v_proj)",
                   **steps)
    own_adapter = str(second / "checkpoints" / "checkpoint-3")  # what the second learnt, as peft saved it
    on_first = PeftModel.from_pretrained(load_model(str(first))[0], own_adapter).merge_and_unload()
    on_base = PeftModel.from_pretrained(load_model(str(tiny_model))[0], own_adapter).merge_and_unload()
    loaded, tokenizer = load_model(str(second))
    ids = torch.tensor([tokenizer("What is 12 + 30?")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, on_first(ids).logits, atol=1e-4)
        assert not torch.allclose(loaded(ids).logits, on_base(ids).logits, atol=1e-2)
    config = json.loads((second / "adapter_config.json").read_text())
    assert config["r"] == 16 + 8 and config["lora_alpha"] == 24  # the two adapters side by side, scaling 1
    assert not (second / ".own-adapter").exists()
    full = train(tmp_path, name="full", student="first", **{**steps, "lora": False, "max_steps": 1})  # all weights
    assert json.loads((full / "cotdistill.json").read_text())["steps"] == 1


def test_finished_student_is_not_trained_again(tmp_path, tiny_model):
    annotate(tmp_path, "arith", limit=8)
    output = train(tmp_path, student=str(tiny_model), max_steps=2, disable_tqdm=True)
    summary = json.loads((output / "cotdistill.json").read_text())
    assert summary["first_logged_loss"] is not None  # shorter than logging_steps, and still a first loss
    stamp = (output / "cotdistill.json").stat().st_mtime_ns
    assert train(tmp_path, student=str(tiny_model), max_steps=2, disable_tqdm=True) == output
    assert (output / "cotdistill.json").stat().st_mtime_ns == stamp


def test_a_chosen_role_trains_that_student_only(tmp_path, tiny_model):
    annotate(tmp_path, "arith", limit=4, method="socratic")
    output = train(tmp_path, name="qg", student=str(tiny_model), method="socratic", roles=["qg"], max_steps=1,
                   disable_tqdm=True)
    summary = json.loads((output / "cotdistill.json").read_text())
    assert summary["roles"] == ["qg"] and summary["examples"] == 4  # one question-generator example per chain
    with pytest.raises(CotdistillError, match="method socratic has no role"):
        train(tmp_path, name="x", student=str(tiny_model), method="socratic", roles=["solver"])


def test_training_without_annotations_is_a_clear_error(tmp_path, tiny_model):
    with pytest.raises(CotdistillError, match="no kept cot annotations"):
        train(tmp_path, student=str(tiny_model))


def test_unknown_training_argument_is_a_clear_error(tmp_path, tiny_model):
    annotate(tmp_path, "arith", limit=4)
    with pytest.raises(CotdistillError, match="learning_rat"):
        train(tmp_path, student=str(tiny_model), learning_rat=1e-3)


KILL_AFTER_CHECKPOINT_2 = """
import os, signal, sys
from transformers import TrainerCallback
from cotdistill.train import train

class Kill(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

train(sys.argv[1], callbacks=[Kill()], **{settings})
"""


@pytest.mark.parametrize("objective", ["sft", "mi", "on-policy"])
def test_training_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path, tiny_model, objective):
    """SIGKILL right after checkpoint-2, rerun: the final weights equal an uninterrupted run's
    (mi also carries its learned critic across the kill; on-policy samples what it would have,
    its rollouts being seeded by the step)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    method = "dss" if objective == "mi" else "cot"
    settings = dict(student=str(tiny_model), method=method, objective=objective, lora=False, max_steps=4,
                    save_steps=2, save_total_limit=None, learning_rate=3e-3, per_device_train_batch_size=4,
                    report_to="none", disable_tqdm=True)
    uninterrupted, crashed = tmp_path / "uninterrupted", tmp_path / "crashed"
    for run in (uninterrupted, crashed):
        annotate(run, "arith", limit=16, method=method)
    finished = train(uninterrupted, **settings)

    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT_2.replace("{settings}", repr(settings)),
                             str(crashed)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoints = crashed / "students" / "student" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = train(crashed, **settings)

    assert json.loads((resumed / "cotdistill.json").read_text())["resumed_from"] == "checkpoint-2"
    expected, actual = load_file(finished / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.allclose(expected[name], actual[name], atol=1e-6), name


DDP_RUN = """
import sys, torch
from transformers import TrainerCallback
from cotdistill.train import train

class Dump(TrainerCallback):  # each process's own copy of what DDP must keep in sync
    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        critic = [p.detach().clone() for p in optimizer.param_groups[-1]["params"]]
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save({"critic": critic, "model": weights}, f"{sys.argv[1]}/rank{args.process_index}.pt")

train(sys.argv[1], callbacks=[Dump()], **{settings})
"""


def test_two_process_ddp_shards_the_data_and_keeps_model_and_mi_critic_in_sync(tmp_path, tiny_model):
    """`torchrun` (what `accelerate launch` runs) with 2 CPU processes on the gloo backend:
    each process takes half of every epoch, and after training both hold the same student and
    the same MI critic (which lives outside the model, so DDP alone would not average it)."""
    import os
    import subprocess
    import sys

    annotate(tmp_path, "arith", limit=16, method="dss")
    settings = dict(student=str(tiny_model), method="dss", objective="mi", lora=False, num_train_epochs=1,
                    per_device_train_batch_size=2, learning_rate=3e-3, save_strategy="no", report_to="none",
                    disable_tqdm=True)
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_RUN.replace("{settings}", repr(settings)))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "ACCELERATE_USE_CPU": "true"})
    assert result.returncode == 0, result.stderr[-3000:]

    summary = json.loads((tmp_path / "students" / "student" / "cotdistill.json").read_text())
    assert summary["examples"] == 16 and summary["steps"] == 4  # 16 pairs / (2 per process x 2 processes)
    rank0, rank1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert rank0["critic"]  # the optimizer group added for the critic
    for a, b in zip(rank0["critic"], rank1["critic"]):
        assert torch.equal(a, b)
    for name in rank0["model"]:
        assert torch.equal(rank0["model"][name], rank1["model"][name]), name


def test_an_attempt_that_left_no_checkpoint_can_be_retried_with_other_settings(tmp_path, tiny_model):
    """Killed for memory before its first checkpoint, a run binds nothing: the retry with a
    smaller batch goes ahead. One that finished still binds its name."""
    from cotdistill.store import Store

    annotate(tmp_path, "arith", limit=6)
    with Store(tmp_path) as store:  # what the killed attempt left: a run record, status running, no checkpoint
        store.start_run("train:student", "train", {"student": str(tiny_model), "method": "cot",
                                                   "per_device_train_batch_size": 32})
    output = train(tmp_path, student=str(tiny_model), max_steps=1, per_device_train_batch_size=2, disable_tqdm=True)
    assert (output / "cotdistill.json").is_file()
    with pytest.raises(CotdistillError, match="exists with other settings"):
        train(tmp_path, student=str(tiny_model), max_steps=1, per_device_train_batch_size=4, disable_tqdm=True)


def test_a_run_that_cannot_fit_in_memory_stops_before_its_first_step(tmp_path, tiny_model, monkeypatch):
    """On a machine with too little memory (simulated: 64 MiB free) training refuses at once
    with what to change; check_memory=False runs anyway."""
    from cotdistill.train import memory

    annotate(tmp_path, "arith", limit=6)
    monkeypatch.setattr(memory, "available", lambda device: 64 * 2**20)
    with pytest.raises(CotdistillError, match=r"needs about .* GiB .* 0\.1 GiB is available: try .*--batch-size|--max-length"):
        train(tmp_path, student=str(tiny_model), lora=False, max_steps=1, per_device_train_batch_size=8,
              disable_tqdm=True)
    assert not (tmp_path / "students" / "student" / "checkpoints").exists()
    output = train(tmp_path, student=str(tiny_model), lora=False, max_steps=1, per_device_train_batch_size=8,
                   check_memory=False, disable_tqdm=True)
    assert (output / "cotdistill.json").is_file()


def test_one_default_learning_rate_per_mode_wherever_the_config_is_built():
    """Python and recipe users get the same defaults as the CLI: 1e-3 with LoRA, 5e-5 full."""
    from cotdistill.train.fields import FIELDS, LEARNING_RATE
    from cotdistill.train.objectives import OBJECTIVES

    assert TrainConfig(output_dir="x").learning_rate == LEARNING_RATE[True] == 1e-3
    assert TrainConfig(output_dir="x", lora=False).learning_rate == LEARNING_RATE[False] == 5e-5
    assert TrainConfig(output_dir="x", lora=False, learning_rate=1e-4).learning_rate == 1e-4
    assert [name for name in OBJECTIVES] == [part.split(" (")[0] for part in FIELDS["objective"][1].split(" | ")]
