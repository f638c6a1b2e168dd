"""The fault suite (issue 26): settings out of range, diverging training, broken students and
checkpoints, model-written numbers past every bound, inputs past the context, lying servers.
Each case failed before: a traceback, a hang, a poisoned student saved as done, or spend
counted downwards. Now: one line naming the input, a non-zero exit, the traceback kept in
RUN_DIR/logs/errors.log, and nothing wrong stored as a result."""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cotdistill.annotate import annotate
from cotdistill.answers import is_correct, normalize, out_of_bounds, parse_number
from cotdistill.errors import CotdistillError, EnvironmentProblem
from cotdistill.evaluate import evaluate
from cotdistill.store import Store

CLI = [sys.executable, "-c", "from cotdistill.cli import main; main()"]
# What cotdistill itself says: the libraries' progress bars and warnings are switched off.
QUIET = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore",
         "TRANSFORMERS_VERBOSITY": "error"}


def cli(*args: str, prefix: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [*CLI[:2], (prefix or "") + CLI[2]]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=QUIET)


PROGRESS = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")  # a progress bar's frame: " 67%|######   | 2/3 [00:00<..."


def one_line(result: subprocess.CompletedProcess) -> str:
    """The error line, alone on stderr but for progress bars, on a line of its own."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip() and not PROGRESS.search(line)]
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------------------------------
# fixtures: an annotated run, a trained student, broken models
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def annotated(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("annotated")
    annotate(run, "arith", limit=8)
    return run


def fresh_run(annotated: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(annotated, run)
    return run


def quick_train(run: Path, model: Path, name: str = "student", **settings):
    from cotdistill.train import train

    defaults = dict(max_steps=2, save_steps=1, report_to="none", per_device_train_batch_size=4)
    return train(run, name=name, student=str(model), **{**defaults, **settings})


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """Copies of the tiny model with a truncated or random model.safetensors, or an unknown model_type."""
    root = tmp_path_factory.mktemp("broken")
    weights = (tiny_model / "model.safetensors").read_bytes()
    models = {}
    for case in ("truncated", "random", "model_type"):
        models[case] = shutil.copytree(tiny_model, root / case)
    (models["truncated"] / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (models["random"] / "model.safetensors").write_bytes(os.urandom(len(weights)))
    config = json.loads((tiny_model / "config.json").read_text())
    (models["model_type"] / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
    return models


@pytest.fixture(scope="module")
def student_without_adapter(tmp_path_factory, annotated, tiny_model) -> Path:
    run = fresh_run(annotated, tmp_path_factory.mktemp("gone"))
    output = quick_train(run, tiny_model, max_steps=1)
    (output / "adapter_model.safetensors").unlink()
    return run


# ---------------------------------------------------------------------------------------
# one line for everything, as a user runs it
# ---------------------------------------------------------------------------------------

TRAIN = ["train", "--student", "{tiny}", "--max-steps", "2", "--report-to", "none"]
CASES = {
    "learning rate nan": ([*TRAIN, "--learning-rate", "nan"], "learning_rate must be > 0, not nan"),
    "learning rate inf": ([*TRAIN, "--learning-rate", "inf"], "learning_rate must be in [0, inf), not inf"),
    "lora_r=0": ([*TRAIN, "--set", "lora_r=0"], "lora_r must be >= 1, not 0"),
    "lora_dropout=2": ([*TRAIN, "--set", "lora_dropout=2"], "lora_dropout must be in [0, 1), not 2"),
    "lora_target_modules=x": ([*TRAIN, "--set", "lora_target_modules=x"], "lora_target_modules='x': Target modules x"),
    "max_steps=abc": ([*TRAIN, "--set", "max_steps=abc"], "max_steps must be int, not 'abc'"),
    "dataloader_num_workers=-3": ([*TRAIN, "--set", "dataloader_num_workers=-3"], "dataloader_num_workers must be >= 0"),
    "seed -1": ([*TRAIN, "--seed", "-1"], "seed must be in [0, 4294967295], not -1"),
    "eval seed -1": (["eval", "--model", "{tiny}", "--seed", "-1"], "--seed must be in [0, 4294967295], not -1"),
    "student named like an alias": ([*TRAIN, "--name", "smollm2-135m"], "student name 'smollm2-135m' is a model alias"),
    "lone surrogate": (["eval", "--model", "{tiny}", "--task", "jsonl", "--data", "{tmp}/surrogate.jsonl"],
                       "surrogate.jsonl:1: the question holds a lone surrogate '\\ud800'"),
    "empty data": (["eval", "--model", "{tiny}", "--task", "jsonl", "--data", "{tmp}/empty.jsonl"],
                   "eval: task jsonl has no problems in {tmp}/empty.jsonl"),
    "truncated safetensors": (["eval", "--model", "{broken}/truncated", "--limit", "1"],
                              "model {broken}/truncated does not load (SafetensorError"),
    "random safetensors": (["eval", "--model", "{broken}/random", "--limit", "1"],
                           "model {broken}/random does not load (SafetensorError"),
    "unknown model_type": (["eval", "--model", "{broken}/model_type", "--limit", "1"],
                           "model {broken}/model_type does not load (ValueError: The checkpoint you are trying to load "
                           "has model type `nosuchmodel`"),
    "adapter gone": (["eval", "--model", "student", "--limit", "1"],
                     "adapter_config.json without adapter_model.safetensors); `cotdistill train` with its settings "
                     "rebuilds a student"),
    "recipe includes itself": (["run", "{tmp}/self.yaml"], "self.yaml: include 'self' includes itself (self -> self)"),
    "result key missing": (["report"], "run 'eval:tiny' is done but its record lacks n"),
    "prompt of 3 MB": (["eval", "--model", "{tiny}", "--task", "jsonl", "--data", "{tmp}/huge.jsonl"],
                       "characters ('"),
    "prompt past the context": (["eval", "--model", "{tiny}", "--task", "jsonl", "--data", "{tmp}/long.jsonl"],
                                "tokens ('"),
}


@pytest.fixture
def case_files(tmp_path: Path) -> Path:
    (tmp_path / "surrogate.jsonl").write_text('{"question": "What is \\ud800 2+2?", "answer": "4"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "self.yaml").write_text("include: [self]\nsteps: []\n")
    write_jsonl(tmp_path / "huge.jsonl", [{"question": "x" * 3_000_000, "answer": "1"}])
    write_jsonl(tmp_path / "long.jsonl", [{"question": "What is " + " + ".join(["1"] * 1500) + "?", "answer": "1500"}])
    return tmp_path


@pytest.mark.parametrize("case", list(CASES))
def test_every_fault_is_one_line_naming_its_input_with_the_traceback_kept(
        case, case_files, annotated, tiny_model, broken_models, student_without_adapter):
    args, expected = CASES[case]
    run = student_without_adapter if case == "adapter gone" else fresh_run(annotated, case_files)
    if case == "result key missing":
        evaluate(run, model=str(tiny_model), limit=1, max_new_tokens=2, name="eval:tiny")
        with sqlite3.connect(run / "store.sqlite") as db:
            db.execute("UPDATE runs SET result = json_remove(result, '$.n') WHERE name = 'eval:tiny'")
    fill = {"tiny": str(tiny_model), "tmp": str(case_files), "broken": str(broken_models["truncated"].parent)}
    started = time.perf_counter()
    result = cli(*[a.format(**fill) for a in args], "--run-dir", str(run))
    line = one_line(result)
    assert expected.format(**fill) in line, line
    assert time.perf_counter() - started < 60
    log = (run / "logs" / "errors.log").read_text()
    assert "Traceback (most recent call last)" in log and expected.format(**fill) in log
    with sqlite3.connect(run / "store.sqlite") as db:  # no attempt is left `running`, none is `done` by mistake
        assert db.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0] == 0


def test_the_last_handler_turns_an_unforeseen_error_into_one_line_and_debug_shows_it(annotated, tmp_path):
    """A fault no check foresaw (here a garbled runs row): one line naming the step, the run
    and the log; `--debug` prints the traceback as well."""
    run = fresh_run(annotated, tmp_path)
    with sqlite3.connect(run / "store.sqlite") as db:
        db.execute("INSERT INTO runs (name, kind, config, status, started) VALUES ('x', 'eval', '{garbled', 'done', 0)")
    line = one_line(cli("report", "--run-dir", str(run)))
    assert line.startswith(f"error: report (run {run}): unexpected JSONDecodeError: ")
    assert line.endswith(f"traceback in {run}/logs/errors.log")
    assert "store.py" in (run / "logs" / "errors.log").read_text()
    debug = cli("--debug", "report", "--run-dir", str(run))
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == line


# ---------------------------------------------------------------------------------------
# never a poisoned student called done
# ---------------------------------------------------------------------------------------

def test_a_diverging_training_stops_and_is_marked_failed_never_done(annotated, tmp_path, tiny_model):
    from cotdistill.train.trainer import NonFinite

    run = fresh_run(annotated, tmp_path)
    with pytest.raises(NonFinite, match="(the loss is nan at step|is not finite at step)"):
        quick_train(run, tiny_model, learning_rate=1e30, max_steps=4, warmup_steps=0)
    with Store(run) as store:
        assert store.run("train:student")["status"] == "failed" and not store.run("train:student")["result"]
    assert not (run / "students" / "student" / "cotdistill.json").exists()


def test_weights_that_are_not_finite_are_never_saved(tiny_model):
    import torch

    from cotdistill.models import load_model
    from cotdistill.train.trainer import NonFinite, check_finite_weights

    model, _ = load_model(str(tiny_model))
    check_finite_weights(model, "now")
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")
    with pytest.raises(NonFinite, match="is not finite now"):
        check_finite_weights(model, "now")


def test_kd_on_nan_teacher_log_probs_is_refused_before_training(annotated, tmp_path, tiny_model):
    run = fresh_run(annotated, tmp_path)
    with sqlite3.connect(run / "store.sqlite") as db:
        db.execute("""UPDATE annotations SET logprobs = '[["x", NaN, [["x", NaN]]]]'""")
    with pytest.raises(CotdistillError, match="holds teacher log-prob nan"):
        quick_train(run, tiny_model, objective="kd")


@pytest.mark.parametrize("damage", ["adapter deleted", "adapter cut short", "cotdistill.json deleted"])
def test_a_done_student_whose_files_are_broken_is_rebuilt(annotated, tmp_path, tiny_model, damage, capsys):
    from cotdistill.models import load_model
    from cotdistill.train.student import unloadable

    run = fresh_run(annotated, tmp_path)
    output = quick_train(run, tiny_model)
    adapter = output / "adapter_model.safetensors"
    intact = adapter.read_bytes()
    if damage == "adapter deleted":
        adapter.unlink()
    elif damage == "adapter cut short":
        adapter.write_bytes(intact[:1000])
    else:
        (output / "cotdistill.json").unlink()
    assert unloadable(output) is not None
    assert quick_train(run, tiny_model) == output
    assert "recorded as done, but" in capsys.readouterr().err
    assert unloadable(output) is None and adapter.read_bytes() == intact  # rebuilt from its last checkpoint
    load_model(str(output))


# ---------------------------------------------------------------------------------------
# checkpoints: kill -9 and a full disk while one is written
# ---------------------------------------------------------------------------------------

DIE_WHILE_SAVING = """
import errno, os, signal
from transformers import Trainer
save_rng_state = Trainer._save_rng_state
def fault(self, output_dir):
    if self.state.global_step == 2:
        {action}
    return save_rng_state(self, output_dir)
Trainer._save_rng_state = fault
"""
KILL = "os.kill(os.getpid(), signal.SIGKILL)"
ENOSPC = "raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), output_dir)"


@pytest.mark.parametrize("action", [KILL, ENOSPC], ids=["kill -9", "disk full"])
def test_a_checkpoint_cut_short_is_skipped_and_the_run_resumes(annotated, tmp_path, tiny_model, action):
    """The child dies (SIGKILL) or runs out of space (ENOSPC) in the middle of writing
    checkpoint-2: its weights and optimizer are written, its RNG and trainer state are not."""
    run = fresh_run(annotated, tmp_path)
    args = ["train", "--run-dir", str(run), "--student", str(tiny_model), "--max-steps", "3", "--report-to", "none",
            "--batch-size", "4", "--set", "save_steps=1", "--set", "save_total_limit=5"]
    first = cli(*args, prefix=DIE_WHILE_SAVING.format(action=action))
    checkpoints = run / "students" / "student" / "checkpoints"
    assert (checkpoints / "checkpoint-2").is_dir() and not (checkpoints / "checkpoint-2" / "trainer_state.json").exists()
    if action == KILL:
        assert first.returncode == -9
    else:
        assert one_line(first).startswith("error: [Errno 28] No space left on device: ")
        with Store(run) as store:
            assert store.run("train:student")["status"] == "failed"
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert "checkpoint-2 is incomplete" in again.stderr
    with Store(run) as store:
        record = store.run("train:student")
    assert record["status"] == "done" and record["result"]["resumed_from"] == "checkpoint-1"
    assert record["result"]["steps"] == 3


def test_a_really_full_disk_during_train_leaves_a_run_that_resumes_once_there_is_space(annotated, tmp_path, tiny_model):
    """The run directory on a 900 KiB tmpfs (a user namespace's own mount, no root needed): the
    store and checkpoint-1 fit, checkpoint-2 does not. Then the disk grows and the same command
    finishes the student."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no unprivileged user namespaces here to mount a small tmpfs: {probe.stderr.decode().strip()}")
    disk, source = tmp_path / "disk", fresh_run(annotated, tmp_path)
    disk.mkdir()
    train = shlex.join([*CLI, "train", "--run-dir", f"{disk}/run", "--student", str(tiny_model), "--max-steps", "3",
                        "--report-to", "none", "--batch-size", "4", "--set", "save_steps=1", "--set", "save_total_limit=5"])
    status = shlex.join([sys.executable, "-c", f"import sqlite3; print('status=' + sqlite3.connect('{disk}/run/store."
                                               "sqlite').execute('SELECT status FROM runs').fetchone()[0])"])
    script = (f"mount -t tmpfs -o size=900k tmpfs {disk} && cp -r {source} {disk}/run || exit 9\n"
              f"{train} 2>{tmp_path}/first.err; echo first=$?; {status}\n"
              f"mount -o remount,size=20m {disk} || exit 8\n"
              f"{train} 2>{tmp_path}/second.err; echo second=$?; {status}\n")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300, env=QUIET)
    first = (tmp_path / "first.err").read_text()
    outcome = re.findall(r"^(?:first|second|status)=\w+$", result.stdout, re.MULTILINE)
    # the failed attempt is marked failed where the store still takes a write, else it stays running
    assert outcome in (["first=1", f"status={s}", "second=0", "status=done"] for s in ("failed", "running")), \
        (result.stdout, result.stderr, first)
    line = one_line(subprocess.CompletedProcess([], 1, "", first))
    assert "disk is full" in line or "No space left on device" in line
    assert "is incomplete" in (tmp_path / "second.err").read_text()


# ---------------------------------------------------------------------------------------
# bounded parsing of model output
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["1e999999999", "-1E+999999999", "1e5000", "9" * 5000, "1e-999999999"])
def test_numbers_past_the_bounds_are_rejected_at_once(text):
    started = time.perf_counter()
    assert parse_number(text) is None and out_of_bounds(text)
    assert not is_correct(text, "5") and not is_correct("5", text)
    assert normalize(text) == text
    assert time.perf_counter() - started < 0.1


def test_numbers_within_the_bounds_still_read():
    assert parse_number("1e5") == 100000 and parse_number("2.5e-3") * 1000 == parse_number("2.5")
    assert is_correct("1,000", "1e3") and out_of_bounds("1e100") is None


def test_a_program_answer_past_the_bounds_is_a_rejected_answer_with_its_reason():
    from cotdistill.methods import get_method
    from cotdistill.sandbox import require_sandbox
    from cotdistill.tasks import Problem

    try:
        require_sandbox(model_written=True, accept_weak=False)
    except CotdistillError as error:
        pytest.skip(f"no sandbox here: {error}")
    started = time.perf_counter()
    parsed = get_method("pot").parse("```python\nanswer = '1e999999999'\n```", Problem("p", "q", "5"))
    assert not parsed.kept and parsed.reason.startswith("answer out of bounds: a number with exponent 999999999")
    assert time.perf_counter() - started < 10


def test_a_gold_answer_past_the_bounds_scores_as_wrong_within_seconds(tmp_path, server):
    data = write_jsonl(tmp_path / "gold.jsonl", [{"question": "What is 2 + 3?", "answer": "#### 1e999999999"}])
    server.reply = reply("The answer is 5.")
    started = time.perf_counter()
    metrics = evaluate(tmp_path, "gsm8k", data=data, model="openai:stub", api={"base_url": server.url})
    assert metrics["n"] == 1 and metrics["accuracy_strict"] == 0.0
    assert time.perf_counter() - started < 20


def test_a_50_mb_line_is_cut_before_it_is_tokenized(tiny_model):
    from transformers import AutoTokenizer

    from cotdistill.errors import CotdistillError
    from cotdistill.methods import Example
    from cotdistill.train.data import fit_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    started = time.perf_counter()
    huge = Example("cot", [{"role": "user", "content": "q " * 25_000_000}], "a " * 25_000_000)
    with pytest.raises(CotdistillError, match="1 of 1 training examples do not fit max_length=64"):
        fit_examples(tokenizer, [huge], 64)
    assert time.perf_counter() - started < 5


def test_max_new_tokens_is_bounded_by_the_context(tmp_path, tiny_model):
    """A billion new tokens asked for: the cache is sized by the context (1024 here), not 768 GB."""
    metrics = evaluate(tmp_path, model=str(tiny_model), limit=1, max_new_tokens=1_000_000_000)
    assert metrics["n"] == 1 and metrics["completion_tokens_per_problem"] < 1024


# ---------------------------------------------------------------------------------------
# money counts only upward: a real HTTP server that lies
# ---------------------------------------------------------------------------------------

def reply(content, usage=None, logprob=-0.5) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                         "logprobs": {"content": [{"token": "x", "logprob": logprob, "top_logprobs": []}]}}],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 5}}


class Scripted(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.server.requests += 1
        raw = json.dumps(self.server.reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    httpd.requests, httpd.reply = 0, reply("The answer is 5.")
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


API = {"max_retries": 0, "price_input": 1.0, "price_output": 1.0}


@pytest.mark.parametrize("lie", [
    reply("The answer is 5.", usage={"prompt_tokens": -1_000_000_000, "completion_tokens": 5}),
    reply("The answer is 5.", usage={"prompt_tokens": 10, "completion_tokens": 2.5}),
    reply("The answer is 5.", usage={"prompt_tokens": "10", "completion_tokens": 5}),
    reply(42), reply([1, 2]), reply("The answer is 5.", logprob=float("nan")),
], ids=["negative usage", "fractional usage", "usage as text", "int content", "list content", "nan log-prob"])
def test_a_lying_server_reply_is_a_failed_request_never_a_result(tmp_path, server, lie):
    server.reply = lie
    with pytest.raises(EnvironmentProblem, match="2 of 2 requests failed .*not a chat completion"):
        annotate(tmp_path, "arith", limit=2, teacher="openai:stub", api={**API, "base_url": server.url, "top_logprobs": 1})
    with Store(tmp_path) as store:
        assert tuple(store.db.execute("SELECT count(*), coalesce(min(cost), 0) FROM annotations").fetchone()) == (0, 0)


def test_content_as_text_parts_is_read(tmp_path, server):
    server.reply = reply([{"type": "text", "text": "The answer "}, {"type": "text", "text": "is 5."}])
    annotate(tmp_path, "arith", limit=1, teacher="openai:stub", api={**API, "base_url": server.url})
    with Store(tmp_path) as store:
        assert store.db.execute("SELECT text FROM annotations").fetchone()[0] == "The answer is 5."


def test_an_eval_against_a_server_with_int_content_is_one_line(tmp_path, server):
    server.reply = reply(42)
    line = one_line(cli("eval", "--run-dir", str(tmp_path), "--model", "openai:stub", "--base-url", server.url,
                        "--max-retries", "0", "--limit", "1"))
    assert "1 of 1 requests failed" in line and "not a chat completion" in line


def test_the_budget_holds_against_a_server_that_reports_no_cost(tmp_path, server):
    """The budget reserves each request's worst case before sending it; what the server says it
    used afterwards can only add to the spend, so a cap below one request sends nothing."""
    server.reply = reply("The answer is 5.", usage={"prompt_tokens": 0, "completion_tokens": 0})
    summary = annotate(tmp_path, "arith", limit=3, teacher="openai:stub",
                       api={**API, "base_url": server.url, "max_cost": 0.0001})
    assert server.requests == 0 and summary["stopped_by_budget"] and summary["not_sent"] == 3
