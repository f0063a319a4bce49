"""The embedded default corpus: public-domain English books shipped inside the package.

The files live in ``infini_llama/data/corpus/`` as one xz-compressed UTF-8 document per
file, named ``<collection>__<work>.txt.xz`` (e.g. ``austen__emma.txt.xz``).  Their
provenance and licences are listed in ``corpus/SOURCES.md`` and the repository's
``NOTICE.md``; ``scripts/build_corpus.py`` regenerates them.

The train/validation split is **by document**, so no validation text ever appears in
training (not even a neighbouring paragraph):

* validation = *Moby Dick* (the long held-out book, ~1.2M characters, used for
  perplexity-by-position at long context) + *The Tempest* (a short play, so validation
  is not a single style);
* train = every other document.
"""

from __future__ import annotations

import functools
import hashlib
import lzma
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"

#: Name of the long book held out for validation and long-context evaluation.
HELD_OUT_BOOK = "melville__moby_dick"
#: All documents of the validation split (the held-out book first).
VALIDATION_DOCUMENTS = (HELD_OUT_BOOK, "shakespeare__tempest")

SPLITS = ("train", "validation")


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    ``name`` is a stable identifier (for the embedded corpus, the file name without
    ``.txt.xz``); ``text`` is the full UTF-8 text with ``\\n`` line endings.
    """

    name: str
    text: str


def _corpus_files() -> list[Path]:
    files = sorted(CORPUS_DIR.glob("*.txt.xz"))
    if not files:
        raise FileNotFoundError(
            f"no embedded corpus files (*.txt.xz) in {CORPUS_DIR}; the package was installed "
            "without its package data: reinstall it, or run scripts/build_corpus.py from a checkout"
        )
    return files


@functools.lru_cache(maxsize=1)
def _all_documents() -> tuple[Document, ...]:
    # Decompressing all ~16 MB takes a fraction of a second; cache it because tests, the
    # tokenizer trainer and the shard builder may each ask for the corpus.
    return tuple(
        Document(name=path.name.removesuffix(".txt.xz"), text=lzma.decompress(path.read_bytes()).decode("utf-8"))
        for path in _corpus_files()
    )


def load_corpus(split: str = "train") -> list[Document]:
    """Return the documents of one split of the embedded corpus.

    Args:
        split: ``"train"`` or ``"validation"``.

    Returns:
        A new list of :class:`Document`, in a deterministic order: sorted by name for
        ``"train"``; for ``"validation"`` the held-out book first, then the short piece.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    docs = {d.name: d for d in _all_documents()}
    missing = [name for name in VALIDATION_DOCUMENTS if name not in docs]
    if missing:
        raise FileNotFoundError(
            f"validation documents {missing} are missing from {CORPUS_DIR}; "
            "rebuild the corpus with scripts/build_corpus.py"
        )
    if split == "validation":
        return [docs[name] for name in VALIDATION_DOCUMENTS]
    return [d for name, d in sorted(docs.items()) if name not in VALIDATION_DOCUMENTS]


def held_out_book() -> Document:
    """The long held-out validation book (*Moby Dick*, ~1.2M characters)."""
    return load_corpus("validation")[0]


@functools.lru_cache(maxsize=1)
def corpus_fingerprint() -> str:
    """A stable hex digest of the shipped corpus files (names and bytes) and of the split.

    Changes whenever a file is added, removed or rebuilt differently, or the split rule
    changes, so it can key caches built from the corpus.
    """
    h = hashlib.sha256()
    h.update(("split:" + ",".join(VALIDATION_DOCUMENTS) + "\n").encode())
    for path in _corpus_files():
        h.update(f"{path.name}\n".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]
