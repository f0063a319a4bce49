from __future__ import annotations

import dataclasses
import re

import pytest

from infini_llama.data import Document, corpus_fingerprint, held_out_book, load_corpus
from infini_llama.data.corpus import CORPUS_DIR


def test_splits_load_and_are_disjoint_by_document():
    train, val = load_corpus("train"), load_corpus("validation")
    assert len(train) > 40 and 1 <= len(val) <= 3
    train_names, val_names = {d.name for d in train}, {d.name for d in val}
    assert not train_names & val_names
    assert len(train_names) == len(train)  # no duplicated documents
    # No validation text leaks into training, not even as part of a larger document.
    probe = val[0].text[50_000:50_400]
    assert all(probe not in d.text for d in train)
    assert sum(len(d.text) for d in train) > 10_000_000


def test_order_is_deterministic_and_lists_are_fresh():
    a, b = load_corpus(), load_corpus()
    assert [d.name for d in a] == [d.name for d in b] == sorted(d.name for d in a)
    a.clear()
    assert load_corpus()  # callers cannot corrupt the cached corpus


def test_held_out_book_is_long_and_in_validation():
    book = held_out_book()
    assert isinstance(book, Document)
    assert len(book.text) > 500_000
    assert book == load_corpus("validation")[0]
    assert "Call me Ishmael" in book.text[:60_000]
    assert "gutenberg" not in book.text.lower()  # licence header/footer stripped


def test_documents_are_frozen_and_clean():
    doc = load_corpus()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        doc.text = ""  # type: ignore[misc]
    for d in load_corpus() + load_corpus("validation"):
        assert d.text.strip(), d.name
        assert "\r" not in d.text and "\n\n\n" not in d.text, d.name


def test_fingerprint_is_stable_hex():
    fp = corpus_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert fp == corpus_fingerprint()


def test_sources_md_lists_every_file():
    sources = (CORPUS_DIR / "SOURCES.md").read_text()
    for path in CORPUS_DIR.glob("*.txt.xz"):
        assert f"`{path.name}`" in sources


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split"):
        load_corpus("test")
