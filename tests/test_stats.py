"""Results that hold up: McNemar's exact test and Wilson intervals against known values,
the report's paired tests and provenance columns on a real run store, and the training
rule that no example loses its target to truncation, for every method's examples."""

import csv

import pytest
from transformers import AutoTokenizer

from cotdistill.errors import CotdistillError
from cotdistill.evaluate import evaluate, score, wilson_interval
from cotdistill.methods import METHODS, Example, get_method
from cotdistill.report import holm, mcnemar, report
from cotdistill.store import Prediction, Store
from cotdistill.tasks import Problem, get_task
from cotdistill.train.data import fit_example, fit_examples, tokenize_example
from cotdistill.train.formats import format_examples


@pytest.mark.parametrize(("only_a", "only_b", "p"), [
    (0, 5, 0.0625),       # 2 * 0.5**5
    (5, 0, 0.0625),       # symmetric
    (1, 6, 0.125),        # 2 * (1 + 7) / 2**7
    (10, 0, 0.001953125),  # 2 / 2**10
    (3, 3, 1.0),          # a balanced split is no evidence: capped at 1
    (0, 0, 1.0),          # no discordant problem: nothing to test
])
def test_mcnemar_exact_matches_known_values(only_a, only_b, p):
    assert mcnemar(only_a, only_b) == pytest.approx(p)


def test_holm_adjusts_step_down_and_keeps_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


@pytest.mark.parametrize(("correct", "n", "low", "high"), [
    (3, 100, 0.0103, 0.0845), (1, 100, 0.0018, 0.0545), (0, 30, 0.0, 0.1135), (15, 30, 0.3315, 0.6685),
])
def test_wilson_interval_matches_published_values(correct, n, low, high):
    assert wilson_interval(correct, n) == pytest.approx((low, high), abs=5e-4)


def _store_with_two_arms(run_dir, a_right: set[int], b_right: set[int], n: int = 12) -> None:
    problems = [Problem(f"p{i}", f"What is {i} + 1?", str(i + 1), task="arith") for i in range(n)]
    with Store(run_dir) as store:
        store.add_problems(problems)
        for run, right in (("a", a_right), ("b", b_right)):
            store.start_run(run, "eval", {"model": run, "task": "arith", "split": "test"})
            store.add_predictions(Prediction(run, p.key, 0, "", p.answer if i in right else "0",
                                             p.answer if i in right else "0", i in right, i in right, 10, 5, 0.1)
                                  for i, p in enumerate(problems))
            store.finish_run(run, {**score(store, run, problems), "commit": "v9-test", "machine": "a CPU, 2 cores",
                                   "scale": "small"})


def test_report_shows_the_paired_test_and_provenance_on_every_row(tmp_path):
    _store_with_two_arms(tmp_path, a_right=set(range(7)), b_right={0})  # a alone right on 6: p = 2/64
    markdown = report(tmp_path)
    assert "| arith:test | a | b | 12 | 7 | 1 | 6 | 0 | 0.0312 | 0.0312 | a better |" in markdown
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [(r["scale"], r["commit"], r["machine"]) for r in rows] == [("small", "v9-test", "a CPU, 2 cores")] * 2
    assert rows[0]["95% CI"] == "32.0-80.7" and rows[0]["flexible 95% CI"] == "32.0-80.7"  # 7 of 12
    paired = list(csv.DictReader((tmp_path / "report-paired.csv").open()))
    assert paired[0]["only A"] == "6" and paired[0]["finding"] == "a better"


def test_a_difference_the_test_does_not_support_is_no_finding(tmp_path):
    _store_with_two_arms(tmp_path, a_right={0, 1, 2, 3}, b_right={0, 1})  # 2 discordant problems: p = 0.5
    markdown = report(tmp_path)
    assert "| 2 | 0 | 0.5 | 0.5 | no (within noise) |" in markdown


def test_eval_records_commit_machine_and_scale(tmp_path, tiny_model):
    evaluate(tmp_path, model=str(tiny_model), limit=2, max_new_tokens=2, name="tiny", scale="small")
    report(tmp_path)
    row = next(csv.DictReader((tmp_path / "report.csv").open()))
    assert row["scale"] == "small" and row["commit"] not in ("", "not recorded", "unknown")
    assert "cores" in row["machine"] or "x " in row["machine"]  # a CPU's model and cores, or GPUs


def test_few_shot_eval_puts_the_methods_demonstrations_before_the_question(tmp_path, tiny_model):
    cot = get_method("cot")
    shots = cot.demonstration_turns(2)
    assert [m["role"] for m in shots] == ["user", "assistant"] * 2 and shots[1]["content"].endswith("The answer is 12.")
    with pytest.raises(CotdistillError, match="has 3 demonstrations, not 4"):
        evaluate(tmp_path, model=str(tiny_model), limit=1, shots=4)
    metrics = evaluate(tmp_path, model=str(tiny_model), limit=2, max_new_tokens=2, shots=2, name="two-shot")
    zero = evaluate(tmp_path, model=str(tiny_model), limit=2, max_new_tokens=2, name="zero-shot")
    assert metrics["prompt_tokens_per_problem"] > zero["prompt_tokens_per_problem"] + 50


# --- no example loses its target to truncation ------------------------------------------

def _gold_examples(method_name: str) -> list[Example]:
    """A method's examples from its gold rationales (the gold teacher's path), parsed as annotate does."""
    method = get_method(method_name)
    data = {"socratic": "arith", "decompose": "arith"}
    problems = get_task(data.get(method_name, "arith")).load(split="train", limit=3)
    examples = []
    for problem in problems:
        rationale = method.gold_rationale(problem)
        parsed = method.parse(rationale, problem) if rationale else None
        if parsed and parsed.kept:
            examples += method.training_examples(problem, parsed.fields)
    return examples


def _target_ids(tokenizer, feature):
    return [t for t in feature["labels"] if t != -100]


@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_no_method_example_is_cut_it_fits_whole_or_is_refused_with_a_count(tiny_model, method_name):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = _gold_examples(method_name)
    if not examples:
        pytest.skip(f"{method_name}: no gold rationale on arith")
    whole = [tokenize_example(tokenizer, e.messages, e.completion) for e in examples]
    roomy = max(len(f["input_ids"]) for f in whole)
    fitted, shortened = fit_examples(tokenizer, examples, roomy)
    assert shortened == 0 and [f["labels"] for f in fitted] == [f["labels"] for f in whole]
    shortest = min(len(f["input_ids"]) for f in whole)
    too_long = sum(len(f["input_ids"]) > shortest for f in whole)
    if too_long:
        with pytest.raises(CotdistillError, match=f"^{too_long} of {len(examples)} training examples do not fit "
                                                  f"max_length={shortest} tokens even without demonstrations"):
            fit_examples(tokenizer, examples, shortest)


def test_a_few_shot_example_drops_demonstrations_never_its_target(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    problems = get_task("arith").load(split="train", limit=6)
    items = [(p, p.gold["cot"]) for p in problems]
    few = [e for _, e in format_examples(items, ["few-shot-cot"], demonstrations=3, seed=0)]
    assert all(e.demonstrations == 3 for e in few)
    example = few[0]
    whole = tokenize_example(tokenizer, example.messages, example.completion)
    bare = tokenize_example(tokenizer, example.messages[6:], example.completion)
    one_demo = tokenize_example(tokenizer, example.messages[4:], example.completion)
    # room for one demonstration, not for all three: the two farthest from the question go
    feature, dropped = fit_example(tokenizer, example, len(one_demo["input_ids"]))
    assert dropped == 2 and feature["input_ids"] == one_demo["input_ids"]
    assert _target_ids(tokenizer, feature) == _target_ids(tokenizer, whole)  # the whole target, to its EOS
    assert len(whole["input_ids"]) > len(one_demo["input_ids"])
    # no room even for the question and its target: refused, with the count, never cut
    assert fit_example(tokenizer, example, len(bare["input_ids"]) - 1) == (None, 3)
    with pytest.raises(CotdistillError, match=r"^1 of 2 training examples do not fit max_length=\d+ tokens even "
                                              r"without demonstrations \(the longest needs \d+\)"):
        short = Example("student", [{"role": "user", "content": "1+1?"}], "2")
        fit_examples(tokenizer, [example, short], len(bare["input_ids"]) - 1)


def test_seq2seq_holds_each_side_within_max_length(tiny_t5):
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    example = Example("student", [{"role": "user", "content": "predict: 2 + 2?"}], "The answer is 4.")
    feature = tokenize_example(tokenizer, example.messages, example.completion, seq2seq=True)
    longer = max(len(feature["input_ids"]), len(feature["labels"]))
    assert fit_example(tokenizer, example, longer, seq2seq=True)[0] == feature
    assert fit_example(tokenizer, example, longer - 1, seq2seq=True) == (None, 0)


# --- divide-or-conquer's filter is the paper's: the teacher screens its own decompositions ----

def test_the_gold_teacher_as_its_own_solver_keeps_every_gold_decomposition(tmp_path):
    from cotdistill.annotate import annotate

    result = annotate(tmp_path, "arith", limit=3, method="decompose", verify_with="gold")
    assert result["kept"] == result["requests"] == 3 and "verified" not in result  # no solver model loaded


def test_gold_cannot_screen_another_teachers_decompositions(tmp_path):
    from cotdistill.annotate import annotate

    with pytest.raises(CotdistillError, match="--verify-with gold screens nothing.*--verify-with openai:m"):
        annotate(tmp_path, "arith", limit=3, method="decompose", teacher="openai:m", verify_with="gold")
    assert not (tmp_path / "store.sqlite").exists()
