"""Fixtures of the evaluation tests: tokenizers of three kinds and micro models, all built offline."""

from __future__ import annotations

import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from infini_llama import InfiniLlamaConfig, InfiniLlamaForCausalLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SPECIALS = ["<|endoftext|>", "<|pad|>"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("infini_llama_cache"))


@pytest.fixture(autouse=True)
def _isolated_cache(cache_dir, monkeypatch):
    monkeypatch.setenv("INFINI_LLAMA_CACHE", cache_dir)


@pytest.fixture(autouse=True)
def _one_thread():
    """Micro models are fastest on one thread; with several, their tiny ops spend most of the time waiting for
    each other (over 10x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bpe_tok(cache_dir) -> PreTrainedTokenizerFast:
    """The project's default tokenizer (byte-level BPE trained on the embedded corpus), at a small vocabulary."""
    from infini_llama.data import load_tokenizer

    return load_tokenizer(None, vocab_size=512, cache_dir=cache_dir)


def _corpus_sample() -> list[str]:
    from infini_llama.data import load_corpus

    return [d.text[:20_000] for d in load_corpus("train")[:8]]


@pytest.fixture(scope="session")
def char_tok() -> PreTrainedTokenizerFast:
    """One token per character: a BPE without merges over every character of a corpus sample plus digits."""
    chars = sorted(set("".join(_corpus_sample())) | set("0123456789"))
    vocab = {token: i for i, token in enumerate(SPECIALS + chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|pad|>"))
    backend.decoder = decoders.Fuse()  # characters are joined back without separators
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=SPECIALS[0], bos_token=SPECIALS[0], pad_token=SPECIALS[1]
    )


@pytest.fixture(scope="session")
def metaspace_tok() -> PreTrainedTokenizerFast:
    """SentencePiece-style word starts ("▁"), without a BOS token: encoding a part alone differs from in context."""
    backend = Tokenizer(models.BPE(unk_token="<|pad|>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False)
    backend.train_from_iterator(_corpus_sample() + ["0123456789 " * 50], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=SPECIALS[0], pad_token=SPECIALS[1])


def _micro_config(vocab_size: int, **overrides) -> InfiniLlamaConfig:
    base = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        segment_len=16,
    )
    return InfiniLlamaConfig(**{**base, **overrides})


def _micro_model(vocab_size: int, seed: int = 0, dtype=torch.float32, **overrides) -> InfiniLlamaForCausalLM:
    torch.manual_seed(seed)
    return InfiniLlamaForCausalLM(_micro_config(vocab_size, **overrides)).to(dtype).eval()


@pytest.fixture(scope="session")
def micro_model():
    """Factory of random micro models (2 layers, width 32, segment 16): micro_model(vocab, seed, dtype, **config)."""
    return _micro_model
