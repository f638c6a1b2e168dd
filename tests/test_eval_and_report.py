import time

import pytest

from cotdistill.annotate import annotate
from cotdistill.evaluate import evaluate, wilson_interval
from cotdistill.models import LocalModel, render_prompt
from cotdistill.report import report
from cotdistill.store import Store
from cotdistill.tasks import get_task
from cotdistill.methods import get_method


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(50, 100)
    assert round(low, 3) == 0.404 and round(high, 3) == 0.596
    assert wilson_interval(0, 10)[0] == 0.0 and 0.27 < wilson_interval(0, 10)[1] < 0.29


def test_batched_generation_equals_one_by_one(tiny_model):
    """Left padding and length sorting must not change greedy outputs."""
    problems = get_task("arith").load(split="test", limit=5)
    requests = [get_method("cot").student_messages(p) for p in problems]
    batched = LocalModel(str(tiny_model), batch_size=5).generate(requests, max_new_tokens=12)
    single = LocalModel(str(tiny_model), batch_size=1).generate(requests, max_new_tokens=12)
    assert [c.text for c in batched] == [c.text for c in single]
    assert all(c.completion_tokens <= 12 and c.prompt_tokens > 20 for c in batched)


@pytest.mark.parametrize("batch_size", [8, 3, 1])
def test_decoding_matches_transformers_generate_when_rows_finish_apart(tiny_model, batch_size):
    """Dropping finished rows from the batch and KV cache, (batch 3: 8 prompts through 3 slots)
    prefilling waiting prompts into the slots they free, and the packed CPU weights must not
    change any row's tokens against plain transformers `generate`, one row at a time.

    A token that the untrained model emits at different steps in different rows is made
    the EOS, so rows leave the batch at different times."""
    import collections

    from transformers import AutoModelForCausalLM

    model = LocalModel(str(tiny_model), batch_size=batch_size)
    assert model.model.model.layers[0].mlp.up_proj.weight.is_mkldnn  # packed for CPU (pack_linear_weights)
    stock = AutoModelForCausalLM.from_pretrained(str(tiny_model))  # plain transformers, weights as saved
    problems = get_task("arith").load(split="test", limit=8)
    prompts = [render_prompt(model.tokenizer, get_method("cot").student_messages(p)) for p in problems]
    encoded = [model.tokenizer(p, add_special_tokens=False, return_tensors="pt") for p in prompts]

    def reference(eos: int | None) -> list[list[int]]:
        rows = []
        for inputs in encoded:
            out = stock.generate(**inputs, max_new_tokens=24, do_sample=False, eos_token_id=eos,
                                 pad_token_id=model.tokenizer.pad_token_id)
            rows.append(out[0, inputs["input_ids"].shape[1]:].tolist())
        return rows

    free = reference(None)
    counts = collections.Counter(t for row in free for t in set(row[:20]))
    eos = next(t for t, n in counts.most_common() if 2 <= n < len(free))  # in some rows, not all
    model.model.generation_config.eos_token_id = eos
    model.tokenizer.eos_token = model.tokenizer.convert_ids_to_tokens(eos)
    expected = reference(eos)
    assert len({len(row) for row in expected}) >= 2  # rows really do finish apart
    ours = model.generate([get_method("cot").student_messages(p) for p in problems], max_new_tokens=24)
    for completion, row in zip(ours, expected):
        assert completion.completion_tokens == len(row)
        assert completion.text == model.tokenizer.decode(row, skip_special_tokens=True).strip()
        assert completion.finish_reason == ("stop" if row[-1] == eos else "length")


@pytest.mark.parametrize("batch_size", [4, 2])
def test_a_shared_prefix_computed_once_leaves_every_row_as_generate_writes_it(tiny_model, batch_size):
    """Few-shot prompts (a long common beginning, questions of different lengths) and the same
    prompt asked three times (self-consistency's shape): the prefix is prefilled once, the
    rows padded between it and their own tokens, and greedy tokens still equal `generate`'s."""
    import cotdistill.models.decode as decode

    model = LocalModel(str(tiny_model), batch_size=batch_size)
    shots = " ".join(f"Example {i}: {i} plus {i} is {2 * i}." for i in range(12))
    questions = ["What is 3 plus 4?", "What is 12 plus 30 and then 5 more?", "Sum 1 and 1.", "Sum 1 and 1."]
    requests = [[{"role": "system", "content": shots}, {"role": "user", "content": q}] for q in questions + questions[2:]]
    shared = []
    common = decode._common_prefix
    decode._common_prefix = lambda texts: shared.append(common(texts)) or common(texts)
    try:
        ours = model.generate(requests, max_new_tokens=16)
    finally:
        decode._common_prefix = common
    assert max(shared) >= decode.MIN_SHARED * 4  # the examples really were shared
    for completion, messages in zip(ours, requests):
        inputs = model.tokenizer(render_prompt(model.tokenizer, messages), add_special_tokens=False, return_tensors="pt")
        row = model.model.generate(**inputs, max_new_tokens=16, do_sample=False,
                                   pad_token_id=model.tokenizer.pad_token_id)[0, inputs["input_ids"].shape[1]:]
        assert completion.text == model.tokenizer.decode(row, skip_special_tokens=True).strip()


def test_a_prompt_asked_k_times_is_prefilled_once_and_each_copy_samples_its_own_reply(tiny_model):
    """Self-consistency's shape: two problems asked four times each. The prefill computes two
    rows, not eight; the eight rows then decode side by side and sample apart."""
    model = LocalModel(str(tiny_model), batch_size=8)
    calls, forward = [], model.model.forward

    def recorded(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    model.model.forward = recorded
    requests = [[{"role": "user", "content": q}] for q in ["What is 3 plus 4?", "Sum 12 and 30."] for _ in range(4)]
    out = model.generate(requests, max_new_tokens=16, temperature=1.0, seed=3)
    assert calls[0][0] == 2 and all(shape == (8, 1) for shape in calls[1:])
    assert len({c.text for c in out[:4]}) > 1 and len({c.text for c in out[4:]}) > 1


def test_the_reserved_cache_holds_what_transformers_dynamic_cache_holds(tiny_model):
    """Decoding into reserved room (regrown when it runs out, rows dropped on the way) gives
    the logits that transformers' own torch.cat cache gives, step for step."""
    import torch
    from transformers import DynamicCache

    from cotdistill.models.decode import ReservedCache, cache_argument

    model = LocalModel(str(tiny_model)).model
    argument = cache_argument(model)
    ids = torch.randint(5, 100, (3, 7), generator=torch.Generator().manual_seed(0))

    def decode(cache):
        logits, tokens = [], ids
        with torch.inference_mode():
            for step in range(6):
                if step == 3:  # a row leaves the batch
                    cache.batch_select_indices(torch.tensor([0, 2]))
                    tokens = tokens[[0, 2]]
                out = model(input_ids=tokens, use_cache=True, **{argument: cache})
                logits.append(out.logits[:, -1])
                tokens = out.logits[:, -1].argmax(-1, keepdim=True)
        return logits

    for ours, theirs in zip(decode(ReservedCache(reserve=2)), decode(DynamicCache())):
        assert torch.equal(ours, theirs)


def test_sampling_draws_each_token_as_often_as_its_probability():
    """The decode loop's inverse-transform sampler against softmax(logits / T): frequencies
    over 200k draws within a few standard errors of each token's probability (torch.multinomial
    would pass the same check), tokens of probability zero never drawn, and a seed that
    repeats its draws."""
    import torch

    from cotdistill.models.decode import sample

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5],
                           [float("-inf"), 0.0, 0.0, float("-inf"), 3.0, float("-inf")]])
    rows = 100_000
    draws = sample(logits.repeat(rows, 1), 0.7, torch.Generator().manual_seed(1)).view(rows, 2)
    for row in range(2):
        expected = torch.softmax(logits[row] / 0.7, dim=-1)
        observed = torch.bincount(draws[:, row], minlength=6) / rows
        tolerance = 5 * (expected * (1 - expected) / rows).sqrt() + 1e-9
        assert ((observed - expected).abs() <= tolerance).all(), (observed, expected)
        assert (observed[expected == 0] == 0).all()
    again = sample(logits.repeat(rows, 1), 0.7, torch.Generator().manual_seed(1)).view(rows, 2)
    assert torch.equal(draws, again)


def test_stop_strings_cut_the_completion_where_they_first_appear(tiny_base_model):
    model = LocalModel(str(tiny_base_model), batch_size=2)
    request = [{"role": "user", "content": "Tom has 3 apples."}]
    [free] = model.generate([request], max_new_tokens=30)
    assert free.finish_reason == "length" and len(free.text) > 12
    stop = free.text[8:11]  # a string the model does write, a few tokens in
    [cut] = model.generate([request], max_new_tokens=30, stop=[stop])
    assert cut.text == free.text[: free.text.index(stop)].strip()
    assert cut.finish_reason == "stop" and cut.completion_tokens < free.completion_tokens


def test_eval_scores_stores_and_resumes(tmp_path, tiny_model):
    metrics = evaluate(tmp_path, model=str(tiny_model), limit=6, max_new_tokens=8, name="tiny")
    assert metrics["n"] == 6 and 0 <= metrics["accuracy_strict"] <= 1
    assert metrics["ci95_low"] <= metrics["accuracy_strict"] <= metrics["ci95_high"]
    assert 0 < metrics["completion_tokens_per_problem"] <= 8
    started = time.perf_counter()
    assert evaluate(tmp_path, model=str(tiny_model), limit=6, max_new_tokens=8, name="tiny") == metrics
    assert time.perf_counter() - started < 5  # nothing regenerated, the model is not even loaded
    more = evaluate(tmp_path, model=str(tiny_model), limit=9, max_new_tokens=8, name="tiny")
    assert more["n"] == 9
    assert len(list(Store(tmp_path).predictions("tiny"))) == 9
    assert evaluate(tmp_path, model=str(tiny_model), limit=3, max_new_tokens=8, name="tiny")["n"] == 3


def test_report_writes_table_csv_and_plot(tmp_path, tiny_model):
    annotate(tmp_path, "arith", limit=4)
    evaluate(tmp_path, model=str(tiny_model), limit=4, max_new_tokens=4, name="before")
    evaluate(tmp_path, model=str(tiny_model), limit=4, max_new_tokens=4, name="after")
    markdown = report(tmp_path)
    assert "| before |" in markdown and "| after |" in markdown
    assert (tmp_path / "report.csv").read_text().count("\n") == 3
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
