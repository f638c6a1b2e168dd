"""The evaluation sets the papers use: a fixture per file format (written here, in the
layout ../shared/data/README.md describes), GSM8K's seeded dev split, malformed files as one
line, and, where the shared data is present, the row counts its README states."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cotdistill.errors import CotdistillError
from cotdistill.tasks import get_task

ASDIV = """<?xml version="1.0" encoding="UTF-8" ?>\r
<Machine-Reading-Corpus-File>\r
<ProblemSet>\r
\t<Problem ID="nluds-0001" Grade="1" Source="http://www.k5learning.com">\r
\t\t<Body>Seven red apples and two green apples are in the basket.</Body>\r
\t\t<Question>How many apples are in the basket?</Question>\r
\t\t<Solution-Type>Addition</Solution-Type>\r
\t\t<Answer>9 (apples)</Answer>\r
\t\t<Formula>7+2=9</Formula>\r
\t</Problem>\r
\t<Problem ID="nluds-0002" Grade="2" Source="x">\r
\t\t<Body>A cake costs $2.5.</Body>\r
\t\t<Question>What do two cost?</Question>\r
\t\t<Solution-Type>Multiplication</Solution-Type>\r
\t\t<Answer>5</Answer>\r
\t\t<Formula>2.5*2=5</Formula>\r
\t</Problem>\r
</ProblemSet>\r
</Machine-Reading-Corpus-File>\r
"""
MAWPS = [{"iIndex": 7, "lAlignments": [1], "lEquations": ["X=(32+42)-35"], "lSolutions": [39.0],
          "sQuestion": " Debby had 32 pieces of candy and her sister 42. They ate 35. How many are left? "}]
ADDSUB = [{"iIndex": 1, "lEquations": ["X=70-27"], "lSolutions": ["43"], "sQuestion": "Joan had 70 . She has 27 ."},
          {"iIndex": 2, "lEquations": ["X=9.43"], "lSolutions": ["9.43"], "sQuestion": "Sam spent 9.43 ."}]
AQUA = [{"question": "Two birds fly 900 km/h. In miles per minute?", "options": ["A)32400", "B)6000", "C)600",
                                                                                 "D)60000", "E)10"],
         "rationale": "900 * 0.6 / 60 = 9\nANSWER:E", "correct": "E"}]
STRATEGYQA = [{"qid": "b867", "term": "Genghis Khan", "description": "x", "facts": ["He had sixteen children."],
               "answer": True, "question": "Are more people related to Genghis Khan than Julius Caesar?",
               "decomposition": ["How many kids did Julius Caesar have?", "Is #2 greater than #1?"]},
              {"qid": "c1", "term": "t", "description": "d", "facts": [], "answer": False, "question": "Is ice hot?",
               "decomposition": []}]
COMMONSENSEQA = [{"answerKey": "A", "id": "1afa", "question": {
    "question_concept": "revolving door", "stem": "A revolving door also serves as a security measure at a what?",
    "choices": [{"label": "A", "text": "bank"}, {"label": "B", "text": "library"}, {"label": "C", "text": "mall"},
                {"label": "D", "text": "new york"}, {"label": "E", "text": "store"}]}}]


def _json(path: Path, rows: list, lines: bool = False) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) if lines else json.dumps(rows))
    return path


def test_asdiv_xml(tmp_path):
    path = tmp_path / "ASDiv.xml"
    path.write_bytes(ASDIV.encode())
    first, second = get_task("asdiv").load(path)
    assert (first.id, first.answer, first.kind) == ("nluds-0001", "9", "number")
    assert first.question == "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
    assert first.gold == {"formula": "7+2=9", "solution_type": "Addition"}
    assert second.answer == "5"


@pytest.mark.parametrize("task", ["multiarith", "singleeq"])
def test_mawps_layout_float_answers(tmp_path, task):
    (problem,) = get_task(task).load(_json(tmp_path / "q.json", MAWPS))
    assert (problem.id, problem.answer) == ("7", "39")
    assert problem.question.startswith("Debby had 32") and problem.question.endswith("left?")
    assert problem.gold == {"equations": ["X=(32+42)-35"]}


def test_addsub_string_answers(tmp_path):
    whole, fraction = get_task("addsub").load(_json(tmp_path / "AddSub.json", ADDSUB))
    assert (whole.answer, fraction.answer) == ("43", "9.43")


def test_aqua_json_lines_with_options(tmp_path):
    (problem,) = get_task("aqua").load(_json(tmp_path / "dev.json", AQUA * 2, lines=True))[:1]
    assert (problem.answer, problem.kind) == ("E", "choice")
    assert problem.question.endswith("\nAnswer Choices: (A) 32400 (B) 6000 (C) 600 (D) 60000 (E) 10")
    assert problem.gold["rationale"].endswith("ANSWER:E")


def test_strategyqa_booleans(tmp_path):
    yes, no = get_task("strategyqa").load(_json(tmp_path / "strategyqa_train.json", STRATEGYQA))
    assert (yes.id, yes.answer, no.answer, yes.kind) == ("b867", "yes", "no", "yesno")
    assert yes.gold["decomposition"][1] == "Is #2 greater than #1?"


def test_commonsenseqa_nested_question_and_choices(tmp_path):
    (problem,) = get_task("commonsenseqa").load(_json(tmp_path / "dev.jsonl", COMMONSENSEQA, lines=True))
    assert (problem.id, problem.answer) == ("1afa", "A")
    assert problem.question == ("A revolving door also serves as a security measure at a what?\n"
                                "Answer Choices: (A) bank (B) library (C) mall (D) new york (E) store")


def test_gsm8k_dev_split_is_seeded_disjoint_and_first_class(tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(40)]
    path = _json(tmp_path / "train.jsonl", rows, lines=True)
    task = get_task("gsm8k", options={"dev_size": "10"})
    train, dev = task.load(path, "train"), task.load(path, "dev")
    assert (len(train), len(dev)) == (30, 10)
    assert not {p.id for p in train} & {p.id for p in dev}
    assert [p.id for p in dev] == [p.id for p in task.load(path, "dev")]  # the same every time
    assert [p.id for p in dev] != [p.id for p in get_task("gsm8k", options={"dev_size": "10", "dev_seed": "1"})
                                   .load(path, "dev")]
    assert all(p.answer == str(int(p.id.split("-")[1]) + 1) for p in dev)  # ids keep the file's numbering
    assert len(task.load(path, "dev", limit=3)) == 3
    with pytest.raises(CotdistillError, match="keeps 500 seeded training problems.*--option dev_size"):
        get_task("gsm8k").load(path, "train")  # 40 problems cannot give up 500


@pytest.mark.parametrize("task, name, content, message", [
    ("asdiv", "a.xml", "<a><Problem><Body>x</Body>\n</a>", "a.xml:2: malformed XML"),
    ("aqua", "dev.json", '{"question": "q", "options": "A)1", "correct": "A"}\n{"question": "r"}\n',
     "the choices field is not a list"),
    ("multiarith", "m.json", json.dumps([{"sQuestion": "q", "lSolutions": [], "iIndex": 1}]), "no field 'lSolutions.0'"),
    ("commonsenseqa", "c.jsonl", json.dumps({"id": "x", "answerKey": "A", "question": {"choices": []}}) + "\n",
     "c.jsonl:1: no field 'question.stem'"),
])
def test_malformed_files_exit_2_with_one_line(tmp_path, task, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    result = subprocess.run([sys.executable, "-m", "cotdistill", "annotate", "-r", str(tmp_path / "run"), "--task", task,
                             "--data", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COUNTS = [("asdiv", "asdiv/ASDiv.xml", 2305), ("multiarith", "multiarith/MultiArith.json", 600),
          ("addsub", "addsub/AddSub.json", 395), ("singleeq", "singleeq/questions.json", 508),
          ("aqua", "aqua/dev.json", 254), ("strategyqa", "strategyqa/strategyqa_train.json", 2290),
          ("commonsenseqa", "commonsenseqa/dev_rand_split.jsonl", 1221),
          ("commonsenseqa", "commonsenseqa/train_rand_split.jsonl", 9741)]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not beside this checkout")
@pytest.mark.parametrize("task, file, rows", COUNTS, ids=[c[1] for c in COUNTS])
def test_shared_data_row_counts(task, file, rows):
    assert len(get_task(task).load(SHARED / file, split="test")) == rows


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not beside this checkout")
def test_shared_gsm8k_dev_split():
    train = get_task("gsm8k").load(SHARED / "gsm8k" / "train.jsonl")
    dev = get_task("gsm8k").load(SHARED / "gsm8k" / "train_socratic.jsonl", "dev")
    assert (len(train), len(dev)) == (6973, 500)
    assert not {p.id for p in train} & {p.id for p in dev}
