"""report: every eval run of a run directory side by side, as markdown, CSV and a PNG plot,
with the paired test that says which differences between arms are findings.

Every accuracy carries its Wilson 95% interval, and every row the commit, scale and machine
it was produced with. Arms scored on the same problems are compared by McNemar's exact test
(`mcnemar`), not by whether their intervals overlap: two arms answer the same problems,
so only the problems on which they disagree carry information about which is better.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path
from typing import Any

from cotdistill.errors import CotdistillError
from cotdistill.evaluate import outcomes, wilson_interval
from cotdistill.store import Store

EVAL_KEYS = ("n", "correct_strict", "accuracy_strict", "ci95_low", "ci95_high", "accuracy_flexible", "no_answer_strict",
             "prompt_tokens_per_problem", "completion_tokens_per_problem", "seconds_per_problem")
TRAIN_KEYS = ("method", "examples", "lora", "steps", "first_logged_loss", "last_logged_loss", "seconds")
COLUMNS = ["run", "pipeline", "model", "task", "split", "n", "correct", "strict %", "95% CI", "flexible %",
           "flexible 95% CI", "no answer", "calls/problem", "tokens/problem", "GFLOPs/problem", "$/problem",
           "s/problem", "scale", "commit", "machine"]
PAIRED_COLUMNS = ["set", "arm A", "arm B", "n paired", "A correct", "B correct", "only A", "only B", "p (exact)",
                  "p (Holm)", "finding"]
ALPHA = 0.05


def mcnemar(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each discordant problem (one arm
    right, the other wrong) is a fair coin, so the smaller count is binomial(b + c, 1/2).
    Written with math.comb: a few lines, where scipy (`binomtest`) is not a dependency."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: a report tests many pairs, and at 5% each, one in twenty
    null pairs would be called a finding by chance."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _interval(correct: int, n: int) -> tuple[float, float, str]:
    low, high = wilson_interval(correct, n)
    return 100 * low, 100 * high, f"{100 * low:.1f}-{100 * high:.1f}"


def eval_rows(store: Store) -> list[dict[str, Any]]:
    rows = []
    for run in store.runs("eval"):
        if run["status"] != "done":
            continue
        m, c = _checked(store, run, EVAL_KEYS, ("model", "task", "split"))
        n, flexible = int(m["n"]), round(m["accuracy_flexible"] * m["n"])
        low, high, interval = _interval(int(m["correct_strict"]), n)
        rows.append({
            "run": run["name"], "model": c["model"], "task": c["task"], "split": c["split"], "n": n,
            "correct": int(m["correct_strict"]), "strict %": round(100 * m["accuracy_strict"], 1),
            "95% CI": interval, "flexible %": round(100 * m["accuracy_flexible"], 1),
            "flexible 95% CI": _interval(flexible, n)[2], "no answer": int(m["no_answer_strict"]),
            "pipeline": c.get("pipeline", "single") + (f" x{c['samples']}" if c.get("samples", 1) > 1 else "")
            + (f" {c['shots']}-shot" if c.get("shots") else ""),
            "calls/problem": round(m.get("calls_per_problem", 1.0), 2),
            "tokens/problem": round(m["completion_tokens_per_problem"], 1),
            "GFLOPs/problem": round(m.get("flops_per_problem", 0.0) / 1e9, 1),
            "$/problem": f"{m.get('usd_per_problem', 0.0):.6f}",
            "s/problem": round(m["seconds_per_problem"], 3),
            # runs recorded before these were kept say so, rather than borrow today's
            "scale": m.get("scale") or "-", "commit": m.get("commit", "not recorded"),
            "machine": m.get("machine", "not recorded"),
            "_low": low, "_high": high,
            "_all_tokens": m["prompt_tokens_per_problem"] + m["completion_tokens_per_problem"],
            "_arm": _arm(run["name"], c["task"], c["split"]),
        })
    return rows


def paired_tests(store: Store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """McNemar's exact test for every two arms scored on the same set, over the problems both
    answered; p-values Holm-adjusted over the whole report, and a difference is a finding
    only where the adjusted p is below 5%."""
    judged: dict[str, dict[str, bool]] = {}
    tests = []
    for key, group in itertools.groupby(sorted(rows, key=_set), key=_set):
        for a, b in itertools.combinations(sorted(group, key=rows.index), 2):
            for row in (a, b):
                if row["run"] not in judged:  # problems by content key: two arms pair on the same questions
                    problems = store.problems(p.problem_key for p in store.predictions(row["run"])).values()
                    judged[row["run"]] = {pid: ok for pid, (_, ok, _) in outcomes(store, row["run"], list(problems)).items()}
            shared = judged[a["run"]].keys() & judged[b["run"]].keys()
            pairs = [(judged[a["run"]][pid], judged[b["run"]][pid]) for pid in shared]
            only_a, only_b = sum(x and not y for x, y in pairs), sum(y and not x for x, y in pairs)
            tests.append({"set": key, "arm A": a["_arm"], "arm B": b["_arm"], "n paired": len(pairs),
                          "A correct": sum(x for x, _ in pairs), "B correct": sum(y for _, y in pairs),
                          "only A": only_a, "only B": only_b, "_p": mcnemar(only_a, only_b)})
    for test, adjusted in zip(tests, holm([t["_p"] for t in tests])):
        test["p (exact)"], test["p (Holm)"] = f"{test['_p']:.3g}", f"{adjusted:.3g}"
        better = test["arm A"] if test["only A"] > test["only B"] else test["arm B"]
        test["finding"] = f"{better} better" if adjusted < ALPHA else "no (within noise)"
    return tests


def _set(row: dict[str, Any]) -> str:
    return f"{row['task']}:{row['split']}"


def report(run_dir: str | Path) -> str:
    """Write report.md, report.csv, report-paired.csv and report.png into the run directory;
    return the markdown."""
    run_dir = Path(run_dir)
    with Store(run_dir, create=False) as store:  # a report reads: a mistyped --run-dir is an error, not a new run
        rows = eval_rows(store)
        tests = paired_tests(store, rows)
        trainings = [r for r in store.runs("train") if r["status"] == "done" and _checked(store, r, TRAIN_KEYS, ())]
    for name, columns, table in (("report.csv", COLUMNS, rows), ("report-paired.csv", PAIRED_COLUMNS, tests)):
        with (run_dir / name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(table)
    lines = _by_task(rows)
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    if tests:
        lines += ["", f"Paired tests: McNemar's exact test on the problems both arms answered (only A / only B: "
                      f"problems one arm got right and the other wrong); p Holm-adjusted over the {len(tests)} "
                      f"tests; a finding only where it is below {ALPHA:g}.", "",
                  "| " + " | ".join(PAIRED_COLUMNS) + " |", "|" + "---|" * len(PAIRED_COLUMNS)]
        lines += ["| " + " | ".join(str(t[c]) for c in PAIRED_COLUMNS) + " |" for t in tests]
    if trainings:
        lines += ["", "| student | method | examples | shortened to fit | LoRA | steps | first loss | last loss | minutes |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t in trainings:
            r = t["result"]
            lines.append(f"| {t['name'].removeprefix('train:')} | {r['method']} | {r['examples']} | "
                         f"{r.get('examples_shortened', '-')} | {r['lora']} | {r['steps']} | "
                         f"{_fmt(r['first_logged_loss'])} | {_fmt(r['last_logged_loss'])} | {r['seconds'] / 60:.1f} |")
    lines += _teachers(trainings)
    markdown = "\n".join(lines) + "\n"
    (run_dir / "report.md").write_text(markdown)
    if rows:
        _plot(rows, run_dir / "report.png")
    return markdown


def _checked(store: Store, run: dict[str, Any], result_keys: tuple[str, ...],
             config_keys: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A done run's result and config, refused in one line naming the run if a key the report
    reads is missing (a store edited, or written by another program)."""
    m, c = run["result"], run["config"]
    missing = [k for k in result_keys if k not in m] + [f"config.{k}" for k in config_keys if k not in c]
    if missing:
        raise CotdistillError(f"{store.path}: run {run['name']!r} is done but its record lacks {', '.join(missing)}: "
                              "run that step again under another name, or remove the run's row")
    return m, c


def _arm(run: str, task: str, split: str) -> str:
    """What was evaluated, without where: `cot:svamp:test` and `cot:gsm8k:dev` are arm `cot`
    (a recipe's `sets:` evals), `eval:m:svamp:test` is `eval:m`."""
    return run.replace(f":{task}:{split}", "", 1)


def _by_task(rows: list[dict[str, Any]]) -> list[str]:
    """Where some arm was evaluated on several sets, a table of arms x sets (strict %, n),
    the way papers set out a comparison; the full table follows it."""
    sets = list(dict.fromkeys(_set(r) for r in rows))
    arms = list(dict.fromkeys(r["_arm"] for r in rows))
    if len(sets) < 2 or len(arms) == len(rows):
        return []
    cell = {(r["_arm"], _set(r)): f"{r['strict %']} [{r['95% CI']}] ({r['n']})" for r in rows}
    lines = ["strict accuracy % [Wilson 95% CI] (n) per evaluation set:", "",
             "| arm | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    lines += ["| " + arm + " | " + " | ".join(cell.get((arm, s), "-") for s in sets) + " |" for arm in arms]
    return [*lines, ""]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, cost) = plt.subplots(1, 2, figsize=(11, 0.6 * len(rows) + 2.5))
    labels = [r["run"] for r in rows]
    strict = [r["strict %"] for r in rows]
    errors = [[s - r["_low"] for s, r in zip(strict, rows)], [r["_high"] - s for s, r in zip(strict, rows)]]
    bars.barh(labels, strict, xerr=errors, color="tab:blue", capsize=4, label="strict (95% CI)")
    bars.scatter([r["flexible %"] for r in rows], labels, color="tab:orange", zorder=3, label="flexible")
    bars.set_title("accuracy per eval run")
    bars.set_xlabel("accuracy (%)")
    bars.set_xlim(0, 100)
    bars.invert_yaxis()
    bars.legend(loc="lower right")
    by_flops = all(r["GFLOPs/problem"] > 0 for r in rows)  # local models only: compute is comparable
    # One colour per arm and one marker per evaluation set, so a comparison over several
    # sets reads as arms (colours) moving together across sets (markers).
    arms = list(dict.fromkeys(r["_arm"] for r in rows))
    sets = list(dict.fromkeys(f"{r['task']}:{r['split']}" for r in rows))
    colours, markers = plt.get_cmap("tab10"), "osD^v<>pPX*h"
    for r in rows:
        x = r["GFLOPs/problem"] if by_flops else r["_all_tokens"]
        cost.errorbar(x, r["strict %"], yerr=[[r["strict %"] - r["_low"]], [r["_high"] - r["strict %"]]], capsize=3,
                      color=colours(arms.index(r["_arm"]) % 10),
                      marker=markers[sets.index(f"{r['task']}:{r['split']}") % len(markers)], linestyle="none")
    handles = [plt.Line2D([], [], color=colours(i % 10), marker="o", linestyle="none",
                          label=f"{arm} ({next(r['pipeline'] for r in rows if r['_arm'] == arm)})")
               for i, arm in enumerate(arms)]
    if len(sets) > 1:
        handles += [plt.Line2D([], [], color="grey", marker=markers[i % len(markers)], linestyle="none", label=name)
                    for i, name in enumerate(sets)]
    cost.set_title("accuracy vs inference cost")
    cost.set_xlabel("estimated GFLOPs per problem, all stages" if by_flops else "prompt + generated tokens per problem, all stages")
    cost.set_ylabel("strict accuracy (%)")
    cost.set_ylim(0, 100)
    cost.legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _teachers(trainings: list[dict[str, Any]]) -> list[str]:
    """Whose replies each student learned from (a mix of teachers is named as one), and,
    where the teacher was gold, what the dataset's replies stand in for: the papers' teachers
    are LLMs, so a gold row is not the paper's setting."""
    from cotdistill.config import GOLD
    from cotdistill.methods import get_method

    lines, gold_methods = [], []
    for t in trainings:
        result = t["result"]
        teachers = result.get("teachers") or {}
        if not teachers:  # trained before students recorded their teachers
            continue
        mix = " + ".join(f"{name} ({n} annotation{'s' if n != 1 else ''})" for name, n in teachers.items())
        lines.append(f"- {t['name'].removeprefix('train:')}: {mix}" + ("; teachers mixed" if len(teachers) > 1 else ""))
        if GOLD in teachers and result["method"] not in gold_methods:
            gold_methods.append(result["method"])
    if not lines:
        return []
    out = ["", "Training data by teacher:", *lines]
    notes = [(m, get_method(m).gold_stands_in) for m in gold_methods]
    if any(note for _, note in notes):
        out += ["", "Where gold stands in for an LLM teacher (the papers' setting):",
                *[f"- {m}: {note}" for m, note in notes if note]]
    return out
