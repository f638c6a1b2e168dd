"""export-model: a trained student as a standalone model for the tools people ship with.

`--format hf` (default) writes what the Hugging Face stack takes: LoRA merged into the base
weights, safetensors, the tokenizer with its chat template, a generation config that decodes
as `cotdistill eval` did (greedy, ending at the chat template's end-of-turn token), and a
model card saying how the student was made and what it measured, read from the run's store.
`AutoModelForCausalLM.from_pretrained(DIR)`, `pipeline("text-generation", DIR)`,
lm-evaluation-harness's `hf` model and `vllm serve DIR` take the directory as it is.

Nothing in it needs cotdistill or a tokenizer at generation time: the method's stop strings
(which `generate` can only apply with `tokenizer=`, and which break every tool that calls it
without) are not in the generation config; the model card lists them, and the end-of-turn
token that ends a chat student's reply is among the config's eos ids. The tokenizer config
carries nothing of the exporting machine (`local_files_only`, `is_local`, ...).

`--format gguf` runs llama.cpp's own converter (`convert_hf_to_gguf.py`, from a llama.cpp
checkout or the llama-cpp-python source distribution; never a format written here) on that
directory and writes the GGUF with an Ollama `Modelfile` beside it.

An export is written to a hidden directory beside `--out` and renamed to it when complete,
so a crash or kill at any moment leaves no half-written model where one is expected, and a
rerun sweeps what a killed export left.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cotdistill.errors import CotdistillError, EnvironmentProblem
from cotdistill.methods import get_method
from cotdistill.models.contract import Messages
from cotdistill.models.embedded import ALIASES, cache_dir
from cotdistill.store import Store, model_in_run, student_dir
from cotdistill.tasks import Problem

DTYPES = ("float32", "bfloat16", "float16")
FORMATS = ("hf", "gguf")
GGUF_TYPES = ("f16", "q8_0", "bf16", "f32")  # the converter's --outtype choices for any model
# Keys transformers writes into tokenizer_config.json that describe how the exporting
# machine loaded the tokenizer, not the tokenizer: they would make another machine load
# offline, or look in a cache that is not there.
MACHINE_LOCAL_KEYS = ("is_local", "local_files_only", "cache_dir", "token", "use_auth_token", "revision",
                      "_commit_hash", "force_download", "proxies", "subfolder", "name_or_path")
PARTIAL = ".partial-"


def export_model(run_dir: str | Path, student: str, out: str | Path, dtype: str = "float32",
                 max_new_tokens: int = 256, push_to_hub: str | None = None, format: str = "hf",
                 gguf_type: str = "f16", llama_cpp: str | Path | None = None) -> dict[str, Any]:
    """Write student `student` of the run to `out` (a new or empty directory) as a Hugging
    Face model directory (`format="hf"`) or a GGUF file of type `gguf_type` with an Ollama
    Modelfile (`format="gguf"`; llama.cpp's converter from the checkout `llama_cpp`, else
    from llama-cpp-python's source distribution). Returns what was written. `push_to_hub`
    uploads the directory to that Hugging Face repo as well."""
    if dtype not in DTYPES:
        raise CotdistillError(f"--dtype {dtype}: one of {', '.join(DTYPES)}")
    if format not in FORMATS:
        raise CotdistillError(f"--format {format}: one of {', '.join(FORMATS)}")
    if gguf_type not in GGUF_TYPES:
        raise CotdistillError(f"--gguf-type {gguf_type}: one of {', '.join(GGUF_TYPES)}")
    source, out = student_dir(run_dir, student), Path(out).absolute()
    if not (source / "cotdistill.json").is_file():
        raise CotdistillError(f"{source}: no trained student {student!r} in this run (train it first, "
                              "or see `cotdistill report` for the run's students)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CotdistillError(f"--out {out}: exists and is not an empty directory")
    converter = find_converter(llama_cpp) if format == "gguf" else None  # before the slow part: fail early
    trained = json.loads((source / "cotdistill.json").read_text())
    method = get_method(trained["method"])
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_partials(out)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}{os.getpid()}-", dir=out.parent))
    try:
        hf_dir = partial if format == "hf" else partial / "hf"
        chat = _write_hf(source, hf_dir, dtype, max_new_tokens)
        stop = list(method.stop)
        written = {"out": str(out), "student": student, "method": method.name, "format": format,
                   "merged_lora": trained.get("lora", False), "dtype": dtype, "eos_token_ids": chat.eos_ids,
                   "stop_strings": stop}
        if format == "gguf":
            gguf = partial / f"{student}-{gguf_type}.gguf"
            convert_to_gguf(converter, hf_dir, gguf, gguf_type)  # type: ignore[arg-type]
            shutil.rmtree(hf_dir)
            (partial / "Modelfile").write_text(modelfile(gguf.name, chat, stop, max_new_tokens))
            written.update(gguf=gguf.name, gguf_type=gguf_type, gguf_bytes=gguf.stat().st_size,
                           converter=str(converter), ollama_template=chat.go is not None)
        with Store(run_dir, create=False) as store:  # exporting reads the run
            (partial / "README.md").write_text(_card(store, student, source, trained, written))
        written["files"] = sorted(p.name for p in partial.iterdir())
        partial.chmod(0o755)  # mkdtemp's 0700 would keep the model from other users
        os.replace(partial, out)  # atomic; replaces `out` only while it is an empty directory
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if out.exists() and any(out.iterdir()):
            raise CotdistillError(f"--out {out}: another export wrote it meanwhile") from None
        raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if push_to_hub:
        written["hub"] = _push(out, push_to_hub)
    return written


def _sweep_partials(out: Path) -> None:
    """Remove what exports to `out` killed before their rename left (`.OUT.partial-PID-*`
    of processes that are gone); those of a live export are left alone."""
    for path in out.parent.glob(f".{glob.escape(out.name)}{PARTIAL}*"):
        pid = path.name[len(out.name) + 1 + len(PARTIAL):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class ChatFormat:
    """What the student's prompts look like, read from its tokenizer: the end-of-turn token
    ids a reply ends with, and, where the chat template renders each message as its role's
    prefix + content + suffix (ChatML, Llama 3, ...), the same template in Ollama's Go
    template syntax (`go`; None where it cannot be written so, e.g. Gemma's, which folds
    the system message into the first user turn: Ollama then reads the GGUF's own)."""

    def __init__(self, tokenizer: Any, eos_ids: list[int]):
        from cotdistill.models.local import render_prompt

        self.eos_ids = eos_ids
        self.end_of_turn = [tokenizer.convert_ids_to_tokens(i) for i in eos_ids]
        if tokenizer.chat_template:
            def render(messages: Messages, generation: bool) -> str:
                return tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)
        else:  # render_prompt's plain layout for base models, which has no variant without its "Answer:"
            def render(messages: Messages, generation: bool) -> str:
                text = render_prompt(tokenizer, messages)
                return text if generation else text[: -len("Answer:")]
        self.special = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
        self.go = _go_template(render, self.special)


Render = Callable[[Messages, bool], str]
# Conversations a derived template must render exactly as the student's own template does.
CHECKS: tuple[Messages, ...] = tuple([{"role": r, "content": c} for r, c in conversation] for conversation in (
    [("user", "What is 2 + 3?")],
    [("system", "Be brief."), ("user", "Hi")],
    [("user", "a"), ("assistant", "b\nc"), ("user", "d")],
    [("system", "S"), ("user", "line one\nline two"), ("assistant", "Answer: 4"), ("user", "And 5?")],
    [("system", "S"), ("user", "u"), ("assistant", "a")],
    [("user", "u"), ("assistant", "a")],
))


def _go_template(render: Render, special: list[str]) -> str | None:
    """The chat template in Ollama's Go template syntax, or None where it is not one that
    renders each message as its role's prefix + content + suffix. Derived by rendering
    marked messages and reading the text around the marks (a preamble before the first
    message, which may hold a default system prompt; per-role prefix and suffix; the
    generation prompt), then checked: the derived template must reproduce the original on
    every conversation of CHECKS. Written here because no library translates Jinja chat
    templates (Ollama itself matches a GGUF's template against a list of known ones)."""
    turns = _turns(render, special)
    if turns is None:
        return None

    def text(literal: str) -> str:
        return literal.replace("{{", '{{ "{{" }}')  # the only thing Go templates read in literal text

    roles = "".join(("{{ if " if i == 0 else "{{ else if ") + f'eq $m.Role "{role}" }}}}'
                    + text(turns[role][0]) + "{{ $m.Content }}" + text(turns[role][1])
                    for i, role in enumerate(("system", "user", "assistant")))
    preamble = ('{{ if eq $i 0 }}{{ if eq $m.Role "system" }}' + text(turns["preamble_system"]) + "{{ else }}"
                + text(turns["preamble"]) + "{{ end }}{{ end }}") if turns["preamble_system"] or turns["preamble"] else ""
    go = ("{{ range $i, $m := .Messages }}" + preamble + roles + "{{ end }}"
          + '{{ if and (eq (len (slice $.Messages $i)) 1) (ne $m.Role "assistant") }}' + text(turns["generation"])
          + "{{ end }}{{ end }}")
    return None if '"""' in go else go  # a Modelfile quotes it in """


def _turns(render: Render, special: list[str]) -> dict[str, Any] | None:
    marks = ("SYSTEM-4f1d", "USER-4f1d", "ASSISTANT-4f1d", "USER2-4f1d")
    try:
        full = _split(render(_conversation(("system", "user", "assistant", "user"), marks), True), marks)
        alone = _split(render(_conversation(("user",), marks[1:2]), False), marks[1:2])
        with_system = _split(render(_conversation(("system", "user"), marks[:2]), False), marks[:2])
    except Exception:  # noqa: BLE001 - a template may refuse a system message or any of these conversations
        return None
    if full is None or alone is None or with_system is None:
        return None
    suffix_user = with_system[2]
    if not (full[2].startswith(suffix_user) and full[4].startswith(suffix_user)):
        return None
    prefix_user = _turn_start(os.path.commonprefix([full[1][::-1], full[3][::-1], alone[0][::-1]])[::-1], "user", special)
    prefix_system = _turn_start(full[0], "system", special)
    turns = {"preamble_system": full[0][: len(full[0]) - len(prefix_system)],
             "preamble": alone[0][: len(alone[0]) - len(prefix_user)],
             "system": (prefix_system, full[1][: len(full[1]) - len(prefix_user)]),
             "user": (prefix_user, suffix_user),
             "assistant": (full[2][len(suffix_user):], full[3][: len(full[3]) - len(prefix_user)]),
             "generation": full[4][len(suffix_user):]}
    for conversation in CHECKS:
        try:
            expected = render(conversation, conversation[-1]["role"] != "assistant")
        except Exception:  # noqa: BLE001
            return None
        if _render_turns(turns, conversation) != expected:
            return None
    return turns


def _conversation(roles: tuple[str, ...], contents: tuple[str, ...]) -> Messages:
    return [{"role": role, "content": content} for role, content in zip(roles, contents)]


def _split(text: str, marks: tuple[str, ...]) -> list[str] | None:
    """`text` cut at each mark in order: len(marks) + 1 pieces, or None if one is missing."""
    pieces = []
    for mark in marks:
        if text.count(mark) != 1:
            return None
        before, text = text.split(mark)
        pieces.append(before)
    return pieces + [text]


def _turn_start(text: str, role: str, special: list[str]) -> str:
    """The tail of `text` that opens a `role` turn: from the last special token that names
    the role or is followed by its name (`<|im_start|>user`, `<|user|>`); all of `text`
    where there is none (the derived template is the same either way, only less tidy)."""
    starts = [i for token in special for i in _find_all(text, token)
              if role in token or text[i + len(token):].lstrip().startswith(role)]
    return text[max(starts):] if starts else text


def _find_all(text: str, token: str) -> list[int]:
    return [m.start() for m in re.finditer(re.escape(token), text)] if token else []


def _render_turns(turns: dict[str, Any], messages: Messages) -> str:
    """What the derived template renders (Python twin of the Go template), to check it."""
    text = turns["preamble_system"] if messages[0]["role"] == "system" else turns["preamble"]
    for message in messages:
        prefix, suffix = turns[message["role"]]
        text += prefix + message["content"] + suffix
    return text + (turns["generation"] if messages[-1]["role"] != "assistant" else "")


def modelfile(gguf_name: str, chat: ChatFormat, stop: list[str], max_new_tokens: int) -> str:
    """An Ollama Modelfile for the GGUF beside it: the chat template in Go syntax (where it
    has one), stopping where `cotdistill eval` stopped, greedy."""
    lines = ["# Ollama: `ollama create NAME -f Modelfile` in this directory, then `ollama run NAME`.",
             f"FROM ./{gguf_name}"]
    if chat.go is not None:
        lines.append(f'TEMPLATE """{chat.go}"""')
    else:
        lines.append("# No TEMPLATE: this chat template has no per-message form; Ollama reads the GGUF's own.")
    for value in dict.fromkeys(chat.end_of_turn + stop):
        lines.append(f"PARAMETER stop {_quote(value)}")
    lines += ["PARAMETER temperature 0", f"PARAMETER num_predict {max_new_tokens}", ""]
    return "\n".join(lines)


def _quote(value: str) -> str:
    """A Modelfile value: Ollama's parser takes "..." (newlines kept) or \"""...\""" (quotes
    kept) literally, with no escapes."""
    return f'"""{value}"""' if '"' in value else f'"{value}"'


def find_converter(llama_cpp: str | Path | None = None) -> Path:
    """llama.cpp's `convert_hf_to_gguf.py`: in the checkout `llama_cpp` when given, else
    the one vendored in llama-cpp-python's source distribution (of the installed version,
    so the GGUF is one that version reads), fetched once with pip and kept unpacked under
    the cache dir, so later exports run offline."""
    if llama_cpp is not None:
        script = Path(llama_cpp).expanduser() / "convert_hf_to_gguf.py"
        if not script.is_file():
            raise CotdistillError(f"--llama-cpp {llama_cpp}: no convert_hf_to_gguf.py there "
                                  "(it is at the top of a llama.cpp checkout)")
        return script
    from importlib.metadata import PackageNotFoundError, version

    from filelock import FileLock

    try:
        pinned: str | None = version("llama-cpp-python")
    except PackageNotFoundError:
        pinned = None
    root = cache_dir() / "llama.cpp"
    if pinned is None:  # any version will do: the newest already unpacked
        unpacked = sorted(root.glob("llama-cpp-python-*/convert_hf_to_gguf.py"), key=lambda p: _version_key(p.parent))
        if unpacked:
            return unpacked[-1]
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "fetch.lock")):
        script = root / f"llama-cpp-python-{pinned}" / "convert_hf_to_gguf.py"
        if pinned is None or not script.is_file():
            script = _fetch_converter(pinned, root)
    return script


def _version_key(directory: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", directory.name.rsplit("-", 1)[-1]))


def _fetch_converter(pinned: str | None, root: Path) -> Path:
    """Download llama-cpp-python's sdist with pip and unpack only the converter: the script,
    its `conversion` package and `gguf-py`, which it puts on its own path."""
    import tarfile

    requirement = f"llama-cpp-python=={pinned}" if pinned else "llama-cpp-python"
    with tempfile.TemporaryDirectory() as download:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                 "--quiet", "--dest", download, requirement], capture_output=True, text=True)
        archives = sorted(Path(download).glob("llama_cpp_python-*.tar.gz"))
        if result.returncode != 0 or not archives:
            reason = ([line for line in result.stderr.splitlines() if line.strip()] or [f"exit {result.returncode}"])[-1]
            raise EnvironmentProblem(f"llama.cpp's converter: `pip download --no-binary :all: {requirement}` failed "
                                     f"({reason}); name a llama.cpp checkout with --llama-cpp DIR")
        name = archives[0].name[: -len(".tar.gz")]
        target = root / f"llama-cpp-python-{name.rsplit('-', 1)[-1]}"
        vendored = f"{name}/vendor/llama.cpp/"
        with tarfile.open(archives[0]) as tar:
            members = []
            for member in tar.getmembers():
                inner = member.name[len(vendored):] if member.name.startswith(vendored) else None
                if inner in ("convert_hf_to_gguf.py", "LICENSE") or inner and inner.startswith(("conversion/", "gguf-py/")):
                    member.name = inner
                    members.append(member)
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            tar.extractall(partial, members=members, filter="data")
    if not (partial / "convert_hf_to_gguf.py").is_file():
        shutil.rmtree(partial, ignore_errors=True)
        raise EnvironmentProblem(f"{archives[0].name} has no vendor/llama.cpp/convert_hf_to_gguf.py; "
                                 "name a llama.cpp checkout with --llama-cpp DIR")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target / "convert_hf_to_gguf.py"


def convert_to_gguf(converter: Path, hf_dir: Path, out: Path, gguf_type: str) -> None:
    """Run llama.cpp's converter on a Hugging Face directory, in its own process: it puts
    its own `gguf-py` first on its path, which must not replace the `gguf` package that
    transformers uses in this one."""
    result = subprocess.run([sys.executable, str(converter), str(hf_dir), "--outfile", str(out),
                             "--outtype", gguf_type], capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        lines = [line for line in result.stderr.splitlines() if line.strip()] or [f"exit {result.returncode}"]
        missing = re.search(r"No module named '([^'.]+)", result.stderr)
        hint = f" (pip install {missing.group(1)})" if missing else ""
        raise EnvironmentProblem(f"llama.cpp's converter {converter} failed: {lines[-1].strip()}{hint}")


def _write_hf(source: Path, out: Path, dtype: str, max_new_tokens: int) -> ChatFormat:
    """The student as a Hugging Face directory: weights (LoRA merged), tokenizer, greedy
    generation config ending at the end-of-turn token; returns the chat format."""
    import torch

    from cotdistill.models import load_model

    model, tokenizer = load_model(str(source), device="cpu", dtype=getattr(torch, dtype))  # LoRA arrives merged
    eos_ids = end_of_reply_ids(model, tokenizer)
    config = model.generation_config
    config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
    config.max_new_tokens = max_new_tokens
    config.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    config.pad_token_id = tokenizer.pad_token_id
    config.stop_strings = None  # generate() applies these only with tokenizer=; every outside caller lacks it
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tokenizer_config = out / "tokenizer_config.json"
    kept = {k: v for k, v in json.loads(tokenizer_config.read_text()).items() if k not in MACHINE_LOCAL_KEYS}
    tokenizer_config.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
    return ChatFormat(tokenizer, eos_ids)


def end_of_reply_ids(model: Any, tokenizer: Any) -> list[int]:
    """The token ids a reply ends with: the model's and tokenizer's eos, and the token the
    chat template closes an assistant turn with (ChatML's `<|im_end|>`, Llama 3's
    `<|eot_id|>`, Gemma's `<end_of_turn>`), which a chat model emits where it is done and
    which need not be its tokenizer's eos."""
    configured = model.generation_config.eos_token_id
    ids = list(configured if isinstance(configured, list) else [] if configured is None else [configured])
    ids.append(tokenizer.eos_token_id)
    if tokenizer.chat_template:
        mark = "cotdistill-end-of-reply"
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": mark}], tokenize=False)
        except Exception:  # noqa: BLE001 - a template may refuse this conversation; then there is no turn end to read
            text = ""
        after = tokenizer(text[text.rfind(mark) + len(mark):], add_special_tokens=False)["input_ids"] if mark in text else []
        if after and after[0] in tokenizer.all_special_ids:
            ids.append(after[0])
    return sorted({i for i in ids if i is not None})


def _card(store: Store, student: str, source: Path, trained: dict[str, Any], written: dict[str, Any]) -> str:
    """The model card: how the student was made, every eval of it in this run, and how to
    prompt and stop it as `cotdistill eval` did."""
    run = store.run(f"train:{student}") or {"config": {}}
    config = run["config"]
    chain = [trained["student"]]  # the students of this run it continues, back to the base model
    while len(chain) < 64 and (record := Path(model_in_run(store.run_dir, chain[-1])) / "cotdistill.json").is_file():
        chain.append(json.loads(record.read_text())["student"])
    base = chain[-1]
    teachers = Counter(a.teacher for a in store.annotations(trained["method"], config.get("task")))
    evals = [r for r in store.runs("eval") if r["status"] == "done"
             and (r["config"].get("model_path") == str(source) or student in (r["config"].get("models") or {}).values())]
    lines = [
        "---", "library_name: " + ("gguf" if written["format"] == "gguf" else "transformers"),
        "pipeline_tag: text-generation",
        f"base_model: {'HuggingFaceTB/SmolLM2-135M-Instruct' if base in ALIASES else base}",
        "tags: [cotdistill, distillation, reasoning]", "---", "",
        f"# {student}", "",
        f"A student distilled with cotdistill by method `{trained['method']}`"
        + (f" (roles {', '.join(trained['roles'])})" if trained.get("roles") else "") + ".", "",
        "## How it was made", "",
        f"- base model: `{base}`" + (" (the embedded SmolLM2-135M-Instruct, dequantized from a Q4_1 GGUF: "
                                      "a 4-bit-noised start, not the original bf16 weights)" if base in ALIASES else "")
        + (f", continuing {' <- '.join(f'`{s}`' for s in chain[:-1])} of its run" if len(chain) > 1 else ""),
        "- teacher(s): " + (", ".join(f"`{t}` ({n} kept rationales)" for t, n in teachers.most_common()) or "unknown"),
        f"- data: task `{config.get('task') or 'all'}`, split `{config.get('split') or 'all'}`, "
        f"{trained['examples']} training examples",
        f"- training: objective `{trained['objective']}`, {'LoRA (merged here)' if trained['lora'] else 'full fine-tuning'}, "
        f"{trained['steps']} steps, {trained['seconds'] / 60:.1f} minutes, "
        f"loss {_fmt(trained.get('first_logged_loss'))} -> {_fmt(trained.get('last_logged_loss'))}",
        "", "## Measured in its run", "",
    ]
    if evals:
        lines += ["| eval | task | split | n | strict accuracy | 95% CI |", "|---|---|---|---|---|---|"]
        for r in evals:
            m, c = r["result"], r["config"]
            lines.append(f"| {r['name']} | {c['task']} | {c['split']} | {int(m['n'])} | "
                         f"{100 * m['accuracy_strict']:.1f}% | {100 * m['ci95_low']:.1f}-{100 * m['ci95_high']:.1f}% |")
    else:
        lines.append("No evaluation of this student was run in its run directory.")
    messages = get_method(trained["method"]).student_messages(Problem("example", "QUESTION", "", "number"))
    stop = written["stop_strings"]
    lines += ["", "## Decoding as evaluated", "",
              f"Greedy, ending at token id(s) {written['eos_token_ids']} (the generation config's eos), and cut at "
              f"the first of the stop strings {json.dumps(stop)} (kept out of the generation config: transformers "
              "applies stop strings only when `generate` is given the tokenizer, and fails without it).", "",
              "The prompt it was trained on (QUESTION is yours):", "", "```python", f"messages = {json.dumps(messages)}",
              "```", ""]
    if written["format"] == "gguf":
        lines += ["## Use", "",
                  f"`{written['gguf']}` was written by llama.cpp's own converter (`--outtype {written['gguf_type']}`) "
                  "and carries the chat template. llama.cpp's server, llama-cpp-python and Ollama (the `Modelfile` "
                  "beside it, with the stop strings) serve it:", "", "```sh",
                  f"llama-server -m {written['gguf']} --port 8080",
                  f"python -m llama_cpp.server --model {written['gguf']} --port 8080",
                  "ollama create my-student -f Modelfile && ollama run my-student", "```", "",
                  "Then `cotdistill eval --model openai:my-student --base-url http://HOST:PORT/v1`; "
                  "see cotdistill's docs/serving.md.", ""]
    else:
        lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'model = AutoModelForCausalLM.from_pretrained("DIR")',
                  'tokenizer = AutoTokenizer.from_pretrained("DIR")',
                  f"messages = {json.dumps(messages)}",
                  "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt', "
                  "return_dict=True)",
                  f"output = model.generate(**inputs, stop_strings={json.dumps(stop)}, tokenizer=tokenizer)",
                  "print(tokenizer.decode(output[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))",
                  "```", "",
                  "`pipeline('text-generation', model='DIR')` and lm-evaluation-harness (`--model hf "
                  "--model_args pretrained=DIR`) take the directory as it is. For serving: `vllm serve DIR`, then "
                  "`cotdistill eval --model openai:DIR --base-url http://HOST:8000/v1` (see cotdistill's "
                  "docs/serving.md).", ""]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _push(out: Path, repo: str) -> str:
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        return api.upload_folder(repo_id=repo, folder_path=str(out)).commit_url
    except Exception as error:  # offline, no token, no rights: the directory is written either way
        raise EnvironmentProblem(f"--push-to-hub {repo}: {type(error).__name__}: {str(error).splitlines()[0]} "
                                 f"(the model is written to {out})") from None
