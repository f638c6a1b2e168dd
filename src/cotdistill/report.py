"""report: every eval run of a run directory side by side, as markdown, CSV and a PNG plot."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from cotdistill.store import Store

COLUMNS = ["run", "pipeline", "model", "task", "split", "n", "correct", "strict %", "95% CI", "flexible %",
           "no answer", "calls/problem", "tokens/problem", "GFLOPs/problem", "$/problem", "s/problem"]


def eval_rows(store: Store) -> list[dict[str, Any]]:
    rows = []
    for run in store.runs("eval"):
        if run["status"] != "done":
            continue
        m, c = run["result"], run["config"]
        rows.append({
            "run": run["name"], "model": c["model"], "task": c["task"], "split": c["split"], "n": int(m["n"]),
            "correct": int(m["correct_strict"]), "strict %": round(100 * m["accuracy_strict"], 1),
            "95% CI": f"{100 * m['ci95_low']:.1f}-{100 * m['ci95_high']:.1f}",
            "flexible %": round(100 * m["accuracy_flexible"], 1), "no answer": int(m["no_answer_strict"]),
            "pipeline": c.get("pipeline", "single") + (f" x{c['samples']}" if c.get("samples", 1) > 1 else ""),
            "calls/problem": round(m.get("calls_per_problem", 1.0), 2),
            "tokens/problem": round(m["completion_tokens_per_problem"], 1),
            "GFLOPs/problem": round(m.get("flops_per_problem", 0.0) / 1e9, 1),
            "$/problem": f"{m.get('usd_per_problem', 0.0):.6f}",
            "s/problem": round(m["seconds_per_problem"], 3),
            "_low": 100 * m["ci95_low"], "_high": 100 * m["ci95_high"],
            "_all_tokens": m["prompt_tokens_per_problem"] + m["completion_tokens_per_problem"],
            "_arm": _arm(run["name"], c["task"], c["split"]),
        })
    return rows


def report(run_dir: str | Path) -> str:
    """Write report.md, report.csv and report.png into the run directory; return the markdown."""
    run_dir = Path(run_dir)
    store = Store(run_dir)
    rows = eval_rows(store)
    trainings = [r for r in store.runs("train") if r["status"] == "done"]
    store.close()
    with (run_dir / "report.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = _by_task(rows)
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    if trainings:
        lines += ["", "| student | method | examples | LoRA | steps | first loss | last loss | minutes |",
                  "|---|---|---|---|---|---|---|---|"]
        for t in trainings:
            r = t["result"]
            lines.append(f"| {t['name'].removeprefix('train:')} | {r['method']} | {r['examples']} | {r['lora']} | "
                         f"{r['steps']} | {_fmt(r['first_logged_loss'])} | {_fmt(r['last_logged_loss'])} | "
                         f"{r['seconds'] / 60:.1f} |")
    lines += _teachers(trainings)
    markdown = "\n".join(lines) + "\n"
    (run_dir / "report.md").write_text(markdown)
    if rows:
        _plot(rows, run_dir / "report.png")
    return markdown


def _arm(run: str, task: str, split: str) -> str:
    """What was evaluated, without where: `cot:svamp:test` and `cot:gsm8k:dev` are arm `cot`
    (a recipe's `sets:` evals), `eval:m:svamp:test` is `eval:m`."""
    return run.replace(f":{task}:{split}", "", 1)


def _by_task(rows: list[dict[str, Any]]) -> list[str]:
    """Where some arm was evaluated on several sets, a table of arms x sets (strict %, n),
    the way papers set out a comparison; the full table follows it."""
    sets = list(dict.fromkeys(f"{r['task']}:{r['split']}" for r in rows))
    arms = list(dict.fromkeys(r["_arm"] for r in rows))
    if len(sets) < 2 or len(arms) == len(rows):
        return []
    cell = {(r["_arm"], f"{r['task']}:{r['split']}"): f"{r['strict %']} ({r['n']})" for r in rows}
    lines = ["strict accuracy % (n) per evaluation set:", "",
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
