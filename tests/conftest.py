"""Shared fixtures: a tiny config-built causal LM with a BPE tokenizer trained here, so
unit tests exercise real transformers/peft code paths in seconds and fully offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(directory: Path, texts: list[str], chat_template: bool = True, vocab_size: int = 400,
                     seq2seq: bool = False) -> Path:
    """A 2-layer Llama (or, `seq2seq`, a 2+2-layer T5) with a BPE tokenizer trained on `texts`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    ))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>")
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    if seq2seq:
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=len(tokenizer), d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            decoder_start_token_id=tokenizer.pad_token_id))
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return directory
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, initializer_range=0.3, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _corpus() -> list[str]:
    from cotdistill.methods import get_method
    from cotdistill.tasks import get_task

    method = get_method("cot")
    problems = get_task("arith").load(split="train", limit=300)
    texts = [p.question + " " + p.gold["cot"] for p in problems]
    return texts + [m["content"] for m in method.teacher_messages(problems[0])]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local model directory: 2-layer Llama, 400-token BPE, ChatML-style template."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), _corpus())


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same without a chat template: the plain Question/Answer prompt path."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-base-model"), _corpus(), chat_template=False)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seq2seq student: 2+2-layer T5 with the same kind of tokenizer, no chat template."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-t5"), _corpus(), chat_template=False, seq2seq=True)


@pytest.fixture(scope="session")
def other_tokenizer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose tokenizer differs from `tiny_model`'s (300 merges, not 400)."""
    return build_tiny_model(tmp_path_factory.mktemp("other-tokenizer"), _corpus(), vocab_size=300)


def _process_tree() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    return children


def _confined(pid: int) -> bool:
    try:
        return "Seccomp:\t2" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.fixture
def sandbox_leftovers():
    """What runs under the given sandbox workers beyond the one child each forks, idle
    and unconfined, for its next program: the processes a program left behind."""
    def leftovers(workers: set[int]) -> list[int]:
        tree, found = _process_tree(), []
        for worker in workers:
            todo = list(tree.get(worker, []))
            idle = [pid for pid in todo if not _confined(pid) and not tree.get(pid)][:1]
            while todo:
                pid = todo.pop()
                todo += tree.get(pid, [])
                if pid not in idle:
                    found.append(pid)
        return found
    return leftovers
