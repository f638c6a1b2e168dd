"""The `cotdistill` command: a thin typer layer over the Python API (one verb per step)."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cotdistill.config import AnnotateConfig, EvalConfig, default_of, help_of
from cotdistill.errors import CotdistillError
from cotdistill.models.backends import served
from cotdistill.models.openai_api import APIConfig
from cotdistill.train.fields import FIELDS

app = typer.Typer(
    help="Distil a teacher LLM's step-by-step reasoning into a small student model.\n\n"
    "The steps: annotate (teacher writes rationales) -> train (student learns them) -> eval -> report. "
    "Everything for one experiment lives in a run directory (--run-dir) holding store.sqlite, "
    "students/ and the report; every step resumes what an earlier run left unfinished.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()

A, E, API = AnnotateConfig, EvalConfig, APIConfig


def _opt(config: type, name: str, *flags: str, **kwargs: Any) -> Any:
    """A typer option whose help is the config field's: each option is declared once, in
    config.py, APIConfig or train/fields.py (tests/test_config.py checks the defaults too)."""
    return typer.Option(*flags, help=help_of(config, name), **kwargs)


RunDir = Annotated[Path, typer.Option("--run-dir", "-r", help="Run directory (store, students, reports).")]
TaskName = Annotated[str, _opt(A, "task", "--task", "-t")]
Data = Annotated[Optional[Path], _opt(A, "data", "--data", "-d")]
Limit = Annotated[Optional[int], _opt(A, "limit")]
Method = Annotated[str, _opt(A, "method", "--method", "-m")]
Fields = Annotated[Optional[list[str]], _opt(A, "fields", "--field")]
Options = Annotated[Optional[list[str]], _opt(A, "options", "--option")]
WeakSandbox = Annotated[bool, _opt(A, "weak_sandbox", "--weak-sandbox")]
Seed = Annotated[int, _opt(A, "seed")]
BatchSize = Annotated[int, _opt(A, "batch_size")]
MaxNewTokens = Annotated[int, _opt(A, "max_new_tokens")]
BaseURL = Annotated[Optional[str], _opt(API, "base_url")]
APIKeyEnv = Annotated[str, _opt(API, "api_key_env")]
Concurrency = Annotated[int, _opt(API, "concurrency")]
Timeout = Annotated[float, _opt(API, "timeout")]
MaxRetries = Annotated[int, _opt(API, "max_retries")]
PriceInput = Annotated[float, _opt(API, "price_input")]
PriceOutput = Annotated[float, _opt(API, "price_output")]
Endpoint = Annotated[str, _opt(API, "endpoint")]


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise CotdistillError(f"{flag} {value!r}: expected KEY=VALUE")
        pairs[key.strip()] = rest.strip()
    return pairs


def _yaml_value(text: str) -> Any:
    """A --set value read as YAML (numbers, lists, true/false), except that YAML 1.1's
    yes/no/on/off stay words: `--set save_strategy=no` means the strategy "no", not False."""
    import yaml

    value = yaml.safe_load(text)
    return text if isinstance(value, bool) and text.strip().lower() not in ("true", "false") else value


def _show(result: Any) -> None:
    console.print_json(json.dumps(result, default=str))


@app.command()
def annotate(
    run_dir: RunDir = Path("runs/default"),
    task: TaskName = default_of(A, "task"),
    data: Data = None,
    split: Annotated[str, _opt(A, "split")] = default_of(A, "split"),
    limit: Limit = None,
    method: Method = default_of(A, "method"),
    teacher: Annotated[str, _opt(A, "teacher")] = default_of(A, "teacher"),
    samples: Annotated[int, _opt(A, "samples")] = default_of(A, "samples"),
    temperature: Annotated[float, _opt(A, "temperature")] = default_of(A, "temperature"),
    max_new_tokens: MaxNewTokens = default_of(A, "max_new_tokens"),
    seed: Seed = default_of(A, "seed"),
    batch_size: BatchSize = default_of(A, "batch_size"),
    field: Fields = None,
    option: Options = None,
    prompts: Annotated[Optional[Path], _opt(A, "prompts")] = None,
    verify_with: Annotated[Optional[str], _opt(A, "verify_with")] = None,
    weak_sandbox: WeakSandbox = False,
    base_url: BaseURL = None,
    api_key_env: APIKeyEnv = default_of(API, "api_key_env"),
    concurrency: Concurrency = default_of(API, "concurrency"),
    rpm: Annotated[Optional[float], _opt(API, "requests_per_minute")] = None,
    tpm: Annotated[Optional[float], _opt(API, "tokens_per_minute")] = None,
    timeout: Timeout = default_of(API, "timeout"),
    max_retries: MaxRetries = default_of(API, "max_retries"),
    top_logprobs: Annotated[int, _opt(API, "top_logprobs")] = default_of(API, "top_logprobs"),
    price_input: PriceInput = default_of(API, "price_input"),
    price_output: PriceOutput = default_of(API, "price_output"),
    max_cost: Annotated[Optional[float], _opt(API, "max_cost")] = None,
    max_tokens: Annotated[Optional[int], _opt(API, "max_tokens")] = None,
    endpoint: Endpoint = default_of(API, "endpoint"),
    stop: Annotated[Optional[list[str]], _opt(A, "stop", "--stop")] = None,
    status: Annotated[bool, typer.Option("--status", help="Only show done / pending / rejected counts and spend.")] = False,
) -> None:
    """Have a teacher write rationales; keep those whose answer checks out."""
    from cotdistill.annotate import annotate as run

    api = None
    if any(served(name) for name in (teacher, verify_with or "")):  # teacher or verifying solver
        api = {"base_url": base_url, "api_key_env": api_key_env, "concurrency": concurrency,
               "requests_per_minute": rpm, "tokens_per_minute": tpm, "timeout": timeout, "max_retries": max_retries,
               "top_logprobs": top_logprobs, "price_input": price_input, "price_output": price_output,
               "max_cost": max_cost, "max_tokens": max_tokens, "endpoint": endpoint}
    config = AnnotateConfig(task=task, data=data, split=split, limit=limit, method=method, teacher=teacher,
                            samples=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                            batch_size=batch_size, fields=_pairs(field, "--field"), options=_pairs(option, "--option"),
                            prompts=prompts, api=api, verify_with=verify_with, weak_sandbox=weak_sandbox,
                            stop=[s.replace("\\n", "\n").replace("\\t", "\t") for s in stop] if stop else None)
    _show(run(run_dir, config, status=status))


@app.command()
def annotations(
    run_dir: RunDir = Path("runs/default"),
    rejected: Annotated[bool, typer.Option("--rejected", help="Only rejected replies.")] = False,
    kept: Annotated[bool, typer.Option("--kept", help="Only kept replies.")] = False,
    teacher: Annotated[Optional[str], typer.Option(help="Only this teacher's replies (e.g. gold, openai:MODEL).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", "-m", help="Only this method's replies.")] = None,
    reason: Annotated[Optional[str], typer.Option(help="Only replies rejected for a reason containing this text.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="Replies to print (0: only the counts).")] = 5,
    width: Annotated[int, typer.Option(min=20, help="Characters of each reply to print.")] = 400,
) -> None:
    """See the teacher's data: counts by method, teacher and reason, then the replies, kept or rejected, with why."""
    from cotdistill.store import Store

    if rejected and kept:
        raise CotdistillError("--rejected and --kept: give one")
    if not (run_dir / "store.sqlite").is_file():
        raise CotdistillError(f"{run_dir}: no store.sqlite here; give the run directory with -r")

    def wanted(row: dict[str, Any]) -> bool:
        return (teacher in (None, row["teacher"]) and method in (None, row["method"])
                and not (rejected and row["kept"]) and not (kept and not row["kept"])
                and (reason is None or reason.lower() in row["reason"].lower()))

    with Store(run_dir, create=False) as store:  # a reading verb: a mistyped --run-dir makes no run
        counts = [r for r in store.annotation_counts() if wanted(r)]
        table = Table("method", "teacher", "task", "kept", "reason", "replies")
        for r in counts:
            table.add_row(r["method"], r["teacher"], r["task"], "yes" if r["kept"] else "no", r["reason"], str(r["n"]))
        console.print(table)
        shown = 0
        for name in dict.fromkeys(r["method"] for r in counts):
            rows = [a for a in store.annotations(name, kept_only=False, teacher=teacher)
                    if wanted({"teacher": a.teacher, "method": a.method, "kept": a.kept, "reason": a.reason})]
            golds = {key: p.answer for key, p in store.problems(a.problem_key for a in rows).items()}
            for a in rows[: max(0, limit - shown)]:
                verdict = "kept" if a.kept else f"rejected: {a.reason}"
                console.rule(f"{a.method} {a.task}:{a.problem_id} #{a.sample} by {a.teacher}: {verdict}", align="left")
                console.print(f"answer {a.answer!r}, gold {golds.get(a.problem_key)!r}, "
                              f"{a.completion_tokens} tokens, finish {a.finish_reason}", highlight=False)
                text = a.text if len(a.text) <= width else a.text[:width] + f" ... [{len(a.text) - width} more characters]"
                console.print(text or "(empty reply)", markup=False, highlight=False)
                shown += 1
        if not counts:
            console.print("no stored replies match")


@app.command()
def export(
    run_dir: RunDir = Path("runs/default"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL file (or directory for --format dataset).")] = Path("annotations.jsonl"),
    method: Method = "cot",
    format: Annotated[str, typer.Option(help="prompt-completion | messages (TRL JSONL) | dataset (datasets.load_from_disk).")] = "prompt-completion",
    task: Annotated[Optional[str], typer.Option(help="Only annotations of this task.")] = None,
    role: Annotated[Optional[list[str]], typer.Option(help="Only these students' examples (e.g. qg, qa); default all.")] = None,
) -> None:
    """Write kept annotations as training data other tools read (TRL, datasets)."""
    from cotdistill.export import export as run

    _show(run(run_dir, out, method=method, format=format, task=task, roles=role))


@app.command("export-model")
def export_model(
    run_dir: RunDir = Path("runs/default"),
    student: Annotated[str, typer.Option(help="The student's name in this run (see `cotdistill report`).")] = "student",
    out: Annotated[Path, typer.Option("--out", "-o", help="A new or empty directory for the model.")] = Path("model"),
    format: Annotated[str, typer.Option(help="hf: a Hugging Face model directory; gguf: a GGUF file (llama.cpp's "
                                              "converter) with an Ollama Modelfile.")] = "hf",
    gguf_type: Annotated[str, typer.Option(help="--format gguf: the weights as f16, q8_0, bf16 or f32.")] = "f16",
    llama_cpp: Annotated[Optional[Path], typer.Option(help="--format gguf: a llama.cpp checkout whose "
                                                            "convert_hf_to_gguf.py to run (default: the one in "
                                                            "llama-cpp-python's source distribution, fetched "
                                                            "once with pip and cached).")] = None,
    dtype: Annotated[str, typer.Option(help="Weights as float32, bfloat16 or float16.")] = "float32",
    max_new_tokens: Annotated[int, typer.Option(min=1, help="The generation config's max new tokens.")] = 256,
    push_to_hub: Annotated[Optional[str], typer.Option(help="Also upload the directory to this Hugging Face repo (online).")] = None,
) -> None:
    """Write a student as a standalone model: a Hugging Face directory (LoRA merged, safetensors, tokenizer with its
    chat template, generation config, model card) that transformers, lm-evaluation-harness and `vllm serve` take, or
    a GGUF with an Ollama Modelfile for llama.cpp and Ollama. Written beside --out and renamed when complete."""
    from cotdistill.export_model import export_model as run

    _show(run(run_dir, student, out, dtype=dtype, max_new_tokens=max_new_tokens, push_to_hub=push_to_hub,
              format=format, gguf_type=gguf_type, llama_cpp=llama_cpp))


def _field(name: str) -> Any:
    """A TrainConfig field's option (help from train/fields.py; typer shows the default)."""
    return typer.Option(help=FIELDS[name][1])


@app.command()
def train(
    run_dir: RunDir = Path("runs/default"),
    name: Annotated[str, typer.Option(help="Student name; it lands in RUN_DIR/students/NAME.")] = "student",
    student: Annotated[str, typer.Option(help="Base model: smollm2-135m, a directory or a hub id.")] = "smollm2-135m",
    method: Method = "cot",
    task: Annotated[Optional[str], typer.Option(help="Only annotations of this task (default: all).")] = None,
    lora: Annotated[bool, typer.Option("--lora/--full", help=FIELDS["lora"][1])] = FIELDS["lora"][0],
    epochs: Annotated[float, typer.Option(help="Passes over the training examples.")] = 2.0,
    max_steps: Annotated[int, typer.Option(help="Stop after N optimizer steps (-1: by epochs).")] = -1,
    learning_rate: Annotated[Optional[float], _field("learning_rate")] = FIELDS["learning_rate"][0],
    batch_size: int = 8,
    max_length: Annotated[int, _field("max_length")] = FIELDS["max_length"][0],
    seed: int = 0,
    role: Annotated[Optional[list[str]], typer.Option(help="Which of the method's students to train (e.g. qg, qa, unified; see `cotdistill methods`).")] = None,
    teacher: Annotated[Optional[str], typer.Option(help="Only this teacher's annotations (e.g. gold, openai:MODEL); default: every teacher's, counted in the report.")] = None,
    objective: Annotated[str, _field("objective")] = FIELDS["objective"][0],
    alpha: Annotated[float, _field("alpha")] = FIELDS["alpha"][0],
    gold_label: Annotated[bool, typer.Option("--gold-label", help=FIELDS["gold_label"][1])] = FIELDS["gold_label"][0],
    beta: Annotated[float, _field("beta")] = FIELDS["beta"][0],
    mi_estimator: Annotated[str, _field("mi_estimator")] = FIELDS["mi_estimator"][0],
    kd_weight: Annotated[float, _field("kd_weight")] = FIELDS["kd_weight"][0],
    kd_teacher: Annotated[Optional[str], _field("kd_teacher")] = FIELDS["kd_teacher"][0],
    teacher_model: Annotated[str, _field("teacher_model")] = FIELDS["teacher_model"][0],
    jsd_beta: Annotated[float, _field("jsd_beta")] = FIELDS["jsd_beta"][0],
    lmbda: Annotated[float, _field("lmbda")] = FIELDS["lmbda"][0],
    rollout_temperature: Annotated[float, _field("rollout_temperature")] = FIELDS["rollout_temperature"][0],
    max_new_tokens: Annotated[int, _field("max_new_tokens")] = FIELDS["max_new_tokens"][0],
    formats: Annotated[Optional[str], _field("formats")] = FIELDS["formats"][0],
    dev_task: Annotated[Optional[str], _field("dev_task")] = FIELDS["dev_task"][0],
    dev_data: Annotated[Optional[Path], _field("dev_data")] = FIELDS["dev_data"][0],
    dev_split: Annotated[str, _field("dev_split")] = FIELDS["dev_split"][0],
    dev_limit: Annotated[int, _field("dev_limit")] = FIELDS["dev_limit"][0],
    early_stopping_patience: Annotated[Optional[int], _field("early_stopping_patience")] = FIELDS["early_stopping_patience"][0],
    report_to: Annotated[Optional[str], typer.Option(help="tensorboard (default), wandb, mlflow, none, ...")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any TrainConfig/TrainingArguments field KEY=VALUE (YAML value).")] = None,
) -> None:
    """Fine-tune a student on the kept annotations of one method (resumes from its last checkpoint)."""
    from cotdistill.train import train as run

    config: dict[str, Any] = dict(
        lora=lora, num_train_epochs=epochs, max_steps=max_steps, learning_rate=learning_rate,
        per_device_train_batch_size=batch_size, max_length=max_length, seed=seed, objective=objective, alpha=alpha,
        gold_label=gold_label, beta=beta, mi_estimator=mi_estimator, kd_weight=kd_weight, kd_teacher=kd_teacher,
        teacher_model=teacher_model, jsd_beta=jsd_beta, lmbda=lmbda, rollout_temperature=rollout_temperature,
        max_new_tokens=max_new_tokens,
        formats=formats, dev_task=dev_task, dev_data=str(dev_data) if dev_data else None, dev_split=dev_split,
        dev_limit=dev_limit, early_stopping_patience=early_stopping_patience)
    if report_to:  # TrainingArguments' own default otherwise
        config["report_to"] = report_to
    config.update({k: _yaml_value(v) for k, v in _pairs(set_, "--set").items()})
    output = run(run_dir, name=name, student=student, method=method, task=task, roles=role, teacher=teacher, **config)
    console.print(f"student saved in [bold]{output}[/bold]")


@app.command("eval")
def evaluate(
    run_dir: RunDir = Path("runs/default"),
    model: Annotated[Optional[list[str]], typer.Option(help="MODEL for the single-stage pipeline, or STAGE=MODEL per stage (repeat): a student of this run by name, smollm2-135m, a directory, a hub id or openai:MODEL.")] = None,
    pipeline: Annotated[str, _opt(E, "pipeline")] = default_of(E, "pipeline"),
    task: TaskName = default_of(E, "task"),
    data: Data = None,
    split: Annotated[str, _opt(E, "split")] = default_of(E, "split"),
    limit: Limit = None,
    method: Method = default_of(E, "method"),
    name: Annotated[Optional[str], _opt(E, "name")] = None,
    temperature: Annotated[float, _opt(E, "temperature")] = default_of(E, "temperature"),
    samples: Annotated[int, _opt(E, "samples")] = default_of(E, "samples"),
    shots: Annotated[int, _opt(E, "shots")] = default_of(E, "shots"),
    max_new_tokens: MaxNewTokens = default_of(E, "max_new_tokens"),
    batch_size: BatchSize = default_of(E, "batch_size"),
    seed: Seed = default_of(E, "seed"),
    field: Fields = None,
    option: Options = None,
    weak_sandbox: WeakSandbox = False,
    base_url: BaseURL = None,
    api_key_env: APIKeyEnv = default_of(API, "api_key_env"),
    concurrency: Concurrency = default_of(API, "concurrency"),
    timeout: Timeout = default_of(API, "timeout"),
    max_retries: MaxRetries = default_of(API, "max_retries"),
    price_input: PriceInput = default_of(API, "price_input"),
    price_output: PriceOutput = default_of(API, "price_output"),
    endpoint: Endpoint = default_of(API, "endpoint"),
) -> None:
    """Evaluate a pipeline: accuracy (strict and flexible, 95% CI) and cost per stage (calls, tokens, time, FLOPs, USD)."""
    from cotdistill.evaluate import evaluate as run

    values = model or [default_of(E, "model")]
    stages = _pairs([v for v in values if "=" in v], "--model")
    single = [v for v in values if "=" not in v]
    if len(single) > 1 or (single and stages):
        raise CotdistillError("--model: give one MODEL, or STAGE=MODEL for each stage")
    api = {"base_url": base_url, "api_key_env": api_key_env, "concurrency": concurrency, "timeout": timeout,
           "max_retries": max_retries, "price_input": price_input, "price_output": price_output, "endpoint": endpoint}
    uses_api = any(served(v.split("=", 1)[-1]) for v in values)
    config = EvalConfig(model=single[0] if single else default_of(E, "model"), models=stages or None,
                        pipeline=pipeline, task=task, data=data, split=split, limit=limit, method=method, name=name,
                        temperature=temperature, samples=samples, shots=shots, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, seed=seed, fields=_pairs(field, "--field"),
                        options=_pairs(option, "--option"), api=api if uses_api else None, weak_sandbox=weak_sandbox)
    _show(run(run_dir, config))


@app.command()
def report(run_dir: RunDir = Path("runs/default")) -> None:
    """Compare every eval run of a run directory: report.md, report.csv, report.png."""
    from cotdistill.report import report as run

    console.print(run(run_dir))
    console.print(f"written: {run_dir}/report.md, report.csv, report.png")


@app.command("run")
def run_recipe(
    recipe: Annotated[str, typer.Argument(help="A recipe YAML file, or the name of a bundled one (`cotdistill recipes`).")],
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", "-r", help="Override the recipe's run_dir.")] = None,
    scale: Annotated[Optional[str], typer.Option(help="One of the recipe's scales (default: its first), e.g. small or full.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe variable NAME=VALUE (YAML value), e.g. data=/path/to/data, teacher=openai:MODEL, base_url=URL (`cotdistill recipes NAME` lists them).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print what each step would cost (teacher requests and tokens, training tokens, evaluation problems, hours, USD); write nothing.")] = False,
    price: Annotated[Optional[str], typer.Option(help="--dry-run: the teacher's USD per million input and output tokens, IN,OUT (e.g. 0.15,0.60).")] = None,
    pace: Annotated[Optional[str], typer.Option(help="--dry-run: tokens/s of this machine, NAME=N,... (train_lora, train_full, generate, teacher); default: measured on a 2-core CPU.")] = None,
) -> None:
    """Run a recipe's steps in order; rerunning resumes it. --dry-run prints what it would cost."""
    from cotdistill.recipe import run_recipe as run

    settings = {k: _yaml_value(v) for k, v in _pairs(set_, "--set").items()}
    if dry_run:
        _dry_run(recipe, scale, settings, price, pace)
        return
    if price or pace:
        raise CotdistillError("--price and --pace go with --dry-run")
    out = run(recipe, run_dir, scale=scale, settings=settings)
    console.print(f"done: {out}")


def _dry_run(recipe: str, scale: str | None, settings: dict[str, Any], price: str | None, pace: str | None) -> None:
    from cotdistill.estimate import CPU_PACE, PACE_SOURCE, estimate_recipe, parse_pace, parse_price
    from cotdistill.recipe import load_recipe

    loaded = load_recipe(recipe, scale, settings)
    the_pace = parse_pace(pace)
    costs, counted = estimate_recipe(loaded, parse_price(price), the_pace)
    table = Table("step", "what", "teacher requests", "prompt tokens", "completion tokens (bound)",
                  "train tokens x epochs", "eval problems (calls)", "generated <=", "hours", "USD", "note",
                  title=f"{loaded['path']} at scale {scale or 'default'}: a dry run, nothing written")

    def number(value: float | None, digits: int = 2) -> str:
        return "?" if value is None else f"{value:,.{digits}f}"

    for c in costs:
        table.add_row(f"{c.step} {c.verb}", Text(c.what), f"{c.teacher_requests:,}", f"{c.prompt_tokens:,}",
                      f"{c.completion_tokens:,} ({c.completion_bound:,})" if c.teacher_requests else "",
                      f"{c.train_tokens:,} x {c.epochs:g}" if c.verb == "train" else "",
                      f"{c.eval_problems:,} ({c.eval_calls:,})" if c.eval_calls else "",
                      f"{c.generated_bound:,}" if c.generated_bound else "", number(c.hours), number(c.usd, 4), Text(c.note))
    console.print(table)
    hours = [c.hours for c in costs]
    usd = [c.usd for c in costs]
    console.print(f"total: {sum(c.teacher_requests for c in costs):,} teacher requests, "
                  f"{sum(c.prompt_tokens for c in costs):,} prompt + ~{sum(c.completion_tokens for c in costs):,} "
                  f"completion tokens; {sum(int(c.train_tokens * c.epochs) for c in costs):,} training tokens over all epochs; "
                  f"{sum(c.eval_calls for c in costs):,} evaluation calls; "
                  f"{sum(h for h in hours if h is not None):,.1f} hours"
                  + (" + the teacher's (give --pace teacher=TOKENS_PER_S)" if None in hours else "") + "; "
                  + ("USD ? (give --price IN,OUT)" if None in usd else f"${sum(u for u in usd if u is not None):,.{2 if sum(u for u in usd if u) >= 1 else 4}f}"),
                  highlight=False)
    console.print(f"tokens counted with {counted} tokenizer; "
                  + (PACE_SOURCE if the_pace == CPU_PACE else f"pace given: {the_pace}"), highlight=False)


@app.command()
def recipes(
    words: Annotated[Optional[list[str]], typer.Argument(help="NAME: show its variables per scale; copy NAME DIR: write an editable copy into DIR.", show_default=False)] = None,
) -> None:
    """List the bundled recipes; `recipes NAME` shows one's variables (what --set changes) per scale;
    `recipes copy NAME DIR` writes an editable copy that runs with `cotdistill run DIR/NAME.yaml`."""
    from cotdistill.recipe import bundled_recipes, copy_recipe, describe_recipe

    words = words or []
    if words[:1] == ["copy"]:
        if len(words) != 3:
            raise CotdistillError("usage: cotdistill recipes copy NAME DIR")
        written = copy_recipe(words[1], words[2])
        console.print(f"written: {', '.join(map(str, written))}\nrun it with: cotdistill run {written[0]}",
                      soft_wrap=True, highlight=False)
        return
    if len(words) > 1:
        raise CotdistillError("usage: cotdistill recipes [NAME] | cotdistill recipes copy NAME DIR")
    if words:
        path, variables = describe_recipe(words[0])
        scales = list(variables[0].values) if variables else []
        table = Table(title=str(path))
        table.add_column("variable", no_wrap=True)
        for scale in scales:
            table.add_column(scale or "value", max_width=28)
        table.add_column("what it is", min_width=30)
        for v in variables:
            table.add_row(v.name, *[_brief(v.values[s]) for s in scales], v.help)
        console.print(table)
        console.print(f"change one with `cotdistill run {words[0]} --set NAME=VALUE`; a served teacher: "
                      "--set teacher=openai:MODEL --set base_url=http://HOST:PORT/v1", highlight=False)
        return
    table = Table("recipe", "what it is")
    for name, about in bundled_recipes().items():
        table.add_row(name, about)
    console.print(table)


def _brief(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 40 else f"{len(value)} entries" if isinstance(value, (list, dict)) else text[:37] + "..."


@app.command()
def quickstart(run_dir: RunDir = Path("runs/quickstart")) -> None:
    """Offline demo on the embedded SmolLM2-135M: baseline eval, gold annotation, LoRA training, eval, report."""
    from cotdistill.recipe import run_recipe as run

    out = run("quickstart", run_dir)  # its last step prints the report
    console.print(f"report: {out}/report.md, {out}/report.csv and {out}/report.png")


methods_app = typer.Typer(help="Reasoning formats: list them, or show one's prompts.", no_args_is_help=False)
app.add_typer(methods_app, name="methods")


@methods_app.callback(invoke_without_command=True)
def methods(context: typer.Context) -> None:
    """List the reasoning formats (methods); `methods show NAME` prints one's prompts."""
    from cotdistill.methods import METHODS

    if context.invoked_subcommand is not None:
        return
    table = Table("method", "students (roles)", "pipelines (stages)", "what it is")
    for method in METHODS.values():
        pipelines = "; ".join(f"{name} ({', '.join(stages)})" for name, stages in method.pipelines.items())
        table.add_row(method.name, ", ".join(method.roles), pipelines, method.description)
    console.print(table)


@methods_app.command("show")
def methods_show(
    name: Annotated[str, typer.Argument(help="A method name.")],
    prompts: Annotated[Optional[Path], typer.Option(help="Show them as overridden by this YAML file.")] = None,
) -> None:
    """Show a method's teacher prompt (few-shot) and its students' prompts and targets."""
    from cotdistill.methods import get_method
    from cotdistill.tasks import Problem

    method = get_method(name, prompts)
    example = Problem("example", "{question}", "{answer}")
    sections = [("teacher prompt", method.teacher_messages(example))]
    demos = method.prompts.demonstrations
    parsed = method.parse(demos[0][1], Problem("demo", demos[0][0], "")) if demos else None
    if parsed is not None and parsed.reason in ("ok", "wrong answer") and parsed.fields:  # "wrong": no gold given
        demo = Problem("demo", demos[0][0], parsed.answer or "")
        for item in method.training_examples(demo, parsed.fields):
            sections.append((f"student '{item.role}' (from the first demonstration)",
                             [*item.messages, {"role": "assistant", "content": item.completion}]))
    else:
        sections.append(("student prompt", method.student_messages(example)))
    for title, messages in sections:
        console.rule(title)
        for message in messages:
            console.print(f"[bold]{message['role']}:[/bold] ", end="")
            console.print(message["content"], markup=False, highlight=False)


@app.command()
def tasks() -> None:
    """List the built-in tasks."""
    from cotdistill.tasks import BUILTIN

    table = Table("task", "answers", "what it is")
    for task in BUILTIN.values():
        table.add_row(task.name, task.kind, task.description)
    console.print(table)


_STATE: dict[str, Any] = {"debug": False}
Debug = Annotated[bool, typer.Option("--debug", help="On an error, print the full traceback too (it is always "
                                                     "written to RUN_DIR/logs/errors.log).")]


@app.callback()
def _options(debug: Debug = False) -> None:
    """Options for every verb, given before it: `cotdistill --debug train ...`."""
    _STATE["debug"] = debug


def _argument(args: list[str], *flags: str) -> str | None:
    """A flag's value on the command line as given (`--run-dir X` or `--run-dir=X`)."""
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1:]
    return None


def _log_error(error: BaseException, anywhere: bool = False) -> Path | None:
    """The traceback, appended to the run directory's logs/errors.log; where the command named no
    run directory that exists, to a temporary file if `anywhere`, else nowhere. None if it is not
    written (a full disk, say)."""
    import tempfile
    import time
    import traceback

    args = sys.argv[1:]
    run_dir = Path(_argument(args, "--run-dir", "-r") or "runs/default")
    path = run_dir / "logs" / "errors.log" if run_dir.is_dir() else \
        Path(tempfile.gettempdir()) / f"cotdistill-error-{time.strftime('%Y%m%d-%H%M%S')}.log"
    if not run_dir.is_dir() and not anywhere:
        return None
    try:
        path.parent.mkdir(exist_ok=True)
        with path.open("a") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} cotdistill {' '.join(args)}\n")
            log.write("".join(traceback.format_exception(error)))
    except OSError:
        return None
    return path


def _where() -> str:
    """The step and its input, as the command line named them, for the last handler's line."""
    from typer.main import get_command

    args = sys.argv[1:]
    commands = get_command(app).commands  # type: ignore[attr-defined]
    step = next((arg for arg in args if arg in commands), "cotdistill")
    inputs = [f"{name} {value}" for name, flags in (("run", ("--run-dir", "-r")), ("data", ("--data", "-d")))
              if (value := _argument(args, *flags))]
    if step == "run" and args[args.index("run") + 1:]:
        inputs.insert(0, f"recipe {args[args.index('run') + 1]}")
    return step + (f" ({', '.join(inputs)})" if inputs else "")


def _disk_note() -> str:
    """What a full disk looks like to the reader: libraries report it in their own words (torch's
    checkpoint writer: `unexpected pos 164800 vs 164688`), so the free space is checked here."""
    import shutil

    run_dir = Path(_argument(sys.argv[1:], "--run-dir", "-r") or ".")
    try:
        free = shutil.disk_usage(run_dir if run_dir.is_dir() else ".").free
    except OSError:
        return ""
    return f" (the disk is full: {free // 1024} KiB free at {run_dir})" if free < 64 * 2**20 else ""


def _say(line: str) -> None:
    """The error line on stderr, on a line of its own: progress bars left open by the failure
    (the Trainer's, say) are closed first, as their last line has no newline."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()
    print(line, file=sys.stderr)


def main() -> None:
    """Entry point: errors become one line on stderr, never a traceback: exit code 2 for bad
    input, 1 for an environment that cannot do the job (a sandbox that cannot run, say), and
    1 for anything unexpected, whose line names the step, its input and where the traceback
    was written (`--debug` prints it as well)."""
    try:
        app()  # typer reports its own usage errors (exit 2) and turns Ctrl-C into "Aborted!"
    except CotdistillError as error:
        _log_error(error)
        _say(f"error: {error}")
        sys.exit(error.exit_code)
    except (OSError, sqlite3.DatabaseError) as error:  # the machine mid-run: disk full, a file gone or locked
        _log_error(error)
        _say(f"error: {error}")
        sys.exit(1)
    except Exception as error:  # the last handler: a fault we did not foresee, still one line
        log = _log_error(error, anywhere=True)
        if _STATE["debug"]:
            import traceback

            traceback.print_exception(error)
        message = " ".join(str(error).split())[:300] or "(no message)"
        where = f"; traceback in {log}" if log else ""
        _say(f"error: {_where()}: unexpected {type(error).__name__}: {message}{_disk_note()}{where}")
        sys.exit(1)
