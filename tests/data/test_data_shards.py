from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from infini_llama.data import (
    dtype_for_vocab,
    encode_documents,
    held_out_book,
    load_corpus,
    load_token_data,
    prepare_tokens,
    train_bpe_tokenizer,
)
from infini_llama.data import shards as shardmod


def _reference(tok, texts):
    """What the stream must contain: each text's ids, then EOS."""
    out = []
    for t in texts:
        out += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


def _files(tmp_path, n=8):
    paths = []
    for i in range(n):
        p = tmp_path / f"doc{i}.txt"
        p.write_text(f"Document number {i}.\nIt has a few lines of text,\n\nand a blank line.\n" * (i + 1))
        paths.append(p)
    return paths


def test_dtype_for_vocab():
    assert dtype_for_vocab(4096) == np.uint16
    assert dtype_for_vocab(65_536) == np.uint16  # ids 0..65535 fit
    assert dtype_for_vocab(65_537) == np.uint32
    assert dtype_for_vocab(128_256) == np.uint32
    with pytest.raises(ValueError):
        dtype_for_vocab(0)


def test_prepare_local_files_matches_direct_encoding(tiny_tok, tmp_path):
    paths = _files(tmp_path)
    td = prepare_tokens(tiny_tok, data=paths, cache_dir=tmp_path / "cache", show_progress=False)
    texts = [p.read_text() for p in paths]
    assert td.train.dtype == np.uint16 and td.dtype == np.uint16 and isinstance(td.train, np.memmap)
    assert td.train.tolist() == _reference(tiny_tok, texts[:-1])
    assert td.validation.tolist() == _reference(tiny_tok, texts[-1:])
    assert (td.num_train_documents, td.num_validation_documents) == (7, 1)
    assert td.num_train_tokens == len(td.train) and td.vocab_size == len(tiny_tok)
    assert td.eos_token_id == tiny_tok.eos_token_id


def test_second_call_is_a_cache_hit(tiny_tok, tmp_path, monkeypatch):
    paths = _files(tmp_path)
    first = prepare_tokens(tiny_tok, data=paths, cache_dir=tmp_path / "c", show_progress=False)

    def boom(*a, **k):
        raise AssertionError("should not re-tokenize")

    monkeypatch.setattr(shardmod, "encode_documents", boom)
    again = prepare_tokens(tiny_tok, data=paths, cache_dir=tmp_path / "c", show_progress=False)
    assert again.path == first.path and np.array_equal(again.train, first.train)
    assert load_token_data(first.path).num_validation_tokens == first.num_validation_tokens


def test_cache_is_keyed_by_sources_and_tokenizer(tiny_tok, tmp_path):
    paths = _files(tmp_path)
    cache = tmp_path / "c"
    base = prepare_tokens(tiny_tok, data=paths, cache_dir=cache, show_progress=False)
    other_tok = train_bpe_tokenizer([p.read_text() for p in paths], vocab_size=280)
    by_tok = prepare_tokens(other_tok, data=paths, cache_dir=cache, show_progress=False)
    paths[0].write_text("Changed content.\nEntirely.\n")
    by_data = prepare_tokens(tiny_tok, data=paths, cache_dir=cache, show_progress=False)
    assert len({base.path, by_tok.path, by_data.path}) == 3
    assert by_data.train.tolist()[:5] == _reference(tiny_tok, ["Changed content.\nEntirely.\n"])[:5]


def test_killed_build_leaves_no_cache_entry(tiny_tok, tmp_path, monkeypatch):
    paths = _files(tmp_path)
    real = shardmod.encode_documents
    calls = []

    def dies_on_validation(texts, tok, out_file, **kw):
        calls.append(out_file)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the run was killed half-way
        return real(texts, tok, out_file, **kw)

    monkeypatch.setattr(shardmod, "encode_documents", dies_on_validation)
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens(tiny_tok, data=paths, cache_dir=tmp_path / "c", show_progress=False)
    assert list((tmp_path / "c" / "tokens").iterdir()) == []
    monkeypatch.setattr(shardmod, "encode_documents", real)
    td = prepare_tokens(tiny_tok, data=paths, cache_dir=tmp_path / "c", show_progress=False)
    assert td.num_train_documents == 7


def test_chunked_batched_encoding_is_exact(tiny_tok, tmp_path, monkeypatch):
    # Force tiny pieces and tiny batches so documents span pieces and flushes.
    monkeypatch.setattr(shardmod, "_CHUNK_CHARS", 200)
    monkeypatch.setattr(shardmod, "_BATCH_CHARS", 1500)
    texts = [d.text[:6000] for d in load_corpus()[:5]] + ["literal <|endoftext|> in text\n"]
    n, docs = encode_documents(texts, tiny_tok, tmp_path / "x.bin", dtype=np.dtype(np.uint32), show_progress=False)
    got = np.fromfile(tmp_path / "x.bin", dtype=np.uint32).tolist()
    want = []
    for t in texts:  # special-token text is encoded as plain text, never as EOS
        want += tiny_tok(t, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [tiny_tok.eos_token_id]
    assert got == want and (n, docs) == (len(want), len(texts))
    assert got.count(tiny_tok.eos_token_id) == len(texts)


def test_tokenizer_that_cannot_be_chunked_falls_back(tmp_path, monkeypatch):
    # SentencePiece-style tokenizers add a prefix marker at the start of every input, so
    # cutting a document would change its ids: the probe must detect it.
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    texts = [d.text[:3000] for d in load_corpus()[:3]]
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    assert not shardmod._chunking_is_exact(shardmod._encoder(tok))
    monkeypatch.setattr(shardmod, "_CHUNK_CHARS", 100)
    encode_documents(texts, tok, tmp_path / "x.bin", dtype=np.dtype(np.uint16), show_progress=False)
    assert np.fromfile(tmp_path / "x.bin", dtype=np.uint16).tolist() == _reference(tok, texts)


def test_embedded_corpus_end_to_end(default_tok, cache_root):
    td = prepare_tokens(default_tok, cache_dir=cache_root, show_progress=False)
    assert td.num_train_documents == len(load_corpus()) and td.num_validation_documents == 2
    assert td.num_train_tokens > 3_000_000
    book = held_out_book().text
    assert default_tok.decode(td.validation[:200].tolist()) == default_tok.decode(
        default_tok(book[:2000], add_special_tokens=False)["input_ids"][:200]
    )
    again = prepare_tokens(default_tok, cache_dir=cache_root, show_progress=False)
    assert again.path == td.path
