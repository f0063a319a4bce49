from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from infini_llama.data import (
    EOS_TOKEN,
    PAD_TOKEN,
    load_corpus,
    load_tokenizer,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)
from infini_llama.data import tokenizer as tokmod

SMALL_VOCAB = 1024  # the vocab size of conftest.default_tok


def _small_corpus(split="train"):
    # A slice of the real corpus keeps training to a fraction of a second.
    from infini_llama.data.corpus import Document

    return [Document(d.name, d.text[:30_000]) for d in load_corpus(split)[:12]]


def test_default_build_is_deterministic_across_cache_dirs(tmp_path, monkeypatch):
    monkeypatch.setattr(tokmod, "load_corpus", _small_corpus)
    a = load_tokenizer(None, vocab_size=512, cache_dir=tmp_path / "a")
    b = load_tokenizer(None, vocab_size=512, cache_dir=tmp_path / "b")
    assert a.get_vocab() == b.get_vocab()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)


def test_cache_hit_reuses_without_training(tmp_path, monkeypatch):
    monkeypatch.setattr(tokmod, "load_corpus", _small_corpus)
    first = load_tokenizer(None, vocab_size=400, cache_dir=tmp_path)
    saved = list((tmp_path / "tokenizers").iterdir())
    assert len(saved) == 1 and (saved[0] / "tokenizer.json").is_file()
    assert not [p for p in saved[0].parent.iterdir() if p.name.startswith(".")]  # no temp leftovers

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been loaded")

    monkeypatch.setattr(tokmod, "train_bpe_tokenizer", no_training)
    again = load_tokenizer(None, vocab_size=400, cache_dir=tmp_path)
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(first)
    # A different vocab size is a different cache entry.
    with pytest.raises(AssertionError, match="cached"):
        load_tokenizer(None, vocab_size=401, cache_dir=tmp_path)


def test_cache_dir_defaults_to_env(tmp_path, monkeypatch):
    monkeypatch.setattr(tokmod, "load_corpus", _small_corpus)
    monkeypatch.setenv("INFINI_LLAMA_CACHE", str(tmp_path))
    load_tokenizer(None, vocab_size=300)
    assert list((tmp_path / "tokenizers").glob("bpe-300-*/tokenizer.json"))


def test_default_tokenizer_properties(default_tok):
    tok = default_tok
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == SMALL_VOCAB
    assert tok.eos_token == EOS_TOKEN and tok.pad_token == PAD_TOKEN
    assert tok.eos_token_id != tok.pad_token_id
    assert tok.convert_ids_to_tokens([0, 1]) == [EOS_TOKEN, PAD_TOKEN]


def test_round_trip_on_corpus_text(default_tok):
    samples = [d.text[i : i + 3000] for d in load_corpus() + load_corpus("validation") for i in (0, 10_000)]
    samples.append("naïve café — “quotes” £5 ½ 日本語 emoji 🙂\n\ttab  two  spaces\n")
    for text in samples:
        ids = default_tok(text, add_special_tokens=False)["input_ids"]
        assert default_tok.decode(ids) == text
    # BPE actually compresses: well under one token per character on English prose.
    text = load_corpus()[0].text[:20_000]
    assert len(default_tok(text)["input_ids"]) < 0.5 * len(text)


def test_numbers_are_one_token_per_digit(default_tok):
    # The corpus is full of years and chapter numbers; no merge may join a digit to anything, so a k-digit passkey
    # is k tokens whatever the key and the vocabulary size, and the space before it is one token whatever its first
    # digit (a merged " 2" made small models answer " 2" + "86556" for the key 86556).
    for text in (" 1851", " 40213", " 99999", "chapter 42.", "(1611)", "is 286", "is 886"):
        ids = default_tok(text, add_special_tokens=False)["input_ids"]
        pieces = default_tok.convert_ids_to_tokens(ids)
        digits = [p for p in pieces if any(c.isdigit() for c in p)]
        assert all(len(p) == 1 for p in digits), pieces
        assert len(digits) == sum(c.isdigit() for c in text)
    assert not [p for p in default_tok.get_vocab() if len(p) > 1 and any(c in "0123456789" for c in p)]
    space = default_tok.convert_tokens_to_ids("Ġ")
    for key in ("12345", "23456", "86556"):
        assert default_tok(" " + key, add_special_tokens=False)["input_ids"][0] == space


def test_train_bpe_is_deterministic_and_validates_size():
    texts = [d.text[:20_000] for d in load_corpus()[:6]]
    a, b = train_bpe_tokenizer(texts, 350), train_bpe_tokenizer(iter(texts), 350)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 350
    with pytest.raises(ValueError, match="at least 258"):
        train_bpe_tokenizer(texts, 200)


def test_fingerprint_distinguishes_tokenizers(tiny_tok, default_tok):
    assert tokenizer_fingerprint(tiny_tok) != tokenizer_fingerprint(default_tok)
    assert tokenizer_fingerprint(tiny_tok) == tokenizer_fingerprint(tiny_tok)


def test_load_from_local_dir_round_trips(tiny_tok, tmp_path):
    tiny_tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tiny_tok)
    assert loaded.eos_token == EOS_TOKEN and loaded.pad_token == PAD_TOKEN


def test_local_tokenizer_without_pad_falls_back_to_eos(tmp_path):
    backend = Tokenizer(models.WordLevel({"a": 0, "b": 1, "</s>": 2, "[UNK]": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="[UNK]").save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.eos_token == "</s>" and tok.pad_token == "</s>"
    assert len(tok) == 4  # nothing was added


def test_local_tokenizer_without_eos_gets_one(tmp_path):
    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.eos_token == EOS_TOKEN and tok.pad_token == EOS_TOKEN
    assert len(tok) == 3


def test_hub_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        load_tokenizer("no-such-user/no-such-tokenizer-infini-llama-test")


def test_directory_without_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="could not load a tokenizer from directory"):
        load_tokenizer(tmp_path)


def test_file_instead_of_dir(tmp_path):
    f = tmp_path / "tokenizer.json"
    f.write_text(json.dumps({}))
    with pytest.raises(ValueError, match="directory"):
        load_tokenizer(Path(f))
