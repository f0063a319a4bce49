"""Fixtures for the data-layer tests: an isolated cache, and one small default tokenizer.

Training the default BPE on the whole embedded corpus takes a few seconds, so it is
built once per session at a small vocabulary and shared.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SMALL_VOCAB = 1024


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> str:
    """A cache folder private to this test session (never ~/.cache)."""
    return str(tmp_path_factory.mktemp("infini_llama_cache"))


@pytest.fixture(autouse=True)
def _isolated_cache(cache_root, monkeypatch):
    monkeypatch.setenv("INFINI_LLAMA_CACHE", cache_root)


@pytest.fixture(scope="session")
def default_tok(cache_root):
    from infini_llama.data import load_tokenizer

    return load_tokenizer(None, vocab_size=SMALL_VOCAB, cache_dir=cache_root)


@pytest.fixture(scope="session")
def tiny_tok():
    """A 300-token BPE trained on a slice of the corpus in well under a second."""
    from infini_llama.data import load_corpus, train_bpe_tokenizer

    return train_bpe_tokenizer([d.text[:20_000] for d in load_corpus("train")[:10]], vocab_size=300)
