"""Export: kept annotations as TRL-format JSONL and as a `datasets` directory."""

import json

import pytest
from datasets import load_from_disk

from cotdistill.annotate import annotate
from cotdistill.errors import CotdistillError
from cotdistill.export import export


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
    with pytest.raises(CotdistillError, match="no kept cot annotations"):
        export(tmp_path, tmp_path / "x.jsonl")
    annotate(tmp_path, "arith", limit=1)
    with pytest.raises(CotdistillError, match="unknown export format 'csv'"):
        export(tmp_path, tmp_path / "x.csv", format="csv")
    with pytest.raises(CotdistillError, match="method cot has no role"):
        export(tmp_path, tmp_path / "x.jsonl", roles=["qg"])
