"""Recipes: variables and scales, included files, `sets:` evals, split slices, the bundled
paper recipes, and a sized-down paper recipe run end to end on a tiny model."""

import re

import pytest

from cotdistill.errors import CotdistillError
from cotdistill.recipe import BUNDLED, bundled_recipes, load_recipe, run_recipe
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
