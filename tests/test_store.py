import threading

from cotdistill.annotate import annotate
from cotdistill.store import Store


def test_gold_annotation_is_idempotent(tmp_path):
    first = annotate(tmp_path, "arith", split="train", limit=20)
    assert (first["new"], first["kept"]) == (20, 20)
    again = annotate(tmp_path, "arith", split="train", limit=30)
    assert (again["new"], again["kept"]) == (10, 30)
    store = Store(tmp_path)
    assert store.db.execute("SELECT COUNT(*) FROM annotations").fetchone()[0] == 30
    keys = {a.problem_key for a in store.annotations("cot")}
    assert len(keys) == 30 and len(store.problems(keys)) == 30


def test_problems_without_gold_are_rejected_with_reason(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "2+2?", "answer": "4"}\n')
    summary = annotate(tmp_path / "run", "jsonl", data=data)
    assert summary["kept"] == 0
    assert summary["rejected_by_reason"] == {"task has no gold rationale for this method": 1}


def test_runs_resume_instead_of_duplicating(tmp_path):
    store = Store(tmp_path)
    store.start_run("eval:x", "eval", {"a": 1, "problems": 5})
    store.start_run("eval:x", "eval", {"a": 1, "problems": 9})
    store.finish_run("eval:x", {"accuracy": 0.5})
    [run] = store.runs("eval")
    assert (run["status"], run["config"], run["result"]) == ("done", {"a": 1, "problems": 9}, {"accuracy": 0.5})


def test_a_run_refuses_other_settings_under_its_name(tmp_path):
    import pytest

    from cotdistill.errors import CotdistillError

    store = Store(tmp_path)
    store.start_run("eval:x", "eval", {"model": "a", "max_new_tokens": 64, "problems": 10})
    store.start_run("eval:x", "eval", {"model": "a", "max_new_tokens": 64, "problems": 20})  # more problems: fine
    with pytest.raises(CotdistillError, match=r"run 'eval:x' exists with other settings \(max_new_tokens\)"):
        store.start_run("eval:x", "eval", {"model": "a", "max_new_tokens": 128, "problems": 20})


def test_a_setting_missing_from_a_record_stands_for_its_default(tmp_path):
    """The one recording rule: a run recorded before a setting existed resumes when the new
    run leaves that setting at its default, and only then."""
    import pytest

    from cotdistill.errors import CotdistillError

    defaults = {"samples": 1}
    with Store(tmp_path) as store:
        store.start_run("eval:x", "eval", {"model": "a", "problems": 5})  # an older record: no samples
        store.finish_run("eval:x", {})
        store.start_run("eval:x", "eval", {"model": "a", "samples": 1, "problems": 5}, defaults=defaults)
        store.finish_run("eval:x", {})
        with pytest.raises(CotdistillError, match=r"other settings \(samples\)"):
            store.start_run("eval:x", "eval", {"model": "a", "samples": 8, "problems": 5}, defaults=defaults)
        store.start_run("eval:y", "eval", {"model": "a", "problems": 5})
        store.finish_run("eval:y", {})
        with pytest.raises(CotdistillError, match=r"other settings \(samples\)"):  # no default given: a change
            store.start_run("eval:y", "eval", {"model": "a", "samples": 1, "problems": 5})


def test_a_new_store_opened_by_several_at_once_opens_for_all(tmp_path):
    """The first opening switches the file to WAL, and SQLite refuses that switch at once
    (no busy timeout) while another connection opens or closes it: the CI's killed-server
    test lost its annotate run to this (a poller opening the store as annotate started)."""
    errors = []

    def open_at_once(run_dir, barrier):
        barrier.wait()
        try:
            with Store(run_dir):
                pass
        except Exception as error:  # noqa: BLE001 - every failure is the finding
            errors.append(error)

    for round in range(300):
        barrier = threading.Barrier(3)
        openers = [threading.Thread(target=open_at_once, args=(tmp_path / str(round), barrier)) for _ in range(3)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
    assert errors == []
