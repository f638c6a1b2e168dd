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
    for verb in ("annotate", "train", "eval", "export-model", "report", "run", "recipes", "quickstart"):
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
    (["eval", "--method", "decompose", "--limit", "1"], "method decompose answers by pipeline decompose_solve, not 'single': use --pipeline decompose_solve"),
    (["eval", "--method", "decompose", "--pipeline", "decompose_solve", "--model", "solver=smollm2-135m", "--limit", "1"],
     "needs a model for stage(s) decomposer"),
    (["eval", "--pipeline", "tree", "--limit", "1"], "method cot answers by pipeline single, not 'tree'"),
    (["eval", "--pipeline", "kpdd", "--model", "core=a", "--model", "info=a", "--model", "solution=a"], "pipeline kpdd runs method kpdd_cot or kpdd_pot, not cot: add --method kpdd_cot"),
    (["train", "--student", "smollm2-135m"], "no kept cot annotations"),
    (["train", "--objective", "multitask"], "use --method dss"),
    (["train", "--objective", "mixup"], "objective must be one of sft, multitask, mi, kd"),
    (["train", "--formats", "zero-shot-cot,chatty"], "unknown format(s) chatty"),
    (["run", "{tmp}/recipe.yaml"], "step 1 (eval): unknown argument(s) modle"),
    (["run", "kpdd", "--scale", "huge"], "no scale 'huge' (scales: small, full)"),
    (["run", "kpdd", "--set", "nope=1"], "no variable(s) nope to set"),
    # numbers out of range, whichever verb
    (["annotate", "--teacher", "openai:m", "--base-url", "http://127.0.0.1:9/v1", "--concurrency", "0"],
     "--concurrency must be >= 1, not 0"),
    (["eval", "--limit", "0"], "--limit must be >= 1, not 0"),
    (["eval", "--batch-size", "0", "--limit", "1"], "--batch-size must be >= 1, not 0"),
    (["annotate", "--option", "steps=0"], "--option steps must be >= 1, not 0"),
    (["train", "--epochs", "0"], "epochs must be > 0"),
    (["train", "--batch-size", "0"], "batch size must be >= 1, not 0"),
    (["train", "--learning-rate", "-1"], "learning_rate must be > 0, not -1"),
    (["train", "--max-length", "0"], "max_length must be >= 1, not 0"),
    (["train", "--name", "../../escape"], "student name '../../escape'"),
    # files that are not what they should be
    (["annotate", "--task", "jsonl", "--data", "{tmp}/latin1.jsonl"], "latin1.jsonl: not UTF-8 text (byte 0xe9"),
    (["run", "{tmp}/latin1.yaml"], "latin1.yaml: not UTF-8 text (byte 0xe9"),
    (["annotate", "--task", "jsonl", "--field", "id=id", "--data", "{tmp}/dup.jsonl"],
     "dup.jsonl:2: id 'a' again (first at"),
    (["annotate", "--prompts", "{tmp}/prompts.yaml"], "'nope' where only {question} and {answer_hint}"),
    (["annotate", "--task", "{tmp}/question5.yaml", "--data", "{tmp}/dup.jsonl"], "question must be a field name"),
    (["annotate", "--task", "{tmp}/regex.yaml", "--data", "{tmp}/dup.jsonl"], "answer_pattern is not a regular expression"),
    (["run", "{tmp}/limit.yaml"], "step 1 (eval): limit must be int | None, not 'abc'"),
    (["run", "{tmp}/five.yaml"], "step 1 (annotate): its arguments must be a mapping, not 5"),
    (["run", "{tmp}/rundir.yaml"], "run_dir must be a path, not [1, 2]"),
    (["annotate", "--run-dir", "{tmp}/afile"], "run directory"),
    (["annotate", "--run-dir", "{tmp}/afile/sub"], "run directory"),
    (["export", "--out", "{tmp}"], "is a directory; give a .jsonl file path"),
    (["export-model", "--student", "nobody", "--out", "{tmp}/model"], "no trained student 'nobody' in this run"),
    (["export-model", "--dtype", "int4"], "--dtype int4: one of float32, bfloat16, float16"),
    (["annotate", "--teacher", "openai:http://127.0.0.1:9/v1"], "give the model's name after openai:"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text('{"question": "a", "answer": "#### 1"}\n{"question": \n')
    (tmp_path / "nofield.jsonl").write_text('{"question": "a"}\n')
    (tmp_path / "recipe.yaml").write_text("steps:\n  - eval: {modle: x}\n")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"question": "caf\xe9?", "answer": "1"}\n')
    (tmp_path / "latin1.yaml").write_bytes(b"steps:\n  - eval: {limit: 1}  # caf\xe9\n")
    (tmp_path / "dup.jsonl").write_text('{"id": "a", "question": "q", "answer": "1"}\n' * 2)
    (tmp_path / "prompts.yaml").write_text('instruction: "{question} {nope}"\n')
    (tmp_path / "question5.yaml").write_text("question: 5\n")
    (tmp_path / "regex.yaml").write_text('answer_pattern: "(("\n')
    (tmp_path / "limit.yaml").write_text('steps:\n  - eval: {limit: "abc"}\n')
    (tmp_path / "five.yaml").write_text("steps:\n  - annotate: 5\n")
    (tmp_path / "rundir.yaml").write_text("run_dir: [1, 2]\nsteps:\n  - report: {}\n")
    (tmp_path / "afile").write_text("x")
    given = [a.format(tmp=tmp_path) for a in args]
    args = given + ["--run-dir", str(tmp_path / "run")] * (args[0] not in ("run", "methods") and "--run-dir" not in args)
    result = run(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_environment_failures_are_one_line_and_exit_code_1(tmp_path):
    """A store that is not a database: the machine's state, not the command, is at fault."""
    (tmp_path / "store.sqlite").write_bytes(b"not a database" * 300)
    result = run("annotate", "--limit", "1", "--run-dir", str(tmp_path))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "store.sqlite: the run's store failed (file is not a database)" in lines[0], result.stderr


def test_a_full_disk_is_one_line_naming_the_store(tmp_path):
    """A 200 KiB tmpfs mounted in a user namespace (no root needed) fills up mid-annotation."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no unprivileged user namespaces here to mount a small tmpfs: {probe.stderr.decode().strip()}")
    full = tmp_path / "full"
    full.mkdir()
    command = " ".join([*CLI[:2], repr(CLI[2]), "annotate", "--task", "arith", "--limit", "800", "--run-dir", f"{full}/run"])
    result = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=200k tmpfs {full} && {command}"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: {full}/run/store.sqlite: the run's store failed (database or disk is full)", result.stderr
    assert "Traceback" not in result.stderr


def test_public_endpoint_without_a_key_is_refused_at_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    result = subprocess.run([*CLI, "annotate", "--teacher", "openai:gpt-4o", "--run-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2 and "needs a key: set $OPENAI_API_KEY" in result.stderr, result.stderr


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


def test_set_values_are_yaml_but_yes_and_no_stay_words():
    from cotdistill.cli import _yaml_value

    assert _yaml_value("no") == "no" and _yaml_value("On") == "On"  # save_strategy=no, not False
    assert _yaml_value("true") is True and _yaml_value("False") is False
    assert _yaml_value("3") == 3 and _yaml_value("0.0001") == 0.0001
    assert _yaml_value("[a, b]") == ["a", "b"]
