"""Export: kept annotations as TRL-format JSONL and as a `datasets` directory."""

import json

import pytest
from datasets import load_from_disk

from cotdistill.annotate import annotate
from cotdistill.errors import CotdistillError
from cotdistill.export import export
from cotdistill.store import Store


def test_export_formats_carry_each_students_examples(tmp_path):
    annotate(tmp_path, "arith", limit=5, method="socratic")
    out = export(tmp_path, tmp_path / "pc.jsonl", method="socratic")
    rows = [json.loads(line) for line in (tmp_path / "pc.jsonl").read_text().splitlines()]
    assert out["rows"] == len(rows) and out["annotations"] == 5
    assert {r["role"] for r in rows} == {"unified", "qg", "qa"}
    assert all(r["prompt"][-1]["role"] == "user" and r["completion"][0]["role"] == "assistant" for r in rows)
    export(tmp_path, tmp_path / "qg.jsonl", method="socratic", format="messages", roles=["qg"])
    qg = [json.loads(line) for line in (tmp_path / "qg.jsonl").read_text().splitlines()]
    assert len(qg) == 5 and all(r["messages"][-1]["content"].startswith("Q1: ") for r in qg)
    export(tmp_path, tmp_path / "ds", method="socratic", format="dataset")
    dataset = load_from_disk(str(tmp_path / "ds"))
    assert len(dataset) == len(rows) and {"prompt", "completion", "role", "problem_id"} <= set(dataset.column_names)


def test_export_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(CotdistillError, match="no run here"):  # a reading verb makes no run directory
        export(tmp_path / "run", tmp_path / "x.jsonl")
    assert not (tmp_path / "run").exists()
    Store(tmp_path).close()
    with pytest.raises(CotdistillError, match="no kept cot annotations"):
        export(tmp_path, tmp_path / "x.jsonl")
    annotate(tmp_path, "arith", limit=1)
    with pytest.raises(CotdistillError, match="unknown export format 'csv'"):
        export(tmp_path, tmp_path / "x.csv", format="csv")
    with pytest.raises(CotdistillError, match="method cot has no role"):
        export(tmp_path, tmp_path / "x.jsonl", roles=["qg"])


def test_an_exported_lora_student_loads_in_plain_transformers_and_generates_what_eval_did(tmp_path, tiny_model):
    """The standalone directory needs nothing of cotdistill: transformers alone loads it
    (LoRA merged) and, with the generation config written beside it, greedy-decodes the
    very text `cotdistill eval` stored for each problem."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotdistill.evaluate import evaluate
    from cotdistill.export_model import export_model
    from cotdistill.methods import get_method
    from cotdistill.store import Store
    from cotdistill.tasks import get_task
    from cotdistill.train import train

    annotate(tmp_path, "arith", limit=8)
    train(tmp_path, student=str(tiny_model), lora=True, max_steps=4, learning_rate=2e-2, disable_tqdm=True)
    evaluate(tmp_path, model="student", task="arith", limit=3, max_new_tokens=24)
    written = export_model(tmp_path, "student", tmp_path / "exported", max_new_tokens=24)
    assert written["merged_lora"] and "model.safetensors" in written["files"] and "adapter_config.json" not in written["files"]
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "method `cot`" in card and "`gold` (8 kept rationales)" in card and "| arith | test | 3 |" in card

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "exported")
    with Store(tmp_path) as store:
        stored = {p.problem_key: p.text for p in store.predictions("eval:student:arith:test")}
    for problem in get_task("arith").load(split="test", limit=3):
        inputs = tokenizer.apply_chat_template(get_method("cot").student_messages(problem), add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        output = model.generate(**inputs, tokenizer=tokenizer)
        text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert text.strip() == stored[problem.key].strip() != ""

    with pytest.raises(CotdistillError, match="exists and is not an empty directory"):
        export_model(tmp_path, "student", tmp_path / "exported")
    with pytest.raises(CotdistillError, match="no trained student 'nobody'"):
        export_model(tmp_path, "nobody", tmp_path / "other")
