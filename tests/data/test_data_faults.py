"""Bad data, each handled as `infini_llama.data.sources` and `.shards` document, naming the file: empty, binary,
UTF-16 and non-UTF-8 files skipped (or refused); giant single lines tokenized exactly; damaged token caches
(ids past the vocabulary, truncated files, unreadable metadata) refused by `load_token_data` and rebuilt by
`prepare_tokens`."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from infini_llama.data import iter_documents, load_corpus, load_token_data, prepare_tokens

GOOD = "A line of honest text.\nAnd another one.\n"
BAD_FILES = {  # name -> (bytes, what the warning or error says)
    "empty.txt": (b" \n\n", r"empty\.txt is empty"),
    "binary.txt": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(64), r"binary\.txt looks binary"),
    "utf16.txt": ("Text saved as UTF-16.\n".encode("utf-16-le"), r"utf16\.txt looks binary.*NUL byte at offset 1"),
    "latin1.txt": ("caf\xe9 cr\xe8me\n".encode("latin-1"), r"latin1\.txt is not valid UTF-8"),
    "records.jsonl": (b'{"text": "ok"}\n\x00\x01\x02\n', r"records\.jsonl looks binary"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_file_is_skipped_with_its_name_or_refused(tmp_path, name):
    content, message = BAD_FILES[name]
    (tmp_path / name).write_bytes(content)
    for good in ("a.txt", "z.txt"):
        (tmp_path / good).write_text(GOOD)
    files = [tmp_path / "a.txt", tmp_path / name, tmp_path / "z.txt"]
    with pytest.warns(UserWarning, match=rf"skipping bad data file: .*{message}"):
        train = [d.name for d in iter_documents(data=files)]
    assert [n.rsplit("/", 1)[1] for n in train] == ["a.txt"]  # z.txt is the validation document
    with pytest.raises(ValueError, match=rf"bad data file: .*{message}"):
        iter_documents(data=files, on_bad_file="error")


def test_giant_single_lines_are_tokenized_exactly(tiny_tok, tmp_path):
    words = " ".join(load_corpus("train")[0].text.split())  # a book without a single line break
    line = (words * 2)[:1_000_000]
    (tmp_path / "a_giant.txt").write_text(line)
    (tmp_path / "b_records.jsonl").write_text(json.dumps({"text": line[:300_000]}) + "\n")
    (tmp_path / "c_valid.txt").write_text(GOOD)
    data = prepare_tokens(tiny_tok, data=[tmp_path], cache_dir=tmp_path / "cache", show_progress=False)
    eos = tiny_tok.eos_token_id
    expected = []
    for text in (line, line[:300_000]):
        expected += tiny_tok(text, add_special_tokens=False)["input_ids"] + [eos]
    assert data.train.tolist() == expected


def test_a_lone_giant_line_cannot_be_split_for_validation(tmp_path):
    (tmp_path / "one.txt").write_text("word " * 200_000)
    with pytest.raises(ValueError, match="the only document is a single line"):
        list(iter_documents(data=tmp_path / "one.txt"))


DAMAGE = {  # how a cache entry is damaged -> what load_token_data says
    "id-past-vocabulary": (
        lambda entry: _poke(entry / "train.bin", 1234, 300),
        r"train\.bin holds token id 300 at position 1234, but its tokenizer has 300 ids",
    ),
    "truncated": (
        lambda entry: os.truncate(entry / "validation.bin", (entry / "validation.bin").stat().st_size // 2),
        r"validation\.bin holds \d+ bytes but meta\.json promises \d+ tokens",
    ),
    "unreadable-meta": (lambda entry: (entry / "meta.json").write_text("{"), r"meta\.json is unreadable"),
}


def _poke(file, position: int, value: int) -> None:
    tokens = np.memmap(file, dtype=np.uint16, mode="r+")
    tokens[position] = value
    tokens.flush()
    del tokens


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_token_cache_is_refused_by_name_then_rebuilt(tiny_tok, tmp_path, damage):
    for i in range(4):
        (tmp_path / f"doc{i}.txt").write_text(load_corpus("train")[i].text[:20_000])
    files = sorted(tmp_path.glob("doc*.txt"))
    cache = tmp_path / "cache"
    built = prepare_tokens(tiny_tok, data=files, cache_dir=cache, show_progress=False)
    expected = (built.train.tolist(), built.validation.tolist())
    harm, message = DAMAGE[damage]
    harm(built.path)
    with pytest.raises(ValueError, match=message):
        load_token_data(built.path)
    with pytest.warns(UserWarning, match=rf"rebuilding a damaged token cache entry: .*{message}"):
        rebuilt = prepare_tokens(tiny_tok, data=files, cache_dir=cache, show_progress=False)
    assert (rebuilt.train.tolist(), rebuilt.validation.tolist()) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sound again: opened without a word
        assert load_token_data(rebuilt.path).num_train_tokens == len(expected[0])
