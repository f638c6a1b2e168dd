"""Identity by content (issue 26): a problem is its task and text, not its line number, so two
files in one run never trade questions; an eval name stands for the data it scored; stores of
the positional schema are migrated in place; one process at a time runs an eval or a training
of one name; the verbs that only read never make a run directory. Real SQLite, the real CLI in
subprocesses, a real HTTP server and the tiny models of conftest.py."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cotdistill.methods import get_method
from cotdistill.store import ORPHANED, SCHEMA_VERSION, Store, request_key
from cotdistill.tasks import get_task
from cotdistill.testing import StubServer

CLI = [sys.executable, "-c", "from cotdistill.cli import main; main()"]
GSM8K = ["--task", "gsm8k", "--option", "dev_size=0"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def gsm8k_rows(*numbers: int) -> list[dict]:
    return [{"question": f"What is {n}?", "answer": f"It is {n}.\n#### {n}"} for n in numbers]


def echo(messages: list[dict[str, str]]) -> str:
    """A model that is always right about "What is N?"."""
    number = re.findall(r"What is (\d+)\?", messages[-1]["content"])[-1]
    return f"The answer is {number}."


def test_two_files_in_one_run_keep_their_own_questions(tmp_path, tiny_model):
    """Before: problems were keyed (task, split, jsonl-N), so b.jsonl's problems replaced a.jsonl's
    and export paired "What is 8?" with "The answer is 3."."""
    run = tmp_path / "run"
    a = write_jsonl(tmp_path / "a.jsonl", gsm8k_rows(8, 9))
    b = write_jsonl(tmp_path / "b.jsonl", gsm8k_rows(3))
    for data in (a, b):
        assert cli("annotate", "-r", run, *GSM8K, "--data", data, "--teacher", "gold").returncode == 0
    assert cli("export", "-r", run, "--out", tmp_path / "out.jsonl").returncode == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    pairs = sorted((row["prompt"][-1]["content"], row["completion"][0]["content"]) for row in rows)
    assert len(pairs) == 3
    for question, rationale in pairs:
        asked = re.findall(r"What is (\d+)\?", question)[-1]
        assert rationale.endswith(f"The answer is {asked}."), (question, rationale)
    assert len({row["problem_key"] for row in rows}) == 3
    # training reads the same pairs: every example of both files, each with its own question
    trained = cli("train", "-r", run, "--student", tiny_model, "--max-steps", "1", "--set", "report_to=none",
                  "--set", "save_strategy=no")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads((run / "students" / "student" / "cotdistill.json").read_text())["examples"] == 3


def test_gsm8k_and_its_socratic_copy_annotate_the_same_questions_side_by_side(tmp_path):
    """The README's pairing: the original file for CoT, the Socratic one for socratic. Each
    annotation keeps its own file's problem (the Socratic gold has sub-questions), and a dev
    question is never trained on, whichever file it was annotated from."""
    from cotdistill.annotate import annotate
    from cotdistill.methods import stored_examples

    original = write_jsonl(tmp_path / "train.jsonl", gsm8k_rows(4, 5))
    socratic = write_jsonl(tmp_path / "train_socratic.jsonl", [
        {"question": f"What is {n}?", "answer": f"What is it? ** It is {n}.\n#### {n}"} for n in (4, 5)])
    run = tmp_path / "run"
    options = {"dev_size": "0"}
    assert annotate(run, "gsm8k", data=original, options=options)["kept"] == 2
    assert annotate(run, "gsm8k", data=socratic, method="socratic", options=options)["kept"] == 2
    with Store(run) as store:
        cot = stored_examples(store, get_method("cot"), ["student"])
        qg = stored_examples(store, get_method("socratic"), ["qg"])
        problems = store.problems(a.problem_key for a, _ in cot + qg)
    assert len(cot) == 2 and len(qg) == 2 and len(problems) == 4  # same questions, two golds: four problems
    assert {problems[a.problem_key].question for a, _ in cot} == {problems[a.problem_key].question for a, _ in qg}
    assert all("subquestions" in problems[a.problem_key].gold for a, _ in qg)
    assert not any("subquestions" in problems[a.problem_key].gold for a, _ in cot)


def test_an_eval_name_on_other_data_is_refused_naming_both(tmp_path):
    """Before: the second eval sent no request, reused a.jsonl's predictions, scored them against
    b.jsonl's answers and stored 0.0% (the model scores 100%)."""
    run = tmp_path / "run"
    a = write_jsonl(tmp_path / "a.jsonl", [{"question": "What is 8?", "answer": "8"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"question": "What is 3?", "answer": "3"}])
    server = StubServer(echo)
    try:
        model = ["--model", "openai:m", "--base-url", server.start(), "--task", "jsonl", "--limit", "5"]
        first = cli("eval", "-r", run, *model, "--data", a)
        assert first.returncode == 0, first.stderr
        again = cli("eval", "-r", run, *model, "--data", b)
        assert again.returncode == 2
        message = one_line(again)
        assert "a.jsonl (sha256:" in message and "b.jsonl (sha256:" in message and "another name" in message
        assert server.requests == 1
        other = cli("eval", "-r", run, *model, "--data", b, "--name", "on-b")
        assert other.returncode == 0, other.stderr
        assert server.requests == 2
    finally:
        server.stop()
    with Store(run) as store:
        results = {r["name"]: r["result"]["accuracy_strict"] for r in store.runs("eval")}
    assert results == {"eval:openai:m:jsonl:test": 1.0, "on-b": 1.0}


def test_predictions_follow_their_question_not_their_line(tmp_path):
    """The same name and data source edited in place: refused too (its content hash changed);
    and at the prediction level, a problem whose text changed is never scored by the old answer."""
    from cotdistill.evaluate import evaluate

    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "What is 8?", "answer": "8"},
                                              {"question": "What is 9?", "answer": "9"}])
    server = StubServer(echo)
    api = {"base_url": server.start()}
    try:
        assert evaluate(tmp_path, "jsonl", data=data, model="openai:m", name="x", api=api)["accuracy_strict"] == 1.0
        write_jsonl(data, [{"question": "What is 7?", "answer": "7"}, {"question": "What is 9?", "answer": "9"}])
        with pytest.raises(Exception, match=r"run 'x' scored .*d.jsonl \(sha256:\w+\), not .*d.jsonl \(sha256:\w+\)"):
            evaluate(tmp_path, "jsonl", data=data, model="openai:m", name="x", api=api)
        assert evaluate(tmp_path, "jsonl", data=data, model="openai:m", name="y", api=api)["accuracy_strict"] == 1.0
    finally:
        server.stop()


# the store as cotdistill wrote it before schema 1 (user_version 0): positional ids
OLD_SCHEMA = """
CREATE TABLE problems (task TEXT NOT NULL, split TEXT NOT NULL, id TEXT NOT NULL, question TEXT NOT NULL,
    answer TEXT NOT NULL, kind TEXT NOT NULL, gold TEXT NOT NULL, PRIMARY KEY (task, split, id));
CREATE TABLE annotations (key TEXT PRIMARY KEY, task TEXT NOT NULL, split TEXT NOT NULL, problem_id TEXT NOT NULL,
    method TEXT NOT NULL, teacher TEXT NOT NULL, sample INTEGER NOT NULL, prompt TEXT NOT NULL, text TEXT NOT NULL,
    parsed TEXT NOT NULL, answer TEXT, kept INTEGER NOT NULL, reason TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, cost REAL NOT NULL, created REAL NOT NULL,
    finish_reason TEXT NOT NULL DEFAULT 'stop', logprobs TEXT);
CREATE INDEX annotations_by_method ON annotations (task, split, method, kept);
CREATE TABLE runs (name TEXT PRIMARY KEY, kind TEXT NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL,
    result TEXT NOT NULL DEFAULT '{}', started REAL NOT NULL, finished REAL);
CREATE TABLE predictions (run TEXT NOT NULL, problem_id TEXT NOT NULL, sample INTEGER NOT NULL, text TEXT NOT NULL,
    strict TEXT, flexible TEXT, correct_strict INTEGER NOT NULL, correct_flexible INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, seconds REAL NOT NULL,
    PRIMARY KEY (run, problem_id, sample));
CREATE TABLE stage_costs (run TEXT NOT NULL, problem_id TEXT NOT NULL, sample INTEGER NOT NULL, stage TEXT NOT NULL,
    calls INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL, flops REAL NOT NULL, usd REAL NOT NULL, PRIMARY KEY (run, problem_id, sample, stage));
CREATE TABLE metrics (run TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (run, name));
"""


def _old_store(run: Path, data: Path) -> None:
    """What the old annotate (gold CoT of `data`) and eval left, plus the old bug's trace: an
    annotation of a question whose problem row another file replaced."""
    run.mkdir()
    cot = get_method("cot")
    problems = get_task("gsm8k", options={"dev_size": "0"}).load(data)
    db = sqlite3.connect(run / "store.sqlite")
    db.executescript(OLD_SCHEMA)
    for p in problems:
        db.execute("INSERT INTO problems VALUES (?, ?, ?, ?, ?, ?, ?)",
                   ("gsm8k", "train", p.id, p.question, p.answer, p.kind, json.dumps(p.gold)))
        messages = cot.teacher_messages(p)
        text = cot.gold_rationale(p)
        prompt = "\n\n".join(f"[{m['role']}] {m['content']}" for m in messages)
        db.execute("INSERT INTO annotations VALUES (?, ?, 'train', ?, 'cot', 'gold', 0, ?, ?, ?, ?, 1, 'ok', "
                   "0, 0, 0, 0, 'stop', NULL)", (request_key("gold", "cot", messages, {}, 0), "gsm8k", p.id, prompt, text,
                                     json.dumps(cot.parse(text, p).fields), p.answer))
    db.execute("INSERT INTO annotations VALUES ('stale', 'gsm8k', 'train', 'gsm8k-0', 'cot', 'gold', 1, "
               "'[user] What is 42?', 'The answer is 42.', '{}', '42', 1, 'ok', 0, 0, 0.5, 0, 'stop', NULL)")
    config = {"model": "m", "task": "gsm8k", "split": "train", "method": "cot", "temperature": 0.0,
              "max_new_tokens": 256, "pipeline": "single", "models": {"model": "m"}, "samples": 1, "problems": 2}
    db.execute("INSERT INTO runs VALUES ('old-eval', 'eval', ?, 'done', ?, 0, 1)",
               (json.dumps(config), json.dumps({"n": 2, "correct_strict": 2, "accuracy_strict": 1.0, "ci95_low": 0.3,
                                                "ci95_high": 1.0, "accuracy_flexible": 1.0, "no_answer_strict": 0,
                                                "prompt_tokens_per_problem": 1, "completion_tokens_per_problem": 1,
                                                "seconds_per_problem": 0.1})))
    for p in problems:
        db.execute("INSERT INTO predictions VALUES ('old-eval', ?, 0, ?, ?, ?, 1, 1, 1, 1, 0.1)",
                   (p.id, f"The answer is {p.answer}.", p.answer, p.answer))
    db.commit()
    db.close()


def test_a_store_of_the_positional_schema_is_migrated_in_place(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", gsm8k_rows(6, 7))
    run = tmp_path / "run"
    _old_store(run, data)
    report = cli("report", "-r", run)  # a read-only verb reads an old store
    assert report.returncode == 0, report.stderr
    assert "old-eval" in report.stdout
    again = cli("annotate", "-r", run, *GSM8K, "--data", data, "--teacher", "gold")  # nothing is asked again
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["new"], summary["kept"]) == (0, 2)
    with Store(run) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        [stale] = [a for a in store.annotations("cot", kept_only=False) if a.problem_key == ""]
        assert not stale.kept and stale.reason == ORPHANED and stale.cost == 0.5  # kept, counted, never trained on
        keys = {p.key for p in get_task("gsm8k", options={"dev_size": "0"}).load(data)}
        assert {key for key, _ in store.predicted("old-eval")} == keys
    exported = cli("export", "-r", run, "--out", tmp_path / "out.jsonl")
    assert exported.returncode == 0, exported.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


def test_a_store_of_a_newer_schema_is_refused_in_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    db = sqlite3.connect(tmp_path / "run" / "store.sqlite")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    result = cli("report", "-r", tmp_path / "run")
    assert result.returncode == 1 and "written by a newer cotdistill" in one_line(result)


def _wait_for_lock(run: Path, process: subprocess.Popen) -> None:
    """Until `process` holds its job's lock (the lock file names its holder)."""
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size for p in (run / "locks").glob("*.lock")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_two_evals_of_one_name_run_one_at_a_time(tmp_path):
    """Before: both ran in full, each sending every request."""
    run = tmp_path / "run"
    server = StubServer(echo, latency=2.0)
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "What is 8?", "answer": "8"}])
    try:
        args = ["eval", "-r", run, "--model", "openai:m", "--base-url", server.start(), "--task", "jsonl",
                "--data", data]
        first = popen(*args)
        try:
            _wait_for_lock(run, first)
            second = cli(*args)
            assert second.returncode == 1
            assert re.search(rf"pid {first.pid} \(since .*\) is already running eval eval:openai:m:jsonl:test",
                             one_line(second))
        finally:
            first.kill()  # kill -9: the kernel lets go of the lock
            first.wait()
        third = cli(*args)
        assert third.returncode == 0, third.stderr
    finally:
        server.stop()


def test_two_trainings_of_one_name_run_one_at_a_time(tmp_path, tiny_model):
    run = tmp_path / "run"
    assert cli("annotate", "-r", run, "--task", "arith", "--limit", "8").returncode == 0
    args = ["train", "-r", run, "--student", tiny_model, "--set", "report_to=none", "--set", "save_strategy=no"]
    first = popen(*args, "--max-steps", "100000")
    try:
        _wait_for_lock(run, first)
        second = cli(*args, "--max-steps", "100000")
        assert second.returncode == 1
        assert re.search(rf"pid {first.pid} \(since .*\) is already running train student", one_line(second))
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("verb", [["report"], ["export", "--out", "x.jsonl"]])
def test_reading_verbs_never_make_a_run_directory(tmp_path, verb):
    """Before: `report -r typo/deep/run` created the directory and an empty store."""
    result = cli(verb[0], "-r", tmp_path / "typo" / "deep" / "run", *verb[1:])
    assert result.returncode == 2 and "no run here" in one_line(result)
    assert not (tmp_path / "typo").exists()


def test_a_student_trained_again_under_its_name_is_not_taken_for_the_old_one(tmp_path, tiny_model):
    """An eval's predictions came from one build of a student: one retrained under the same
    name (its cotdistill.json rewritten) is refused under the old eval's name, while the same
    build copied elsewhere with the run is the same model."""
    import shutil

    from cotdistill.errors import CotdistillError
    from cotdistill.evaluate import evaluate

    run = tmp_path / "run"
    shutil.copytree(tiny_model, run / "students" / "s")
    (run / "students" / "s" / "cotdistill.json").write_text('{"seconds": 1.0}')
    settings = dict(model="s", task="arith", limit=1, max_new_tokens=2, name="e")
    evaluate(run, **settings)
    shutil.copytree(run, tmp_path / "moved")
    assert evaluate(tmp_path / "moved", **settings)["n"] == 1  # nothing changed but the place
    (run / "students" / "s" / "cotdistill.json").write_text('{"seconds": 2.0}')
    with pytest.raises(CotdistillError, match=r"run 'e' exists with other settings \(model_versions\)"):
        evaluate(run, **settings)
