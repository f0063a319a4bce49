"""Fixtures for the trainer tests: a micro model, a few KB of local text and a 300-token tokenizer, so a run
of a few steps takes about a second."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infini_llama.train import TrainConfig, recipe

MICRO_MODEL = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
    segment_len=16,
)  # fmt: skip
MICRO_SETS = [f"--set={k}={v}" for k, v in MICRO_MODEL.items()]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Micro models run fastest on one thread, and a shared machine's busy cores slow a second one down
    many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """Tokenizer and token caches private to this test session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _isolated_cache(cache_root, monkeypatch):
    monkeypatch.setenv("INFINI_LLAMA_CACHE", str(cache_root))


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory) -> Path:
    """Twelve 12,000-character slices of the embedded corpus as .txt files (the last one is validation)."""
    from infini_llama.data import load_corpus

    folder = tmp_path_factory.mktemp("text")
    for i, doc in enumerate(load_corpus("train")[:12]):
        (folder / f"doc{i:02d}.txt").write_text(doc.text[5000:17000], encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A 300-token byte-level BPE, saved as a tokenizer folder."""
    from infini_llama.data import load_corpus, train_bpe_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    tok = train_bpe_tokenizer([d.text[:30000] for d in load_corpus("train")[:10]], vocab_size=300)
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def bpe_tok(cache_root):
    """The project's default tokenizer (byte-level BPE trained on the embedded corpus), at a small vocabulary."""
    from infini_llama.data import load_tokenizer

    return load_tokenizer(None, vocab_size=512, cache_dir=str(cache_root))


@pytest.fixture
def micro_cfg(tmp_path, text_dir, tokenizer_dir, cache_root):
    """`micro_cfg(**fields) -> TrainConfig`: 8 steps of a 2-layer width-32 model on 4 × 32-token batches."""

    def make(**fields) -> TrainConfig:
        model = {**MICRO_MODEL, **fields.pop("model", {})}
        base = dict(
            out=str(tmp_path / "run"), data=[str(text_dir)], tokenizer=str(tokenizer_dir),
            cache_dir=str(cache_root), seq_len=32, batch_size=4, steps=8, warmup_steps=2, eval_every=4,
            eval_windows=4, log_every=1,
            save_every=4, keep=2, progress=False, tensorboard=False, model=model,
        )  # fmt: skip
        return recipe("tiny", **{**base, **fields})

    return make


@pytest.fixture
def passkey_base(tmp_path, bpe_tok, micro_cfg) -> Path:
    """A folder with an untrained micro model (`micro_cfg`'s) and `bpe_tok`: what passkey fine-tuning starts from."""
    from infini_llama.models import InfiniLlamaForCausalLM, config_from_preset

    base = tmp_path / "base"
    ids = dict(bos_token_id=bpe_tok.bos_token_id, eos_token_id=bpe_tok.eos_token_id)
    model = InfiniLlamaForCausalLM(config_from_preset("tiny", **micro_cfg().model, vocab_size=len(bpe_tok), **ids))
    model.save_pretrained(base)
    bpe_tok.save_pretrained(base)
    return base


@pytest.fixture
def micro_inputs(text_dir, tokenizer_dir, cache_root) -> list[str]:
    """CLI arguments naming the micro run's data, tokenizer, cache and model."""
    return [
        "--data",
        str(text_dir),
        "--tokenizer",
        str(tokenizer_dir),
        "--cache-dir",
        str(cache_root),
        *MICRO_SETS,
    ]


@pytest.fixture
def micro_args(tmp_path, micro_inputs):
    """`micro_args(*extra, out=None) -> list[str]`: the CLI arguments of the micro run of `micro_cfg`."""

    def make(*extra: str, out: Path | None = None) -> list[str]:
        return [
            "train", "--out", str(out or tmp_path / "run"), *micro_inputs, "--seq-len", "32",
            "--batch-size", "4", "--steps", "8", "--warmup-steps", "2", "--eval-every", "4",
            "--eval-windows", "4", "--log-every", "1", "--save-every", "4", "--no-progress",
            "--no-tensorboard", *extra,
        ]  # fmt: skip

    return make


@pytest.fixture
def run_python(cache_root):
    """`run_python(args) -> CompletedProcess`: `python <args>` in a fresh interpreter, offline, test cache."""

    def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "INFINI_LLAMA_CACHE": str(cache_root),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
        }
        return subprocess.run(
            [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )

    return run
