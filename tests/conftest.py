"""Shared test fixtures: tiny models of the three naming schemes, built offline.

The tools are standalone scripts; tests import their pure functions straight from the repository
root (each script guards its CLI behind ``if __name__ == "__main__"``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests start the tools as subprocesses hundreds of times; with PYTHONDONTWRITEBYTECODE set
# (some containers set it) every one of them would compile torch, transformers and lm-eval from
# source again (10 s a start on a 2-core box). The compiled files go to the test environment's
# own caches.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY_TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Glimmer reactors hum at a steady frequency when the quartz lattice is tuned.",
    "A good loaf of bread needs flour, water, salt and patience.",
    "The committee met on Tuesday to discuss the new library budget.",
    "Zephyr coils store charge in a spiral of braided silver wire.",
    "Rain fell softly on the old town square all afternoon.",
]


def build_tokenizer(texts=TINY_TEXTS, vocab_size: int = 320):
    """A byte-level BPE tokenizer trained in milliseconds on ``texts`` (no hub needed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


def tiny_config(arch: str, vocab_size: int = 320, hidden: int = 32, layers: int = 4, heads: int = 4,
                intermediate: int | None = None, max_pos: int = 128):
    """Config of a tiny model: ``arch`` is 'gpt_neox', 'llama' or 'gpt2'."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    inter = intermediate or 4 * hidden
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, intermediate_size=inter,
                             max_position_embeddings=max_pos, tie_word_embeddings=False,
                             bos_token_id=0, eos_token_id=0)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=heads // 2,
                           intermediate_size=inter, max_position_embeddings=max_pos,
                           tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                          n_inner=inter, n_positions=max_pos, bos_token_id=0, eos_token_id=0)
    raise ValueError(arch)


def make_tiny_model(arch: str = "gpt_neox", seed: int = 0, **config_kwargs):
    """A randomly initialised tiny causal LM (deterministic for a seed), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **config_kwargs))
    return model.eval()


def save_model(model, path, tokenizer=None, max_shard_size: str | int | None = None, dtype=None):
    """``save_pretrained`` as safetensors, optionally sharded and cast (e.g. torch.bfloat16)."""
    path = Path(path)
    if dtype is not None:
        model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    model.save_pretrained(path, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models are overhead-bound: one torch thread is faster and steadier on a 2-core box,
    where a second OpenMP thread only contends with other processes (the demo builder also
    trains single-threaded)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The end-to-end pipeline test is the longest by far: collected first, so pytest-xdist (--dist
# loadfile) gives it a worker at once and the other worker runs the rest beside it.
SLOWEST_FIRST = ("test_pipeline_demo.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: Path(str(item.fspath)).name not in SLOWEST_FIRST)
