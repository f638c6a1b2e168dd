"""See the teacher's data (issue 25): a weak teacher's replies listed with why each was
rejected, warnings that name the cause and the fix, retries with their causes, the student
trained on one teacher's data or on a mix the report names, and "no kept annotations"
that says what was rejected."""

import dataclasses
import re

import pytest
from typer.testing import CliRunner

from cotdistill.annotate import annotate
from cotdistill.cli import app
from cotdistill.errors import CotdistillError
from cotdistill.models.openai_api import plain_prompt
from cotdistill.store import Store
from cotdistill.tasks import get_task
from cotdistill.testing import StubServer

PROBLEMS = get_task("arith").load(split="train", limit=10)
ANSWERS = {p.question: p.answer for p in PROBLEMS}


def weak_teacher(messages):
    """A base model's habits: runs on to the token limit, copies a demonstration's answer
    (12, the first demonstration's), once in a while right."""
    question = messages[-1]["content"].split("\n")[0]
    index = list(ANSWERS).index(question)
    if index == 0:
        return f"So the answer is {ANSWERS[question]}."
    if index % 3 == 1 and ANSWERS[question] != "12":
        return "The baker makes 24 + 18 = 42 rolls. 42 - 30 = 12. The answer is 12."
    return ("And then and then and then", "length")


COPIES = sum(1 for i, a in enumerate(ANSWERS.values()) if i % 3 == 1 and a != "12")
CUT = len(ANSWERS) - 1 - COPIES


@pytest.fixture
def weak_server():
    stub = StubServer(weak_teacher)
    stub.start()
    yield stub
    stub.stop()


def test_a_weak_teachers_replies_are_listed_with_their_reasons_and_annotate_says_why(tmp_path, weak_server, capsys):
    summary = annotate(tmp_path, "arith", limit=10, teacher="openai:weak", api={"base_url": weak_server.base_url})
    assert COPIES >= 2 and CUT > 5
    assert summary["kept"] == 1 and summary["rejected_by_reason"] == {"cut off at max_new_tokens": CUT,
                                                                      "wrong answer": COPIES}
    warnings = " ".join(summary["warnings"])
    assert f"{CUT} of 10 replies were cut off at max_new_tokens (256)" in warnings and "--stop" in warnings
    assert f"{COPIES} of 10 new replies gave a few-shot demonstration's answer" in warnings
    assert f"warning: {CUT} of 10 replies were cut off" in capsys.readouterr().err

    result = CliRunner().invoke(app, ["annotations", "-r", str(tmp_path), "--rejected", "--limit", "2"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert re.search(rf"cot\s+│ openai:weak │ arith │ no\s+│ cut off at max_new_tokens\s+│ {CUT}", result.output), \
        result.output
    assert re.search(rf"wrong answer\s+│ {COPIES}", result.output) and "│ yes" not in result.output  # rejected only
    assert result.output.count("by openai:weak: rejected") == 2  # --limit 2 replies, each with its reason
    assert "answer '12', gold" in result.output or "And then and then" in result.output
    kept = CliRunner().invoke(app, ["annotations", "-r", str(tmp_path), "--kept", "--teacher", "gold"])
    assert kept.exit_code == 0 and "no stored replies match" in kept.output


def test_no_kept_annotations_says_how_many_were_rejected_and_why(tmp_path, weak_server):
    from cotdistill.methods import get_method, stored_examples

    annotate(tmp_path, "arith", limit=10, teacher="openai:weak", api={"base_url": weak_server.base_url})
    with Store(tmp_path) as store, pytest.raises(CotdistillError) as error:
        stored_examples(store, get_method("cot"), ["student"], teacher="openai:other")
    assert "the store has cot annotations by openai:weak only: pick one with --teacher" in str(error.value)
    with Store(tmp_path) as store:
        with store.db:
            store.db.execute("UPDATE annotations SET kept = 0, reason = 'wrong answer' WHERE kept = 1")
        with pytest.raises(CotdistillError, match=re.escape(
                f"no kept cot annotations; all 10 replies were rejected ({CUT} cut off at max_new_tokens, "
                f"{COPIES + 1} wrong answer): see `cotdistill annotations -r")):
            stored_examples(store, get_method("cot"), ["student"])


def test_retries_are_counted_by_cause_with_a_hint_about_the_servers_slots(tmp_path):
    stub = StubServer(lambda messages: "The answer is 1.", faults={"timeout": 0.3, "500": 0.2}, hang=2.0)
    stub.start()
    try:
        summary = annotate(tmp_path, "arith", limit=12, teacher="openai:busy",
                           api={"base_url": stub.base_url, "concurrency": 6, "timeout": 0.5, "backoff": 0.01,
                                "max_retries": 40})
    finally:
        stub.stop()
    assert summary["done"] == 12 and summary["retries"] == sum(summary["retry_causes"].values())
    assert summary["retry_causes"]["timeout"] >= 1 and set(summary["retry_causes"]) <= {"timeout", "HTTP 500"}
    assert any("6 requests in flight may exceed the server's slots" in w for w in summary["warnings"])


def test_stop_strings_join_the_methods_and_reach_the_server(tmp_path):
    seen = []

    def record(messages):
        seen.append(messages)
        return "The answer is 1."

    stub = StubServer(record)
    stub.start()
    try:
        from cotdistill.models.openai_api import APIConfig, Budget, OpenAITeacher

        requests = []
        client = OpenAITeacher(APIConfig("m", base_url=stub.base_url))
        original = client._complete

        async def spy(session, messages, seed, max_new_tokens, temperature, stop):
            requests.append(list(stop))
            return await original(session, messages, seed, max_new_tokens, temperature, stop)

        client._complete = spy
        client.run([([{"role": "user", "content": "q"}], 0)], 8, 0.0, ["\nQuestion:", "\n\n"],
                   Budget(client.config), lambda i, c: None)
        summary = annotate(tmp_path, "arith", limit=1, teacher="openai:m", stop=["\n\n"],
                           api={"base_url": stub.base_url})
    finally:
        stub.stop()
    assert requests == [["\nQuestion:", "\n\n"]] and summary["done"] == 1


def test_plain_prompt_lays_out_demonstrations_for_a_base_model():
    messages = [{"role": "user", "content": "Q1?"}, {"role": "assistant", "content": "A1."},
                {"role": "user", "content": "Q2?"}]
    assert plain_prompt(messages) == "Q1?\nAnswer: A1.\n\nQ2?\nAnswer:"


def test_train_takes_one_teachers_data_and_the_report_names_a_mix(tmp_path, tiny_model):
    from cotdistill.report import report
    from cotdistill.train import train

    annotate(tmp_path, "arith", limit=6, teacher="gold")
    with Store(tmp_path) as store:  # the same replies as if a served teacher had written them
        rows = store.annotations("cot")
        store.add_annotations([dataclasses.replace(a, key=a.key + "x", teacher="openai:t") for a in rows[:4]])
    settings = dict(student=str(tiny_model), num_train_epochs=1, max_steps=1, per_device_train_batch_size=2,
                    report_to="none", save_strategy="no")
    train(tmp_path, name="gold-only", teacher="gold", **settings)
    train(tmp_path, name="mixed", **settings)
    with Store(tmp_path) as store:
        assert store.run("train:gold-only")["result"]["teachers"] == {"gold": 6}
        assert store.run("train:mixed")["result"]["teachers"] == {"gold": 6, "openai:t": 4}
    markdown = report(tmp_path)
    assert "- gold-only: gold (6 annotations)\n" in markdown
    assert "- mixed: gold (6 annotations) + openai:t (4 annotations); teachers mixed" in markdown
    assert "Where gold stands in for an LLM teacher" in markdown and "human-written solutions" in markdown


def test_a_teacher_that_keeps_almost_nothing_is_named_with_its_commonest_reasons():
    from cotdistill.annotate import _warnings
    from cotdistill.config import AnnotateConfig

    summary = {"done": 80, "kept": 1, "new": 80, "copied_a_demonstration": 1,
               "rejected_by_reason": {"no final answer statement": 42, "wrong answer": 36, "cut off at max_new_tokens": 1}}
    (warning,) = _warnings(summary, AnnotateConfig(), "runs/x")
    assert warning.startswith("only 1 of 80 replies were kept (42 no final answer statement, 36 wrong answer, 1 cut")
    assert "cotdistill annotations -r runs/x --rejected" in warning
