from __future__ import annotations

import json
import warnings

import pytest

from infini_llama.data import iter_documents, load_corpus, sources_fingerprint


def _docs(**kw):
    return [d.text for d in iter_documents(**kw)]


def _write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def test_default_is_embedded_corpus():
    assert [d.name for d in iter_documents()] == [d.name for d in load_corpus("train")]
    assert [d.name for d in iter_documents(split="validation")] == [d.name for d in load_corpus("validation")]


def test_reads_txt_jsonl_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "a.txt").write_text("first text file\nline two\n")
    _write_jsonl(tmp_path / "b.jsonl", ["json one", "json two", "", "json three"])
    pq.write_table(pa.table({"text": ["parquet one", None, "parquet two"]}), tmp_path / "c.parquet")
    files = [tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.parquet"]
    train = _docs(data=files)
    val = _docs(data=files, split="validation")
    everything = ["first text file\nline two\n", "json one", "json two", "json three", "parquet one", "parquet two"]
    # 6 documents -> ceil(1% of 6) = 1 held out: the last one, in input order.
    assert train + val == everything and val == ["parquet two"]


def test_glob_and_directory_are_sorted_and_deduplicated(tmp_path):
    for name in ["b.txt", "a.txt", "c.txt"]:
        (tmp_path / name).write_text(f"doc {name}\n")
    names = [d.name for d in iter_documents(data=[str(tmp_path / "*.txt"), str(tmp_path / "a.txt")])]
    names += [d.name for d in iter_documents(data=str(tmp_path), split="validation")]
    assert [n.rsplit("/", 1)[1] for n in names] == ["a.txt", "b.txt", "c.txt"]


def test_validation_is_last_fraction_at_least_one(tmp_path):
    _write_jsonl(tmp_path / "d.jsonl", [f"document {i}" for i in range(250)])
    val = _docs(data=tmp_path / "d.jsonl", split="validation")
    assert val == [f"document {i}" for i in range(247, 250)]  # ceil(2.5) = 3
    assert len(_docs(data=tmp_path / "d.jsonl")) == 247
    val = _docs(data=tmp_path / "d.jsonl", split="validation", validation_fraction=0.02)
    assert len(val) == 5
    _write_jsonl(tmp_path / "two.jsonl", ["a", "b"])  # always one document left to train on
    assert _docs(data=tmp_path / "two.jsonl", validation_fraction=0.9) == ["a"]


def test_single_document_is_split_by_lines(tmp_path):
    lines = [f"line {i}\n" for i in range(300)]
    (tmp_path / "one.txt").write_text("".join(lines))
    train, val = _docs(data=tmp_path / "one.txt"), _docs(data=tmp_path / "one.txt", split="validation")
    assert train == ["".join(lines[:297])] and val == ["".join(lines[297:])]


def test_missing_path_and_empty_glob(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        iter_documents(data=[tmp_path / "nope.txt"])
    with pytest.raises(FileNotFoundError, match=r"\*\.jsonl"):
        iter_documents(data=str(tmp_path / "*.jsonl"))


def test_empty_files(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "ok.txt").write_text("some text\nmore\n")
    with pytest.raises(ValueError, match="empty.txt"), pytest.warns(UserWarning):  # nothing usable
        iter_documents(data=tmp_path / "empty.txt")
    with pytest.warns(UserWarning, match="empty.txt"):
        assert _docs(data=[tmp_path / "empty.txt", tmp_path / "ok.txt"]) == ["some text\n"]
    with pytest.raises(ValueError, match="empty.txt"):
        iter_documents(data=[tmp_path / "empty.txt", tmp_path / "ok.txt"], on_bad_file="error")


def test_non_utf8_skip_and_error(tmp_path):
    (tmp_path / "good.txt").write_text("good text\nline\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "more.txt").write_text("more good text\n")
    files = [tmp_path / "good.txt", tmp_path / "latin1.txt", tmp_path / "more.txt"]
    with pytest.warns(UserWarning, match=r"latin1\.txt is not valid UTF-8"):
        train = _docs(data=files)
    assert train == ["good text\nline\n"]
    with warnings.catch_warnings(record=True):
        assert _docs(data=files, split="validation") == ["more good text\n"]
    with pytest.raises(ValueError, match=r"latin1\.txt is not valid UTF-8"):
        iter_documents(data=files, on_bad_file="error")


def test_malformed_jsonl_and_missing_field(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    _write_jsonl(tmp_path / "good.jsonl", ["a", "b"])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2 is not valid JSON"):
        iter_documents(data=[tmp_path / "bad.jsonl", tmp_path / "good.jsonl"], on_bad_file="error")
    with pytest.warns(UserWarning, match=r"bad\.jsonl:2"):
        iter_documents(data=[tmp_path / "bad.jsonl", tmp_path / "good.jsonl"])
    _write_jsonl(tmp_path / "other.jsonl", ["x", "y"], field="content")
    with pytest.raises(ValueError, match="no field 'text'.*content"):
        iter_documents(data=tmp_path / "other.jsonl")
    assert _docs(data=tmp_path / "other.jsonl", text_field="content") == ["x"]


def test_bad_arguments(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        iter_documents(data=tmp_path / "x.csv")
    with pytest.raises(ValueError, match="on_bad_file"):
        iter_documents(on_bad_file="ignore")
    with pytest.raises(ValueError, match="split"):
        iter_documents(split="dev")
    with pytest.raises(ValueError, match="either"):
        iter_documents(data=["a.txt"], dataset="x")


def test_hf_dataset_from_local_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", [f"row {i}" for i in range(20)])
    assert _docs(dataset=str(folder), split="validation") == ["row 19"]
    assert _docs(dataset=str(folder)) == [f"row {i}" for i in range(19)]


def test_hf_dataset_offline_is_a_clear_error():
    pytest.importorskip("datasets")
    with pytest.raises(FileNotFoundError, match="could not load dataset"):
        list(iter_documents(dataset="no-such-user/no-such-dataset-infini-llama-test"))


def test_sources_fingerprint(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one\ntwo\n")
    fp = sources_fingerprint(data=[f])
    assert fp == sources_fingerprint(data=[f]) != sources_fingerprint()
    assert fp != sources_fingerprint(data=[f], validation_fraction=0.05)
    f.write_text("one\ntwo\nthree\n")
    assert sources_fingerprint(data=[f]) != fp
