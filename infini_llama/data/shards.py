"""Tokenize a data source once into flat numpy token files, cached on disk.

Layout of one cache entry, ``<cache_dir>/tokens/<key>/``:

* ``train.bin``, ``validation.bin``: raw little-endian token ids (``uint16`` when every
  id fits, i.e. ``len(tokenizer) <= 65536``, else ``uint32``), opened as 1-D
  ``np.memmap``.  Each document is followed by the EOS token, so EOS both ends a
  document and separates it from the next one;
* ``meta.json``: dtype, token and document counts, fingerprints.

``<key>`` hashes (sources fingerprint, tokenizer fingerprint, format version): changing
the data or the tokenizer builds a new entry, and a second call with the same inputs
only opens the files.  An entry is built in a temporary folder and renamed into place
when complete, so a killed run never leaves a cache entry that looks valid.

An entry is checked every time it is opened (a pass over the files at memory speed): a
``meta.json`` that cannot be read, a ``.bin`` whose size is not the promised number of
tokens (truncated), or a token id ``>= vocab_size`` (damaged, or written for another
tokenizer) makes :func:`load_token_data` raise ``ValueError`` naming the file;
:func:`prepare_tokens` then warns with that message and builds the entry again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from .sources import DEFAULT_VALIDATION_FRACTION, iter_documents, sources_fingerprint
from .tokenizer import DEFAULT_VOCAB_SIZE, default_cache_dir, load_tokenizer, tokenizer_fingerprint

_FORMAT_VERSION = 1
_CHUNK_CHARS = 32_768  # long documents are cut into pieces this size so both cores work
_BATCH_CHARS = 4_000_000  # text handed to one encode_batch call (bounds memory)
_SCAN_TOKENS = 1 << 24  # ids checked at a time when an entry is opened (bounds memory, not speed)
# A piece boundary is a single newline between two non-space characters: for GPT-2
# style byte-level pre-tokenization no pre-token crosses it, so cutting there does not
# change the ids.  _chunking_is_exact() checks this for the tokenizer actually in use.
_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_PROBE = (
    "CHAPTER I.\n\nIt was a dark and stormy night; the rain fell in torrents.\nExcept at occasional "
    "intervals,\n  when it was checked by a violent gust\n\n\nof wind which swept up the streets "
    '(for it is in London that our scene lies).\nHe said, "Don\'t!"\n\t1234 £5 naïve café—end.\nLast line\n'
)


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """``uint16`` if all ids (``0 .. vocab_size-1``) fit in 16 bits, else ``uint32``."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


@dataclass(frozen=True, eq=False)  # eq=False: comparing memmaps elementwise is never wanted
class TokenData:
    """Tokenized train/validation streams.

    ``train`` and ``validation`` are read-only 1-D ``np.memmap`` of dtype ``dtype``
    holding token ids, documents separated (and terminated) by ``eos_token_id``.
    """

    train: np.memmap = field(repr=False)
    validation: np.memmap = field(repr=False)
    vocab_size: int  # len(tokenizer): the model's embedding size
    dtype: np.dtype
    eos_token_id: int
    num_train_tokens: int
    num_validation_tokens: int
    num_train_documents: int
    num_validation_documents: int
    tokenizer_fingerprint: str
    sources_fingerprint: str
    path: Path

    def __reduce__(self):
        # A process receiving this (a batch-prefetching worker) opens the files again, not a copy of the tokens.
        return load_token_data, (self.path,)


def load_token_data(path: str | os.PathLike) -> TokenData:
    """Open a cache entry written by :func:`prepare_tokens`, after checking it (see the module docstring)."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} not found: {path} is not a complete token cache; run prepare_tokens")
    try:
        meta = json.loads(meta_file.read_text())
        dtype, vocab = np.dtype(meta["dtype"]), int(meta["vocab_size"])
        counts = {split: int(meta[f"num_{split}_tokens"]) for split in ("train", "validation")}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta_file} is unreadable ({exc}); delete {path} to rebuild the cache entry") from exc

    def _open(split: str) -> np.memmap:
        n, file = counts[split], path / f"{split}.bin"
        size = file.stat().st_size if file.is_file() else 0
        if size != n * dtype.itemsize:
            raise ValueError(
                f"{file} holds {size} bytes but meta.json promises {n} tokens of {dtype} ({n * dtype.itemsize} "
                f"bytes): the file is truncated or damaged; delete {path} to rebuild the cache entry"
            )
        if n == 0:  # np.memmap refuses empty files
            return np.zeros(0, dtype=dtype)
        tokens = np.memmap(file, dtype=dtype, mode="r", shape=(n,))
        _check_ids(tokens, vocab, file)
        return tokens

    return TokenData(
        train=_open("train"),
        validation=_open("validation"),
        vocab_size=meta["vocab_size"],
        dtype=dtype,
        eos_token_id=meta["eos_token_id"],
        num_train_tokens=meta["num_train_tokens"],
        num_validation_tokens=meta["num_validation_tokens"],
        num_train_documents=meta["num_train_documents"],
        num_validation_documents=meta["num_validation_documents"],
        tokenizer_fingerprint=meta["tokenizer_fingerprint"],
        sources_fingerprint=meta["sources_fingerprint"],
        path=path,
    )


def _check_ids(tokens: np.ndarray, vocab_size: int, file: Path) -> None:
    """Every id must have a row in the embedding: one past it is an opaque index error on the CPU and a
    device-side assert on a GPU, steps later."""
    for start in range(0, len(tokens), _SCAN_TOKENS):
        block = np.asarray(tokens[start : start + _SCAN_TOKENS])
        if int(block.max()) >= vocab_size:
            at = start + int(np.argmax(block >= vocab_size))
            raise ValueError(
                f"{file} holds token id {int(tokens[at])} at position {at}, but its tokenizer has {vocab_size} ids: "
                f"the file is damaged or was written with another tokenizer; delete {file.parent} to rebuild it"
            )


def _encoder(tokenizer: PreTrainedTokenizerFast) -> Tokenizer:
    # Work on a copy of the Rust tokenizer so the caller's object is not modified.
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    # Text that happens to contain "<|endoftext|>" must not inject a real EOS id.
    backend.encode_special_tokens = True
    return backend


def _pieces(text: str, size: int) -> list[str]:
    out, start = [], 0
    while len(text) - start > size:
        m = _CUT.search(text, start + size)
        if m is None:
            break
        out.append(text[start : m.start()])
        start = m.start()
    out.append(text[start:])
    return out


def _encode_ids(backend: Tokenizer, texts: list[str]) -> list[list[int]]:
    fast = getattr(backend, "encode_batch_fast", None)  # skips offsets; tokenizers >= 0.21
    encodings = (fast or backend.encode_batch)(texts, add_special_tokens=False)
    return [e.ids for e in encodings]


def _chunking_is_exact(backend: Tokenizer) -> bool:
    whole = _encode_ids(backend, [_PROBE])[0]
    parts = sum(_encode_ids(backend, _pieces(_PROBE, 8)), [])
    return whole == parts and len(_pieces(_PROBE, 8)) > 1


def encode_documents(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerFast,
    out_file: str | os.PathLike,
    *,
    dtype: np.dtype,
    desc: str = "tokenizing",
    show_progress: bool = True,
) -> tuple[int, int]:
    """Tokenize ``texts`` in batches and append ``ids + [eos]`` per document to ``out_file``.

    Returns ``(num_tokens, num_documents)``.  Long documents are cut at safe newlines
    into pieces that are encoded in parallel if, on a probe text, cutting gives the same
    ids as encoding whole for this tokenizer; otherwise whole documents are encoded.
    """
    backend = _encoder(tokenizer)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; load it with load_tokenizer()")
    chunk = _CHUNK_CHARS if _chunking_is_exact(backend) else None
    n_tokens = n_docs = 0
    bar = tqdm(desc=desc, unit="char", unit_scale=True, disable=not show_progress)
    with open(out_file, "wb") as f:

        def flush(batch: list[str], ends_doc: list[bool]) -> None:
            nonlocal n_tokens, n_docs
            out: list[int] = []
            for piece_ids, last in zip(_encode_ids(backend, batch), ends_doc, strict=True):
                out.extend(piece_ids)
                if last:  # pieces arrive in order, so a document may span two flushes
                    out.append(eos)
                    n_docs += 1
            arr = np.asarray(out, dtype=np.int64)
            if arr.size and int(arr.max()) > np.iinfo(dtype).max:
                raise ValueError(f"token id {int(arr.max())} does not fit {dtype}; use a larger dtype")
            arr.astype(dtype).tofile(f)
            n_tokens += arr.size
            bar.update(sum(len(t) for t in batch))
            bar.set_postfix(tokens=n_tokens, refresh=False)

        batch: list[str] = []
        ends_doc: list[bool] = []
        size = 0
        for text in texts:
            pieces = _pieces(text, chunk) if chunk else [text]
            for i, piece in enumerate(pieces):
                batch.append(piece)
                ends_doc.append(i == len(pieces) - 1)
                size += len(piece)
                if size >= _BATCH_CHARS:
                    flush(batch, ends_doc)
                    batch, ends_doc, size = [], [], 0
        if batch:
            flush(batch, ends_doc)
    bar.close()
    return n_tokens, n_docs


def prepare_tokens(
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    data: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    streaming: bool = False,
    text_field: str = "text",
    on_bad_file: str = "skip",
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
) -> TokenData:
    """Tokenize train and validation documents once; later calls reopen the cache.

    Args:
        tokenizer: a tokenizer from :func:`~infini_llama.data.tokenizer.load_tokenizer`;
            ``None`` loads the default BPE with ``vocab_size``.
        data, dataset, dataset_config, streaming, text_field, on_bad_file,
        validation_fraction: which documents, as in
            :func:`~infini_llama.data.sources.iter_documents`.
        cache_dir: cache root (default ``$INFINI_LLAMA_CACHE`` or ``~/.cache/infini_llama``).

    Returns:
        :class:`TokenData` with memmapped ``train`` / ``validation`` token streams.
    """
    if tokenizer is None:
        tokenizer = load_tokenizer(None, vocab_size=vocab_size, cache_dir=cache_dir)
    src = dict(
        data=data,
        dataset=dataset,
        text_field=text_field,
        validation_fraction=validation_fraction,
        dataset_config=dataset_config,
        streaming=streaming,
    )
    src_fp = sources_fingerprint(**src)
    tok_fp = tokenizer_fingerprint(tokenizer)
    key = f"{src_fp}-{tok_fp}-v{_FORMAT_VERSION}"
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "tokens" / key
    if (target / "meta.json").is_file():
        try:
            return load_token_data(target)
        except ValueError as exc:
            warnings.warn(f"rebuilding a damaged token cache entry: {exc}", UserWarning, stacklevel=2)
            shutil.rmtree(target, ignore_errors=True)

    vocab = len(tokenizer)
    dtype = dtype_for_vocab(vocab)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        meta: dict = {
            "format": _FORMAT_VERSION,
            "vocab_size": vocab,
            "dtype": dtype.name,
            "eos_token_id": tokenizer.eos_token_id,
            "tokenizer_fingerprint": tok_fp,
            "sources_fingerprint": src_fp,
            "sources": {k: str(v) for k, v in src.items()},
        }
        for split in ("train", "validation"):
            docs = iter_documents(**src, split=split, on_bad_file=on_bad_file)
            n_tok, n_doc = encode_documents(
                (d.text for d in docs),
                tokenizer,
                tmp / f"{split}.bin",
                dtype=dtype,
                desc=f"tokenizing {split}",
                show_progress=show_progress,
            )
            if n_doc == 0:
                raise ValueError(f"the {split} split has no documents; add more data")
            meta[f"num_{split}_tokens"], meta[f"num_{split}_documents"] = n_tok, n_doc
        # meta.json is written last: its presence marks a complete entry.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():  # not a lost race with another process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_token_data(target)
