"""Every method: its demonstrations and gold rationales parse and verify, bad replies are
rejected with a reason, and its student targets are what its paper defines."""

import json

import pytest

from cotdistill.annotate import annotate
from cotdistill.errors import CotdistillError
from cotdistill.methods import METHODS, get_method
from cotdistill.methods.base import DEMO_ANSWERS, DEMO_QUESTIONS
from cotdistill.methods.kpdd import gold_key_points
from cotdistill.methods.pot import program_from_calculations
from cotdistill.methods.socratic import parse_questions
from cotdistill.sandbox import Sandbox
from cotdistill.tasks import Problem, get_task

ARITH = get_task("arith").load(split="train", limit=8)
# Two GSM8K records as the original and the Socratic files write them.
GSM8K = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                "How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}
SOCRATIC = {**GSM8K, "answer": "How many clips did Natalia sell in May? ** Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                               "How many clips did Natalia sell altogether? ** Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"}


def gsm8k(tmp_path, record) -> Problem:
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return get_task("gsm8k", options={"dev_size": "0"}).load(path)[0]


@pytest.mark.parametrize("name", list(METHODS))
def test_demonstrations_and_arith_gold_parse_and_verify(name):
    method = get_method(name)
    demos = [Problem("d", q, a) for q, a in zip(DEMO_QUESTIONS, DEMO_ANSWERS)]
    assert all(p.kept for p in method.parse_many([r for _, r in method.prompts.demonstrations], demos))
    parsed = method.parse_many([method.gold_rationale(p) for p in ARITH], ARITH)
    assert [p.reason for p in parsed] == ["ok"] * len(ARITH)
    for problem, p in zip(ARITH, parsed):
        examples = method.training_examples(problem, p.fields)
        assert {e.role for e in examples} == set(method.roles)
        assert all(e.completion.strip() and e.messages[-1]["role"] == "user" for e in examples)


@pytest.mark.parametrize("name", list(METHODS))
def test_teacher_prompt_is_few_shot_and_ends_with_the_question(name):
    messages = get_method(name).teacher_messages(ARITH[0])
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]
    assert ARITH[0].question in messages[-1]["content"]


@pytest.mark.parametrize("name, reply, reason", [
    ("cot", "3 + 4 = 8. The answer is 8.", "wrong answer"),
    ("dss", "The answer is 7.", "no rationale before the answer"),
    ("socratic", "Q1: What is 3 + 4?\nThe answer is 7.", "no Q1/A1 sub-question chain"),
    ("socratic", "Q1: a?\nA1: b\nQ3: c?\nA3: 7\nThe answer is 7.", "no Q1/A1 sub-question chain"),
    ("decompose", "Let me just solve it: 7.", "no numbered sub-questions"),
    ("decompose", "\n".join(f"{i}. q{i}?" for i in range(1, 8)), "more than 5 sub-questions"),
    ("kpdd_cot", "Core question: how many?\nSolution: 3 + 4 = 7. The answer is 7.",
     "missing core question, information or solution section"),
    ("pot", "The answer is 7.", "no program"),
    ("pot", "```python\nanswer = 3 + 5\n```", "wrong answer"),
    ("pot", "```python\nanswer = 1 / 0\n```", "program exception"),
    ("pot", "```python\nwhile True:\n    pass\n```", "program timeout"),
    ("pot", "```python\nx = 7\n```", "program no answer"),
    ("kpdd_pot", "Core question: q?\nProblem-solving information:\n1. f.\nSolution:\n```python\nanswer = 6\n```",
     "wrong answer"),
])
def test_bad_replies_are_rejected_with_the_reason(name, reply, reason):
    parsed = get_method(name).parse(reply, Problem("p", "Tom has 3 apples and buys 4 more. How many?", "7"))
    assert (parsed.kept, parsed.reason) == (False, reason)


def test_dss_two_prefixed_tasks_and_label_modes():
    dss = get_method("dss")
    problem = Problem("p", "Tom has 3 apples and buys 4 more. How many?", "7")
    parsed = dss.parse("3 + 4 = 7 apples.\nThe answer is 7.", problem)
    assert parsed.kept and parsed.fields == {"rationale": "3 + 4 = 7 apples.", "label": "7"}
    label, rationale = dss.training_examples(problem, {"rationale": "r", "label": "7.0"})
    assert label.messages[0]["content"].startswith("predict: ") and label.completion == "The answer is 7.0."
    assert rationale.messages[0]["content"].startswith("explain: ") and rationale.completion == "r"
    assert dss.training_examples(problem, {"rationale": "r", "label": "7.0"}, gold_label=True)[0].completion == "The answer is 7."
    assert dss.student_messages(problem) == label.messages  # inference runs the label task only


def test_socratic_targets_are_the_papers_two_students(tmp_path):
    socratic = get_method("socratic")
    problem = gsm8k(tmp_path, SOCRATIC)
    parsed = socratic.parse(socratic.gold_rationale(problem), problem)
    assert parsed.kept and parsed.fields["steps"] == [
        ["How many clips did Natalia sell in May?", "Natalia sold 48/2 = 24 clips in May."],
        ["How many clips did Natalia sell altogether?", "Natalia sold 48+24 = 72 clips."]]
    examples = socratic.training_examples(problem, parsed.fields)
    [qg] = [e for e in examples if e.role == "qg"]  # one sequence: -sum_j log p(q_j | P, q_<j)
    assert qg.completion == "Q1: How many clips did Natalia sell in May?\nQ2: How many clips did Natalia sell altogether?"
    assert "A1" not in qg.messages[0]["content"] and problem.question in qg.messages[0]["content"]
    qa = [e for e in examples if e.role == "qa"]  # one per step: p(s_j | P, (q, s)_<j, q_j)
    assert [e.completion for e in qa] == ["Natalia sold 48/2 = 24 clips in May.",
                                          "Natalia sold 48+24 = 72 clips. The answer is 72."]
    assert qa[0].messages[0]["content"].endswith("Q1: How many clips did Natalia sell in May?")
    assert qa[1].messages[0]["content"].endswith(
        "Q1: How many clips did Natalia sell in May?\nA1: Natalia sold 48/2 = 24 clips in May.\n"
        "Q2: How many clips did Natalia sell altogether?")
    [unified] = [e for e in examples if e.role == "unified"]
    assert unified.completion.count("The answer is") == 1 and unified.completion.endswith("The answer is 72.")


def test_a_looping_question_generator_costs_no_extra_solver_rounds():
    plan = "Q1: How many in May?\nQ2: How many in all?\nQ3: How many in May?\nQ4: How many in all?\nQ5: How"
    assert parse_questions(plan) == ["How many in May?", "How many in all?"]
    assert parse_questions("Q1: a?\nQ3: c?\nQ2: b?\nQ3: a?") == ["a?", "b?"]  # out of order: skipped


def test_decompose_parses_lists_and_no_decomposition():
    decompose = get_method("decompose")
    problem = Problem("p", "q", "7")
    assert decompose.parse("No decomposition.", problem).fields == {"subquestions": []}
    parsed = decompose.parse("1. How many?\n2) How many more?\n\nNow I solve it: 7", problem)
    assert parsed.kept and parsed.fields["subquestions"] == ["How many?", "How many more?"]
    decomposer, solver = decompose.training_examples(Problem("p", "q", "7", gold={"cot": "3 + 4 = 7. The answer is 7."}),
                                                     parsed.fields)
    assert decomposer.completion == "1. How many?\n2. How many more?"
    assert "1. How many?" in solver.messages[0]["content"] and solver.completion.endswith("The answer is 7.")


def test_gsm8k_gold_conversion_for_every_method(tmp_path):
    original, socratic = gsm8k(tmp_path, GSM8K), gsm8k(tmp_path, SOCRATIC)
    assert program_from_calculations(original.gold["calculations"], "72") == \
        "step1 = 48/2\nstep2 = 48 + step1\nanswer = step2".replace(" + ", "+")
    for name in METHODS:
        method = get_method(name)
        problem = socratic if name in ("socratic", "decompose") else original
        text = method.gold_rationale(problem)
        assert text and method.parse(text, problem).kept, name
    assert get_method("socratic").gold_rationale(original) is None  # the original file has no sub-questions


def test_program_answer_is_the_step_that_reaches_the_gold_answer():
    program = program_from_calculations([["5*7", "35"], ["35+20", "55"], ["55-35", "20"]], "55")
    assert program.endswith("answer = step2") and "step2 = step1+20" in program
    with Sandbox(1) as sandbox:
        assert sandbox.run(program).answer == "55"


def test_kpdd_gold_key_points_split_the_question():
    assert gold_key_points("If Stu has 9 books, how many books does he have?") == (
        "Core question: How many books does he have?\nProblem-solving information:\n1. Stu has 9 books.")
    assert gold_key_points("Tom has 3 apples. He buys 4. How many now?").startswith("Core question: How many now?")


def test_prompts_file_overrides_and_changes_the_request_key(tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text('instruction: "Q: {question}\\nThink, then say The answer is N."\ndemonstrations: []\n')
    method = get_method("cot", prompts)
    assert method.teacher_messages(ARITH[0]) == [{"role": "user", "content": f"Q: {ARITH[0].question}\nThink, then say The answer is N."}]
    assert get_method("cot").prompts.demonstrations  # the default is untouched
    default = annotate(tmp_path / "run", "arith", limit=2, teacher="gold")
    assert annotate(tmp_path / "run", "arith", limit=2, teacher="gold", prompts=prompts)["new"] == 2 and default["new"] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("instruction: 'no placeholder'\n")
    with pytest.raises(CotdistillError, match="bad.yaml: field 'instruction' must contain"):
        get_method("cot", bad)
    bad.write_text("demonstrations:\n  - question: only\n")
    with pytest.raises(CotdistillError, match=r"bad.yaml: demonstrations\[0\] needs 'question' and 'reply'"):
        get_method("cot", bad)


def test_a_method_registered_from_outside_runs_annotate_train_eval_and_its_own_pipeline(tmp_path, tiny_model):
    """Adding a method touches one file: this one. What it declares (its pipeline and that
    pipeline's stages) is all annotate, train and eval need."""
    from cotdistill.annotate import annotate
    from cotdistill.evaluate import evaluate
    from cotdistill.methods import METHODS, Example, Method, Prompts, register_method
    from cotdistill.methods.base import check_answer
    from cotdistill.pipeline import Trace, call_stage
    from cotdistill.store import Store
    from cotdistill.train import train

    @register_method
    class Tally(Method):
        name = "tally"
        description = "toy: the answer first, then a check; or asked twice by two models"
        prompts = Prompts(instruction="{question}\nAnswer, then check it.", demonstrations=())
        pipelines = {"single": ("model",), "twice": ("first", "second")}

        def gold_rationale(self, problem):
            return f"The answer is {problem.answer}. Checked."

        def parse(self, text, problem):
            return check_answer(text, problem, {"text": text})

        def training_examples(self, problem, parsed, gold_label=False):
            return [Example("student", self.student_messages(problem), parsed["text"])]

        def run(self, pipeline, problems, models, settings):
            if pipeline == "single":
                return super().run(pipeline, problems, models, settings)
            traces = [Trace("", None) for _ in problems]
            requests = [self.student_messages(p) for p in problems]
            call_stage("first", models["first"], requests, traces, settings, self.stop)
            self.finish(traces, problems, call_stage("second", models["second"], requests, traces, settings, self.stop))
            return traces

    try:
        assert annotate(tmp_path, "arith", limit=8, method="tally")["kept"] == 8
        train(tmp_path, student=str(tiny_model), method="tally", max_steps=2, disable_tqdm=True)
        single = evaluate(tmp_path, model="student", method="tally", task="arith", limit=2, max_new_tokens=8)
        twice = evaluate(tmp_path, method="tally", task="arith", limit=2, max_new_tokens=8, pipeline="twice",
                         models={"first": "student", "second": str(tiny_model)})
        assert single["n"] == twice["n"] == 2
        assert twice["stage:first:calls_per_problem"] == twice["stage:second:calls_per_problem"] == 1
        with Store(tmp_path) as store:
            assert {r["config"]["method"] for r in store.runs("eval")} == {"tally"}
    finally:
        METHODS.pop("tally")


def test_methods_and_an_api_only_annotate_do_not_import_torch():
    """The model contract is torch-free: listing methods or annotating through a server
    never pays torch's import (seconds) or needs it installed."""
    import subprocess
    import sys

    code = "import sys, cotdistill.methods, cotdistill.annotate, cotdistill.evaluate; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
