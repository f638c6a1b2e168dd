from cotdistill.methods import get_method
from cotdistill.tasks import Problem

PROBLEM = Problem("p1", "Tom has 3 apples and buys 4 more. How many?", "7")
COT = get_method("cot")


def test_correct_reply_is_kept_without_trailing_chatter():
    parsed = COT.parse("3 + 4 = 7. The answer is 7.\nHope this helps!", PROBLEM)
    assert parsed.kept and parsed.answer == "7" and parsed.reason == "ok"
    assert parsed.fields["rationale"] == "3 + 4 = 7. The answer is 7."


def test_wrong_or_missing_answers_are_rejected_with_a_reason():
    wrong = COT.parse("3 + 4 = 8. The answer is 8.", PROBLEM)
    assert (wrong.kept, wrong.reason, wrong.answer) == (False, "wrong answer", "8")
    missing = COT.parse("3 + 4 = 7 apples", PROBLEM)
    assert (missing.kept, missing.reason) == (False, "no final answer statement")


def test_gold_rationale_from_gsm8k_solution_steps():
    problem = Problem("g", "q", "72", gold={"solution": ["She sold 48/2 = 24.", "In all 48+24 = 72."]})
    rationale = COT.gold_rationale(problem)
    assert rationale == "She sold 48/2 = 24. In all 48+24 = 72. The answer is 72."
    assert COT.parse(rationale, problem).kept
    assert COT.gold_rationale(Problem("x", "q", "1")) is None


def test_teacher_prompt_is_few_shot_and_ends_with_the_question():
    messages = COT.teacher_messages(PROBLEM)
    assert [m["role"] for m in messages[:2]] == ["user", "assistant"]
    assert messages[-1]["role"] == "user" and PROBLEM.question in messages[-1]["content"]
    assert all(COT.parse(m["content"], Problem("", "", m["content"].split()[-1].rstrip("."))).kept
               for m in messages if m["role"] == "assistant")


def test_training_example_is_student_prompt_and_rationale():
    [example] = COT.training_examples(PROBLEM, {"rationale": "3 + 4 = 7. The answer is 7."})
    assert example.role == "student" and example.messages == COT.student_messages(PROBLEM)
    assert example.completion == "3 + 4 = 7. The answer is 7."
