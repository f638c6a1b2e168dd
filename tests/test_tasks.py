import json

import pytest

from cotdistill.errors import CotdistillError
from cotdistill.tasks import get_task
from cotdistill.tasks.arith import generate

GSM8K_ROW = {
    "question": "Natalia sold clips to 48 friends in April, and half as many in May. How many altogether?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
}
SOCRATIC_ROW = {
    "question": GSM8K_ROW["question"],
    "answer": "How many clips did Natalia sell in May? ** Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "How many clips did she sell altogether? ** Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
}


WHOLE = {"dev_size": "0"}  # one-row fixtures: no dev split carved out of them


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_keeps_calculations_and_solution_steps(tmp_path):
    problem = get_task("gsm8k", options=WHOLE).load(write_jsonl(tmp_path / "g.jsonl", [GSM8K_ROW]))[0]
    assert problem.answer == "72"
    assert problem.gold["calculations"] == [["48/2", "24"], ["48+24", "72"]]
    assert problem.gold["solution"] == ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48+24 = 72 clips."]
    assert "subquestions" not in problem.gold


def test_gsm8k_socratic_file_gives_subquestion_pairs(tmp_path):
    problem = get_task("gsm8k", options=WHOLE).load(write_jsonl(tmp_path / "s.jsonl", [SOCRATIC_ROW]))[0]
    assert problem.gold["subquestions"][0] == ["How many clips did Natalia sell in May?",
                                               "Natalia sold 48/2 = 24 clips in May."]
    assert problem.gold["solution"][1] == "Natalia sold 48+24 = 72 clips."


def test_gsm8k_answer_with_thousands_separator(tmp_path):
    row = {"question": "How much?", "answer": "It costs 1,000 dollars.\n#### 1,000"}
    assert get_task("gsm8k", options=WHOLE).load(write_jsonl(tmp_path / "g.jsonl", [row]))[0].answer == "1000"


def test_svamp_joins_body_and_question(tmp_path):
    path = tmp_path / "SVAMP.json"
    path.write_text(json.dumps([{"ID": "chal-1", "Body": "Jack had 8 pens.", "Question": "How many now?",
                                 "Equation": "( 8.0 - 3.0 )", "Answer": 5.0, "Type": "Subtraction"}]))
    problem = get_task("svamp").load(path)[0]
    assert (problem.id, problem.question, problem.answer) == ("chal-1", "Jack had 8 pens. How many now?", "5")
    assert problem.gold == {"equation": "( 8.0 - 3.0 )"}


def test_csv_with_field_mapping(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("uid,context,ask,label\nx1,A cat.,Is it a cat?,Yes\n")
    task = get_task("csv", fields={"question": "context+ask", "answer": "label", "id": "uid"}, options={"kind": "yesno"})
    problem = task.load(path)[0]
    assert (problem.id, problem.question, problem.answer, problem.kind) == ("x1", "A cat. Is it a cat?", "yes", "yesno")


def test_task_from_yaml(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "1+1?", "sol": "two\nANSWER: 2"}])
    spec = tmp_path / "mine.yaml"
    spec.write_text("question: q\nanswer: sol\nanswer_pattern: 'ANSWER: (.+)'\n")
    problem = get_task(str(spec)).load(tmp_path / "d.jsonl")[0]
    assert (problem.id, problem.answer) == ("mine-0", "2")


def test_limit_reads_only_the_first_problems(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [GSM8K_ROW] * 5)
    assert len(get_task("gsm8k", options=WHOLE).load(path, limit=2)) == 2


@pytest.mark.parametrize("content, message", [
    ('{"question": "a", "answer": "#### 1"}\n{"question": "b", "answer": \n', "g.jsonl:2: malformed JSON"),
    ('{"question": "a"}\n', "g.jsonl:1: no field 'answer'"),
    ('{"question": "a", "answer": "no marker"}\n', "g.jsonl:1: field 'answer' does not match"),
    ('[1, 2]\n', "g.jsonl:1: expected a JSON object"),
])
def test_bad_records_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "g.jsonl"
    path.write_text(content)
    with pytest.raises(CotdistillError, match=message.replace("(", r"\(")):
        get_task("gsm8k").load(path)


def test_missing_file_unknown_task_and_unknown_field_mapping(tmp_path):
    with pytest.raises(CotdistillError, match="nope.jsonl: no such file"):
        get_task("gsm8k").load(tmp_path / "nope.jsonl")
    with pytest.raises(CotdistillError, match="unknown task 'gsm9k'"):
        get_task("gsm9k")
    with pytest.raises(CotdistillError, match="--field rationale"):
        get_task("jsonl", fields={"rationale": "r"})
    with pytest.raises(CotdistillError, match="--option steps: unknown option"):
        get_task("gsm8k", options={"steps": "3"})


def test_hub_loading_failure_says_to_pass_data():
    with pytest.raises(CotdistillError, match="pass --data PATH"):
        get_task("gsm8k").load(split="train")


def test_arith_is_deterministic_with_disjoint_splits():
    train = generate("train", 300, seed=3)
    assert [p.question for p in train] == [p.question for p in generate("train", 300, seed=3)]
    test = generate("test", 100, seed=3)
    assert not {p.question for p in train} & {p.question for p in test}
    assert len({p.question for p in train}) == 300


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_arith_gold_formats_agree_with_the_answer(steps):
    for problem in generate("train", 50, seed=1, steps=steps):
        scope: dict = {}
        exec(problem.gold["program"], {}, scope)  # our own generated code, not model output
        assert str(scope["answer"]) == problem.answer
        assert problem.gold["cot"].endswith(f"The answer is {problem.answer}.")
        assert len(problem.gold["subquestions"]) == steps
        assert problem.gold["subquestions"][-1][1].split("=")[-1].split()[0] == problem.answer
