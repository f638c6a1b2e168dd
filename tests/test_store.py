from cotdistill.annotate import annotate
from cotdistill.store import Store


def test_gold_annotation_is_idempotent(tmp_path):
    first = annotate(tmp_path, "arith", split="train", limit=20)
    assert (first["new"], first["kept"]) == (20, 20)
    again = annotate(tmp_path, "arith", split="train", limit=30)
    assert (again["new"], again["kept"]) == (10, 30)
    store = Store(tmp_path)
    assert store.db.execute("SELECT COUNT(*) FROM annotations").fetchone()[0] == 30
    assert len(store.problems("arith", "train")) == 30


def test_problems_without_gold_are_rejected_with_reason(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "2+2?", "answer": "4"}\n')
    summary = annotate(tmp_path / "run", "jsonl", data=data)
    assert summary["kept"] == 0
    assert summary["rejected"] == {"task has no gold rationale for this method": 1}


def test_runs_resume_instead_of_duplicating(tmp_path):
    store = Store(tmp_path)
    store.start_run("eval:x", "eval", {"a": 1})
    store.start_run("eval:x", "eval", {"a": 2})
    store.finish_run("eval:x", {"accuracy": 0.5})
    [run] = store.runs("eval")
    assert (run["status"], run["config"], run["result"]) == ("done", {"a": 2}, {"accuracy": 0.5})
