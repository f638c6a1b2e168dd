"""Recipes: variables and scales, included files, `sets:` evals, split slices, the bundled
paper recipes, and a sized-down paper recipe run end to end on a tiny model."""

import json
import re

import pytest

from cotdistill.errors import CotdistillError
from cotdistill.recipe import BUNDLED, bundled_recipes, copy_recipe, describe_recipe, load_recipe, run_recipe
from cotdistill.tasks import get_task

PAPERS = ("socratic-cot", "distilling-step-by-step", "kpdd", "divide-or-conquer", "specialization", "best-gsm8k")


def write(path, text):
    path.write_text(text)
    return path


def test_every_bundled_recipe_loads_at_every_scale():
    assert set(PAPERS) | {"quickstart"} <= set(bundled_recipes())
    for name in PAPERS:
        small, full = load_recipe(name, "small"), load_recipe(name, "full")
        assert small["run_dir"] == f"runs/{name}-small" and full["run_dir"] == f"runs/{name}-full"
        assert load_recipe(name)["steps"] == small["steps"]  # the first scale is the default
        trains = [a for s in small["steps"] for v, a in s.items() if v == "train"]
        assert all(t["lora"] for t in trains) and not any(t["lora"] for s in full["steps"]
                                                         for v, t in s.items() if v == "train")
        text = str(small["steps"])
        assert "${" not in text and "'split': 'test'" not in text.replace("'split': 'test[", "")


def test_variables_are_typed_whole_and_text_inside(tmp_path):
    recipe = write(tmp_path / "r.yaml", """
variables: {n: 3, where: data, file: "${where}/x.jsonl", sets: [{task: arith, limit: "${n}"}]}
scales:
  tiny: {n: 2}
  big: {n: null}
run_dir: runs/r-${scale}
steps:
  - annotate: {task: jsonl, data: "${file}", limit: "${n}"}
  - eval: {name: m, model: m, sets: "${sets}"}
""")
    tiny = load_recipe(recipe)
    assert tiny["run_dir"] == "runs/r-tiny"
    assert tiny["steps"][0] == {"annotate": {"task": "jsonl", "data": "data/x.jsonl", "limit": 2}}
    assert tiny["steps"][1] == {"eval": {"name": "m:arith:test", "model": "m", "task": "arith", "limit": 2}}
    big = load_recipe(recipe, "big", {"where": "/elsewhere"})
    assert big["steps"][0]["annotate"] == {"task": "jsonl", "data": "/elsewhere/x.jsonl", "limit": None}


@pytest.mark.parametrize("text, scale, settings, message", [
    ("steps:\n  - eval: {limit: '${n}'}\n", None, {}, "${n} is not a variable of this recipe"),
    ("variables: {a: '${b}', b: '${a}'}\nsteps: []\n", None, {}, "refers to itself (a -> b -> a)"),
    ("scales: {small: {n: 1}}\nsteps: []\n", "huge", {}, "no scale 'huge' (scales: small)"),
    ("steps: []\n", "full", {}, "this recipe has one size"),
    ("variables: {n: 1}\nsteps: []\n", None, {"m": 2}, "no variable(s) m to set (variables: n)"),
    ("variables: {n: abc}\nsteps:\n  - eval: {limit: '${n}'}\n", None, {}, "limit must be int | None, not 'abc'"),
    ("steps:\n  - eval: {sets: 5}\n", None, {}, "`sets` must be a list of mappings, each with a task"),
    ("include: [nothere]\nsteps: []\n", None, {}, "include 'nothere': no file"),
])
def test_recipe_mistakes_are_named_on_load(tmp_path, text, scale, settings, message):
    with pytest.raises(CotdistillError, match=re.escape(message)):
        load_recipe(write(tmp_path / "r.yaml", text), scale, settings)


def test_included_variables_and_scales_merge_under_the_recipes_own(tmp_path):
    write(tmp_path / "_base.yaml", "variables: {a: 1, b: 2}\nscales:\n  small: {n: 1}\n  full: {n: 9}\n")
    recipe = write(tmp_path / "r.yaml", "include: [_base]\nvariables: {b: 3}\nscales:\n  small: {m: 4}\n"
                                        "steps:\n  - eval: {limit: '${n}', max_new_tokens: '${b}', batch_size: '${m}'}\n")
    assert load_recipe(recipe)["steps"][0]["eval"] == {"limit": 1, "max_new_tokens": 3, "batch_size": 4}
    with pytest.raises(CotdistillError, match=r"\$\{m\} is not a variable of this recipe at scale full"):
        load_recipe(recipe, "full")


def test_a_split_slice_takes_part_of_a_split(tmp_path):
    rows = "".join(f'{{"question": "q{i}", "answer": "#### {i}"}}\n' for i in range(20))
    data = write(tmp_path / "g.jsonl", rows)
    task = get_task("gsm8k", options={"dev_size": "10"})
    dev = [p.id for p in task.load(data, "dev")]
    assert [p.id for p in task.load(data, "dev[6:]")] == dev[6:]
    assert [p.id for p in task.load(data, "dev[:6]", limit=2)] == dev[:2]
    assert not set(dev) & {p.id for p in task.load(data, "train")}
    with pytest.raises(CotdistillError, match=r"written NAME\[START:END\]"):
        task.load(data, "dev[x:]")


def test_a_paper_recipe_runs_end_to_end_and_its_report_sets_arms_against_sets(tmp_path, tiny_model):
    """The kpdd recipe sized down to seconds: every step's real code, two evaluation sets
    per arm, and a report that tables arms x sets."""
    data = tmp_path / "data"
    for folder, name, text in [
        ("gsm8k", "train.jsonl", "".join(f'{{"question": "Tom has {i} apples and buys 2. How many now?", '
                                        f'"answer": "{i} + 2 = <<{i}+2={i + 2}>>{i + 2}\\n#### {i + 2}"}}\n'
                                        for i in range(520))),
        ("svamp", "SVAMP.json", "[" + ",".join(f'{{"ID": "s{i}", "Body": "Ann has {i} pens.", "Question": '
                                              f'"How many pens?", "Equation": "{i}", "Answer": {i}}}'
                                              for i in range(5)) + "]"),
    ]:
        (data / folder).mkdir(parents=True)
        write(data / folder / name, text)
    recipe = load_recipe("kpdd")
    assert [e["task"] for e in recipe["steps"][8:14] for e in e.values()][:2] == ["gsm8k", "svamp"]
    sized = write(tmp_path / "kpdd.yaml", (BUNDLED / "kpdd.yaml").read_text()
                  .replace("include: [_math]", "include: [_math, sized]"))
    write(tmp_path / "_math.yaml", (BUNDLED / "_math.yaml").read_text())
    write(tmp_path / "sized.yaml", """
variables:
  evals:
    - {task: gsm8k, data: "${gsm8k_train}", split: "dev[:400]", limit: 2}
    - {task: svamp, data: "${svamp}", split: "test[:900]", limit: 2}
scales:
  small: {train_limit: 4, max_new_tokens: 8, eval_batch_size: 4, batch_size: 4}
""")
    run_dir = run_recipe(sized, tmp_path / "run", settings={"data": str(data), "student": str(tiny_model)}, scale="small")
    report = (run_dir / "report.md").read_text()
    assert "| arm | gsm8k:dev[:400] | svamp:test[:900] |" in report
    for arm in ("cot", "pot", "kpdd-cot", "kpdd-pot"):
        assert re.search(rf"\| {arm} \| [\d.]+ \[[\d.]+-[\d.]+\] \(2\) \| [\d.]+ \[[\d.]+-[\d.]+\] \(2\) \|", report), report
    assert "| gsm8k:dev[:400] | cot | pot | 2 |" in report  # arms on the same problems, paired
    assert report.count(" | small | ") == 8  # every eval row names the recipe's scale
    assert (run_dir / "report.png").stat().st_size > 0


# Every bundled recipe takes the user's parts (issue 25) ------------------------------------

ALL = (*PAPERS, "quickstart")
USERS = {"teacher": "openai:my-model", "student": "my-org/my-student", "base_url": "http://127.0.0.1:9/v1",
         "concurrency": 2, "endpoint": "completions", "teacher_samples": 2, "stop": ["\n\n"]}


def steps(recipe, verb):
    return [arguments for step in recipe["steps"] for v, arguments in step.items() if v == verb]


@pytest.mark.parametrize("name", ALL)
def test_every_bundled_recipe_takes_a_served_teacher_and_the_users_student(name):
    recipe = load_recipe(name, "full" if name != "quickstart" else None, USERS)
    for annotate in steps(recipe, "annotate"):
        assert annotate["teacher"] == "openai:my-model" and annotate["samples"] == 2 and annotate["stop"] == ["\n\n"]
        assert annotate["api"] == {"base_url": "http://127.0.0.1:9/v1", "concurrency": 2, "endpoint": "completions",
                                   "api_key_env": "OPENAI_API_KEY"}
    for train in steps(recipe, "train"):
        assert train["student"] == "my-org/my-student" and train["teacher"] == "openai:my-model"
    gold = load_recipe(name)  # the defaults: gold, and no server options passed on
    assert all(a["teacher"] == "gold" and "api" not in a for a in steps(gold, "annotate"))


def test_the_on_policy_recipe_takes_a_served_annotating_teacher_and_the_users_student():
    recipe = load_recipe("on-policy", "small", USERS)
    [annotate] = steps(recipe, "annotate")
    assert annotate["teacher"] == "openai:my-model" and annotate["api"]["base_url"] == "http://127.0.0.1:9/v1"
    trains = {t["name"]: t for t in steps(recipe, "train")}
    assert trains["sft"]["student"] == "my-org/my-student" and all(t["teacher"] == "openai:my-model" for t in trains.values())
    assert {t["student"] for name, t in trains.items() if name != "sft"} == {"sft"}  # the arms continue the warm start
    assert trains["on-policy"]["teacher_model"] == "self"


def test_every_variable_of_every_bundled_recipe_has_help_and_a_value_per_scale():
    for name in ALL:
        path, variables = describe_recipe(name)
        names = {v.name for v in variables}
        assert {"teacher", "teacher_samples", "student", "base_url", "api_key_env", "concurrency", "endpoint"} <= names
        assert all(v.help for v in variables), [v.name for v in variables if not v.help]
        if name != "quickstart":
            small = {v.name: v.values["small"] for v in variables}
            full = {v.name: v.values["full"] for v in variables}
            assert small["train_limit"] != full["train_limit"] and full["train_limit"] is None
            assert small["gsm8k_train"] == "../shared/data/gsm8k/train.jsonl"


@pytest.mark.parametrize("settings, message", [
    ({"base_url": "http://127.0.0.1:9/v1"}, "step 1 (annotate): base_url configure an openai:MODEL teacher, and this "
                                            "step's is 'gold': set teacher=openai:MODEL too"),
    ({"teacher_sample": 2}, "no variable(s) teacher_sample to set; did you mean teacher_samples?"),
    ({"studnet": "x"}, "no variable(s) studnet to set; did you mean student?"),
])
def test_settings_that_cannot_apply_fail_in_one_line_naming_the_fix(settings, message):
    with pytest.raises(CotdistillError, match=re.escape(message)):
        load_recipe("kpdd", "small", settings)


@pytest.mark.parametrize("step, message", [
    ("eval: {modle: x}", "step 1 (eval): unknown argument(s) modle; did you mean model?"),
    ("annotate: {teacher: 'openai:m', baseurl: 'http://x/v1'}", "unknown argument(s) baseurl; did you mean base_url?"),
])
def test_misspelt_step_keys_suggest_the_right_name(tmp_path, step, message):
    with pytest.raises(CotdistillError, match=re.escape(message)):
        load_recipe(write(tmp_path / "r.yaml", f"steps:\n  - {step}\n"))


def test_flat_server_options_reach_the_teacher_as_the_cli_spells_them(tmp_path):
    recipe = write(tmp_path / "r.yaml", "steps:\n  - annotate: {teacher: 'openai:m', base_url: 'http://h:1/v1', "
                                        "concurrency: 1, api_key_env: MY_KEY, max_cost: null}\n")
    (annotate,) = steps(load_recipe(recipe), "annotate")
    assert annotate["api"] == {"base_url": "http://h:1/v1", "concurrency": 1, "api_key_env": "MY_KEY"}


def test_a_copied_recipe_is_editable_and_runs_from_its_folder(tmp_path):
    written = copy_recipe("kpdd", tmp_path / "mine")
    assert [p.name for p in written] == ["kpdd.yaml", "_math.yaml", "_teacher.yaml"]
    assert copy_recipe("kpdd", tmp_path / "mine") == written  # the same files again: nothing to refuse
    math = tmp_path / "mine" / "_math.yaml"
    math.write_text(math.read_text().replace("    train_limit: 200\n", "    train_limit: 7\n"))  # the copy's own
    recipe = load_recipe(tmp_path / "mine" / "kpdd.yaml", "small", {"teacher": "openai:m", "base_url": "http://h/v1"})
    assert steps(recipe, "annotate")[0]["limit"] == 7 and steps(recipe, "annotate")[0]["api"]["base_url"] == "http://h/v1"
    alone = write(tmp_path / "alone.yaml", (BUNDLED / "kpdd.yaml").read_text())  # its includes found bundled
    assert steps(load_recipe(alone, "small"), "annotate")[0]["limit"] == 200
    (tmp_path / "mine" / "kpdd.yaml").write_text("# mine\n")
    with pytest.raises(CotdistillError, match="kpdd.yaml exists and differs"):
        copy_recipe("kpdd", tmp_path / "mine")


# Know the cost first: the dry run ----------------------------------------------------------

def math_data(folder):
    """The files the paper recipes read, a few problems each, in their public layouts."""
    gsm8k = [{"question": f"Tom has {i} apples and buys 2. How many now?",
              "answer": f"He has {i} + 2 = <<{i}+2={i + 2}>>{i + 2}.\n#### {i + 2}"} for i in range(520)]
    socratic = [{"question": r["question"], "answer": f"How many now? ** {i} + 2 = <<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}"}
                for i, r in enumerate(gsm8k)]
    mawps = [{"iIndex": i, "lEquations": [f"X={i}+1"], "lSolutions": [i + 1.0], "sQuestion": f"Ann has {i} and 1 more."}
             for i in range(3)]
    files = {
        "gsm8k/train.jsonl": "".join(json.dumps(r) + "\n" for r in gsm8k),
        "gsm8k/train_socratic.jsonl": "".join(json.dumps(r) + "\n" for r in socratic),
        "svamp/SVAMP.json": json.dumps([{"ID": f"s{i}", "Body": f"Ann has {i} pens.", "Question": "How many pens?",
                                         "Equation": f"{i}", "Answer": i} for i in range(902)]),  # [900:] chooses checkpoints
        "asdiv/ASDiv.xml": '<?xml version="1.0"?><Machine-Reading-Corpus-File><ProblemSet><Problem ID="a1">'
                           "<Body>Seven apples.</Body><Question>How many?</Question><Solution-Type>x</Solution-Type>"
                           "<Answer>7</Answer><Formula>7=7</Formula></Problem></ProblemSet></Machine-Reading-Corpus-File>",
        "multiarith/MultiArith.json": json.dumps(mawps),
        "singleeq/questions.json": json.dumps(mawps),
        "addsub/AddSub.json": json.dumps([{**m, "lSolutions": [str(m["lSolutions"][0])]} for m in mawps]),
    }
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("name", PAPERS)
def test_a_full_scale_dry_run_with_a_served_teacher_prints_tokens_and_time_and_writes_nothing(tmp_path, monkeypatch,
                                                                                             name):
    from typer.testing import CliRunner

    from cotdistill.cli import app

    data = math_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["run", name, "--scale", "full", "--dry-run", "--set", f"data={data}",
                                      "--set", "teacher=openai:M", "--set", "student=my-org/my-student",
                                      "--price", "0.15,0.60", "--pace", "teacher=500"])
    assert result.exit_code == 0, result.output
    assert sorted(tmp_path.rglob("*")) == before  # no run directory, no store
    total = re.search(r"total: ([\d,]+) teacher requests, ([\d,]+) prompt \+ ~([\d,]+) completion tokens; "
                      r"([\d,]+) training tokens over all epochs; ([\d,]+) evaluation calls; ([\d.]+) hours; \$([\d.]+)", result.output)
    assert total, result.output
    requests, prompt, completion, training, calls = (int(g.replace(",", "")) for g in total.groups()[:5])
    annotates = sum(1 for step in load_recipe(name, "full")["steps"] if "annotate" in step)
    assert requests == 20 * annotates  # all 20 training problems left beside the 500 dev ones, once each
    assert prompt > requests * 20 and completion > 0 and training > 0 and calls > 0
    assert float(total.group(6)) > 0 and float(total.group(7)) > 0
    assert "2-core" not in result.output or "pace" in result.output


def test_the_dry_run_scales_with_the_recipe_and_counts_gold_as_free(tmp_path):
    from cotdistill.estimate import estimate_recipe

    data = str(math_data(tmp_path))
    small, _ = estimate_recipe(load_recipe("kpdd", "small", {"data": data}))
    full, source = estimate_recipe(load_recipe("kpdd", "full", {"data": data, "teacher": "openai:m"}), (1.0, 2.0))
    assert "SmolLM2" in source
    assert all(c.teacher_requests == 0 and c.usd == 0 for c in small if c.verb == "annotate")  # gold: no requests
    assert sum(c.eval_calls for c in full) > sum(c.eval_calls for c in small)
    trains = [c for c in full if c.verb == "train"]
    assert all(c.epochs == 3 and c.train_tokens > 0 for c in trains)
    annotate = next(c for c in full if c.verb == "annotate")
    assert annotate.usd == pytest.approx((annotate.prompt_tokens + 2 * annotate.completion_tokens) / 1e6)
    assert annotate.hours is None  # a served teacher's pace is not known until given


def test_the_dry_run_counts_max_steps_and_on_policy_rollouts():
    from cotdistill.estimate import estimate_recipe

    costs, _ = estimate_recipe(load_recipe("on-policy", "small"))
    train = {c.what.split(":")[0]: c for c in costs if c.verb == "train"}
    assert train["sft-budget"].epochs == pytest.approx(4 * train["sft-more"].epochs)  # 80 vs 20 steps of batch 8
    assert train["sft-budget"].hours == pytest.approx(4 * train["sft-more"].hours)
    assert train["on-policy"].generated_bound == 20 * 8 * 96 and train["sft-more"].generated_bound == 0
    assert train["on-policy"].hours > train["sft-more"].hours


def test_recipes_name_shows_each_variable_per_scale_and_copy_writes_a_runnable_folder(tmp_path):
    from typer.testing import CliRunner

    from cotdistill.cli import app

    shown = CliRunner().invoke(app, ["recipes", "kpdd"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert re.search(r"│ train_limit\s+│ 200\s+│ None\s+│ training problems", shown.output)
    assert re.search(r"│ base_url\s+│ None\s+│ None\s+│ openai: teachers: the server", shown.output)
    copied = CliRunner().invoke(app, ["recipes", "copy", "kpdd", str(tmp_path / "mine")])
    assert copied.exit_code == 0 and f"cotdistill run {tmp_path / 'mine' / 'kpdd.yaml'}" in copied.output
    unknown = CliRunner().invoke(app, ["recipes", "kpd"])
    assert unknown.exit_code != 0 and "did you mean kpdd?" in str(unknown.exception)
