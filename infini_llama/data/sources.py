"""Where training text comes from: the embedded corpus, local files, or a HF dataset.

:func:`iter_documents` yields :class:`~infini_llama.data.corpus.Document` objects for one
split.  Splits are always by whole document (never mid-document), except for the
single-document case described below, so validation text is never trained on.

Local files (``data=[...]``, paths, globs or directories):

* ``.txt``: one file is one document;
* ``.jsonl``: one line is one document, read from field ``text_field``;
* ``.parquet``: one row is one document, read from column ``text_field`` (needs ``pyarrow``).

The validation split of local data is the **last** ``validation_fraction`` (default 1%,
at least one) of the documents, in input order (explicit paths in the order given, each
glob or directory expanded in sorted order).  If there is only one document, its last
``validation_fraction`` of lines becomes validation instead.

Bad input:

* a path that does not exist, or a glob that matches nothing: ``FileNotFoundError``;
* a file with an unsupported suffix, or a JSONL/parquet file without ``text_field``:
  ``ValueError``;
* an unreadable, binary (it holds a NUL byte: no text does, while UTF-16 text and most
  binary formats do), non-UTF-8, malformed or empty file: with ``on_bad_file="skip"``
  (the default) a ``UserWarning`` naming the file and the file is skipped; with
  ``on_bad_file="error"`` a ``ValueError`` naming the file;
* a very long line (a whole book without a line break, a minified JSON record) is no
  problem: it is tokenized like any other text;
* no usable document at all: ``ValueError`` naming the files that were skipped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .corpus import Document, corpus_fingerprint, load_corpus

SUFFIXES = (".txt", ".jsonl", ".parquet")
DEFAULT_VALIDATION_FRACTION = 0.01
# A streamed HF dataset without a validation split has no known length, so hold out a
# fixed number of leading documents instead of a fraction.
STREAMING_VALIDATION_DOCS = 100


@dataclass
class _LocalPlan:
    files: list[tuple[Path, int]]  # usable files and their document counts, in order
    num_documents: int
    num_validation: int


# --------------------------------------------------------------------------- local files
def expand_paths(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Expand paths, globs and directories into an ordered, de-duplicated file list."""
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not items:
        raise ValueError("data is an empty list; pass at least one file, directory or glob")
    out: list[Path] = []
    for item in items:
        text = os.path.expanduser(str(item))
        if glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"glob {text!r} matched no files; check the pattern and the folder")
        elif Path(text).is_dir():
            found = sorted(p for p in Path(text).rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            if not found:
                raise FileNotFoundError(f"directory {text!r} holds no {'/'.join(SUFFIXES)} files")
        elif Path(text).exists():
            found = [Path(text)]
        else:
            raise FileNotFoundError(f"data file {text!r} does not exist")
        for path in found:
            if path.suffix not in SUFFIXES:
                raise ValueError(f"unsupported file type {str(path)!r}: use {', '.join(SUFFIXES)} files")
            if path not in out:
                out.append(path)
    return out


def _read_file(path: Path, text_field: str) -> list[str]:
    """All non-empty documents of one file.  Raises ``_BadFile`` for data problems."""
    try:
        if path.suffix == ".parquet":
            return _read_parquet(path, text_field)
        raw = path.read_bytes()
        if (nul := raw.find(b"\0")) >= 0:  # valid UTF-8 may hold NULs, text never does
            raise _BadFile(f"{path} looks binary, not text (a NUL byte at offset {nul})")
        text = raw.decode("utf-8")  # strict: a non-UTF-8 file is reported, not mangled
    except UnicodeDecodeError as exc:
        raise _BadFile(f"{path} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise _BadFile(f"{path} could not be read ({exc.strerror or exc})") from exc
    if path.suffix == ".txt":
        docs = [text] if text.strip() else []
    else:
        docs = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _BadFile(f"{path}:{lineno} is not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{path}:{lineno} has no field {text_field!r} (found {keys}); pass text_field=...")
            value = record[text_field]
            if isinstance(value, str) and value.strip():
                docs.append(value)
    if not docs:
        raise _BadFile(f"{path} is empty (no non-blank text)")
    return docs


def _read_parquet(path: Path, text_field: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # optional dependency
        raise ImportError("reading .parquet needs pyarrow: pip install 'infini-llama[data]'") from exc
    try:
        table = pq.read_table(path)
    except OSError as exc:
        raise _BadFile(f"{path} is not a readable parquet file ({exc})") from exc
    if text_field not in table.column_names:
        raise ValueError(f"{path} has no column {text_field!r} (found {table.column_names}); pass text_field=...")
    return [v for v in table.column(text_field).to_pylist() if isinstance(v, str) and v.strip()]


class _BadFile(Exception):
    pass


def _plan_local(paths: list[Path], text_field: str, on_bad_file: str, validation_fraction: float) -> _LocalPlan:
    files, skipped = [], []
    for path in paths:
        try:
            n = len(_read_file(path, text_field))
        except _BadFile as exc:
            if on_bad_file == "error":
                raise ValueError(f"bad data file: {exc} (on_bad_file='error')") from exc
            warnings.warn(f"skipping bad data file: {exc}", UserWarning, stacklevel=3)
            skipped.append(str(path))
            continue
        files.append((path, n))
    total = sum(n for _, n in files)
    if total == 0:
        raise ValueError(f"no usable text in the data files; skipped: {skipped}")
    # At least one validation document, and at least one left for training.
    n_val = min(max(1, math.ceil(total * validation_fraction)), total - 1)
    return _LocalPlan(files, total, n_val)


def _split_single(text: str, split: str, validation_fraction: float) -> str:
    lines = text.splitlines(keepends=True)
    if len(lines) < 2:
        raise ValueError(
            "the only document is a single line, so no part of it can be held out for validation; "
            "add more documents or line breaks"
        )
    cut = len(lines) - max(1, math.ceil(len(lines) * validation_fraction))
    return "".join(lines[:cut] if split == "train" else lines[cut:])


def _iter_local(plan: _LocalPlan, split: str, text_field: str, validation_fraction: float) -> Iterator[Document]:
    first_val = plan.num_documents - plan.num_validation
    index = 0
    for path, _ in plan.files:
        docs = _read_file(path, text_field)
        for i, text in enumerate(docs):
            name = str(path) if path.suffix == ".txt" else f"{path}:{i}"
            if plan.num_documents == 1:
                yield Document(name, _split_single(text, split, validation_fraction))
            elif (index >= first_val) == (split == "validation"):
                yield Document(name, text)
            index += 1


# --------------------------------------------------------------------------- HF datasets
def _iter_hf(
    name: str, config: str | None, split: str, text_field: str, streaming: bool, validation_fraction: float
) -> Iterator[Document]:
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("loading a HF dataset needs `datasets`: pip install 'infini-llama[data]'") from exc
    try:
        dsd = datasets.load_dataset(name, config, streaming=streaming)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"could not load dataset {name!r}: it is neither a local dataset folder nor in the HF cache "
            "(or the hub is unreachable / HF_DATASETS_OFFLINE is set). Download it once while online, "
            f"or pass local files with data=[...]. Cause: {exc}"
        ) from exc
    own_split = "validation" if "validation" in dsd else None
    if split == "validation" and own_split:
        source, lo, hi = dsd["validation"], 0, None
    else:
        if "train" not in dsd:
            raise ValueError(f"dataset {name!r} has no 'train' split (splits: {list(dsd)})")
        source = dsd["train"]
        if own_split:
            lo, hi = 0, None
        elif streaming:  # length unknown: hold out the first documents
            n_val = STREAMING_VALIDATION_DOCS
            lo, hi = (n_val, None) if split == "train" else (0, n_val)
        else:
            n = len(source)
            if n < 2:
                raise ValueError(f"dataset {name!r} has {n} train rows; need at least 2 to hold one out")
            n_val = min(max(1, math.ceil(n * validation_fraction)), n - 1)
            lo, hi = (0, n - n_val) if split == "train" else (n - n_val, n)
    if text_field not in (source.column_names or [text_field]):
        raise ValueError(f"dataset {name!r} has no column {text_field!r} (found {source.column_names})")
    for i, row in enumerate(source):
        if i < lo:
            continue
        if hi is not None and i >= hi:
            break
        text = row[text_field]
        if isinstance(text, str) and text.strip():
            yield Document(f"{name}:{i}", text)


# --------------------------------------------------------------------------- public API
def _check(split: str, on_bad_file: str, data, dataset) -> None:
    if split not in ("train", "validation"):
        raise ValueError(f"unknown split {split!r}; use 'train' or 'validation'")
    if on_bad_file not in ("skip", "error"):
        raise ValueError(f"on_bad_file must be 'skip' or 'error', not {on_bad_file!r}")
    if data is not None and dataset is not None:
        raise ValueError("pass either data=[files] or dataset='name', not both")


def iter_documents(
    data: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    dataset: str | None = None,
    *,
    split: str = "train",
    text_field: str = "text",
    on_bad_file: str = "skip",
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    dataset_config: str | None = None,
    streaming: bool = False,
) -> Iterator[Document]:
    """Yield the documents of one split, in a deterministic order.

    Args:
        data: local ``.txt``/``.jsonl``/``.parquet`` files, globs or directories.
        dataset: a HF dataset name or local dataset folder (``datasets.load_dataset``); its
            own ``validation`` split is used if it has one, else the last
            ``validation_fraction`` of ``train`` (the first 100 documents when streaming).
        split: ``"train"`` or ``"validation"``.
        text_field: JSONL field / parquet or dataset column holding the text.
        on_bad_file: ``"skip"`` (default: warn and skip) or ``"error"`` (raise ``ValueError``).
        validation_fraction: share of documents held out for validation.

    With neither ``data`` nor ``dataset``, yields the embedded corpus
    (:func:`~infini_llama.data.corpus.load_corpus`).  See the module docstring for errors.
    """
    _check(split, on_bad_file, data, dataset)
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if dataset is not None:
        return _iter_hf(dataset, dataset_config, split, text_field, streaming, validation_fraction)
    if data is None:
        return iter(load_corpus(split))
    # Plan eagerly so that missing or bad files fail here, not at the first next().
    plan = _plan_local(expand_paths(data), text_field, on_bad_file, validation_fraction)
    return _iter_local(plan, split, text_field, validation_fraction)


def sources_fingerprint(
    data: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    dataset: str | None = None,
    *,
    text_field: str = "text",
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    dataset_config: str | None = None,
    streaming: bool = False,
) -> str:
    """Stable hex digest identifying a data source and its split, for cache keys.

    Local files are identified by resolved path, size and modification time (hashing the
    content of large data on every start would cost more than it saves); the embedded
    corpus by :func:`~infini_llama.data.corpus.corpus_fingerprint`.
    """
    if data is None and dataset is None:
        parts = ["corpus", corpus_fingerprint()]
    elif dataset is not None:
        parts = ["hf", dataset, str(dataset_config), str(streaming), text_field, repr(validation_fraction)]
        if Path(dataset).expanduser().is_dir():  # a local dataset folder: notice edits to it
            for path in sorted(p for p in Path(dataset).expanduser().rglob("*") if p.is_file()):
                st = path.stat()
                parts += [str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    else:
        parts = ["files", text_field, repr(validation_fraction)]
        for path in expand_paths(data):
            st = path.stat()
            parts += [str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
