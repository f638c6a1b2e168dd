"""The CLI as a user runs it: a real subprocess, its exit code and what it prints."""

import os
import subprocess
import sys

import pytest

CLI = [sys.executable, "-c", "from cotdistill.cli import main; main()"]


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_help_lists_every_verb():
    result = run("--help")
    assert result.returncode == 0
    for verb in ("annotate", "train", "eval", "report", "run", "quickstart"):
        assert verb in result.stdout


@pytest.mark.parametrize("args, message", [
    (["eval", "--task", "gsm8k", "--data", "{tmp}/missing.jsonl"], "missing.jsonl: no such file"),
    (["eval", "--task", "gsm8k", "--data", "{tmp}/bad.jsonl"], "bad.jsonl:2: malformed JSON"),
    (["annotate", "--task", "gsm8k", "--data", "{tmp}/nofield.jsonl"], "nofield.jsonl:1: no field 'answer'"),
    (["annotate", "--task", "gsm9k"], "unknown task 'gsm9k'"),
    (["annotate", "--task", "jsonl", "--field", "rationale=r", "--data", "{tmp}/bad.jsonl"], "--field rationale"),
    (["eval", "--task", "arith", "--limit", "1", "--model", "no-such-org/no-such-model"], "unknown model 'no-such-org/no-such-model'"),
    (["annotate", "--method", "tot"], "unknown method 'tot'"),
    (["annotate", "--method", "cot", "--verify-with", "smollm2-135m"], "method cot has no solver stage"),
    (["annotate", "--prompts", "{tmp}/missing.yaml"], "missing.yaml: no such prompts file"),
    (["methods", "show", "tot"], "unknown method 'tot'"),
    (["eval", "--method", "decompose", "--limit", "1"], "use --pipeline decompose_solve"),
    (["eval", "--pipeline", "decompose_solve", "--model", "solver=smollm2-135m", "--limit", "1"],
     "needs a model for stage(s) decomposer"),
    (["eval", "--pipeline", "tree", "--limit", "1"], "unknown pipeline 'tree'"),
    (["eval", "--pipeline", "kpdd", "--model", "core=a", "--model", "info=a", "--model", "solution=a"], "pipeline kpdd runs method kpdd_cot"),
    (["train", "--student", "smollm2-135m"], "no kept cot annotations"),
    (["train", "--objective", "multitask"], "use --method dss"),
    (["train", "--objective", "mixup"], "objective must be one of sft, multitask, mi, kd"),
    (["train", "--formats", "zero-shot-cot,chatty"], "unknown format(s) chatty"),
    (["run", "{tmp}/recipe.yaml"], "step 1 (eval): unknown argument(s) modle"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text('{"question": "a", "answer": "#### 1"}\n{"question": \n')
    (tmp_path / "nofield.jsonl").write_text('{"question": "a"}\n')
    (tmp_path / "recipe.yaml").write_text("steps:\n  - eval: {modle: x}\n")
    args = [a.format(tmp=tmp_path) for a in args] + ["--run-dir", str(tmp_path / "run")] * (args[0] not in ("run", "methods"))
    result = run(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_also_exit_2():
    result = run("eval", "--limit", "many")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_methods_show_prints_the_prompts():
    result = run("methods", "show", "cot")
    assert result.returncode == 0
    assert "teacher prompt" in result.stdout and "The answer is 12." in result.stdout


def test_annotate_status_and_export_through_the_cli(tmp_path):
    result = run("annotate", "--task", "arith", "--limit", "5", "--run-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert '"kept": 5' in result.stdout
    status = run("annotate", "--task", "arith", "--limit", "8", "--run-dir", str(tmp_path), "--status")
    assert status.returncode == 0 and '"done": 5' in status.stdout and '"pending": 3' in status.stdout
    out = tmp_path / "cot.jsonl"
    exported = run("export", "--run-dir", str(tmp_path), "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert len(out.read_text().splitlines()) == 5
