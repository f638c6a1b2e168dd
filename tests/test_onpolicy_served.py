"""The served teacher against a real llama-cpp-python server (the embedded SmolLM2-135M GGUF):
its echoed log-probs equal llama.cpp's own scores of the same text, they teach a student with
another tokenizer (the tiny model) through the byte alignment, and `train` runs with it."""

import pytest

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")

import json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from test_real_server import free_port, start_server  # noqa: E402

from cotdistill.annotate import annotate  # noqa: E402
from cotdistill.methods import get_method  # noqa: E402
from cotdistill.models import encode_prompt, load_model, render_prompt  # noqa: E402
from cotdistill.models.embedded import find_gguf  # noqa: E402
from cotdistill.tasks import get_task  # noqa: E402
from cotdistill.train import train  # noqa: E402
from cotdistill.train.align import TextTeacher  # noqa: E402
from cotdistill.train.onpolicy import Rollouts, chunked_loss, states_at  # noqa: E402


def test_a_served_teacher_scores_the_students_tokens_with_llama_cpps_own_log_probs(tmp_path, tiny_model):
    from llama_cpp import Llama

    student, tokenizer = load_model(str(tiny_model))
    cot = get_method("cot")
    problems = get_task("arith").load(split="train", limit=2)
    messages = [cot.student_messages(p) for p in problems]
    completions = [tokenizer(p.gold["cot"], add_special_tokens=False)["input_ids"] for p in problems]
    prompts = [encode_prompt(tokenizer, m) for m in messages]
    rollouts = Rollouts(prompts, completions, prompts, messages)
    port = free_port()
    server = start_server(port)
    api = {"base_url": f"http://127.0.0.1:{port}/v1", "top_logprobs": 5}
    try:
        teacher = TextTeacher.served("openai:smollm2", tokenizer, api)
        served = teacher.score_text(list(zip(messages, [p.gold["cot"] for p in problems])))
        scores = teacher.score(student, rollouts)
        annotate(tmp_path, "arith", limit=4)  # `train --objective on-policy --teacher openai:smollm2`, fixed sequences
        record = json.loads((train(tmp_path, student=str(tiny_model), objective="on-policy", teacher_model="openai:smollm2",
                                   teacher_api=api, lmbda=0.0, max_steps=2, per_device_train_batch_size=2,
                                   report_to="none", disable_tqdm=True) / "cotdistill.json").read_text())
    finally:
        server.kill()
    assert record["steps"] == 2 and record["teacher_cache"]["misses"] == 4 and record["teacher_cache"]["tokens"] > 0
    # the same text scored by llama.cpp in-process: token i's log-prob from the scores after token i-1
    llm = Llama(model_path=str(find_gguf()), logits_all=True, n_ctx=1024, n_threads=2, verbose=False)
    text = render_prompt(tokenizer, messages[0]) + problems[0].gold["cot"]
    ids = llm.tokenize(text.encode(), add_bos=True, special=True)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
    logprobs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    expected = [float(logprobs[i - 1, ids[i]]) for i in range(len(ids) - len(served[0]), len(ids))]
    assert len(served[0]) > 5 and served[0][-1].end == len(problems[0].gold["cot"].encode())
    assert [t.logprob for t in served[0]] == pytest.approx(expected, abs=1e-3)
    assert all(1 <= len(t.top) <= 6 for t in served[0])  # top 5 (+ the token); special tokens have no text

    total = sum(map(len, completions))
    assert 0.5 * total < len(scores) <= total
    hidden = states_at(student, prompts, completions, scores.rows, scores.positions, tokenizer.pad_token_id)
    loss = chunked_loss(hidden, student.get_output_embeddings(), scores, 0.5, 16)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
