"""Export: kept annotations as TRL-format JSONL and as a `datasets` directory; a student
as a model directory that the field's tools take as it is (transformers' `generate` and
`pipeline` without cotdistill's help, lm-evaluation-harness), as a GGUF served by
llama-cpp-python, and written so that a kill at any moment blocks no rerun."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from datasets import load_from_disk

from cotdistill.annotate import annotate
from cotdistill.errors import CotdistillError
from cotdistill.export import export
from cotdistill.store import Store


def test_export_formats_carry_each_students_examples(tmp_path):
    annotate(tmp_path, "arith", limit=5, method="socratic")
    out = export(tmp_path, tmp_path / "pc.jsonl", method="socratic")
    rows = [json.loads(line) for line in (tmp_path / "pc.jsonl").read_text().splitlines()]
    assert out["rows"] == len(rows) and out["annotations"] == 5
    assert {r["role"] for r in rows} == {"unified", "qg", "qa"}
    assert all(r["prompt"][-1]["role"] == "user" and r["completion"][0]["role"] == "assistant" for r in rows)
    export(tmp_path, tmp_path / "qg.jsonl", method="socratic", format="messages", roles=["qg"])
    qg = [json.loads(line) for line in (tmp_path / "qg.jsonl").read_text().splitlines()]
    assert len(qg) == 5 and all(r["messages"][-1]["content"].startswith("Q1: ") for r in qg)
    export(tmp_path, tmp_path / "ds", method="socratic", format="dataset")
    dataset = load_from_disk(str(tmp_path / "ds"))
    assert len(dataset) == len(rows) and {"prompt", "completion", "role", "problem_id"} <= set(dataset.column_names)


def test_export_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(CotdistillError, match="no run here"):  # a reading verb makes no run directory
        export(tmp_path / "run", tmp_path / "x.jsonl")
    assert not (tmp_path / "run").exists()
    Store(tmp_path).close()
    with pytest.raises(CotdistillError, match="no kept cot annotations"):
        export(tmp_path, tmp_path / "x.jsonl")
    annotate(tmp_path, "arith", limit=1)
    with pytest.raises(CotdistillError, match="unknown export format 'csv'"):
        export(tmp_path, tmp_path / "x.csv", format="csv")
    with pytest.raises(CotdistillError, match="method cot has no role"):
        export(tmp_path, tmp_path / "x.jsonl", roles=["qg"])


STUDENT_EVAL = "eval:student:arith:test"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model):
    """A run with a LoRA student trained on the tiny model, evaluated on 3 problems, and its export."""
    from cotdistill.evaluate import evaluate
    from cotdistill.export_model import export_model
    from cotdistill.train import train

    run = tmp_path_factory.mktemp("run")
    annotate(run, "arith", limit=8)
    train(run, student=str(tiny_model), lora=True, max_steps=4, learning_rate=2e-2, disable_tqdm=True)
    evaluate(run, model="student", task="arith", limit=3, max_new_tokens=24)
    written = export_model(run, "student", run / "exported", max_new_tokens=24)
    return run, written


def _stored(run, name=STUDENT_EVAL):
    from cotdistill.store import Store

    with Store(run) as store:
        return {p.problem_key: p.text for p in store.predictions(name)}


def _cut(text: str, stop: list[str]) -> str:
    """What `cotdistill eval` keeps of a reply: up to the first stop string, stripped."""
    return text[: min((text.index(s) for s in stop if s in text), default=len(text))].strip()


def test_an_exported_lora_student_generates_in_plain_transformers_without_a_tokenizer(exported):
    """The directory needs nothing of cotdistill, nor `tokenizer=` in `generate` (which
    stop strings in the generation config would demand): transformers alone loads it
    (LoRA merged) and greedy-decodes the very text `cotdistill eval` stored, ending at
    the chat template's end-of-turn token; the tokenizer config holds nothing of the
    exporting machine."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotdistill.methods import get_method
    from cotdistill.tasks import get_task

    run, written = exported
    out = run / "exported"
    assert written["merged_lora"] and "model.safetensors" in written["files"] and "adapter_config.json" not in written["files"]
    assert not [p for p in run.iterdir() if ".partial-" in p.name]
    generation = json.loads((out / "generation_config.json").read_text())
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "stop_strings" not in generation and generation["do_sample"] is False and generation["max_new_tokens"] == 24
    assert not {"local_files_only", "is_local", "name_or_path", "cache_dir"} & set(tokenizer_config)
    card = (out / "README.md").read_text()
    assert "method `cot`" in card and "`gold` (8 kept rationales)" in card and "| arith | test | 3 |" in card
    assert json.dumps(written["stop_strings"]) in card

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in written["eos_token_ids"]
    stored = _stored(run)
    for problem in get_task("arith").load(split="test", limit=3):
        inputs = tokenizer.apply_chat_template(get_method("cot").student_messages(problem), add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        output = model.generate(**inputs)  # no tokenizer=, no settings: the directory's own
        text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert _cut(text, written["stop_strings"]) == stored[problem.key].strip() != ""


def test_an_exported_student_runs_in_a_transformers_pipeline(exported):
    from transformers import pipeline

    from cotdistill.methods import get_method
    from cotdistill.tasks import get_task

    run, written = exported
    generator = pipeline("text-generation", model=str(run / "exported"), device="cpu")
    problem = get_task("arith").load(split="test", limit=1)[0]
    reply = generator(get_method("cot").student_messages(problem))[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and _cut(reply["content"], written["stop_strings"]) == _stored(run)[problem.key]


def test_lm_evaluation_harness_evaluates_an_exported_student(exported, tmp_path):
    """lm-eval's `hf` model on a task of our own (a YAML over a local JSONL, no network):
    it generates with the directory's generation config and no tokenizer in `generate`."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install 'lm-eval>=0.4.5'")
    from cotdistill.tasks import get_task

    run, _ = exported
    problems = get_task("arith").load(split="test", limit=3)
    (tmp_path / "arith.jsonl").write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n"
                                                  for p in problems))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "arith.yaml").write_text(textwrap.dedent(f"""\
        task: cotdistill_arith
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {tmp_path / "arith.jsonl"}
        test_split: test
        output_type: generate_until
        doc_to_text: "{{{{question}}}}"
        doc_to_target: "{{{{answer}}}}"
        generation_kwargs:
          until: ["Question:"]
          do_sample: false
          max_gen_toks: 16
        metric_list:
          - metric: exact_match
        """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                             f"pretrained={run / 'exported'},dtype=float32", "--tasks", "cotdistill_arith",
                             "--include_path", str(tmp_path / "tasks"), "--device", "cpu", "--batch_size", "1",
                             "--apply_chat_template", "--log_samples", "--output_path", str(tmp_path / "results")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = [json.loads(line) for path in (tmp_path / "results").rglob("samples_cotdistill_arith_*.jsonl")
               for line in path.read_text().splitlines()]
    assert len(samples) == 3 and all(s["resps"][0][0].strip() for s in samples)


def test_export_refuses_what_it_cannot_write_and_writes_into_an_empty_directory(exported, tmp_path):
    from cotdistill.export_model import export_model

    run, _ = exported
    with pytest.raises(CotdistillError, match="exists and is not an empty directory"):
        export_model(run, "student", run / "exported")
    with pytest.raises(CotdistillError, match="no trained student 'nobody'"):
        export_model(run, "nobody", tmp_path / "other")
    with pytest.raises(CotdistillError, match="--format onnx: one of hf, gguf"):
        export_model(run, "student", tmp_path / "other", format="onnx")
    with pytest.raises(CotdistillError, match="--llama-cpp .*: no convert_hf_to_gguf.py there"):
        export_model(run, "student", tmp_path / "other", format="gguf", llama_cpp=tmp_path)
    assert not (tmp_path / "other").exists()
    (tmp_path / "empty").mkdir()
    export_model(run, "student", tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").is_file()


KILLED_BEFORE_RENAME = """
import os, signal, sys
from cotdistill.export_model import export_model
rename = os.replace
def replace(source, target):  # the export's last step: everything is written, nothing renamed yet
    if ".partial-" in str(source):
        os.kill(os.getpid(), signal.SIGKILL)
    rename(source, target)
os.replace = replace
export_model(sys.argv[1], "student", sys.argv[2], format=sys.argv[3])
"""


def test_an_export_killed_before_it_is_complete_leaves_nothing_that_blocks_a_rerun(exported, tmp_path):
    """kill -9 of a real export process at its last moment: no `--out` appears (a tool
    would take a half-written model for a model), and the rerun completes and sweeps
    what the killed one left."""
    from transformers import AutoModelForCausalLM

    from cotdistill.export_model import export_model

    run, _ = exported
    out = tmp_path / "model"
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_RENAME, str(run), str(out), "hf"],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".model.partial-")]
    assert not out.exists() and len(left) == 1 and (left[0] / "model.safetensors").is_file()
    export_model(run, "student", out)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    AutoModelForCausalLM.from_pretrained(out)


def test_ollama_template_reproduces_the_chat_template_or_is_left_to_ollama(tiny_model):
    """The Go template is derived from the student's Jinja template and written only when
    it renders like it: ChatML becomes per-role turns, Question/Answer prompts of a base
    model too, and a template that folds the system prompt into the user turn (Gemma's)
    gets none, leaving Ollama to read the GGUF's own."""
    from transformers import AutoTokenizer

    from cotdistill.export_model import ChatFormat, modelfile

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    chat = ChatFormat(tokenizer, [2])
    assert chat.go == ('{{ range $i, $m := .Messages }}'
                       '{{ if eq $m.Role "system" }}<|im_start|>system\n{{ $m.Content }}<|im_end|>\n'
                       '{{ else if eq $m.Role "user" }}<|im_start|>user\n{{ $m.Content }}<|im_end|>\n'
                       '{{ else if eq $m.Role "assistant" }}<|im_start|>assistant\n{{ $m.Content }}<|im_end|>\n{{ end }}'
                       '{{ if and (eq (len (slice $.Messages $i)) 1) (ne $m.Role "assistant") }}'
                       '<|im_start|>assistant\n{{ end }}{{ end }}')
    text = modelfile("s-f16.gguf", chat, ["\nQuestion:"], 64)
    assert "FROM ./s-f16.gguf\n" in text and 'PARAMETER stop "<|im_end|>"\n' in text
    assert 'PARAMETER stop "\nQuestion:"\n' in text and "PARAMETER temperature 0\n" in text
    assert f'TEMPLATE """{chat.go}"""' in text

    tokenizer.chat_template = None
    assert ChatFormat(tokenizer, [2]).go.endswith('"assistant") }}Answer:{{ end }}{{ end }}')
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{% set sys = m['content'] + '\n\n' %}{% else %}"
        "<start_of_turn>{{ m['role'] }}\n{% if loop.index0 == 1 %}{{ sys }}{% endif %}{{ m['content'] }}<end_of_turn>\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    assert ChatFormat(tokenizer, [2]).go is None


@pytest.fixture(scope="module")
def smol_tokenizer_model(tmp_path_factory):
    """A 2-layer Llama with SmolLM2's own tokenizer (read from the embedded GGUF): llama.cpp's
    converter names a BPE tokenizer's pre-tokenizer by a hash of its encodings, so it takes a
    tokenizer it knows, not one trained in a test."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cotdistill.models.embedded import find_gguf

    try:
        gguf = find_gguf()
    except CotdistillError as error:
        pytest.skip(str(error))
    directory = tmp_path_factory.mktemp("smol-tokenizer-model")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_gguf_export_served_by_llama_cpp_answers_as_transformers_does(tmp_path, smol_tokenizer_model):
    """export-model --format gguf (f16 and q8_0) through llama.cpp's own converter: the
    file, served by llama-cpp-python with the chat template it carries, gives the greedy
    answers transformers gave to `cotdistill eval` (f16 all of it, q8_0 its first tokens), and
    an Ollama Modelfile stands beside it. Skips where the converter cannot be had (offline
    before its first fetch)."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    from test_real_server import free_port, start_server
    from transformers import AutoTokenizer

    from cotdistill.errors import EnvironmentProblem
    from cotdistill.evaluate import evaluate
    from cotdistill.export_model import export_model, find_converter
    from cotdistill.train import train

    try:
        find_converter()
    except EnvironmentProblem as error:
        pytest.skip(f"llama.cpp's converter cannot be had here: {error}")
    annotate(tmp_path, "arith", limit=8)
    train(tmp_path, student=str(smol_tokenizer_model), lora=True, max_steps=4, learning_rate=2e-2, disable_tqdm=True)
    evaluate(tmp_path, model="student", task="arith", limit=3, max_new_tokens=16)
    expected = {k: v.strip() for k, v in _stored(tmp_path).items()}
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_model)
    for gguf_type in ("f16", "q8_0"):
        out = tmp_path / gguf_type
        written = export_model(tmp_path, "student", out, format="gguf", gguf_type=gguf_type, max_new_tokens=16)
        assert written["files"] == ["Modelfile", "README.md", f"student-{gguf_type}.gguf"] and written["ollama_template"]
        assert (out / f"student-{gguf_type}.gguf").read_bytes()[:4] == b"GGUF"
        assert f"FROM ./student-{gguf_type}.gguf" in (out / "Modelfile").read_text()
        port = free_port()
        server = start_server(port, str(out / f"student-{gguf_type}.gguf"), alias="student", n_ctx=1024)
        try:
            evaluate(tmp_path, model="openai:student", task="arith", limit=3, max_new_tokens=16, name=f"gguf-{gguf_type}",
                     api={"base_url": f"http://127.0.0.1:{port}/v1", "concurrency": 1})
        finally:
            server.kill()
        served = {k: v.strip() for k, v in _stored(tmp_path, f"gguf-{gguf_type}").items()}
        if gguf_type == "f16":
            assert served == expected
        else:  # 8-bit weights: on this random-weight model the greedy path holds for its first tokens, then near-ties flip
            assert all(tokenizer(served[k])["input_ids"][:3] == tokenizer(expected[k])["input_ids"][:3] for k in expected)
